-- Makes each write of a job row cheaper. SQLite tests `x IN (a, b, c)`
-- with more than two constants through a temporary table that it builds
-- for every row it checks, so the status CHECK and the partial index
-- jobs_finished built one or two such tables per row written. The CHECK
-- now compares with `=`. jobs_finished goes: the retention delete binds its
-- statuses as parameters, so SQLite never chose the partial index and used
-- jobs_status_created instead.
--
-- SQLite cannot change a CHECK in place, so the table is rebuilt.
CREATE TABLE jobs_rebuilt (
    id               TEXT PRIMARY KEY NOT NULL,
    name             TEXT NOT NULL,
    data             TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status = 'pending' OR status = 'scheduled' OR status = 'running'
                                          OR status = 'completed' OR status = 'failed' OR status = 'cancelled'),
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    run_at           INTEGER NOT NULL,
    started_at       INTEGER,
    completed_at     INTEGER,
    result           TEXT,
    error            TEXT,
    stack            TEXT,
    progress_percent REAL,
    progress_message TEXT,
    external         INTEGER NOT NULL DEFAULT 0,
    pid              INTEGER,
    process_state    TEXT,
    last_heartbeat   INTEGER,
    timeout_ms       INTEGER,
    node_id          TEXT,
    shim_token       TEXT
);

INSERT INTO jobs_rebuilt (
    id, name, data, status, attempts, max_attempts, created_at, run_at, started_at, completed_at,
    result, error, stack, progress_percent, progress_message, external, pid, process_state,
    last_heartbeat, timeout_ms, node_id, shim_token
)
SELECT
    id, name, data, status, attempts, max_attempts, created_at, run_at, started_at, completed_at,
    result, error, stack, progress_percent, progress_message, external, pid, process_state,
    last_heartbeat, timeout_ms, node_id, shim_token
FROM jobs;

DROP TABLE jobs;
ALTER TABLE jobs_rebuilt RENAME TO jobs;

-- Claim: waiting jobs in run_at order. Two constants are compared
-- directly, without a temporary table.
CREATE INDEX jobs_waiting ON jobs (run_at, id) WHERE status IN ('pending', 'scheduled');
-- Listing by status and by name, newest first; retention by status.
CREATE INDEX jobs_status_created ON jobs (status, created_at);
CREATE INDEX jobs_name_created ON jobs (name, created_at);
CREATE INDEX jobs_created ON jobs (created_at);
