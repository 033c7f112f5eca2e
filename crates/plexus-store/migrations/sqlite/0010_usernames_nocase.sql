-- Usernames are unique whatever their case (`ADMIN` is `admin`), so nobody can sign up as
-- a look-alike of an existing user; lookups use the same collation and this index.
CREATE UNIQUE INDEX users_by_name_nocase ON users (username COLLATE NOCASE);
