-- The `plexus serve` replicas that share the database, each with its last heartbeat (the
-- runs each drives are the runs naming it as owner).
CREATE TABLE replicas (
    id           TEXT COLLATE "C" PRIMARY KEY,
    host         TEXT NOT NULL,
    address      TEXT NOT NULL,
    version      TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);

-- Runs that may need an owner are found among the unfinished ones only.
CREATE INDEX runs_unfinished ON runs (created_at) WHERE status NOT IN ('succeeded', 'failed', 'cancelled');
