//! Who is calling, and may they. Every request passes [`guard`]: it finds the route's
//! [`Access`] in [`crate::ROUTES`], resolves the caller from `Authorization: Bearer ...`
//! (an access token or an API key), and answers 401/403 before the handler runs.
//! Credentials are checked against the store on every request, so a revoked key, a
//! logged-out session or a deactivated user stops working at once.

pub mod bootstrap;
pub mod credentials;
pub mod keyfile;
pub mod limits;
pub mod role;
pub mod sealing;
pub mod tokens;

pub use role::{Access, Role, approver_role};

use crate::{ApiError, AppState, now_ms};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use credentials::{API_KEY_PREFIX, same, sha256_hex, split_secret};
use plexus_core::audit::{AuditEntry, Domain};
use plexus_store::Store;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

/// Access tokens live this long; refresh tokens (the session) much longer.
pub const ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
pub const SESSION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Keys and limits of the API's authentication.
pub struct Auth {
    pub keyring: tokens::Keyring,
    pub sealer: sealing::Sealer,
    pub limiter: limits::LoginLimiter,
    pub refusals: limits::RefusalLog,
    /// Settings as last read, for at most [`SETTINGS_TTL`]: every run start reads
    /// `execution_mode`, and a change made here clears it at once.
    pub settings_cache:
        std::sync::Mutex<Option<(std::time::Instant, Vec<plexus_store::auth::Setting>)>>,
    /// Bumped when a credential may have stopped working here (a key revoked, a user
    /// changed, a session ended): long-lived connections check theirs again at once.
    /// Changes made on another replica are seen by the periodic check
    /// ([`RECHECK_EVERY`]).
    pub credentials: tokio::sync::watch::Sender<u64>,
    /// API keys found in the store, with their users, so a script's every request does
    /// not read them again: an entry serves while no credential changed in this process
    /// since it was read (`credentials`) and for [`KEY_CACHE_TTL`] at most (changes made
    /// on another replica). The secret is still checked against the hash each time.
    key_cache: std::sync::Mutex<std::collections::HashMap<String, CachedKey>>,
}

struct CachedKey {
    generation: u64,
    read_at: std::time::Instant,
    found: (plexus_store::auth::ApiKey, plexus_store::auth::User),
}

/// How long a key read from the store is trusted without reading it again.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(1);

/// Entries kept at most; beyond, the cache starts again (ids are not guessable, but a
/// flood of real ones must not grow memory).
const KEY_CACHE_MAX: usize = 10_000;

/// How often a long-lived connection (a WebSocket) checks that its credential still
/// works, for changes this process was not told about.
pub const RECHECK_EVERY: Duration = Duration::from_secs(5);

/// How stale a replica's view of settings changed on another replica may be.
pub const SETTINGS_TTL: Duration = Duration::from_secs(1);

impl Auth {
    /// Loads (or creates, on first start) the token keys and the secrets key in `key_dir`.
    pub fn open(key_dir: &Path) -> Result<Auth, keyfile::KeyFileError> {
        let env_key = std::env::var("PLEXUS_SECRETS_KEY").ok();
        Ok(Auth {
            keyring: tokens::Keyring::load_or_create(&key_dir.join("token-keys.json"), now_ms())?,
            sealer: sealing::Sealer::load_or_create(
                &key_dir.join("secrets.key"),
                env_key.as_deref(),
            )?,
            limiter: limits::LoginLimiter::default(),
            refusals: limits::RefusalLog::default(),
            settings_cache: Default::default(),
            credentials: tokio::sync::watch::Sender::new(0),
            key_cache: Default::default(),
        })
    }

    fn cached_key(
        &self,
        id: &str,
    ) -> Option<(plexus_store::auth::ApiKey, plexus_store::auth::User)> {
        let generation = *self.credentials.borrow();
        let cache = self.key_cache.lock().ok()?;
        let entry = cache.get(id)?;
        (entry.generation == generation && entry.read_at.elapsed() < KEY_CACHE_TTL)
            .then(|| entry.found.clone())
    }

    /// Keeps what the store said about a key, as of `generation` (read before the store
    /// was, so a change that raced the read makes the entry stale at once).
    fn cache_key(
        &self,
        generation: u64,
        found: (plexus_store::auth::ApiKey, plexus_store::auth::User),
    ) {
        if let Ok(mut cache) = self.key_cache.lock() {
            if cache.len() >= KEY_CACHE_MAX {
                cache.clear();
            }
            let entry = CachedKey {
                generation,
                read_at: std::time::Instant::now(),
                found,
            };
            cache.insert(entry.found.0.id.clone(), entry);
        }
    }

    pub fn credentials_changed(&self) {
        self.credentials.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// How the caller proved who they are.
#[derive(Debug, Clone, PartialEq)]
pub enum Via {
    Session(String),
    ApiKey(String),
}

/// The signed-in user a request acts for.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: String,
    pub username: String,
    pub role: Role,
    pub via: Via,
}

impl Caller {
    /// How audit records and run events name this caller.
    pub fn actor(&self) -> String {
        format!("user:{}", self.username)
    }
}

/// A credential that does not let anyone in.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused(pub String);

/// Why a credential let nobody in: it is not good, or the store could not tell.
#[derive(Debug, Clone)]
pub enum AuthFailure {
    Refused(Refused),
    /// Not the caller's fault: the request fails as unavailable, and is not counted
    /// against the credential.
    Store(plexus_store::StoreError),
}

/// Finds the user behind a bearer credential, or refuses it.
pub async fn authenticate(state: &AppState, bearer: &str) -> Result<Caller, Refused> {
    authenticate_or_fail(state, bearer)
        .await
        .map_err(|f| match f {
            AuthFailure::Refused(r) => r,
            AuthFailure::Store(e) => Refused(e.to_string()),
        })
}

/// Finds the user behind a bearer credential (one store read).
pub async fn authenticate_or_fail(state: &AppState, bearer: &str) -> Result<Caller, AuthFailure> {
    let refused = |m: &str| AuthFailure::Refused(Refused(m.to_owned()));
    let store = &state.store;
    let (user, via) = if bearer.starts_with(API_KEY_PREFIX) {
        let (id, secret) =
            split_secret(bearer, API_KEY_PREFIX).ok_or_else(|| refused("malformed API key"))?;
        let found = match state.auth.cached_key(id) {
            Some(found) => Some(found),
            None => {
                let generation = *state.auth.credentials.borrow();
                let found = store.key_with_user(id).await.map_err(AuthFailure::Store)?;
                if let Some(found) = &found {
                    state.auth.cache_key(generation, found.clone());
                }
                found
            }
        };
        // Compare even for an unknown id, so timing says nothing about which ids exist.
        let expected = found.as_ref().map_or("", |(k, _)| k.secret_hash.as_str());
        let matches = same(&sha256_hex(secret), expected);
        match found {
            Some((k, user)) if matches && k.revoked_at.is_none() => (user, Via::ApiKey(k.id)),
            Some((k, _)) if matches => {
                return Err(refused(&format!("API key {} was revoked", k.id)));
            }
            _ => return Err(refused("unknown API key")),
        }
    } else {
        let claims = state
            .auth
            .keyring
            .verify(bearer, now_ms())
            .map_err(|e| AuthFailure::Refused(Refused(e.to_string())))?;
        let (session, user) = store
            .session_with_user(&claims.sid)
            .await
            .map_err(AuthFailure::Store)?
            .ok_or_else(|| refused("the session of this token does not exist"))?;
        if session.revoked_at.is_some() {
            return Err(refused("the session of this token was ended (logged out)"));
        }
        if session.user_id != claims.sub {
            return Err(refused("the token does not match its session"));
        }
        (user, Via::Session(claims.sid))
    };
    if !user.active {
        return Err(refused(&format!("user `{}` is deactivated", user.username)));
    }
    let role = Role::parse(&user.role).ok_or_else(|| refused("the user has an unknown role"))?;
    Ok(Caller {
        user_id: user.id,
        username: user.username,
        role,
        via,
    })
}

/// Whether a caller authenticated earlier (a WebSocket opened minutes ago) still may act
/// as they did: the key or session not revoked, the user active and of the same role.
pub async fn still_valid(state: &AppState, caller: &Caller) -> Result<(), Refused> {
    let store = &state.store;
    let failed = |e: plexus_store::StoreError| Refused(e.to_string());
    let user = match &caller.via {
        Via::ApiKey(id) => {
            let (key, user) = store
                .key_with_user(id)
                .await
                .map_err(failed)?
                .ok_or_else(|| Refused(format!("API key {id} no longer exists")))?;
            if key.revoked_at.is_some() {
                return Err(Refused(format!("API key {id} was revoked")));
            }
            user
        }
        Via::Session(sid) => {
            let (session, user) = store
                .session_with_user(sid)
                .await
                .map_err(failed)?
                .ok_or_else(|| Refused("the session no longer exists".into()))?;
            if session.revoked_at.is_some() {
                return Err(Refused("the session was ended".into()));
            }
            user
        }
    };
    if !user.active {
        return Err(Refused(format!("user `{}` was deactivated", user.username)));
    }
    if Role::parse(&user.role) != Some(caller.role) {
        return Err(Refused(format!(
            "the role of `{}` changed; connect again",
            user.username
        )));
    }
    Ok(())
}

/// Appends a security record; a failure to write it is logged, never silently dropped.
pub async fn audit(
    store: &dyn Store,
    actor: &str,
    action: &str,
    target: &str,
    details: serde_json::Value,
) {
    let entry = AuditEntry {
        time: now_ms(),
        actor: actor.to_owned(),
        domain: Domain::Security,
        action: action.to_owned(),
        target: target.to_owned(),
        details: details.to_string(),
    };
    if let Err(e) = store.append_audit(entry).await {
        tracing::error!(action, target, error = %e, "could not write an audit record");
    }
}

/// How often refusals counted but not audited yet are written (see
/// [`limits::RefusalLog`]).
pub const REFUSALS_WINDOW: Duration = Duration::from_secs(60);

/// Audits the refusals counted in windows older than `age` (zero: all of them), one
/// record per address and reason with the count.
pub async fn flush_refusals(state: &AppState, age: Duration) {
    for (address, reason, count) in state.auth.refusals.drain(age) {
        audit(
            state.store.as_ref(),
            "anonymous",
            "credential.refused",
            "(repeated)",
            json!({"reason": reason, "address": address, "count": count}),
        )
        .await;
    }
}

/// Flushes refusal counts every few seconds until `stop` changes, then all of them.
pub async fn run_refusal_flusher(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => flush_refusals(&state, REFUSALS_WINDOW).await,
            _ = stop.changed() => break,
        }
    }
    flush_refusals(&state, Duration::ZERO).await;
}

/// The access rule for a method on a route the request matched. The framework answers
/// methods the table does not list (HEAD on every GET route runs the GET handler), so
/// HEAD takes GET's rule, and any other unlisted method on a known path takes the
/// strictest rule of that path: nothing reaches a handler without a rule.
fn route_access(method: &str, path: &str) -> Access {
    let method = if method.eq_ignore_ascii_case("HEAD") {
        "GET"
    } else {
        method
    };
    let on_path = crate::ROUTES.iter().filter(|r| r.path == path);
    match on_path
        .clone()
        .find(|r| r.method.eq_ignore_ascii_case(method))
    {
        Some(r) => r.access,
        None => on_path
            .map(|r| r.access)
            .max_by_key(|a| a.strictness())
            .unwrap_or(Access::Role(Role::Admin)),
    }
}

/// The bearer credential of a request: the `Authorization` header, or for the WebSocket
/// only (browsers cannot set headers on it) an `access_token` query parameter.
fn bearer(req: &Request) -> Result<Option<String>, Refused> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        let v = v
            .to_str()
            .map_err(|_| Refused("the Authorization header is not text".into()))?;
        let token = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .ok_or_else(|| Refused("use `Authorization: Bearer <token or API key>`".into()))?;
        return Ok(Some(token.trim().to_owned()));
    }
    if req.uri().path() == "/ws" {
        let token = req
            .uri()
            .query()
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|kv| kv.strip_prefix("access_token="));
        return Ok(token.map(str::to_owned));
    }
    Ok(None)
}

fn unauthenticated(message: String) -> Response {
    let mut res =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message).into_response();
    res.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    res
}

/// The middleware in front of every route.
pub async fn guard(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let matched = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let Some(path) = matched.as_deref() else {
        return next.run(req).await; // no route: the fallback answers 404
    };
    let access = route_access(req.method().as_str(), path);
    let caller = match bearer(&req) {
        Err(Refused(m)) => return unauthenticated(m),
        Ok(None) => None,
        Ok(Some(token)) => match authenticate_or_fail(&state, &token).await {
            Ok(c) => Some(c),
            // Public routes (the health probe among them) answer without a caller;
            // others cannot be served without knowing who asks.
            Err(AuthFailure::Store(_)) if access == Access::Public => None,
            Err(AuthFailure::Store(e)) => return ApiError::from(e).into_response(),
            Err(AuthFailure::Refused(Refused(m))) => {
                let address = req
                    .extensions()
                    .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                    .map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string());
                if state.auth.refusals.note(&address, &m) {
                    audit(
                        state.store.as_ref(),
                        "anonymous",
                        "credential.refused",
                        req.uri().path(),
                        json!({"reason": m, "address": address, "count": 1}),
                    )
                    .await;
                }
                return unauthenticated(m);
            }
        },
    };
    if !access.allows(caller.as_ref().map(|c| c.role)) {
        let Some(c) = caller else {
            return unauthenticated(format!(
                "sign in first: this route needs {}",
                access.describe()
            ));
        };
        let route = format!("{} {}", req.method(), matched.unwrap_or_default());
        audit(
            state.store.as_ref(),
            &c.actor(),
            "permission.denied",
            &route,
            json!({"role": c.role.as_str(), "needs": access.describe()}),
        )
        .await;
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{route} needs {}; user `{}` has the {} role",
                access.describe(),
                c.username,
                c.role.as_str()
            ),
        )
        .into_response();
    }
    if let Some(c) = caller {
        req.extensions_mut().insert(c);
    }
    next.run(req).await
}

/// Headers every response carries: no sniffing, no framing, no caching of API answers,
/// no referrer. CORS stays closed: no `Access-Control-Allow-Origin` is ever sent.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
        (
            "content-security-policy",
            "default-src 'none'; frame-ancestors 'none'",
        ),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    res
}
