//! Sessions (`/api/v1/auth/...`), users (`/api/v1/users`) and API keys (`/api/v1/api-keys`).

use crate::auth::bootstrap::create_api_key;
use crate::auth::credentials::{
    API_KEY_PREFIX, REFRESH_PREFIX, burn_password_time, check_password_strength, hash_password,
    random_id, random_token, same, sha256_hex, split_secret, verify_password,
};
use crate::auth::tokens::Claims;
use crate::auth::{ACCESS_TTL, Caller, Role, SESSION_TTL, Via, audit, authenticate};
use crate::body;
use crate::error::{ApiError, ApiResult};
use crate::{AppState, now_ms};
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use plexus_store::auth::{Session, User};
use serde::Deserialize;
use serde_json::{Value as Json_, json};
use std::net::SocketAddr;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    username: Option<String>,
    password: Option<String>,
    api_key: Option<String>,
}

fn client_address(info: &Option<Extension<ConnectInfo<SocketAddr>>>) -> String {
    info.as_ref().map_or_else(
        || "unknown".into(),
        |Extension(ConnectInfo(a))| a.ip().to_string(),
    )
}

fn too_many(wait_secs: u64) -> Response {
    let mut res = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
        format!("too many failed logins; try again in {wait_secs} s"),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&wait_secs.to_string()) {
        res.headers_mut().insert(header::RETRY_AFTER, v);
    }
    res
}

/// Starts a session for a user: a short-lived access token and a refresh token. A
/// session opened with an API key ends when that key is revoked.
async fn open_session(
    state: &AppState,
    user_id: &str,
    api_key_id: Option<String>,
) -> ApiResult<Json_> {
    let now = now_ms();
    let sid = random_id();
    let secret = random_token();
    state
        .store
        .create_session(Session {
            id: sid.clone(),
            user_id: user_id.to_owned(),
            refresh_hash: sha256_hex(&secret),
            created_at: now,
            expires_at: now + SESSION_TTL.as_millis() as u64,
            revoked_at: None,
            api_key_id,
        })
        .await?;
    Ok(tokens(state, user_id, &sid, &secret, now))
}

fn tokens(state: &AppState, user_id: &str, sid: &str, secret: &str, now: u64) -> Json_ {
    let access = state.auth.keyring.issue(&Claims {
        sub: user_id.to_owned(),
        sid: sid.to_owned(),
        iat: now,
        exp: now + ACCESS_TTL.as_millis() as u64,
    });
    json!({
        "access_token": access,
        "refresh_token": format!("{REFRESH_PREFIX}{sid}_{secret}"),
        "token_type": "Bearer",
        "expires_in": ACCESS_TTL.as_secs(),
    })
}

pub async fn login(
    State(state): State<AppState>,
    info: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Body,
) -> Response {
    match login_inner(&state, client_address(&info), body).await {
        Ok(r) | Err(r) => r,
    }
}

async fn login_inner(state: &AppState, address: String, body: Body) -> Result<Response, Response> {
    let bytes = body::read(body, body::SMALL)
        .await
        .map_err(IntoResponse::into_response)?;
    let req: Login = body::json(&bytes).map_err(IntoResponse::into_response)?;
    let fail = |who: &str, reason: &str| {
        let (who, reason) = (who.to_owned(), reason.to_owned());
        let state = state.clone();
        let address = address.clone();
        async move {
            state.auth.limiter.failed(&who, &address);
            audit(
                state.store.as_ref(),
                "anonymous",
                "login.failed",
                &format!("user:{who}"),
                json!({"address": address, "reason": reason}),
            )
            .await;
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "wrong username, password or API key",
            )
            .into_response()
        }
    };
    // (user id, username, key) of whoever proved who they are.
    let (user_id, username, key_id) = match (req.username, req.password, req.api_key) {
        (Some(name), Some(password), None) => {
            if let Err(wait) = state.auth.limiter.check(&name, &address) {
                return Err(too_many(wait));
            }
            let user = state
                .store
                .user_by_name(&name)
                .await
                .map_err(|e| ApiError::from(e).into_response())?;
            let ok = match user.as_ref().and_then(|u| u.password_hash.as_deref()) {
                Some(phc) => verify_password(&password, phc),
                None => {
                    burn_password_time(&password);
                    false
                }
            };
            match user {
                Some(u) if ok && u.active => (u.id, u.username, None),
                Some(u) if ok => return Err(fail(&u.username, "deactivated").await),
                _ => return Err(fail(&name, "wrong password or unknown user").await),
            }
        }
        (None, None, Some(key)) => {
            let label = split_secret(&key, API_KEY_PREFIX)
                .map_or("?", |(id, _)| id)
                .to_owned();
            if let Err(wait) = state.auth.limiter.check(&format!("key:{label}"), &address) {
                return Err(too_many(wait));
            }
            match authenticate(state, &key).await {
                Ok(Caller {
                    user_id,
                    username,
                    via: Via::ApiKey(key_id),
                    ..
                }) => (user_id, username, Some(key_id)),
                _ => return Err(fail(&format!("key:{label}"), "bad API key").await),
            }
        }
        _ => {
            return Err(ApiError::bad_request(
                "send {\"username\", \"password\"} or {\"api_key\"}",
            )
            .into_response());
        }
    };
    state.auth.limiter.succeeded(&username, &address);
    let body = open_session(state, &user_id, key_id)
        .await
        .map_err(IntoResponse::into_response)?;
    audit(
        state.store.as_ref(),
        &format!("user:{username}"),
        "login.succeeded",
        &format!("user:{username}"),
        json!({"address": address}),
    )
    .await;
    Ok((StatusCode::OK, Json(body)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Refresh {
    refresh_token: String,
}

/// Trades a refresh token for new tokens. Each refresh token works once: presenting one
/// that was already used ends the session (someone else may hold a copy).
pub async fn refresh(State(state): State<AppState>, body: Body) -> ApiResult<Json<Json_>> {
    let bytes = body::read(body, body::SMALL).await?;
    let req: Refresh = body::json(&bytes)?;
    let refused = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", m);
    let (sid, secret) = split_secret(&req.refresh_token, REFRESH_PREFIX)
        .ok_or_else(|| refused("not a refresh token"))?;
    let now = now_ms();
    let session = state
        .store
        .session(sid)
        .await?
        .ok_or_else(|| refused("unknown session"))?;
    if session.revoked_at.is_some() || session.expires_at <= now {
        return Err(refused("the session has ended; log in again"));
    }
    let user = state
        .store
        .user(&session.user_id)
        .await?
        .filter(|u| u.active)
        .ok_or_else(|| refused("the user is deactivated"))?;
    let presented = sha256_hex(secret);
    if !same(&presented, &session.refresh_hash) {
        state.store.revoke_session(sid, now).await?;
        audit(
            state.store.as_ref(),
            &format!("user:{}", user.username),
            "token.reuse_detected",
            &format!("session:{sid}"),
            json!({"action": "session revoked"}),
        )
        .await;
        return Err(refused(
            "this refresh token was already used; the session is ended",
        ));
    }
    let next = random_token();
    if !state
        .store
        .rotate_refresh(sid, &presented, &sha256_hex(&next))
        .await?
    {
        return Err(refused(
            "the refresh token was used concurrently; log in again",
        ));
    }
    audit(
        state.store.as_ref(),
        &format!("user:{}", user.username),
        "token.refreshed",
        &format!("session:{sid}"),
        json!({}),
    )
    .await;
    Ok(Json(tokens(&state, &user.id, sid, &next, now)))
}

pub async fn logout(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Json_>> {
    let Via::Session(sid) = &caller.via else {
        return Err(ApiError::bad_request(
            "an API key has no session to end; revoke the key instead",
        ));
    };
    state.store.revoke_session(sid, now_ms()).await?;
    state.auth.credentials_changed();
    audit(
        state.store.as_ref(),
        &caller.actor(),
        "logout",
        &format!("session:{sid}"),
        json!({}),
    )
    .await;
    Ok(Json(json!({"logged_out": true})))
}

pub async fn me(Extension(caller): Extension<Caller>) -> Json<Json_> {
    let via = match &caller.via {
        Via::Session(_) => "session",
        Via::ApiKey(_) => "api_key",
    };
    Json(json!({
        "id": caller.user_id, "username": caller.username, "role": caller.role.as_str(), "via": via
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    /// Defaults to the email.
    username: Option<String>,
    email: Option<String>,
    password: Option<String>,
    role: String,
}

/// A plausible email address: something, `@`, a domain with a dot; no spaces. (Whether it
/// reaches anyone is not Plexus's to check: it is a name to sign in with.)
fn valid_email(email: &str) -> ApiResult<()> {
    let ok = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "`{email}` is not an email address"
        )))
    }
}

fn parse_role(role: &str) -> ApiResult<Role> {
    Role::parse(role).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown role `{role}`; roles are plugin, operator, engineer and admin"
        ))
    })
}

fn valid_username(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "a username is 1 to 64 characters: letters, digits, `.`, `_`, `-`, `@`",
        ))
    }
}

pub async fn create_user(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Json_>)> {
    let bytes = body::read(body, body::SMALL).await?;
    let req: NewUser = body::json(&bytes)?;
    if let Some(email) = &req.email {
        valid_email(email)?;
    }
    let Some(username) = req.username.clone().or_else(|| req.email.clone()) else {
        return Err(ApiError::bad_request(
            "give a `username`, an `email`, or both",
        ));
    };
    valid_username(&username)?;
    let role = parse_role(&req.role)?;
    let password_hash = match &req.password {
        Some(p) => {
            check_password_strength(p).map_err(ApiError::bad_request)?;
            Some(hash_password(p))
        }
        None => None,
    };
    let user = User {
        id: plexus_engine::new_id(),
        username,
        password_hash,
        role: role.as_str().into(),
        active: true,
        created_at: now_ms(),
        email: req.email.clone(),
    };
    state.store.create_user(user.clone()).await?;
    audit(
        state.store.as_ref(),
        &caller.actor(),
        "user.created",
        &format!("user:{}", user.username),
        json!({"role": user.role}),
    )
    .await;
    Ok((StatusCode::CREATED, Json(json!(user))))
}

pub async fn list_users(State(state): State<AppState>) -> ApiResult<Json<Json_>> {
    Ok(Json(json!({"users": state.store.users().await?})))
}

async fn find_user(state: &AppState, username: &str) -> ApiResult<User> {
    state
        .store
        .user_by_name(username)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user `{username}`")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserChange {
    role: Option<String>,
    active: Option<bool>,
    password: Option<String>,
}

/// Changes a user's role, active flag or password. Deactivating ends their sessions at
/// once (and their keys stop working, since every request checks the user).
pub async fn update_user(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(username): Path<String>,
    body: Body,
) -> ApiResult<Json<Json_>> {
    let bytes = body::read(body, body::SMALL).await?;
    let req: UserChange = body::json(&bytes)?;
    let user = find_user(&state, &username).await?;
    let role = req.role.as_deref().map(parse_role).transpose()?;
    if user.id == caller.user_id
        && (req.active == Some(false) || role.is_some_and(|r| r < Role::Admin))
    {
        return Err(ApiError::conflict(
            "you cannot deactivate or demote yourself; ask another admin",
        ));
    }
    let hash = match &req.password {
        Some(p) => {
            check_password_strength(p).map_err(ApiError::bad_request)?;
            Some(hash_password(p))
        }
        None => None,
    };
    state
        .store
        .update_user(
            &user.id,
            role.map(Role::as_str),
            req.active,
            hash.as_deref(),
        )
        .await?;
    if req.password.is_some() || req.active == Some(false) {
        state.store.revoke_user_sessions(&user.id, now_ms()).await?;
    }
    // Open connections of this user check again (role, active, sessions).
    state.auth.credentials_changed();
    let target = format!("user:{}", user.username);
    let store = state.store.as_ref();
    if let Some(r) = role {
        audit(
            store,
            &caller.actor(),
            "user.role_changed",
            &target,
            json!({"from": user.role, "to": r.as_str()}),
        )
        .await;
    }
    if let Some(active) = req.active {
        let action = if active {
            "user.activated"
        } else {
            "user.deactivated"
        };
        audit(store, &caller.actor(), action, &target, json!({})).await;
    }
    if req.password.is_some() {
        audit(
            store,
            &caller.actor(),
            "user.password_changed",
            &target,
            json!({}),
        )
        .await;
    }
    Ok(Json(json!(find_user(&state, &username).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
    /// Another user's name (admins only); default: the caller.
    username: Option<String>,
}

pub async fn create_key(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Json_>)> {
    let bytes = body::read(body, body::SMALL).await?;
    let req: NewKey = body::json(&bytes)?;
    if req.name.trim().is_empty() || req.name.len() > 200 {
        return Err(ApiError::bad_request(
            "a key needs a name of 1 to 200 characters",
        ));
    }
    let owner = match &req.username {
        Some(name) if *name != caller.username => {
            if caller.role < Role::Admin {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "only admins create keys for other users",
                ));
            }
            find_user(&state, name).await?
        }
        _ => find_user(&state, &caller.username).await?,
    };
    let key = create_api_key(state.store.as_ref(), &owner.id, &req.name).await?;
    audit(
        state.store.as_ref(),
        &caller.actor(),
        "api_key.created",
        &format!("api_key:{}", key.key_id),
        json!({"user": owner.username, "name": req.name}),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": key.key_id, "user": owner.username, "name": req.name, "secret": key.secret,
            "note": "the secret is shown once; store it now"
        })),
    ))
}

#[derive(Deserialize)]
pub struct KeyQuery {
    #[serde(default)]
    all: bool,
}

pub async fn list_keys(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<KeyQuery>,
) -> ApiResult<Json<Json_>> {
    let user = if q.all && caller.role == Role::Admin {
        None
    } else {
        Some(caller.user_id.as_str())
    };
    let keys = state.store.api_keys(user).await?;
    Ok(Json(json!({ "api_keys": keys })))
}

pub async fn revoke_key(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Json_>> {
    let key = state
        .store
        .api_key(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no API key {id}")))?;
    if key.user_id != caller.user_id && caller.role < Role::Admin {
        return Err(ApiError::not_found(format!("no API key {id}")));
    }
    if !state.store.revoke_api_key(&id, now_ms()).await? {
        return Err(ApiError::conflict(format!(
            "API key {id} is already revoked"
        )));
    }
    // The key's sessions ended with it (same write); their open connections close.
    state.auth.credentials_changed();
    audit(
        state.store.as_ref(),
        &caller.actor(),
        "api_key.revoked",
        &format!("api_key:{id}"),
        json!({}),
    )
    .await;
    Ok(Json(json!({"id": id, "revoked": true})))
}
