-- How many cohorts each group without a target has made, per experiment
-- (SQLite). A new one is named "<group> #<n>": counting the group's
-- cohorts in every routing transaction cost more the more had formed (tens
-- of thousands in a large study); the routing transaction that creates one
-- adds to its count instead.
CREATE TABLE group_cohort_counts (
    experiment_id TEXT NOT NULL,
    group_name TEXT NOT NULL,
    made INTEGER NOT NULL,
    PRIMARY KEY (experiment_id, group_name)
);
INSERT INTO group_cohort_counts (experiment_id, group_name, made)
SELECT experiment_id, COALESCE(group_name, ''), COUNT(*) FROM cohorts WHERE alias IS NULL
GROUP BY experiment_id, COALESCE(group_name, '');
