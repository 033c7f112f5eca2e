//! `/api/v1/runs`: start runs, read them and their events, control them.

use crate::auth::Caller;
use crate::body;
use crate::error::{ApiError, ApiResult};
use crate::{AppState, now_ms};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use plexus_core::machine::{Input, RunStatus};
use plexus_engine::{EngineError, Submission};
use plexus_store::{CommandKind, RunFilter, RunRow, StepRow};
use serde::Deserialize;
use serde_json::{Value as Json_, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRun {
    workflow: Option<String>,
    version: Option<u32>,
    /// An inline manifest: a JSON object, or YAML/JSON text.
    manifest: Option<Json_>,
    #[serde(default)]
    inputs: serde_json::Map<String, Json_>,
}

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

/// The light answer to a start: what a client needs to follow the run.
#[derive(Clone)]
struct Seen {
    id: String,
    status: String,
    workflow: String,
    created_at: u64,
}

impl Seen {
    fn of(row: &RunRow) -> Seen {
        Seen {
            id: row.id.clone(),
            status: row.status.clone(),
            workflow: row.workflow.clone(),
            created_at: row.created_at,
        }
    }

    fn json(&self) -> Json_ {
        json!({"id": self.id, "state": self.status, "workflow": self.workflow, "created_at": self.created_at})
    }
}

fn light_run(row: &RunRow) -> Json_ {
    Seen::of(row).json()
}

/// How much of a run an answer holds: `light` (`id`, `state`, `workflow`,
/// `created_at`) or `full` (the run with every step).
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum View {
    Light,
    Full,
}

/// `?wait=DURATION`: answer when the run ends, or when the wait is over; `?view=`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    wait: Option<String>,
    view: Option<View>,
}

/// The longest a request may wait for a run to end.
const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

impl WaitQuery {
    /// The view asked for: by default light, or full when the request waits (it then
    /// answers the finished run, which is what it waited for).
    pub(crate) fn view(&self, wait: Option<std::time::Duration>) -> View {
        self.view.unwrap_or(if wait.is_some() {
            View::Full
        } else {
            View::Light
        })
    }

    pub(crate) fn duration(&self) -> ApiResult<Option<std::time::Duration>> {
        self.wait
            .as_deref()
            .map(|w| {
                plexus_core::duration::parse_duration(w)
                    .map(|d| d.min(MAX_WAIT))
                    .map_err(|e| ApiError::bad_request(format!("wait: {e}")))
            })
            .transpose()
    }
}

/// A run this request has just made, and the engine's end notices subscribed to before
/// it was made: waiting for its end needs no first look at the store (no end can have
/// been missed), nor a read to answer it in the light view.
pub(crate) struct JustMade {
    ends: tokio::sync::broadcast::Receiver<(plexus_engine::RunId, RunStatus)>,
    seen: Seen,
}

/// What a run is started with.
pub(crate) struct Start<'a> {
    /// The manifest's text.
    pub text: String,
    /// The stored version it is, if any.
    pub version: Option<u32>,
    /// `version` is the one read as the newest (see [`Submission::newest_version`]).
    pub newest: bool,
    pub inputs: &'a serde_json::Map<String, Json_>,
    pub key: Option<String>,
    pub origin: Origin<'a>,
}

/// Starts a run for a request that may wait for its end; `None` when an idempotency key
/// named an earlier run (which is then waited for like any other).
pub(crate) async fn start_watched(
    state: &AppState,
    start: Start<'_>,
) -> ApiResult<(String, Option<JustMade>)> {
    let ends = state.engine.finished();
    let (made, workflow) = submit(state, start).await?;
    let just_made = made.created_at.map(|created_at| JustMade {
        ends,
        seen: Seen {
            id: made.id.clone(),
            status: RunStatus::Queued.as_str().to_owned(),
            workflow,
            created_at,
        },
    });
    Ok((made.id, just_made))
}

/// Waits up to `wait` for the run to end; whether it did. Woken by the engine's notice
/// of this run's end (other runs' ends are passed over without a store read: with many
/// waiters, re-reading on every end was a read per waiter per run), with a look at the
/// store now and then for runs another process drives, or when notices were missed.
async fn wait_for_end(
    state: &AppState,
    id: &str,
    wait: std::time::Duration,
    just_made: Option<JustMade>,
) -> ApiResult<(bool, Seen)> {
    let deadline = tokio::time::Instant::now() + wait;
    // A run just made is as it was made; any other is read (and each look again is).
    let (mut ends, mut made) = match just_made {
        Some(j) => (j.ends, Some(j.seen)),
        None => (state.engine.finished(), None),
    };
    loop {
        let mut row = match made.take() {
            Some(seen) => seen,
            None => Seen::of(&state.store.get_run(id).await?),
        };
        if RunStatus::parse(&row.status).is_some_and(|s| s.is_terminal()) {
            return Ok((true, row));
        }
        let look_again = tokio::time::sleep(std::time::Duration::from_millis(250));
        tokio::pin!(look_again);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok((false, row)),
                _ = &mut look_again => break,
                end = ends.recv() => match end {
                    // The notice comes once the end is durable: it is the stored state.
                    Ok((run, status)) if *run == *row.id => {
                        row.status = status.as_str().to_owned();
                        return Ok((true, row));
                    }
                    Ok(_) => {}
                    // Missed notices: read the store.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                    // The engine stopped: only the store can tell, now and then.
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(deadline) => return Ok((false, row)),
                            _ = &mut look_again => break,
                        }
                    }
                },
            }
        }
    }
}

/// A run's answer after an optional wait: `200` once it ended, `202` while it goes on.
pub(crate) async fn answer_after(
    state: &AppState,
    id: &str,
    wait: Option<std::time::Duration>,
    otherwise: StatusCode,
    view: View,
    just_made: Option<JustMade>,
) -> ApiResult<(StatusCode, Json<Json_>)> {
    let (status, seen) = match wait {
        Some(w) => match wait_for_end(state, id, w, just_made).await? {
            (true, row) => (StatusCode::OK, Some(row)),
            (false, row) => (StatusCode::ACCEPTED, Some(row)),
        },
        None => (otherwise, just_made.map(|j| j.seen)),
    };
    // The light answer of a wait (or of a run just made) is what was seen; it needs no
    // other read.
    if view == View::Light
        && let Some(row) = seen
    {
        return Ok((status, Json(row.json())));
    }
    let answer = match view {
        View::Full => full_run(state, id).await?,
        View::Light => light_run(&state.store.get_run(id).await?),
    };
    Ok((status, Json(answer)))
}

pub async fn start(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<WaitQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Json_>)> {
    let wait = q.duration()?;
    let view = q.view(wait);
    let bytes = body::read(body, state.config.body_limit).await?;
    let req: StartRun = body::json(&bytes)?;
    let key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be text"))?
                .to_owned(),
        ),
        None => None,
    };
    if let Some(key) = &key
        && let Some(existing) = state.store.find_run_by_key(key).await?
    {
        return answer_after(&state, &existing.id, wait, StatusCode::OK, view, None).await;
    }
    // A stored workflow by name alone: its newest version as this replica knows it.
    let newest_of = match (&req.workflow, req.version) {
        (Some(name), None) => Some(name.clone()),
        _ => None,
    };
    let (text, version) = match (req.workflow, req.manifest) {
        (Some(name), None) => {
            let row = match req.version {
                Some(_) => stored_workflow(&state, &name, req.version).await?,
                None => newest_workflow(&state, &name, false).await?,
            };
            (row.manifest, Some(row.version))
        }
        (None, Some(Json_::String(text))) => (text, None),
        (None, Some(m @ Json_::Object(_))) => (m.to_string(), None),
        (None, Some(_)) => {
            return Err(ApiError::bad_request(
                "`manifest` must be an object or YAML/JSON text",
            ));
        }
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `workflow` (a name) and `manifest`",
            ));
        }
    };
    let newest = newest_of.is_some();
    let start = |text, version, key| Start {
        text,
        version,
        newest,
        inputs: &req.inputs,
        key,
        origin: Origin::caller(&caller),
    };
    let started = start_watched(&state, start(text, version, key.clone())).await;
    let (id, just_made) = match (started, newest_of) {
        // The version this replica knew was not the newest any more (applied or deleted
        // through another replica): the newest, read now.
        (Err(e), Some(name)) if e.code == crate::error::WORKFLOW_CHANGED => {
            let row = newest_workflow(&state, &name, true).await?;
            start_watched(&state, start(row.manifest, Some(row.version), key)).await?
        }
        (started, _) => started?,
    };
    answer_after(&state, &id, wait, StatusCode::CREATED, view, just_made).await
}

/// The newest version of workflow `name`: as this replica last saw it, or (`read`, or
/// not seen yet) read from the store.
async fn newest_workflow(
    state: &AppState,
    name: &str,
    read: bool,
) -> ApiResult<plexus_store::WorkflowRow> {
    if !read && let Some(row) = state.newest_workflows.get(name) {
        return Ok(row);
    }
    state.newest_workflows.forget(name);
    let row = stored_workflow(state, name, None).await?;
    state.newest_workflows.put(row.clone());
    Ok(row)
}

pub async fn stored_workflow(
    state: &AppState,
    name: &str,
    version: Option<u32>,
) -> ApiResult<plexus_store::WorkflowRow> {
    state
        .store
        .get_workflow(name, version)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "workflow `{name}` not found; apply it first with POST /api/v1/workflows"
            ))
        })
}

/// Who starts a run, and who answers for it.
pub struct Origin<'a> {
    /// The actor of the run's audit records.
    pub started_by: String,
    /// Everyone who answers for the start (see [`plexus_store::NewRun::responsible`]).
    pub responsible: Vec<String>,
    /// The caller who sent the manifest with the request (`None`: a stored version).
    pub caller: Option<&'a Caller>,
}

impl<'a> Origin<'a> {
    /// A caller starting a run themselves.
    pub fn caller(caller: &'a Caller) -> Self {
        Origin {
            started_by: caller.actor(),
            responsible: vec![caller.actor()],
            caller: Some(caller),
        }
    }
}

/// Compiles, checks the inputs and starts a run; with a used idempotency key, returns the
/// run that key started.
pub async fn start_run(
    state: &AppState,
    text: String,
    version: Option<u32>,
    inputs: &serde_json::Map<String, Json_>,
    key: Option<String>,
    origin: Origin<'_>,
) -> ApiResult<String> {
    let start = Start {
        text,
        version,
        newest: false,
        inputs,
        key,
        origin,
    };
    Ok(submit(state, start).await?.0.id)
}

/// [`start_run`], telling whether and when the run was made, and its workflow's name.
async fn submit(
    state: &AppState,
    start: Start<'_>,
) -> ApiResult<(plexus_engine::Submitted, String)> {
    let Start {
        text,
        version,
        newest,
        inputs,
        key,
        origin,
    } = start;
    let Origin {
        started_by,
        mut responsible,
        caller: inline_by,
    } = origin;
    responsible.sort();
    responsible.dedup();
    let plan = crate::workflows::compile_for_run(state, &text, "manifest").await?;
    // A stored version with `isolation: none` was applied by an admin (checked there); a
    // manifest sent with the request is checked here.
    if version.is_none() {
        crate::workflows::check_isolation_opt_out(state, &plan.manifest, inline_by).await?;
    }
    let inputs = plexus_core::parse::resolve_inputs(&plan.manifest, inputs).map_err(|errors| {
        ApiError::bad_request(errors.join("; "))
            .with_code("invalid_inputs")
            .with_details(json!(errors))
    })?;
    let workflow = plan.manifest.name.clone();
    let made = state
        .engine
        .submit_run(Submission {
            plan,
            manifest_text: text,
            base_dir: state.config.base_dir.clone(),
            inputs: Json_::Object(inputs),
            idempotency_key: key,
            workflow_version: version,
            newest_version: newest,
            started_by: Some(started_by),
            responsible,
        })
        .await?;
    Ok((made, workflow))
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
