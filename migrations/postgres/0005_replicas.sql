-- Replicas that agree (PostgreSQL).
--
-- Versions never restart: a deleted flag keeps its row (deleted_at set, its
-- version bumped by the deletion) so that creating the key again continues
-- the numbering, and a deleted experiment's deletion is a version of its own.
ALTER TABLE flags ADD COLUMN deleted_at TIMESTAMPTZ;
ALTER TABLE experiment_versions ADD COLUMN deleted BOOLEAN NOT NULL DEFAULT FALSE;

-- What each configuration revision changed: one row per revision, written by
-- the transaction that bumped config_revision. A replica that learns of a
-- newer revision (notified on the channel allot_config, or by polling) reads
-- the rows after its own revision and reloads only those entities. Rows are
-- pruned as new ones are written; a replica further behind than what is kept
-- reloads everything.
--   kind 'flag': a flag (with its overrides); 'override': one org override
--   of flag `key`; 'experiment': the live experiment `key`.
CREATE TABLE config_changes (
    revision BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    org_id TEXT,
    at TIMESTAMPTZ NOT NULL
);
