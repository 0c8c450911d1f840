-- What each replica holds of the exposure ledger in memory (§8), so that
-- records lost with a replica that stops without writing them are counted.
--
-- A replica rewrites its own rows, one per phase it buffers records for,
-- every time it checkpoints (every 100 ms while its buffer changes, and at
-- least four times per `exposure_lease_ms`) and with every flush; at a clean
-- shutdown it writes everything and deletes them. Rows not renewed within
-- the lease belong to a replica that died: the next checkpoint of any
-- replica deletes them and adds `held` to the phase's `dropped` counter, in
-- one transaction.
--   renewed_ms: milliseconds since the Unix epoch, by the replica's clock.
CREATE TABLE exposure_holdings (
    replica TEXT NOT NULL,
    experiment TEXT NOT NULL,
    phase BIGINT NOT NULL,
    held BIGINT NOT NULL,
    renewed_ms BIGINT NOT NULL,
    PRIMARY KEY (replica, experiment, phase)
);
