-- Users, credentials, the audit chain and runtime settings.
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT,              -- argon2id PHC string; NULL: API keys only
    role          TEXT NOT NULL,     -- operator | engineer | admin
    active        INTEGER NOT NULL DEFAULT 1,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,    -- public lookup id
    user_id     TEXT NOT NULL REFERENCES users (id),
    name        TEXT NOT NULL,
    secret_hash TEXT NOT NULL,       -- SHA-256 of the secret (secrets are 256 random bits)
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX api_keys_by_user ON api_keys (user_id);

CREATE TABLE sessions (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id),
    refresh_hash TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    revoked_at   INTEGER
);
CREATE INDEX sessions_by_user ON sessions (user_id);

-- Append-only; each row's hash covers its fields and the previous row's hash.
CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    time      INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    domain    TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    details   TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX audit_by_time ON audit (time);

CREATE TABLE settings (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,        -- JSON; sealed (encrypted) when secret
    secret     INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL,
    updated_by TEXT NOT NULL
);

-- Who started a run (the actor of its audit records).
ALTER TABLE runs ADD COLUMN started_by TEXT;

-- The approvals inbox reads waiting steps only.
CREATE INDEX steps_awaiting_approval ON steps (run_id) WHERE status = 'awaiting_approval';

-- The execution mode a run was started in (its manifest's, or the setting's then), so
-- that a resumed run gates its steps as it did before.
ALTER TABLE runs ADD COLUMN mode TEXT;
