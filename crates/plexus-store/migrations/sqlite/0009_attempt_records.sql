-- What an executor must find again should its engine die during an attempt (for the
-- local-process executor: the process group to stop). Each executor owns its records'
-- data; the store only keeps them by attempt. Replaces the process-only table.
CREATE TABLE attempt_records (
    run_id   TEXT NOT NULL,
    step_id  TEXT NOT NULL,
    item     INTEGER NOT NULL,  -- -1 for a step without foreach
    attempt  INTEGER NOT NULL,
    executor TEXT NOT NULL,
    data     TEXT NOT NULL,     -- JSON, the executor's own
    PRIMARY KEY (run_id, step_id, item, attempt)
) WITHOUT ROWID;
INSERT INTO attempt_records (run_id, step_id, item, attempt, executor, data)
    SELECT run_id, step_id, item, attempt, 'local',
           json_object('host', host, 'pgid', pgid, 'start_ticks', start_ticks)
    FROM processes;
DROP TABLE processes;
