-- Participant lifecycle (SQLite): liveness, acceptance deadlines,
-- completion and dropout (§5).

-- When a participant call last came in. Written by its own statement outside
-- the routing lock (a heartbeat must not queue behind matching), and never by
-- a routing transaction, so neither overwrites the other. Null only for rows
-- older than this migration until they are heard from; they read as
-- `updated_at`.
ALTER TABLE participants ADD COLUMN last_seen TEXT;
UPDATE participants SET last_seen = updated_at;

-- A pending participant's acceptance deadline, from its group's
-- accept_timeout_seconds at formation. Stored rather than derived from the
-- configuration so that the sweeper finds what is due with one index probe,
-- and a later change of the timeout does not move deadlines already given.
ALTER TABLE participants ADD COLUMN accept_by TEXT;
-- The sweeper's probe (like participants_waiting_since for the wait
-- timeout): partial, only pending participants have a deadline.
CREATE INDEX participants_accept_by ON participants (experiment_id, accept_by) WHERE status = 'pending';

-- The experimenter's listing: oldest first, paged by participant id.
CREATE INDEX participants_by_age ON participants (experiment_id, created_at, participant_id);

-- Completed members keep their seat: counted like assigned and pending ones
-- (see migration 0003), by the routing transaction that changes them.
ALTER TABLE cohorts ADD COLUMN completed_members INTEGER NOT NULL DEFAULT 0;

-- A drop's reason; null for every other event.
ALTER TABLE routing_events ADD COLUMN detail TEXT;
