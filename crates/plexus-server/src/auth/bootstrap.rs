//! First start: with no user in the store, create `admin` and one API key for it, whose
//! secret is shown once (the caller prints it). Later starts find a user and do nothing;
//! two replicas starting together create one admin between them (usernames are unique).

use super::audit;
use super::credentials::{API_KEY_PREFIX, random_id, random_token, sha256_hex};
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
    let key = create_api_key(store, &user.id, "bootstrap").await?;
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
