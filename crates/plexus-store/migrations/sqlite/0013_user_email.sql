-- A user's email, optional: stored as given, unique whatever its case, and accepted
-- wherever a username is (signing in), as the seed engine's users expect.
ALTER TABLE users ADD COLUMN email TEXT;
CREATE UNIQUE INDEX users_by_email_nocase ON users (email COLLATE NOCASE) WHERE email IS NOT NULL;
