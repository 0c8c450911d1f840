-- allot's initial schema (SQLite). Forward-only; the PostgreSQL twin has the
-- same file name and the same tables.
--
-- JSON documents (configs, layouts) and timestamps (RFC 3339 via sqlx) are
-- TEXT; json_extract(config, '$.status') queries a document.

-- One row, bumped as the first statement of every configuration write. Writing
-- it first takes the database write lock up front, which serialises
-- configuration writers, and processes poll it to know when to reload their
-- in-memory snapshot.
CREATE TABLE config_revision (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL
);
INSERT INTO config_revision (id, revision) VALUES (1, 0);

CREATE TABLE flags (
    key TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    config TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- Explicit per-org decisions; they go with their flag.
CREATE TABLE flag_overrides (
    flag_key TEXT NOT NULL REFERENCES flags (key) ON DELETE CASCADE,
    org_id TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (flag_key, org_id)
);

-- One row per incarnation of an experiment key. DELETE sets deleted_at and
-- keeps the row, its versions and its sticky assignments for analysis; a new
-- experiment under the same key gets a new id and starts afresh.
CREATE TABLE experiments (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    -- The current version's gate, denormalised so that the foreign key refuses
    -- both an unknown flag and the deletion of a flag that is in use.
    eligibility_flag TEXT REFERENCES flags (key),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deleted_at TEXT
);
CREATE UNIQUE INDEX experiments_live_key ON experiments (key) WHERE deleted_at IS NULL;

-- Every accepted version with its full config and the layout computed for it.
-- The layout is stored, not recomputed, so a restart reproduces every answer.
CREATE TABLE experiment_versions (
    experiment_id TEXT NOT NULL REFERENCES experiments (id),
    version INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    actor TEXT,
    config TEXT NOT NULL,
    layout TEXT NOT NULL,
    PRIMARY KEY (experiment_id, version)
);

-- Sticky experiments: the first stored treatment of a unit wins while it stays
-- active; `version` is the experiment version it was stored under.
CREATE TABLE sticky_assignments (
    experiment_id TEXT NOT NULL REFERENCES experiments (id),
    org_id TEXT NOT NULL,
    unit_id TEXT NOT NULL,
    treatment TEXT NOT NULL,
    version INTEGER NOT NULL,
    assigned_at TEXT NOT NULL,
    PRIMARY KEY (experiment_id, org_id, unit_id)
);
