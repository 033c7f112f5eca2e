-- The `plexus serve` processes that share the store, each with its last heartbeat (the
-- runs each drives are the runs naming it as owner).
CREATE TABLE replicas (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    address      TEXT NOT NULL,
    version      TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);
CREATE INDEX runs_by_owner ON runs (owner) WHERE owner IS NOT NULL;
