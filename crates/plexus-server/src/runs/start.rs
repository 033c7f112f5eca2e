//! `POST /api/v1/runs` and every other way a run is started, and waiting for a run to
//! end (`?wait=`): the long poll that answers from the engine's end notices.

use super::full_run;
use crate::AppState;
use crate::auth::Caller;
use crate::body;
use crate::error::{ApiError, ApiResult};
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use plexus_core::machine::RunStatus;
use plexus_engine::Submission;
use plexus_store::RunRow;
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
    pub(super) view: Option<View>,
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
