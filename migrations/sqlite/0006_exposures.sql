-- Exposures and results (§8), SQLite; the PostgreSQL twin has the same tables.

-- The phase of every version (§3), stored as the version is written so that a
-- replica knows the phase of the version it serves without reading the
-- history. NULL only for versions written before this migration: the service
-- fills those in when it starts.
ALTER TABLE experiment_versions ADD COLUMN phase BIGINT;

-- The exposure ledger: one row per (experiment key, phase, org, unit) for the
-- units answered `assigned` or `sticky`; later answers add nothing. Keyed by
-- the experiment's key, not its incarnation, because phases number on across
-- incarnations and a re-created key's units are compared with what they had.
--   moved: the unit's treatment differs from the one it was recorded with in
--   the latest earlier phase it was recorded in.
CREATE TABLE exposures (
    experiment TEXT NOT NULL,
    phase BIGINT NOT NULL,
    org_id TEXT NOT NULL,
    unit_id TEXT NOT NULL,
    treatment TEXT NOT NULL,
    bucket INTEGER,
    reason TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    moved BOOLEAN NOT NULL,
    PRIMARY KEY (experiment, phase, org_id, unit_id)
);
-- A unit's rows across phases, newest phase last: how `moved` is decided.
CREATE INDEX exposures_by_unit ON exposures (experiment, org_id, unit_id, phase);

-- Counters kept by the same transactions that write the ledger, so that
-- results read a handful of rows however large the phase:
--   kind 'assigned' / 'sticky': ledger rows (distinct units) per treatment;
--   kind 'moved': ledger rows with moved set, per treatment;
--   kind 'org_not_eligible', 'not_in_coverage', 'experiment_paused',
--   'no_active_treatments': answers without a treatment (treatment '');
--   kind 'dropped': records lost before reaching the ledger (treatment '').
CREATE TABLE exposure_counts (
    experiment TEXT NOT NULL,
    phase BIGINT NOT NULL,
    kind TEXT NOT NULL,
    treatment TEXT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (experiment, phase, kind, treatment)
);
