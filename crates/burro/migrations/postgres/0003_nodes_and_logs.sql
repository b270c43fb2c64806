-- One row per server node. expires_at and healthy_since are judged by the
-- database clock only. generation changes when other nodes rescue the
-- node's running jobs; fenced stays true until the node takes its lease
-- again, so a node that comes back learns that it lost its jobs.
CREATE TABLE nodes (
    id            TEXT PRIMARY KEY NOT NULL,
    generation    BIGINT NOT NULL DEFAULT 1,
    expires_at    TIMESTAMPTZ NOT NULL,
    healthy_since TIMESTAMPTZ NOT NULL,
    fenced        BOOLEAN NOT NULL DEFAULT FALSE,
    started_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    renewed_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The newest lines of each job's log, so any node can serve them. Each line
-- is the NDJSON text of one log entry.
CREATE TABLE job_logs (
    job_id TEXT NOT NULL,
    seq    BIGSERIAL NOT NULL,
    entry  TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
