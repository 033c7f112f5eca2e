//! [`AuthStore`] on PostgreSQL. Audit appends take the chain's advisory lock in their
//! transaction (see the writer), so appends from every replica form one chain.

use super::rows::*;
use super::*;
use crate::auth::Millis;
use crate::auth::*;
use plexus_core::audit::{AuditEntry, AuditRecord};
use sqlx::postgres::PgRow;

const USER_COLUMNS: &str = "id, username, password_hash, role, active, created_at, email";
const KEY_COLUMNS: &str = "id, user_id, name, secret_hash, created_at, revoked_at";
const SESSION_COLUMNS: &str =
    "id, user_id, refresh_hash, created_at, expires_at, revoked_at, api_key_id";

/// A user from the seven columns of [`USER_COLUMNS`] starting at `at`.
fn user_at(r: &PgRow, at: usize) -> RowResult<User> {
    Ok(User {
        id: get(r, at)?,
        username: get(r, at + 1)?,
        password_hash: get(r, at + 2)?,
        role: get(r, at + 3)?,
        active: get(r, at + 4)?,
        created_at: count(r, at + 5)?,
        email: get(r, at + 6)?,
    })
}

fn session_from_row(r: &PgRow) -> RowResult<Session> {
    Ok(Session {
        id: get(r, 0)?,
        user_id: get(r, 1)?,
        refresh_hash: get(r, 2)?,
        created_at: count(r, 3)?,
        expires_at: count(r, 4)?,
        revoked_at: count_opt(r, 5)?,
        api_key_id: get(r, 6)?,
    })
}

fn key_from_row(r: &PgRow) -> RowResult<ApiKey> {
    Ok(ApiKey {
        id: get(r, 0)?,
        user_id: get(r, 1)?,
        name: get(r, 2)?,
        secret_hash: get(r, 3)?,
        created_at: count(r, 4)?,
        revoked_at: count_opt(r, 5)?,
    })
}

fn audit_from_row(r: &PgRow) -> RowResult<AuditRecord> {
    Ok(AuditRecord {
        seq: count(r, 0)?,
        time: count(r, 1)?,
        actor: get(r, 2)?,
        domain: get(r, 3)?,
        action: get(r, 4)?,
        target: get(r, 5)?,
        details: get(r, 6)?,
        prev_hash: get(r, 7)?,
        hash: get(r, 8)?,
    })
}

#[async_trait::async_trait]
impl AuthStore for PgStore {
    async fn create_user(&self, user: User) -> Result<()> {
        let user = Arc::new(user);
        self.write(move |conn| {
            let user = Arc::clone(&user);
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO users (id, username, password_hash, role, active, created_at, updated_at, email) \
                     VALUES ($1, $2, $3, $4, $5, $6, $6, $7)",
                )
                .bind(&user.id)
                .bind(&user.username)
                .bind(&user.password_hash)
                .bind(&user.role)
                .bind(user.active)
                .bind(user.created_at as i64)
                .bind(&user.email)
                .execute(&mut *conn)
                .await
                .map_err(|e| match unique_violation(&e).as_deref() {
                    Some("users_by_email_nocase") => StoreError::Conflict(format!(
                        "a user with the email `{}` already exists",
                        user.email.as_deref().unwrap_or_default()
                    )),
                    Some(_) => StoreError::Conflict(format!("user `{}` already exists", user.username)),
                    None => db_err(e),
                })?;
                Ok(())
            })
        })
        .await
    }

    async fn user(&self, id: &str) -> Result<Option<User>> {
        let row = query(format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await
            .map_err(db_err)?;
        row.map(|r| user_at(&r, 0)).transpose()
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<User>> {
        let row = query(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE lower(username) = lower($1) OR lower(email) = lower($1) \
             ORDER BY lower(username) = lower($1) DESC LIMIT 1"
        ))
        .bind(username)
        .fetch_optional(self.pool())
        .await
        .map_err(db_err)?;
        row.map(|r| user_at(&r, 0)).transpose()
    }

    async fn users(&self) -> Result<Vec<User>> {
        let rows = query(format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY username"
        ))
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        all(rows, |r| user_at(r, 0))
    }

    async fn count_users(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(self.pool())
            .await
            .map_err(db_err)?;
        Ok(n as u64)
    }

    async fn update_user(
        &self,
        id: &str,
        role: Option<&str>,
        active: Option<bool>,
        password_hash: Option<&str>,
    ) -> Result<()> {
        let args = Arc::new((
            id.to_owned(),
            role.map(str::to_owned),
            password_hash.map(str::to_owned),
        ));
        self.write(move |conn| {
            let args = Arc::clone(&args);
            Box::pin(async move {
                let (id, role, hash) = &*args;
                let n = sqlx::query(
                    "UPDATE users SET role = COALESCE($2, role), active = COALESCE($3, active), \
                     password_hash = COALESCE($4, password_hash), updated_at = $5 WHERE id = $1",
                )
                .bind(id)
                .bind(role)
                .bind(active)
                .bind(hash)
                .bind(now_ms())
                .execute(&mut *conn)
                .await
                .map_err(db_err)?
                .rows_affected();
                if n == 0 {
                    return Err(StoreError::Conflict(format!("no user with id {id}")));
                }
                Ok(())
            })
        })
        .await
    }

    async fn create_api_key(&self, key: ApiKey) -> Result<()> {
        self.execute(
            "INSERT INTO api_keys (id, user_id, name, secret_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
            vec![
                key.id.as_str().into(),
                key.user_id.as_str().into(),
                key.name.as_str().into(),
                key.secret_hash.as_str().into(),
                (key.created_at as i64).into(),
            ],
        )
        .await?;
        Ok(())
    }

    async fn api_key(&self, id: &str) -> Result<Option<ApiKey>> {
        let row = query(format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await
            .map_err(db_err)?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn api_keys(&self, user_id: Option<&str>) -> Result<Vec<ApiKey>> {
        let rows = query(format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE $1::text IS NULL OR user_id = $1 ORDER BY created_at, id"
        ))
        .bind(user_id)
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        all(rows, key_from_row)
    }

    async fn revoke_api_key(&self, id: &str, at: Millis) -> Result<bool> {
        let id = Arc::<str>::from(id);
        self.write(move |conn| {
            let id = Arc::clone(&id);
            Box::pin(async move {
                let n = sqlx::query(
                    "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                )
                .bind(&*id)
                .bind(at as i64)
                .execute(&mut *conn)
                .await
                .map_err(db_err)?
                .rows_affected();
                sqlx::query(
                    "UPDATE sessions SET revoked_at = $2 WHERE api_key_id = $1 AND revoked_at IS NULL",
                )
                .bind(&*id)
                .bind(at as i64)
                .execute(&mut *conn)
                .await
                .map_err(db_err)?;
                Ok(n > 0)
            })
        })
        .await
    }

    async fn key_with_user(&self, id: &str) -> Result<Option<(ApiKey, User)>> {
        let row = sqlx::query(
            "SELECT k.id, k.user_id, k.name, k.secret_hash, k.created_at, k.revoked_at, \
                    u.id, u.username, u.password_hash, u.role, u.active, u.created_at, u.email \
             FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await
        .map_err(db_err)?;
        row.map(|r| Ok((key_from_row(&r)?, user_at(&r, 6)?)))
            .transpose()
    }

    async fn session_with_user(&self, id: &str) -> Result<Option<(Session, User)>> {
        let row = sqlx::query(
            "SELECT s.id, s.user_id, s.refresh_hash, s.created_at, s.expires_at, s.revoked_at, s.api_key_id, \
                    u.id, u.username, u.password_hash, u.role, u.active, u.created_at, u.email \
             FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await
        .map_err(db_err)?;
        row.map(|r| Ok((session_from_row(&r)?, user_at(&r, 7)?)))
            .transpose()
    }

    async fn create_session(&self, s: Session) -> Result<()> {
        self.execute(
            "INSERT INTO sessions (id, user_id, refresh_hash, created_at, expires_at, api_key_id) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            vec![
                s.id.as_str().into(),
                s.user_id.as_str().into(),
                s.refresh_hash.as_str().into(),
                (s.created_at as i64).into(),
                (s.expires_at as i64).into(),
                s.api_key_id.as_deref().into(),
            ],
        )
        .await?;
        Ok(())
    }

    async fn session(&self, id: &str) -> Result<Option<Session>> {
        let row = query(format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await
        .map_err(db_err)?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn rotate_refresh(&self, id: &str, old_hash: &str, new_hash: &str) -> Result<bool> {
        let n = self
            .execute(
                "UPDATE sessions SET refresh_hash = $3 WHERE id = $1 AND refresh_hash = $2 AND revoked_at IS NULL",
                vec![id.into(), old_hash.into(), new_hash.into()],
            )
            .await?;
        Ok(n > 0)
    }

    async fn revoke_session(&self, id: &str, at: Millis) -> Result<()> {
        self.execute(
            "UPDATE sessions SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            vec![id.into(), (at as i64).into()],
        )
        .await?;
        Ok(())
    }

    async fn revoke_user_sessions(&self, user_id: &str, at: Millis) -> Result<()> {
        self.execute(
            "UPDATE sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
            vec![user_id.into(), (at as i64).into()],
        )
        .await?;
        Ok(())
    }

    async fn append_audit(&self, entry: AuditEntry) -> Result<AuditRecord> {
        let entry = Arc::new(entry);
        let head = self.audit_head.clone();
        self.write_chained(None, true, move |conn| {
            let (entry, head) = (Arc::clone(&entry), head.clone());
            Box::pin(async move {
                let mut records = head.append(conn, std::slice::from_ref(&*entry)).await?;
                Ok(records.remove(0))
            })
        })
        .await
    }

    async fn audit(&self, f: AuditFilter) -> Result<Vec<AuditRecord>> {
        let cols = "seq, time, actor, domain, action, target, details, prev_hash, hash";
        let filter =
            "($1::text IS NULL OR domain = $1) AND ($2::int8 IS NULL OR time >= $2) AND seq > $3";
        let limit = if f.limit == 0 { u32::MAX } else { f.limit } as i64;
        let sql = match f.last {
            Some(n) => format!(
                "SELECT * FROM (SELECT {cols} FROM audit WHERE {filter} ORDER BY seq DESC LIMIT {}) AS newest ORDER BY seq",
                (n as i64).min(limit)
            ),
            None => format!("SELECT {cols} FROM audit WHERE {filter} ORDER BY seq LIMIT {limit}"),
        };
        let rows = query(sql)
            .bind(&f.domain)
            .bind(f.since.map(|t| t as i64))
            .bind(f.after_seq.unwrap_or(0) as i64)
            .fetch_all(self.pool())
            .await
            .map_err(db_err)?;
        all(rows, audit_from_row)
    }

    async fn settings(&self) -> Result<Vec<Setting>> {
        let rows = sqlx::query(
            "SELECT key, value, secret, updated_at, updated_by FROM settings ORDER BY key",
        )
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        all(rows, |r| {
            Ok(Setting {
                key: get(r, 0)?,
                value: get(r, 1)?,
                secret: get(r, 2)?,
                updated_at: count(r, 3)?,
                updated_by: get(r, 4)?,
            })
        })
    }

    async fn put_setting(&self, s: Setting) -> Result<()> {
        self.execute(
            "INSERT INTO settings (key, value, secret, updated_at, updated_by) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, secret = excluded.secret, \
               updated_at = excluded.updated_at, updated_by = excluded.updated_by",
            vec![
                s.key.as_str().into(),
                s.value.as_str().into(),
                s.secret.into(),
                (s.updated_at as i64).into(),
                s.updated_by.as_str().into(),
            ],
        )
        .await?;
        Ok(())
    }

    async fn delete_setting(&self, key: &str) -> Result<bool> {
        let n = self
            .execute("DELETE FROM settings WHERE key = $1", vec![key.into()])
            .await?;
        Ok(n > 0)
    }
}
