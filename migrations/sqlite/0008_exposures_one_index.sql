-- The exposure ledger with one B-tree instead of two (§8): keyed by
-- (experiment, org, unit, phase), the primary key also finds a unit's rows
-- of earlier phases (how `moved` is decided). SQLite cannot change a
-- primary key in place: the table is rebuilt.
CREATE TABLE exposures_new (
    experiment TEXT NOT NULL,
    phase BIGINT NOT NULL,
    org_id TEXT NOT NULL,
    unit_id TEXT NOT NULL,
    treatment TEXT NOT NULL,
    bucket INTEGER,
    reason TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    moved BOOLEAN NOT NULL,
    PRIMARY KEY (experiment, org_id, unit_id, phase)
);
INSERT INTO exposures_new SELECT experiment, phase, org_id, unit_id, treatment, bucket, reason, first_seen, moved FROM exposures;
DROP TABLE exposures;
ALTER TABLE exposures_new RENAME TO exposures;
