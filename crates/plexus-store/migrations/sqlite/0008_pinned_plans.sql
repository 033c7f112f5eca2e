-- A run keeps the compiled plan it started with (JSON, see Plan::to_stored), so resuming
-- it never recompiles against changed pools, settings or a stricter validator. Runs
-- from before this migration have none and are compiled from their manifest as before.
ALTER TABLE runs ADD COLUMN plan TEXT;
-- The schema version each event was written in: a reader refuses what is newer than it
-- understands instead of misreading it.
ALTER TABLE events ADD COLUMN schema INTEGER NOT NULL DEFAULT 1;
