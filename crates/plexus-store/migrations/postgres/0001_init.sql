-- The whole store on PostgreSQL, as SQLite's migrations 1-14 left it (see
-- migrations/sqlite/ for why each part exists). Times are milliseconds since the epoch;
-- JSON is kept as the text it was written as. Keys that are listed in order or matched
-- by prefix (run ids, names) compare byte by byte (`COLLATE "C"`), as in SQLite, whatever
-- the database's own collation.

-- Runs, their steps and their event log. The event log is the truth; `runs` and `steps`
-- are materialised from it in the same transaction.
CREATE TABLE runs (
    id               TEXT COLLATE "C" PRIMARY KEY,
    workflow         TEXT NOT NULL,
    status           TEXT NOT NULL,
    base_dir         TEXT,
    inputs           TEXT NOT NULL,
    outputs          TEXT,
    error            TEXT,
    parent_run_id    TEXT COLLATE "C",
    parent_step_id   TEXT,
    parent_item      BIGINT,
    parent_attempt   BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    finished_at      BIGINT,
    -- The engine driving the run, until when, and the fencing token: every claim raises
    -- it, and a commit that names an older one is refused in its own transaction.
    owner            TEXT,
    lease_until      BIGINT,
    fence            BIGINT NOT NULL DEFAULT 0,
    last_seq         BIGINT NOT NULL DEFAULT 0,
    idempotency_key  TEXT UNIQUE,
    workflow_version BIGINT,
    started_by       TEXT,
    mode             TEXT,
    responsible      TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX runs_by_created ON runs (created_at, id);
CREATE INDEX runs_by_status ON runs (status);
CREATE INDEX runs_by_parent ON runs (parent_run_id);
CREATE INDEX runs_by_owner ON runs (owner) WHERE owner IS NOT NULL;

CREATE TABLE run_definitions (
    run_id   TEXT COLLATE "C" PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    manifest TEXT NOT NULL,
    plan     TEXT
);

CREATE TABLE steps (
    run_id      TEXT COLLATE "C" NOT NULL,
    step_id     TEXT NOT NULL,
    position    BIGINT NOT NULL,
    status      TEXT NOT NULL,
    attempt     BIGINT NOT NULL DEFAULT 0,
    started_at  BIGINT,
    finished_at BIGINT,
    output      TEXT,
    error       TEXT,
    PRIMARY KEY (run_id, step_id)
);
CREATE INDEX steps_awaiting_approval ON steps (run_id) WHERE status = 'awaiting_approval';

CREATE TABLE events (
    run_id  TEXT COLLATE "C" NOT NULL,
    seq     BIGINT NOT NULL,
    time    BIGINT NOT NULL,
    type    TEXT NOT NULL,
    step_id TEXT,
    attempt BIGINT,
    data    TEXT NOT NULL,
    schema  INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (run_id, seq)
);

-- Control requests; the engine that owns the run applies each one exactly once, in the
-- same transaction as its events. A new one is announced on the `plexus_commands`
-- channel (LISTEN/NOTIFY), so owners on other replicas wake at once.
CREATE TABLE commands (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      TEXT COLLATE "C" NOT NULL,
    kind        TEXT NOT NULL,
    step_id     TEXT,
    data        TEXT,
    actor       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    consumed_at BIGINT,
    result      TEXT
);
CREATE INDEX commands_pending ON commands (run_id) WHERE consumed_at IS NULL;

CREATE TABLE artifacts (
    sha256     TEXT NOT NULL,
    run_id     TEXT COLLATE "C" NOT NULL,
    step_id    TEXT COLLATE "C" NOT NULL,
    attempt    BIGINT NOT NULL,
    name       TEXT COLLATE "C" NOT NULL,
    size       BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, step_id, attempt, name)
);

CREATE TABLE attempt_records (
    run_id   TEXT COLLATE "C" NOT NULL,
    step_id  TEXT NOT NULL,
    item     BIGINT NOT NULL,  -- -1 for a step without foreach
    attempt  BIGINT NOT NULL,
    executor TEXT NOT NULL,
    data     TEXT NOT NULL,
    PRIMARY KEY (run_id, step_id, item, attempt)
);

CREATE TABLE step_logs (
    run_id    TEXT COLLATE "C" NOT NULL,
    step_id   TEXT NOT NULL,
    item      BIGINT NOT NULL,  -- -1 for a step without foreach
    attempt   BIGINT NOT NULL,
    stdout    TEXT NOT NULL,
    stderr    TEXT NOT NULL,
    exit_code INTEGER,
    PRIMARY KEY (run_id, step_id, item, attempt)
);

CREATE TABLE workflows (
    name       TEXT COLLATE "C" NOT NULL,
    version    BIGINT NOT NULL,
    manifest   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    deleted_at BIGINT,
    applied_by TEXT,
    PRIMARY KEY (name, version)
);

CREATE TABLE schedules (
    name          TEXT COLLATE "C" PRIMARY KEY,
    workflow      TEXT NOT NULL,
    cron          TEXT NOT NULL,
    inputs        TEXT NOT NULL DEFAULT '{}',
    catch_up      TEXT NOT NULL DEFAULT 'skip',
    paused        BOOLEAN NOT NULL DEFAULT FALSE,
    next_fire_at  BIGINT NOT NULL,
    last_fired_at BIGINT,
    from_manifest BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    BIGINT NOT NULL,
    changed_by    TEXT
);

CREATE TABLE triggers (
    event_type TEXT COLLATE "C" NOT NULL,
    workflow   TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (event_type, workflow)
);

CREATE TABLE received_events (
    id          TEXT PRIMARY KEY,
    type        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    dedupe_key  TEXT UNIQUE,
    received_at BIGINT NOT NULL,
    runs        TEXT NOT NULL DEFAULT '[]'
);

CREATE TABLE dead_letters (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind       TEXT NOT NULL,
    target     TEXT NOT NULL,
    payload    TEXT NOT NULL,
    reason     TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Users, credentials, the audit chain and runtime settings. Usernames and emails are
-- unique whatever their case.
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT COLLATE "C" NOT NULL UNIQUE,
    password_hash TEXT,
    role          TEXT NOT NULL,
    active        BOOLEAN NOT NULL DEFAULT TRUE,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    email         TEXT
);
CREATE UNIQUE INDEX users_by_name_nocase ON users (lower(username));
CREATE UNIQUE INDEX users_by_email_nocase ON users (lower(email)) WHERE email IS NOT NULL;

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users (id),
    name        TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX api_keys_by_user ON api_keys (user_id);

CREATE TABLE sessions (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id),
    refresh_hash TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    revoked_at   BIGINT,
    api_key_id   TEXT
);
CREATE INDEX sessions_by_user ON sessions (user_id);
CREATE INDEX sessions_by_key ON sessions (api_key_id) WHERE api_key_id IS NOT NULL;

-- Append-only; each row's hash covers its fields and the previous row's hash. Appends
-- from every replica are serialised by a transaction-level advisory lock.
CREATE TABLE audit (
    seq       BIGINT PRIMARY KEY,
    time      BIGINT NOT NULL,
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
    key        TEXT COLLATE "C" PRIMARY KEY,
    value      TEXT NOT NULL,
    secret     BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL
);

CREATE TABLE llm_usage (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time              BIGINT NOT NULL,
    actor             TEXT,
    api_key           TEXT,
    run_id            TEXT,
    step_id           TEXT,
    source            TEXT NOT NULL,
    provider          TEXT NOT NULL,
    model             TEXT NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cost_usd          DOUBLE PRECISION NOT NULL
);
CREATE INDEX llm_usage_time ON llm_usage (time);
CREATE INDEX llm_usage_run ON llm_usage (run_id);
CREATE INDEX llm_usage_actor ON llm_usage (actor, time);
