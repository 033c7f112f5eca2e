//! The replicas sharing the store: each `plexus serve` says it is alive every renewal
//! interval, and `GET /api/v1/replicas` (`plexus replica list`) shows them all with the
//! runs each drives.

use crate::AppState;
use crate::error::ApiResult;
use axum::Json;
use axum::extract::State;
use plexus_store::Replica;
use serde_json::{Value as Json_, json};

/// Whether a replica's last heartbeat is recent enough for it to be alive: its leases
/// outlive a heartbeat by this long at most.
pub fn alive(r: &Replica, lease: std::time::Duration, now: u64) -> bool {
    now.saturating_sub(r.heartbeat_at) <= lease.as_millis() as u64
}

pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Json_>> {
    let replicas = state.store.replicas().await?;
    let (lease, renew_every) = state.engine.lease_timing();
    let now = plexus_engine::now_ms();
    let shown: Vec<Json_> = replicas
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            v["alive"] = json!(alive(r, lease, now));
            v
        })
        .collect();
    Ok(Json(json!({
        "self": state.engine.owner(),
        "lease_ms": lease.as_millis() as u64,
        "renew_every_ms": renew_every.as_millis() as u64,
        "replicas": shown,
    })))
}

/// This replica as the store lists it.
pub fn this_replica(state: &AppState, address: &str) -> Replica {
    let now = plexus_engine::now_ms();
    Replica {
        id: state.engine.owner().to_owned(),
        host: plexus_engine::hostname(),
        address: address.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: now,
        heartbeat_at: now,
        runs: 0,
    }
}

/// Says this replica is alive every renewal interval until `stop`, then removes its row.
pub async fn heartbeat(
    state: AppState,
    mut me: Replica,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let (_, every) = state.engine.lease_timing();
    loop {
        me.heartbeat_at = plexus_engine::now_ms();
        if let Err(e) = state.store.heartbeat(&me).await {
            tracing::warn!(error = %e, "the replica heartbeat could not be written");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => break,
        }
    }
    if let Err(e) = state.store.forget_replica(&me.id).await {
        tracing::warn!(error = %e, "could not remove this replica's row");
    }
}
