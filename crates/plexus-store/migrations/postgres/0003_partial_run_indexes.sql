-- Most runs have no parent and no idempotency key: only the runs that have one are
-- indexed by it, so that making a run, and each update of its status (which PostgreSQL
-- writes into every index of the row), costs two index entries fewer. Lookups by a
-- parent or a key use the partial indexes as before.
DROP INDEX runs_by_parent;
CREATE INDEX runs_by_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
ALTER TABLE runs DROP CONSTRAINT runs_idempotency_key_key;
CREATE UNIQUE INDEX runs_by_idempotency_key ON runs (idempotency_key) WHERE idempotency_key IS NOT NULL;
