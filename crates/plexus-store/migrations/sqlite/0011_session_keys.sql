-- The API key a session was opened with: revoking the key ends the session too.
ALTER TABLE sessions ADD COLUMN api_key_id TEXT;
CREATE INDEX sessions_by_key ON sessions (api_key_id) WHERE api_key_id IS NOT NULL;
