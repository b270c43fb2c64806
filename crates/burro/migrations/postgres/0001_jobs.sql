-- Jobs, one row per job; attempts update the row in place.
-- Times are milliseconds since the Unix epoch (UTC). data and result are
-- JSON text, stored exactly as given.
CREATE TABLE jobs (
    id               TEXT PRIMARY KEY NOT NULL,
    name             TEXT NOT NULL,
    data             TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'scheduled', 'running', 'completed', 'failed', 'cancelled')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    created_at       BIGINT NOT NULL,
    run_at           BIGINT NOT NULL,
    started_at       BIGINT,
    completed_at     BIGINT,
    result           TEXT,
    error            TEXT,
    stack            TEXT,
    progress_percent DOUBLE PRECISION,
    progress_message TEXT,
    external         BOOLEAN NOT NULL DEFAULT FALSE,
    pid              BIGINT,
    process_state    TEXT,
    last_heartbeat   BIGINT,
    timeout_ms       BIGINT,
    node_id          TEXT,
    shim_token       TEXT
);

-- Claim: waiting jobs in run_at order.
CREATE INDEX jobs_waiting ON jobs (run_at, id) WHERE status IN ('pending', 'scheduled');
-- Listing by status and by name, newest first.
CREATE INDEX jobs_status_created ON jobs (status, created_at DESC, id DESC);
CREATE INDEX jobs_name_created ON jobs (name, created_at DESC, id DESC);
CREATE INDEX jobs_created ON jobs (created_at DESC, id DESC);
-- Running jobs of a node, and retention by end time.
CREATE INDEX jobs_running_node ON jobs (node_id) WHERE status = 'running';
CREATE INDEX jobs_finished ON jobs (status, completed_at) WHERE status IN ('completed', 'failed', 'cancelled');
