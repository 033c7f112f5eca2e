-- Versioned workflow definitions applied through the API, and idempotent run starts.
CREATE TABLE workflows (
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    manifest   TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    deleted_at INTEGER,
    PRIMARY KEY (name, version)
) WITHOUT ROWID;

ALTER TABLE runs ADD COLUMN idempotency_key TEXT;
ALTER TABLE runs ADD COLUMN workflow_version INTEGER;
CREATE UNIQUE INDEX runs_by_idempotency_key ON runs (idempotency_key) WHERE idempotency_key IS NOT NULL;
