-- Flag history (§2), PostgreSQL; the SQLite twin has the same table.
--
-- Every flag write and every override change, written by the transaction
-- that made it, with the name of the token that asked (NULL with auth off):
-- an analyst can tell who was eligible when. Kept after the flag is deleted.
--   action: created, updated, deleted, override_set, override_removed;
--   version: the flag's version after the change (overrides keep it);
--   config: the stored document (created, updated), else NULL;
--   org_id, enabled: the override's (override_set; org_id alone for
--   override_removed), else NULL.
CREATE TABLE flag_events (
    id BIGSERIAL PRIMARY KEY,
    flag_key TEXT NOT NULL,
    at TIMESTAMPTZ NOT NULL,
    actor TEXT,
    action TEXT NOT NULL,
    version BIGINT NOT NULL,
    org_id TEXT,
    enabled BOOLEAN,
    config TEXT
);
CREATE INDEX flag_events_by_flag ON flag_events (flag_key, id);
