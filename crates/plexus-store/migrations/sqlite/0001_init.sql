-- Runs, their steps and their event log. The event log is the truth; `runs` and `steps`
-- are materialised from it in the same transaction.
CREATE TABLE runs (
    id              TEXT PRIMARY KEY,
    workflow        TEXT NOT NULL,
    status          TEXT NOT NULL,
    manifest        TEXT NOT NULL,
    base_dir        TEXT,
    inputs          TEXT NOT NULL,
    outputs         TEXT,
    error           TEXT,
    parent_run_id   TEXT,
    parent_step_id  TEXT,
    parent_item     INTEGER,
    parent_attempt  INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    finished_at     INTEGER,
    owner           TEXT,
    lease_until     INTEGER,
    fence           INTEGER NOT NULL DEFAULT 0,
    last_seq        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX runs_by_created ON runs (created_at);
CREATE INDEX runs_by_status ON runs (status);
CREATE INDEX runs_by_parent ON runs (parent_run_id);

CREATE TABLE steps (
    run_id      TEXT NOT NULL,
    step_id     TEXT NOT NULL,
    position    INTEGER NOT NULL,
    status      TEXT NOT NULL,
    attempt     INTEGER NOT NULL DEFAULT 0,
    started_at  INTEGER,
    finished_at INTEGER,
    output      TEXT,
    error       TEXT,
    PRIMARY KEY (run_id, step_id)
) WITHOUT ROWID;

CREATE TABLE events (
    run_id  TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    time    INTEGER NOT NULL,
    type    TEXT NOT NULL,
    step_id TEXT,
    attempt INTEGER,
    data    TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;

-- Control requests (signal, approve, reject, cancel) from other processes; the engine
-- that owns the run applies each one exactly once, in the same transaction as its events.
CREATE TABLE commands (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    step_id     TEXT,
    data        TEXT,
    actor       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    consumed_at INTEGER,
    result      TEXT
);
CREATE INDEX commands_pending ON commands (run_id) WHERE consumed_at IS NULL;

CREATE TABLE artifacts (
    sha256     TEXT NOT NULL,
    run_id     TEXT NOT NULL,
    step_id    TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    name       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, step_id, attempt, name)
) WITHOUT ROWID;
