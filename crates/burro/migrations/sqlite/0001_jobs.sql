-- Jobs, one row per job; attempts update the row in place.
-- Times are milliseconds since the Unix epoch (UTC).
CREATE TABLE jobs (
    id               TEXT PRIMARY KEY NOT NULL,
    name             TEXT NOT NULL,
    data             TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'scheduled', 'running', 'completed', 'failed', 'cancelled')),
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

-- Claim: waiting jobs in run_at order.
CREATE INDEX jobs_waiting ON jobs (run_at, id) WHERE status IN ('pending', 'scheduled');
-- Listing by status and by name, newest first.
CREATE INDEX jobs_status_created ON jobs (status, created_at);
CREATE INDEX jobs_name_created ON jobs (name, created_at);
CREATE INDEX jobs_created ON jobs (created_at);
