-- Participant routing (PostgreSQL): cohorts, participants and their audit log.

-- Bumped as the first statement of every routing transaction of an
-- experiment: the row lock serialises routing per experiment across replicas,
-- and the value orders arrivals in the waiting pool.
ALTER TABLE experiments ADD COLUMN routing_seq BIGINT NOT NULL DEFAULT 0;

-- Defined cohorts (alias set, overflow_of null) are created with the
-- experiment version that defines them and keep their id across versions.
-- Overflow cohorts inherit the alias and point at the defined one; cohorts a
-- group without a target creates have no alias and name their group.
CREATE TABLE cohorts (
    id TEXT PRIMARY KEY,
    experiment_id TEXT NOT NULL REFERENCES experiments (id),
    alias TEXT,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    capacity BIGINT,
    overflow_of TEXT REFERENCES cohorts (id),
    group_name TEXT,
    -- Creation order within the experiment ("overflows in creation order").
    created_seq BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX cohorts_by_experiment ON cohorts (experiment_id, created_seq);

-- Members are counted from here (status assigned or pending), inside the
-- routing transaction, never from a cached counter.
CREATE TABLE participants (
    experiment_id TEXT NOT NULL REFERENCES experiments (id),
    participant_id TEXT NOT NULL,
    status TEXT NOT NULL,
    attributes TEXT NOT NULL,
    cohort_id TEXT REFERENCES cohorts (id),
    group_name TEXT,
    entry TEXT,
    waiting_since TIMESTAMPTZ,
    wait_seq BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (experiment_id, participant_id)
);
CREATE INDEX participants_by_status ON participants (experiment_id, status, wait_seq);
CREATE INDEX participants_by_cohort ON participants (cohort_id, status);

-- Every status change, written in the transaction that made it.
CREATE TABLE routing_events (
    id BIGSERIAL PRIMARY KEY,
    experiment_id TEXT NOT NULL REFERENCES experiments (id),
    at TIMESTAMPTZ NOT NULL,
    participant_id TEXT NOT NULL,
    status TEXT NOT NULL,
    previous TEXT,
    group_name TEXT,
    entry TEXT,
    cohort_id TEXT,
    reason TEXT NOT NULL
);
CREATE INDEX routing_events_by_experiment ON routing_events (experiment_id, id);
