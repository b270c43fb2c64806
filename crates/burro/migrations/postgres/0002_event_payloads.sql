-- Events too large for a NOTIFY payload (8000 bytes) travel through this
-- table: the notification carries the row id.
CREATE TABLE event_payloads (
    id         BIGSERIAL PRIMARY KEY,
    payload    TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX event_payloads_created ON event_payloads (created_at);
