-- The process group of every attempt that is running, so that after a crash the next
-- engine can stop what the dead one left behind before it starts new attempts.
CREATE TABLE processes (
    run_id      TEXT NOT NULL,
    step_id     TEXT NOT NULL,
    item        INTEGER NOT NULL,  -- -1 for a step without foreach
    attempt     INTEGER NOT NULL,
    host        TEXT NOT NULL,
    pgid        INTEGER NOT NULL,
    start_ticks INTEGER NOT NULL,  -- /proc/<pid>/stat start time: guards against pid reuse
    PRIMARY KEY (run_id, step_id, item, attempt)
) WITHOUT ROWID;
