//! First start: with no user in the store, create `admin` and one API key for it, whose
//! secret is shown once (the caller prints it). Later starts find a user and do nothing;
//! two replicas starting together create one admin between them (usernames are unique).

use super::audit;
use super::credentials::{API_KEY_PREFIX, random_id, random_token, sha256_hex, split_secret};
use crate::now_ms;
use plexus_store::auth::{ApiKey, User};
use plexus_store::{Store, StoreError};
use serde_json::json;

pub struct BootstrapKey {
    pub key_id: String,
    pub secret: String,
}

/// Creates the first admin and an API key for it; `None` when users exist already.
pub async fn bootstrap(store: &dyn Store) -> Result<Option<BootstrapKey>, StoreError> {
    bootstrap_with(store, None).await
}

/// Checks a preset bootstrap key (`plx_<id>_<secret>`, an id of 8 to 64 letters and
/// digits, a secret of at least 32 characters) before anything is stored.
pub fn check_preset(key: &str) -> Result<(), String> {
    let Some((id, secret)) = split_secret(key, API_KEY_PREFIX) else {
        return Err("a bootstrap key looks like plx_<id>_<secret>".into());
    };
    if !(8..=64).contains(&id.len()) || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err("the id of a bootstrap key is 8 to 64 letters and digits".into());
    }
    if secret.len() < 32 {
        return Err("the secret of a bootstrap key has at least 32 characters".into());
    }
    Ok(())
}

/// [`bootstrap`], with the admin's key given by the operator (`PLEXUS_BOOTSTRAP_API_KEY`)
/// instead of made up, so automation never reads it from a log.
pub async fn bootstrap_with(
    store: &dyn Store,
    preset: Option<&str>,
) -> Result<Option<BootstrapKey>, StoreError> {
    if let Some(key) = preset {
        check_preset(key).map_err(StoreError::Conflict)?;
    }
    if store.count_users().await? > 0 {
        return Ok(None);
    }
    let user = User {
        id: plexus_engine::new_id(),
        username: "admin".into(),
        password_hash: None,
        role: "admin".into(),
        active: true,
        created_at: now_ms(),
        email: None,
    };
    match store.create_user(user.clone()).await {
        Ok(()) => {}
        Err(StoreError::Conflict(_)) => return Ok(None), // another replica won
        Err(e) => return Err(e),
    }
    audit(
        store,
        "system",
        "user.created",
        "user:admin",
        json!({"role": "admin", "bootstrap": true}),
    )
    .await;
    let key = match preset.and_then(|k| split_secret(k, API_KEY_PREFIX)) {
        Some((id, secret)) => {
            store
                .create_api_key(ApiKey {
                    id: id.to_owned(),
                    user_id: user.id.clone(),
                    name: "bootstrap".into(),
                    secret_hash: sha256_hex(secret),
                    created_at: now_ms(),
                    revoked_at: None,
                })
                .await?;
            BootstrapKey {
                key_id: id.to_owned(),
                secret: preset.unwrap_or_default().to_owned(),
            }
        }
        None => create_api_key(store, &user.id, "bootstrap").await?,
    };
    audit(
        store,
        "system",
        "api_key.created",
        &format!("api_key:{}", key.key_id),
        json!({"user": "admin", "name": "bootstrap"}),
    )
    .await;
    Ok(Some(key))
}

/// Makes a key for a user; the secret exists only in the returned value.
pub async fn create_api_key(
    store: &dyn Store,
    user_id: &str,
    name: &str,
) -> Result<BootstrapKey, StoreError> {
    let key_id = random_id();
    let random = random_token();
    store
        .create_api_key(ApiKey {
            id: key_id.clone(),
            user_id: user_id.to_owned(),
            name: name.to_owned(),
            secret_hash: sha256_hex(&random),
            created_at: now_ms(),
            revoked_at: None,
        })
        .await?;
    Ok(BootstrapKey {
        secret: format!("{API_KEY_PREFIX}{key_id}_{random}"),
        key_id,
    })
}
