//! `/healthz` and the OpenAPI document.

use crate::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value as Json_, json};

pub async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<Json_>) {
    let store = state.store.health().await;
    let pools = state.engine.pool_stats().await.ok();
    match store {
        Ok(_) => (
            StatusCode::OK,
            // No plugin runtime yet: the list of connected plugins is empty, not unknown.
            Json(json!({"status": "ok", "store": "ok", "pools": pools, "plugins": []})),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({"status": "unavailable", "store": e.to_string(), "pools": pools, "plugins": []}),
            ),
        ),
    }
}

pub const OPENAPI: &str = include_str!("openapi.json");

pub async fn openapi() -> ([(axum::http::HeaderName, &'static str); 1], &'static str) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}
