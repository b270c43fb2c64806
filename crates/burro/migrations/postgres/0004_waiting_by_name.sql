-- Claims and the next due time look up waiting jobs one name at a time,
-- each an ordered scan of one name's waiting jobs. Such a scan stays cheap
-- before the table has statistics; the index on run_at alone then has no
-- reader left.
CREATE INDEX jobs_waiting_name ON jobs (name, run_at, id) WHERE status IN ('pending', 'scheduled');
DROP INDEX jobs_waiting;
