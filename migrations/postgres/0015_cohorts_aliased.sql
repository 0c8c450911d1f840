-- The aliased cohorts of an experiment, in creation order (PostgreSQL):
-- every routing transaction reads them (joins, balance, overflow). Without
-- this index it read them by filtering every cohort of the experiment,
-- thousands once many groups had formed.
CREATE INDEX cohorts_aliased ON cohorts (experiment_id, created_seq) WHERE alias IS NOT NULL;
