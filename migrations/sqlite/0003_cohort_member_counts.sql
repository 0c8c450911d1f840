-- Member counts kept in the cohort rows (SQLite).
--
-- Every routing transaction needs the members (assigned + pending) of every
-- aliased cohort to join the first one with room. Counting them from
-- participants each time grows with the cohorts; instead each routing
-- transaction adjusts these counters for the status changes it writes, under
-- the same lock and in the same transaction, so they are exactly the count.
ALTER TABLE cohorts ADD COLUMN assigned_members INTEGER NOT NULL DEFAULT 0;
ALTER TABLE cohorts ADD COLUMN pending_members INTEGER NOT NULL DEFAULT 0;
UPDATE cohorts SET
    assigned_members = (SELECT COUNT(*) FROM participants p WHERE p.cohort_id = cohorts.id AND p.status = 'assigned'),
    pending_members = (SELECT COUNT(*) FROM participants p WHERE p.cohort_id = cohorts.id AND p.status = 'pending');
