//! `/api/v1/schedules` and the task that fires them.
//!
//! A tick fires exactly once: the run it starts carries the idempotency key
//! `schedule:<name>:<tick>`, and `next_fire_at` only moves by compare-and-set. A crash
//! between the two fires the tick again, which finds its run; two replicas racing for a
//! tick create one run between them.

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::runs::{start_run, stored_workflow};
use crate::{AppState, now_ms};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use plexus_core::schedule::{CatchUp, due_ticks, next_fire};
use plexus_store::ScheduleRow;
use serde::Deserialize;
use serde_json::{Value as Json_, json};
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSchedule {
    name: Option<String>,
    workflow: String,
    cron: String,
    #[serde(default)]
    inputs: serde_json::Map<String, Json_>,
    #[serde(default)]
    catch_up: Option<String>,
}

fn schedule_json(s: &ScheduleRow) -> Json_ {
    serde_json::to_value(s).unwrap_or(Json_::Null)
}

pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Json_>)> {
    let bytes = crate::body::read(body, state.config.body_limit).await?;
    let req: NewSchedule = crate::body::json(&bytes)?;
    let name = req.name.unwrap_or_else(|| req.workflow.clone());
    if !plexus_core::parse::valid_name(&name) {
        return Err(ApiError::bad_request(format!(
            "schedule name `{name}`: use lower-case letters, digits, `_` and `-`"
        )));
    }
    let catch_up = match req.catch_up.as_deref() {
        None => CatchUp::Skip,
        Some(c) => CatchUp::parse(c).ok_or_else(|| {
            ApiError::bad_request(format!("catch_up `{c}`: use skip or run_missed"))
        })?,
    };
    stored_workflow(&state, &req.workflow, None).await?;
    let row = new_row(
        name,
        req.workflow,
        &req.cron,
        Json_::Object(req.inputs),
        catch_up,
        false,
        caller.actor(),
    )?;
    let row = state.store.put_schedule(row).await?;
    Ok((StatusCode::CREATED, Json(schedule_json(&row))))
}

/// A schedule whose first tick is the next one from now.
pub fn new_row(
    name: String,
    workflow: String,
    cron: &str,
    inputs: Json_,
    catch_up: CatchUp,
    from_manifest: bool,
    changed_by: String,
) -> ApiResult<ScheduleRow> {
    let now = now_ms();
    let next = next_fire(cron, now).map_err(|e| ApiError::bad_request(e).with_code("bad_cron"))?;
    Ok(ScheduleRow {
        name,
        workflow,
        cron: cron.to_owned(),
        inputs,
        catch_up,
        paused: false,
        next_fire_at: next,
        last_fired_at: None,
        from_manifest,
        created_at: now,
        changed_by: Some(changed_by),
    })
}

pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Json_>> {
    let rows = state.store.list_schedules().await?;
    Ok(Json(
        json!({"schedules": rows.iter().map(schedule_json).collect::<Vec<_>>()}),
    ))
}

async fn found(state: &AppState, name: &str) -> ApiResult<ScheduleRow> {
    state
        .store
        .get_schedule(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("schedule `{name}` not found")))
}

pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Json_>> {
    Ok(Json(schedule_json(&found(&state, &name).await?)))
}

pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if state.store.delete_schedule(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("schedule `{name}` not found")))
    }
}

pub async fn pause(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<Json_>> {
    found(&state, &name).await?;
    let by = caller.actor();
    state
        .store
        .set_schedule_paused(&name, true, Some(&by))
        .await?;
    Ok(Json(schedule_json(&found(&state, &name).await?)))
}

pub async fn resume(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<Json_>> {
    found(&state, &name).await?;
    let by = caller.actor();
    state
        .store
        .set_schedule_paused(&name, false, Some(&by))
        .await?;
    Ok(Json(schedule_json(&found(&state, &name).await?)))
}

/// Fires what is due, then sleeps until the next tick (at most a second, so schedules
/// created meanwhile are seen).
pub async fn run_scheduler(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        if let Err(e) = fire_due(&state).await {
            tracing::warn!(error = %e.message, "firing schedules failed");
        }
        let next = state.store.list_schedules().await.ok().and_then(|all| {
            all.iter()
                .filter(|s| !s.paused)
                .map(|s| s.next_fire_at)
                .min()
        });
        let wait = next.map_or(1_000, |t| t.saturating_sub(now_ms()).clamp(5, 1_000));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Fires every due tick once; returns how many runs were started (or found).
pub async fn fire_due(state: &AppState) -> ApiResult<usize> {
    fire_due_at(state, now_ms()).await
}

/// [`fire_due`] as if the clock said `now` (tests move time instead of waiting for it).
pub async fn fire_due_at(state: &AppState, now: plexus_core::machine::Millis) -> ApiResult<usize> {
    let mut fired = 0;
    for s in state.store.due_schedules(now).await? {
        let ticks =
            due_ticks(&s.cron, s.next_fire_at, now, s.catch_up).map_err(ApiError::bad_request)?;
        for &tick in &ticks {
            let inputs = s.inputs.as_object().cloned().unwrap_or_default();
            let key = format!("schedule:{}:{tick}", s.name);
            let started = match stored_workflow(state, &s.workflow, None).await {
                Ok(w) => {
                    let origin = crate::runs::Origin {
                        started_by: format!("schedule:{}", s.name),
                        // Whoever created or last changed the schedule answers for its runs.
                        responsible: s.changed_by.iter().cloned().collect(),
                        caller: None,
                    };
                    start_run(
                        state,
                        w.manifest,
                        Some(w.version),
                        &inputs,
                        Some(key),
                        origin,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            match started {
                Ok(run) => {
                    fired += 1;
                    tracing::info!(schedule = %s.name, tick, run = %run, "schedule fired");
                }
                // A broken workflow must not stop the schedule: the tick is dropped, loudly.
                Err(e) => {
                    tracing::warn!(schedule = %s.name, tick, error = %e.message, "schedule could not start its run")
                }
            }
        }
        let last = ticks.last().copied().unwrap_or(s.next_fire_at).max(now);
        let next = next_fire(&s.cron, last).map_err(ApiError::bad_request)?;
        state
            .store
            .advance_schedule(&s.name, s.next_fire_at, next, now)
            .await?;
    }
    Ok(fired)
}
