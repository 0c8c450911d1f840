-- Flat routing cost (PostgreSQL): the composition entries each waiting
-- participant can sit in, indexed, so that a routing transaction reads only
-- the candidates of the groups its arrivals can complete instead of the
-- whole waiting pool (§5 "Matching").
--
-- One row per waiting participant and group it can sit in: `grp` and
-- `entry` are positions in the routing config of the version the slots were
-- computed for (experiments.slots_version), `wait_seq` the participant's
-- place in the pool. Rows are written by the routing transaction that makes
-- a participant waiting (or re-matches it after its attributes changed) and
-- deleted by the one that takes it out of the pool. When the stored version
-- is not the one the slots were computed for, the next routing transaction
-- computes every waiting participant's slots again and runs a full pass.
CREATE TABLE participant_slots (
    experiment_id TEXT NOT NULL,
    grp INTEGER NOT NULL,
    entry INTEGER NOT NULL,
    wait_seq BIGINT NOT NULL,
    participant_id TEXT NOT NULL,
    PRIMARY KEY (experiment_id, grp, entry, wait_seq, participant_id)
);
-- A participant's rows, to delete them when it leaves the pool.
CREATE INDEX participant_slots_by_participant ON participant_slots (experiment_id, participant_id);

-- The routing config version the slots were computed for; null (never
-- computed, or computed before this migration) makes the next routing
-- transaction compute them all.
ALTER TABLE experiments ADD COLUMN slots_version BIGINT;

-- Set by a registration that replaced a waiting participant's attributes,
-- cleared by the routing transaction that computes its slots again. The
-- registration's own matching pass normally does that at once; the flag
-- keeps a participant from being matched on its old attributes if the
-- replica stops in between.
ALTER TABLE participants ADD COLUMN slots_stale BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX participants_slots_stale ON participants (experiment_id) WHERE status = 'waiting' AND slots_stale;
