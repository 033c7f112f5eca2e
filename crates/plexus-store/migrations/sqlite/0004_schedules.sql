-- Cron schedules. `next_fire_at` is claimed with compare-and-set, and every fire starts its
-- run with the idempotency key `schedule:<name>:<tick>`, so a tick fires exactly once
-- across restarts and replicas.
CREATE TABLE schedules (
    name          TEXT PRIMARY KEY,
    workflow      TEXT NOT NULL,
    cron          TEXT NOT NULL,
    inputs        TEXT NOT NULL DEFAULT '{}',
    catch_up      TEXT NOT NULL DEFAULT 'skip',
    paused        INTEGER NOT NULL DEFAULT 0,
    next_fire_at  INTEGER NOT NULL,
    last_fired_at INTEGER,
    from_manifest INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL
) WITHOUT ROWID;
