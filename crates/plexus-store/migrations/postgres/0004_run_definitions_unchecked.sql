-- A run's definition is written by the statement that makes the run, and only when the
-- run row was inserted, so it always has its run; runs are never deleted one by one.
-- The foreign key only checked that again, with a lookup of `runs` per new run (a third
-- of the cost of making a run).
ALTER TABLE run_definitions DROP CONSTRAINT run_definitions_run_id_fkey;
