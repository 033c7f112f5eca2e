-- Event triggers: which workflows start on which event types (from manifests' `on:`),
-- received events (deduplicated by key), and dead letters: events and signals that
-- reached nothing, kept rather than dropped.
CREATE TABLE triggers (
    event_type TEXT NOT NULL,
    workflow   TEXT NOT NULL,
    PRIMARY KEY (event_type, workflow)
) WITHOUT ROWID;

CREATE TABLE received_events (
    id          TEXT PRIMARY KEY,
    type        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    dedupe_key  TEXT UNIQUE,
    received_at INTEGER NOT NULL,
    runs        TEXT NOT NULL DEFAULT '[]'
) WITHOUT ROWID;

CREATE TABLE dead_letters (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL,
    target     TEXT NOT NULL,
    payload    TEXT NOT NULL,
    reason     TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
