-- Backfill (SQLite, §5): a group without a target_cohort may set
-- backfill_seconds; for that long after one of its cohorts forms, a seat
-- freed in it is offered to the waiting participants of the seat's
-- composition entry.

-- The end of the cohort's backfill window, from its group's backfill_seconds
-- at formation (stored, like an acceptance deadline, so that a later change
-- of the configuration does not move windows already open). Null: the
-- cohort is never backfilled.
ALTER TABLE cohorts ADD COLUMN backfill_until TEXT;
CREATE INDEX cohorts_backfill_until ON cohorts (experiment_id, backfill_until) WHERE backfill_until IS NOT NULL;

-- The seats a backfilled cohort was formed with, per composition entry. The
-- seats open in it are these minus the members of the entry it holds now
-- (assigned, pending or completed; counted on participants_by_cohort).
CREATE TABLE cohort_seats (
    cohort_id TEXT NOT NULL REFERENCES cohorts (id),
    -- The entry's place in the group's composition.
    position INTEGER NOT NULL,
    entry TEXT NOT NULL,
    seats INTEGER NOT NULL,
    PRIMARY KEY (cohort_id, entry)
);
