-- stdout and stderr of attempts whose output replaced them (a step that wrote JSON to
-- $PLEXUS_OUTPUT): kept so that the step's logs can still be read. Attempts whose output
-- holds `stdout`/`stderr` have no row here.
CREATE TABLE step_logs (
    run_id    TEXT NOT NULL,
    step_id   TEXT NOT NULL,
    item      INTEGER NOT NULL,  -- -1 for a step without foreach
    attempt   INTEGER NOT NULL,
    stdout    TEXT NOT NULL,
    stderr    TEXT NOT NULL,
    exit_code INTEGER,
    PRIMARY KEY (run_id, step_id, item, attempt)
) WITHOUT ROWID;
