//! `/healthz` and the OpenAPI document.

use crate::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value as Json_, json};

/// How long the store may take to answer the health probe.
const STORE_ANSWER: std::time::Duration = std::time::Duration::from_secs(3);

/// The store can serve, and the engine is alive and committing; either failing is a 503
/// that names what failed, and stays one until it recovers.
pub async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<Json_>) {
    // A database that does not answer makes the probe fail, not hang.
    let store = async {
        match tokio::time::timeout(STORE_ANSWER, state.store.health()).await {
            Ok(r) => r,
            Err(_) => Err(plexus_store::StoreError::Unreachable(format!(
                "the store did not answer within {} s",
                STORE_ANSWER.as_secs()
            ))),
        }
    };
    let (store, engine) = tokio::join!(store, state.engine.health());
    let store_text = match &store {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.to_string(),
    };
    let ok = store.is_ok() && engine.is_ok();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let isolation = match state.engine.isolation() {
        plexus_engine::exec::isolation::Availability::On { mechanism } => {
            json!({"state": "on", "mechanism": mechanism})
        }
        plexus_engine::exec::isolation::Availability::Off { reason } => {
            json!({"state": "off", "reason": reason})
        }
    };
    // The agents and their health (an unhealthy agent does not make the server
    // unhealthy: its steps fail, others run).
    let plugins: Vec<_> = state
        .engine
        .agents
        .list()
        .into_iter()
        .map(|i| json!({"name": i.name, "instance_id": i.instance_id, "source": i.source, "health": i.health}))
        .collect();
    let body = json!({
        "isolation": isolation,
        "status": if ok { "ok" } else { "unavailable" },
        "store": store_text,
        "engine": engine,
        "pools": engine.pools,
        "plugins": plugins,
    });
    (status, Json(body))
}

pub const OPENAPI: &str = include_str!("openapi.json");

pub async fn openapi() -> ([(axum::http::HeaderName, &'static str); 1], &'static str) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}
