//! [`AuthStore`] on SQLite. Writes go through the same writer thread (and group commit)
//! as run progress, so audit appends are serialised and the chain cannot fork.

use crate::auth::*;
use crate::sqlite::{Cached, SqliteStore, db_err};
use crate::{Result, StoreError};
use plexus_core::audit::{AuditEntry, AuditRecord};
use rusqlite::{Connection, OptionalExtension, Row, params};

const USER_COLUMNS: &str = "id, username, password_hash, role, active, created_at, email";
const KEY_COLUMNS: &str = "id, user_id, name, secret_hash, created_at, revoked_at";

fn user_from_row(r: &Row) -> rusqlite::Result<User> {
    user_at(r, 0)
}

/// A user from the six columns of [`USER_COLUMNS`] starting at `at`.
fn user_at(r: &Row, at: usize) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(at)?,
        username: r.get(at + 1)?,
        password_hash: r.get(at + 2)?,
        role: r.get(at + 3)?,
        active: r.get::<_, i64>(at + 4)? != 0,
        created_at: r.get::<_, i64>(at + 5)? as u64,
        email: r.get(at + 6)?,
    })
}

fn session_from_row(r: &Row) -> rusqlite::Result<Session> {
    Ok(Session {
        id: r.get(0)?,
        user_id: r.get(1)?,
        refresh_hash: r.get(2)?,
        created_at: r.get::<_, i64>(3)? as u64,
        expires_at: r.get::<_, i64>(4)? as u64,
        revoked_at: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
        api_key_id: r.get(6)?,
    })
}

fn key_from_row(r: &Row) -> rusqlite::Result<ApiKey> {
    Ok(ApiKey {
        id: r.get(0)?,
        user_id: r.get(1)?,
        name: r.get(2)?,
        secret_hash: r.get(3)?,
        created_at: r.get::<_, i64>(4)? as u64,
        revoked_at: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
    })
}

fn audit_from_row(r: &Row) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        seq: r.get::<_, i64>(0)? as u64,
        time: r.get::<_, i64>(1)? as u64,
        actor: r.get(2)?,
        domain: r.get(3)?,
        action: r.get(4)?,
        target: r.get(5)?,
        details: r.get(6)?,
        prev_hash: r.get(7)?,
        hash: r.get(8)?,
    })
}

/// Appends one record after the current head, inside the caller's transaction.
pub(crate) fn append_audit_tx(conn: &Connection, entry: &AuditEntry) -> Result<AuditRecord> {
    let head: Option<(i64, String)> = conn
        .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        .map_err(db_err)?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(db_err)?;
    let record = AuditRecord::chain(entry, head.as_ref().map(|(s, h)| (*s as u64, h.as_str())));
    conn.prepare_cached(
        "INSERT INTO audit (seq, time, actor, domain, action, target, details, prev_hash, hash) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .map_err(db_err)?
    .execute(params![
        record.seq as i64,
        record.time as i64,
        record.actor,
        record.domain,
        record.action,
        record.target,
        record.details,
        record.prev_hash,
        record.hash
    ])
    .map_err(db_err)?;
    Ok(record)
}

#[async_trait::async_trait]
impl AuthStore for SqliteStore {
    async fn create_user(&self, user: User) -> Result<()> {
        self.write(move |conn| {
            conn.execute_cached(
                "INSERT INTO users (id, username, password_hash, role, active, created_at, updated_at, email) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)",
                params![
                    user.id,
                    user.username,
                    user.password_hash,
                    user.role,
                    user.active,
                    user.created_at as i64,
                    user.email
                ],
            )
            .map_err(|e| match db_err(e) {
                StoreError::Db(m) if m.contains("users_by_email") || m.contains("users.email") => {
                    StoreError::Conflict(format!(
                        "a user with the email `{}` already exists",
                        user.email.as_deref().unwrap_or_default()
                    ))
                }
                StoreError::Db(m) if m.contains("UNIQUE") => {
                    StoreError::Conflict(format!("user `{}` already exists", user.username))
                }
                other => other,
            })?;
            Ok(())
        })
        .await
    }

    async fn user(&self, id: &str) -> Result<Option<User>> {
        let id = id.to_owned();
        self.read_point(move |conn| {
            conn.query_row_cached(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"),
                [id],
                user_from_row,
            )
            .optional()
            .map_err(db_err)
        })
        .await
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<User>> {
        let name = username.to_owned();
        self.read(move |conn| {
            conn.query_row_cached(
                &format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE username = ?1 COLLATE NOCASE \
                     OR email = ?1 COLLATE NOCASE ORDER BY username = ?1 COLLATE NOCASE DESC LIMIT 1"
                ),
                [name],
                user_from_row,
            )
            .optional()
            .map_err(db_err)
        })
        .await
    }

    async fn users(&self) -> Result<Vec<User>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {USER_COLUMNS} FROM users ORDER BY username"
                ))
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], user_from_row)
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            Ok(rows)
        })
        .await
    }

    async fn count_users(&self) -> Result<u64> {
        self.read(|conn| {
            conn.query_row_cached("SELECT COUNT(*) FROM users", [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(db_err)
        })
        .await
    }

    async fn update_user(
        &self,
        id: &str,
        role: Option<&str>,
        active: Option<bool>,
        password_hash: Option<&str>,
    ) -> Result<()> {
        let (id, role, hash) = (
            id.to_owned(),
            role.map(str::to_owned),
            password_hash.map(str::to_owned),
        );
        self.write(move |conn| {
            let n = conn
                .execute_cached(
                    "UPDATE users SET role = COALESCE(?2, role), active = COALESCE(?3, active), \
                     password_hash = COALESCE(?4, password_hash), updated_at = ?5 WHERE id = ?1",
                    params![id, role, active, hash, crate::sqlite::now_ms()],
                )
                .map_err(db_err)?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("no user with id {id}")));
            }
            Ok(())
        })
        .await
    }

    async fn create_api_key(&self, key: ApiKey) -> Result<()> {
        self.write(move |conn| {
            conn.execute_cached(
                "INSERT INTO api_keys (id, user_id, name, secret_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![key.id, key.user_id, key.name, key.secret_hash, key.created_at as i64],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn api_key(&self, id: &str) -> Result<Option<ApiKey>> {
        let id = id.to_owned();
        self.read(move |conn| {
            conn.query_row_cached(
                &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1"),
                [id],
                key_from_row,
            )
            .optional()
            .map_err(db_err)
        })
        .await
    }

    async fn api_keys(&self, user_id: Option<&str>) -> Result<Vec<ApiKey>> {
        let user = user_id.map(str::to_owned);
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys WHERE ?1 IS NULL OR user_id = ?1 ORDER BY created_at"
                ))
                .map_err(db_err)?;
            let rows = stmt
                .query_map([user], key_from_row)
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            Ok(rows)
        })
        .await
    }

    async fn revoke_api_key(&self, id: &str, at: Millis) -> Result<bool> {
        let id = id.to_owned();
        self.write(move |conn| {
            let n = conn
                .execute_cached(
                    "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                    params![id, at as i64],
                )
                .map_err(db_err)?;
            conn.execute_cached(
                "UPDATE sessions SET revoked_at = ?2 WHERE api_key_id = ?1 AND revoked_at IS NULL",
                params![id, at as i64],
            )
            .map_err(db_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn key_with_user(&self, id: &str) -> Result<Option<(ApiKey, User)>> {
        let id = id.to_owned();
        self.read_point(move |conn| {
            conn.prepare_cached(
                "SELECT k.id, k.user_id, k.name, k.secret_hash, k.created_at, k.revoked_at, \
                        u.id, u.username, u.password_hash, u.role, u.active, u.created_at, u.email \
                 FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.id = ?1",
            )
            .map_err(db_err)?
            .query_row([id], |r| Ok((key_from_row(r)?, user_at(r, 6)?)))
            .optional()
            .map_err(db_err)
        })
        .await
    }

    async fn session_with_user(&self, id: &str) -> Result<Option<(Session, User)>> {
        let id = id.to_owned();
        self.read_point(move |conn| {
            conn.prepare_cached(
                "SELECT s.id, s.user_id, s.refresh_hash, s.created_at, s.expires_at, s.revoked_at, \
                        s.api_key_id, u.id, u.username, u.password_hash, u.role, u.active, u.created_at, u.email \
                 FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = ?1",
            )
            .map_err(db_err)?
            .query_row([id], |r| Ok((session_from_row(r)?, user_at(r, 7)?)))
            .optional()
            .map_err(db_err)
        })
        .await
    }

    async fn create_session(&self, s: Session) -> Result<()> {
        self.write(move |conn| {
            conn.execute_cached(
                "INSERT INTO sessions (id, user_id, refresh_hash, created_at, expires_at, api_key_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![s.id, s.user_id, s.refresh_hash, s.created_at as i64, s.expires_at as i64, s.api_key_id],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn session(&self, id: &str) -> Result<Option<Session>> {
        let id = id.to_owned();
        self.read(move |conn| {
            conn.query_row_cached(
                "SELECT id, user_id, refresh_hash, created_at, expires_at, revoked_at, api_key_id FROM sessions WHERE id = ?1",
                [id],
                session_from_row,
            )
            .optional()
            .map_err(db_err)
        })
        .await
    }

    async fn rotate_refresh(&self, id: &str, old_hash: &str, new_hash: &str) -> Result<bool> {
        let (id, old, new) = (id.to_owned(), old_hash.to_owned(), new_hash.to_owned());
        self.write(move |conn| {
            let n = conn
                .execute_cached(
                    "UPDATE sessions SET refresh_hash = ?3 WHERE id = ?1 AND refresh_hash = ?2 AND revoked_at IS NULL",
                    params![id, old, new],
                )
                .map_err(db_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn revoke_session(&self, id: &str, at: Millis) -> Result<()> {
        let id = id.to_owned();
        self.write(move |conn| {
            conn.execute_cached(
                "UPDATE sessions SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, at as i64],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn revoke_user_sessions(&self, user_id: &str, at: Millis) -> Result<()> {
        let user = user_id.to_owned();
        self.write(move |conn| {
            conn.execute_cached(
                "UPDATE sessions SET revoked_at = ?2 WHERE user_id = ?1 AND revoked_at IS NULL",
                params![user, at as i64],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn append_audit(&self, entry: AuditEntry) -> Result<AuditRecord> {
        self.write(move |conn| append_audit_tx(conn, &entry)).await
    }

    async fn audit(&self, f: AuditFilter) -> Result<Vec<AuditRecord>> {
        self.read(move |conn| {
            let cols = "seq, time, actor, domain, action, target, details, prev_hash, hash";
            let filter = "(?1 IS NULL OR domain = ?1) AND (?2 IS NULL OR time >= ?2) AND seq > ?3";
            let limit = if f.limit == 0 { u32::MAX } else { f.limit } as i64;
            let sql = match f.last {
                Some(n) => format!(
                    "SELECT * FROM (SELECT {cols} FROM audit WHERE {filter} ORDER BY seq DESC LIMIT {}) ORDER BY seq",
                    (n as i64).min(limit)
                ),
                None => format!("SELECT {cols} FROM audit WHERE {filter} ORDER BY seq LIMIT {limit}"),
            };
            let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
            let rows = stmt
                .query_map(
                    params![
                        f.domain,
                        f.since.map(|t| t as i64),
                        f.after_seq.unwrap_or(0) as i64
                    ],
                    audit_from_row,
                )
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            Ok(rows)
        })
        .await
    }

    async fn settings(&self) -> Result<Vec<Setting>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT key, value, secret, updated_at, updated_by FROM settings ORDER BY key",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(Setting {
                        key: r.get(0)?,
                        value: r.get(1)?,
                        secret: r.get::<_, i64>(2)? != 0,
                        updated_at: r.get::<_, i64>(3)? as u64,
                        updated_by: r.get(4)?,
                    })
                })
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            Ok(rows)
        })
        .await
    }

    async fn put_setting(&self, s: Setting) -> Result<()> {
        self.write(move |conn| {
            conn.execute_cached(
                "INSERT OR REPLACE INTO settings (key, value, secret, updated_at, updated_by) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![s.key, s.value, s.secret, s.updated_at as i64, s.updated_by],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn delete_setting(&self, key: &str) -> Result<bool> {
        let key = key.to_owned();
        self.write(move |conn| {
            let n = conn
                .execute_cached("DELETE FROM settings WHERE key = ?1", [key])
                .map_err(db_err)?;
            Ok(n > 0)
        })
        .await
    }
}
