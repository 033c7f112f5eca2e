//! `/api/v1/runs`: read runs and their events, control them; starting them and waiting
//! for their end are in `start`.

use crate::auth::Caller;
use crate::body;
use crate::error::{ApiError, ApiResult};
use crate::{AppState, now_ms};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use plexus_core::machine::{Input, RunStatus};
use plexus_engine::EngineError;
use plexus_store::{CommandKind, RunFilter, RunRow, StepRow};
use serde::Deserialize;
use serde_json::{Value as Json_, json};

mod start;
pub use start::{Origin, View, WaitQuery, start, start_run, stored_workflow};
pub(crate) use start::{Start, answer_after, start_watched};

/// `agentic` for an agentic loop (see `ask`), `workflow` for any other run.
pub fn run_kind(workflow: &str) -> &'static str {
    if workflow == crate::ask::AGENTIC {
        "agentic"
    } else {
        "workflow"
    }
}

fn run_json(row: &RunRow, steps: Option<&[StepRow]>) -> Json_ {
    let mut v = json!({
        "id": row.id,
        "kind": run_kind(&row.workflow),
        "workflow": row.workflow,
        "state": row.status,
        "error": row.error,
        "inputs": row.inputs,
        "outputs": row.outputs,
        "parent": row.parent,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "finished_at": row.finished_at,
        "last_seq": row.last_seq,
    });
    if let Some(steps) = steps {
        v["steps"] = steps
            .iter()
            .map(|s| {
                json!({"id": s.step_id, "state": s.status, "attempt": s.attempt, "started_at": s.started_at,
                       "finished_at": s.finished_at, "output": s.output, "error": s.error})
            })
            .collect();
    }
    v
}

async fn full_run(state: &AppState, id: &str) -> ApiResult<Json_> {
    let row = state.store.get_run(id).await?;
    let steps = state.store.steps(&row.id).await?;
    Ok(run_json(&row, Some(&steps)))
}

#[derive(Deserialize)]
pub struct ListQuery {
    workflow: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
    /// Created at or after this time (ms since the epoch).
    since: Option<u64>,
    /// Created before this time (ms since the epoch).
    until: Option<u64>,
}

pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Json_>> {
    if let Some(s) = &q.state
        && RunStatus::parse(s).is_none()
    {
        return Err(ApiError::bad_request(format!(
            "unknown state `{s}`; states are queued, running, paused, succeeded, failed, cancelled"
        )));
    }
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let filter = RunFilter {
        status: q.state,
        workflow: q.workflow,
        active: false,
        limit,
        before: q.cursor,
        created_since: q.since,
        created_until: q.until,
        not_owned_by: None,
        owner_prefix: None,
    };
    let rows = state.store.list_runs(filter).await?;
    let next_cursor = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.id.clone()))
        .flatten();
    let runs: Vec<Json_> = rows.iter().map(|r| run_json(r, None)).collect();
    Ok(Json(json!({"runs": runs, "next_cursor": next_cursor})))
}

/// One run; with `?wait=DURATION`, answered when it ends (`200`) or when the wait is
/// over (`202` with the run so far): a long poll.
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<(StatusCode, Json<Json_>)> {
    let wait = q.duration()?;
    let id = state.store.get_run(&id).await?.id;
    let view = q.view.unwrap_or(View::Full);
    answer_after(&state, &id, wait, StatusCode::OK, view, None).await
}

#[derive(Deserialize)]
pub struct EventsQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

pub async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Json<Json_>> {
    let row = state.store.get_run(&id).await?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let events = state.store.events(&row.id, q.after, limit).await?;
    let next_after = events.last().map_or(q.after, |e| e.seq);
    Ok(Json(json!({"events": events, "next_after": next_after})))
}

/// Applies an input to the run: at once if this server drives it, else as a stored command
/// for whichever process does (or will, on resume).
pub(crate) async fn control(
    state: &AppState,
    id: &str,
    input: Input,
    kind: CommandKind,
    step: Option<&str>,
    data: Json_,
    actor: &str,
) -> ApiResult<(StatusCode, Json<Json_>)> {
    let row = state.store.get_run(id).await?;
    if RunStatus::parse(&row.status).is_some_and(|s| s.is_terminal()) {
        return Err(ApiError::conflict(format!(
            "run {} is already {}",
            row.id, row.status
        )));
    }
    match state.engine.input(&row.id, input).await {
        Ok(()) => Ok((
            StatusCode::OK,
            Json(
                json!({"run": row.id, "action": kind.as_str(), "step": step, "outcome": "applied"}),
            ),
        )),
        Err(EngineError::NotActive(_)) => {
            state
                .store
                .add_command(&row.id, kind, step, data, actor, now_ms())
                .await?;
            Ok((
                StatusCode::ACCEPTED,
                Json(
                    json!({"run": row.id, "action": kind.as_str(), "step": step, "outcome": "recorded"}),
                ),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Json_>)> {
    let input = Input::Cancel {
        reason: format!("cancelled by {}", caller.actor()),
    };
    let actor = caller.actor();
    control(
        &state,
        &id,
        input,
        CommandKind::Cancel,
        None,
        Json_::Null,
        &actor,
    )
    .await
}

/// stdout and stderr of a step's last attempt (kept, capped, with the step's output).
pub async fn logs(
    State(state): State<AppState>,
    Path((id, step)): Path<(String, String)>,
) -> ApiResult<Json<Json_>> {
    let row = state.store.get_run(&id).await?;
    let steps = state.store.steps(&row.id).await?;
    let s = steps
        .iter()
        .find(|s| s.step_id == step)
        .ok_or_else(|| ApiError::not_found(format!("run {} has no step `{step}`", row.id)))?;
    if let (Json_::String(out), Json_::String(err)) = (&s.output["stdout"], &s.output["stderr"]) {
        return Ok(Json(
            json!({"run": row.id, "step": step, "attempt": s.attempt, "stdout": out, "stderr": err, "exit_code": s.output["exit_code"]}),
        ));
    }
    // A step that wrote `$PLEXUS_OUTPUT` has its logs kept apart from its output.
    match state
        .store
        .step_logs(&row.id, &step, None, s.attempt)
        .await?
    {
        Some(l) => Ok(Json(
            json!({"run": row.id, "step": step, "attempt": s.attempt, "stdout": l.stdout, "stderr": l.stderr, "exit_code": l.exit_code}),
        )),
        None => Err(ApiError::not_found(format!(
            "step `{step}` has no logs: it ran no process (yet)"
        ))),
    }
}

pub async fn outputs(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Json_>> {
    let row = state.store.get_run(&id).await?;
    Ok(Json(
        json!({"run": row.id, "state": row.status, "outputs": row.outputs}),
    ))
}

pub async fn artifacts(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Json_>> {
    let row = state.store.get_run(&id).await?;
    let list = state.store.artifacts(&row.id).await?;
    let items: Vec<Json_> = list
        .iter()
        .map(|a| json!({"step": a.step_id, "attempt": a.attempt, "name": a.name, "size": a.size, "sha256": a.sha256,
                        "url": format!("/api/v1/artifacts/{}", a.sha256)}))
        .collect();
    Ok(Json(json!({ "artifacts": items })))
}

/// The content of an artifact, by its SHA-256.
pub async fn artifact(
    State(state): State<AppState>,
    Path(sha): Path<String>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    if sha.len() != 64
        || !sha
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    {
        return Err(ApiError::bad_request(
            "an artifact is named by its SHA-256: 64 lower-case hex digits",
        ));
    }
    let path = state.config.artifact_root.join(&sha[..2]).join(&sha);
    // Artifacts can be large: read them off the async threads.
    let read = tokio::task::spawn_blocking(move || std::fs::read(path)).await;
    let bytes = read
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|_| ApiError::not_found(format!("artifact {sha} not found")))?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        bytes,
    )
        .into_response())
}

pub async fn pause(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Json_>)> {
    let actor = caller.actor();
    let input = Input::Pause { by: actor.clone() };
    control(
        &state,
        &id,
        input,
        CommandKind::Pause,
        None,
        Json_::Null,
        &actor,
    )
    .await
}

pub async fn resume(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Json_>)> {
    let actor = caller.actor();
    let input = Input::Resume { by: actor.clone() };
    control(
        &state,
        &id,
        input,
        CommandKind::Resume,
        None,
        Json_::Null,
        &actor,
    )
    .await
}

/// Runs a failed or cancelled run again from the steps that did not succeed.
pub async fn retry(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Json_>> {
    let id = state.engine.retry(&id, &caller.actor()).await?;
    Ok(Json(full_run(&state, &id).await?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StepAction {
    comment: Option<String>,
    data: Option<Json_>,
    /// The `detail.digest` of the request the approver looked at: the decision applies
    /// only to exactly that (409 when the request changed meanwhile).
    digest: Option<String>,
}

pub async fn step_action(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, step, action)): Path<(String, String, String)>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Json_>)> {
    let bytes = body::read(body, state.config.body_limit).await?;
    let req: StepAction = if bytes.iter().all(u8::is_ascii_whitespace) {
        StepAction::default()
    } else {
        body::json(&bytes)?
    };
    let by = caller.actor();
    if matches!(action.as_str(), "approve" | "reject") {
        let row = state.store.get_run(&id).await?;
        // An agent waiting for a decision inside the step's action comes first: the
        // step itself is running, not at its gate.
        if let Some(answer) = crate::approvals::decide_agent_request(
            &state,
            &caller,
            &row.id,
            &step,
            action == "approve",
            req.comment.as_deref(),
        )
        .await?
        {
            return Ok((StatusCode::OK, Json(answer)));
        }
        let digest = req.digest.as_deref();
        crate::approvals::check_decider(&state, &caller, &row.id, &step, digest).await?;
    }
    let (input, kind, data) = match action.as_str() {
        "approve" => (
            Input::Approve {
                step_id: step.clone(),
                by,
                comment: req.comment.clone(),
            },
            CommandKind::Approve,
            json!({"comment": req.comment}),
        ),
        "reject" => (
            Input::Reject {
                step_id: step.clone(),
                by,
                comment: req.comment.clone(),
            },
            CommandKind::Reject,
            json!({"comment": req.comment}),
        ),
        "signal" => {
            let data = req.data.unwrap_or(Json_::Null);
            (
                Input::Signal {
                    step_id: step.clone(),
                    data: data.clone(),
                },
                CommandKind::Signal,
                json!({"data": data}),
            )
        }
        other => {
            return Err(ApiError::not_found(format!(
                "unknown step action `{other}`; use approve, reject or signal"
            )));
        }
    };
    let answer = control(
        &state,
        &id,
        input,
        kind,
        Some(&step),
        data.clone(),
        &caller.actor(),
    )
    .await;
    match answer {
        // A signal that reaches no waiting step is kept as a dead letter, not dropped.
        Err(e) if kind == CommandKind::Signal && e.status == StatusCode::CONFLICT => {
            let target = format!("{id}/{step}");
            let letter = state
                .store
                .add_dead_letter("signal", &target, data, &e.message, now_ms())
                .await?;
            Err(e.with_details(json!({ "dead_letter": letter })))
        }
        other => other,
    }
}
