-- What a run runs, kept apart from its `runs` row: the manifest text and the compiled
-- plan it started with (JSON, see Plan::to_stored), so resuming it never recompiles
-- against changed pools, settings or a stricter validator. For a large workflow both are
-- megabytes, written once and read on resume, while the `runs` row is rewritten by every
-- commit of the run: in the row they made each commit rewrite megabytes.
CREATE TABLE run_definitions (
    run_id   TEXT PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
    manifest TEXT NOT NULL,
    -- NULL for runs from before plans were kept: they are compiled from their manifest.
    plan     TEXT
);
INSERT INTO run_definitions (run_id, manifest, plan) SELECT id, manifest, NULL FROM runs;
UPDATE runs SET manifest = '';
-- The schema version each event was written in: a reader refuses what is newer than it
-- understands instead of misreading it.
ALTER TABLE events ADD COLUMN schema INTEGER NOT NULL DEFAULT 1;
