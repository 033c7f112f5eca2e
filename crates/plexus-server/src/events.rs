//! `POST /api/v1/events` starts every workflow whose manifest subscribes with `on:`;
//! `GET /api/v1/dead-letters` lists what reached nothing.

use crate::error::{ApiError, ApiResult};
use crate::runs::{start_run, stored_workflow};
use crate::{AppState, now_ms};
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use plexus_store::ReceivedEvent;
use serde::Deserialize;
use serde_json::{Value as Json_, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostEvent {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    payload: Json_,
    dedupe_key: Option<String>,
}

/// The inputs a triggered run gets: `event` ({type, payload}) if the workflow declares
/// it, and every payload field the workflow declares as an input.
fn trigger_inputs(
    manifest: &plexus_core::Manifest,
    ev: &ReceivedEvent,
) -> serde_json::Map<String, Json_> {
    let mut inputs = serde_json::Map::new();
    for def in &manifest.inputs {
        if def.name == "event" {
            inputs.insert(
                "event".into(),
                json!({"type": ev.event_type, "payload": ev.payload}),
            );
        } else if let Some(v) = ev.payload.get(&def.name) {
            inputs.insert(def.name.clone(), v.clone());
        }
    }
    inputs
}

pub async fn post(
    State(state): State<AppState>,
    Extension(caller): Extension<crate::auth::Caller>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Json_>)> {
    let bytes = crate::body::read(body, state.config.body_limit).await?;
    let req: PostEvent = crate::body::json(&bytes)?;
    if req.event_type.trim().is_empty() {
        return Err(ApiError::bad_request("`type` must not be empty"));
    }
    let event = ReceivedEvent {
        id: uuid_v7(),
        event_type: req.event_type,
        payload: req.payload,
        dedupe_key: req.dedupe_key,
        received_at: now_ms(),
        runs: Vec::new(),
    };
    let (event, new) = state.store.record_event(event).await?;
    if !new {
        return Ok((
            StatusCode::OK,
            Json(json!({"id": event.id, "runs": event.runs, "duplicate": true})),
        ));
    }
    let workflows = state.store.triggered_by(&event.event_type).await?;
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    for name in &workflows {
        let result = async {
            let w = stored_workflow(&state, name, None).await?;
            let plan = crate::workflows::compile(&state, &w.manifest, name)?;
            let inputs = trigger_inputs(&plan.manifest, &event);
            start_run(
                &state,
                w.manifest,
                Some(w.version),
                &inputs,
                Some(format!("event:{}:{name}", event.id)),
                crate::runs::Origin {
                    started_by: format!("{} (event {})", caller.actor(), event.event_type),
                    // Who posted the event, and who defined the trigger (`on:`) it hit.
                    responsible: [Some(caller.actor()), w.applied_by.clone()]
                        .into_iter()
                        .flatten()
                        .collect(),
                    caller: None,
                },
            )
            .await
        }
        .await;
        match result {
            Ok(run) => runs.push(run),
            Err(e) => failures.push(json!({"workflow": name, "error": e.message})),
        }
    }
    state.store.set_event_runs(&event.id, &runs).await?;
    let mut dead_letter = None;
    if runs.is_empty() {
        let reason = if workflows.is_empty() {
            format!("no workflow starts on `{}`", event.event_type)
        } else {
            format!(
                "no subscribed workflow could start: {}",
                Json_::Array(failures.clone())
            )
        };
        let payload = json!({"event_id": event.id, "payload": event.payload});
        dead_letter = Some(
            state
                .store
                .add_dead_letter("event", &event.event_type, payload, &reason, now_ms())
                .await?,
        );
    }
    let body = json!({"id": event.id, "runs": runs, "failed": failures, "dead_letter": dead_letter, "duplicate": false});
    Ok((StatusCode::ACCEPTED, Json(body)))
}

fn uuid_v7() -> String {
    // The engine's run ids are UUIDv7 too; events sort by time the same way.
    plexus_engine::new_id()
}

#[derive(Deserialize)]
pub struct LimitQuery {
    limit: Option<usize>,
}

pub async fn dead_letters(
    State(state): State<AppState>,
    Query(q): Query<LimitQuery>,
) -> ApiResult<Json<Json_>> {
    let letters = state
        .store
        .dead_letters(q.limit.unwrap_or(100).clamp(1, 1000))
        .await?;
    Ok(Json(json!({ "dead_letters": letters })))
}
