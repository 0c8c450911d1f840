-- The exposure ledger with one B-tree instead of two (§8): keyed by
-- (experiment, org, unit, phase), the primary key also finds a unit's rows
-- of earlier phases (how `moved` is decided), and the export reads a phase
-- as a range of it. Every new row updated two indexes before; at a million
-- rows per phase their upkeep bounded ingestion.
ALTER TABLE exposures DROP CONSTRAINT exposures_pkey;
DROP INDEX exposures_by_unit;
ALTER TABLE exposures ADD PRIMARY KEY (experiment, org_id, unit_id, phase);
