//! `/healthz` and the OpenAPI document.

use crate::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value as Json_, json};

/// The store can serve, and the engine is alive and committing; either failing is a 503
/// that names what failed, and stays one until it recovers.
pub async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<Json_>) {
    let (store, engine) = tokio::join!(state.store.health(), state.engine.health());
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
