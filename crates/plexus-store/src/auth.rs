//! Governance storage: users, API keys, sessions, the audit chain and runtime settings.
//! Credentials are stored hashed; checking them is the server's business, not the store's.

use crate::Result;
use plexus_core::audit::{AuditEntry, AuditRecord};
use serde::Serialize;

pub type Millis = u64;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct User {
    pub id: String,
    pub username: String,
    #[serde(skip)]
    pub password_hash: Option<String>,
    /// `operator`, `engineer` or `admin`.
    pub role: String,
    pub active: bool,
    pub created_at: Millis,
    /// Optional; unique whatever its case, and signs in like the username.
    pub email: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiKey {
    /// The public lookup id (`plxk_...`), printed with the secret once.
    pub id: String,
    pub user_id: String,
    pub name: String,
    #[serde(skip)]
    pub secret_hash: String,
    pub created_at: Millis,
    pub revoked_at: Option<Millis>,
}

/// A login: the access tokens it issues name it, so revoking it ends them at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub id: String,
    pub user_id: String,
    /// SHA-256 of the current refresh token; replaced at each refresh.
    pub refresh_hash: String,
    pub created_at: Millis,
    pub expires_at: Millis,
    pub revoked_at: Option<Millis>,
    /// The API key the session was opened with (`None`: a password): revoking the key
    /// ends the session.
    pub api_key_id: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub domain: Option<String>,
    pub since: Option<Millis>,
    /// Only records after this sequence number (paging, verification).
    pub after_seq: Option<u64>,
    /// Keep the newest `last` records (still returned oldest first).
    pub last: Option<u32>,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Setting {
    pub key: String,
    /// JSON text; for a secret, the sealed value (never shown).
    pub value: String,
    pub secret: bool,
    pub updated_at: Millis,
    pub updated_by: String,
}

#[async_trait::async_trait]
pub trait AuthStore: Send + Sync + 'static {
    /// Fails with `Conflict` when the username is taken.
    async fn create_user(&self, user: User) -> Result<()>;
    async fn user(&self, id: &str) -> Result<Option<User>>;
    /// The user with this username or, failing that, this email (both case-insensitive).
    async fn user_by_name(&self, username: &str) -> Result<Option<User>>;
    async fn users(&self) -> Result<Vec<User>>;
    async fn count_users(&self) -> Result<u64>;
    /// Changes role and/or active flag (and password hash when given).
    async fn update_user(
        &self,
        id: &str,
        role: Option<&str>,
        active: Option<bool>,
        password_hash: Option<&str>,
    ) -> Result<()>;

    async fn create_api_key(&self, key: ApiKey) -> Result<()>;
    async fn api_key(&self, id: &str) -> Result<Option<ApiKey>>;
    /// Keys of one user, or of everyone.
    async fn api_keys(&self, user_id: Option<&str>) -> Result<Vec<ApiKey>>;
    /// Returns false when there was no such live key.
    /// Revokes a key and, in the same write, every session opened with it.
    async fn revoke_api_key(&self, id: &str, at: Millis) -> Result<bool>;

    /// A key and its user in one read (every API-key request asks this).
    async fn key_with_user(&self, id: &str) -> Result<Option<(ApiKey, User)>>;
    /// A session and its user in one read (every token request asks this).
    async fn session_with_user(&self, id: &str) -> Result<Option<(Session, User)>>;

    async fn create_session(&self, session: Session) -> Result<()>;
    async fn session(&self, id: &str) -> Result<Option<Session>>;
    /// Swaps the refresh hash if it is still `old_hash` (a refresh token works once).
    async fn rotate_refresh(&self, id: &str, old_hash: &str, new_hash: &str) -> Result<bool>;
    async fn revoke_session(&self, id: &str, at: Millis) -> Result<()>;
    async fn revoke_user_sessions(&self, user_id: &str, at: Millis) -> Result<()>;

    /// Appends to the hash chain, atomically with respect to other appends.
    async fn append_audit(&self, entry: AuditEntry) -> Result<AuditRecord>;
    async fn audit(&self, filter: AuditFilter) -> Result<Vec<AuditRecord>>;

    async fn settings(&self) -> Result<Vec<Setting>>;
    async fn put_setting(&self, setting: Setting) -> Result<()>;
    async fn delete_setting(&self, key: &str) -> Result<bool>;
}
