//! `/api/v1/workflows`: versioned workflow definitions.

use crate::body;
use crate::error::{ApiError, ApiResult};
use crate::{AppState, now_ms};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value as Json_, json};

/// Compiles manifest text; invalid manifests answer with the same problem list
/// `plexus validate -o json` prints.
pub fn compile(state: &AppState, text: &str, source: &str) -> ApiResult<plexus_core::Plan> {
    compile_with(&state.compile, text, source)
}

/// Compiles a manifest to run now: a manifest without `mode` takes the
/// `execution_mode` setting.
pub async fn compile_for_run(
    state: &AppState,
    text: &str,
    source: &str,
) -> ApiResult<std::sync::Arc<plexus_core::Plan>> {
    let mode = crate::settings::value(state, "execution_mode")
        .await?
        .and_then(|v| v.as_str().and_then(plexus_core::manifest::Mode::parse));
    let opts = plexus_core::CompileOptions {
        default_mode: mode,
        ..state.compile.clone()
    };
    let plan = compile_cached(state, &opts, text, source)?;
    // Agent steps are gated at least at the permission their actions declare now.
    let wanted = plan.agent_actions();
    if wanted.is_empty() {
        return Ok(plan);
    }
    let floors = state.engine.agents.floors(&wanted);
    if floors == plan.options.action_floors {
        return Ok(plan);
    }
    let opts = plexus_core::CompileOptions {
        action_floors: floors,
        ..opts
    };
    compile_cached(state, &opts, text, source)
}

/// A plan depends on the text and the options only: a stored version started again (a
/// schedule, a trigger, a client starting it by name) is not parsed again.
fn compile_cached(
    state: &AppState,
    opts: &plexus_core::CompileOptions,
    text: &str,
    source: &str,
) -> ApiResult<std::sync::Arc<plexus_core::Plan>> {
    let key = crate::auth::credentials::sha256_hex(&format!("{}\n{}", opts.to_stored(), text));
    if let Some(plan) = state.plans.get(&key) {
        return Ok(plan);
    }
    let plan = std::sync::Arc::new(compile_with(opts, text, source)?);
    state.plans.put(key, plan.clone());
    Ok(plan)
}

/// Compiled plans by the digest of their options and text, the newest few hundred.
#[derive(Default)]
pub struct PlanCache {
    plans:
        std::sync::Mutex<std::collections::VecDeque<(String, std::sync::Arc<plexus_core::Plan>)>>,
}

impl PlanCache {
    const SIZE: usize = 256;

    /// How many plans are kept.
    pub fn len(&self) -> usize {
        self.plans.lock().map_or(0, |p| p.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, key: &str) -> Option<std::sync::Arc<plexus_core::Plan>> {
        let plans = self.plans.lock().ok()?;
        plans.iter().find(|(k, _)| k == key).map(|(_, p)| p.clone())
    }

    fn put(&self, key: String, plan: std::sync::Arc<plexus_core::Plan>) {
        if let Ok(mut plans) = self.plans.lock() {
            plans.push_back((key, plan));
            while plans.len() > Self::SIZE {
                plans.pop_front();
            }
        }
    }
}

/// The newest version of each workflow started by name, as this replica last read or
/// applied it: a start by name reads nothing before it makes the run. An entry gone
/// stale through another replica (a version applied there, or the workflow deleted) is
/// caught by the store, in the statement that makes the run (`workflow_changed`), and
/// the start reads the newest version again.
#[derive(Default)]
pub struct NewestWorkflows {
    rows: std::sync::Mutex<std::collections::HashMap<String, plexus_store::WorkflowRow>>,
}

impl NewestWorkflows {
    /// Most names kept; past that the cache starts again empty.
    const SIZE: usize = 1024;

    pub fn get(&self, name: &str) -> Option<plexus_store::WorkflowRow> {
        self.rows.lock().ok()?.get(name).cloned()
    }

    pub fn put(&self, row: plexus_store::WorkflowRow) {
        if let Ok(mut rows) = self.rows.lock() {
            if rows.len() >= Self::SIZE {
                rows.clear();
            }
            rows.insert(row.name.clone(), row);
        }
    }

    pub fn forget(&self, name: &str) {
        if let Ok(mut rows) = self.rows.lock() {
            rows.remove(name);
        }
    }
}

fn compile_with(
    opts: &plexus_core::CompileOptions,
    text: &str,
    source: &str,
) -> ApiResult<plexus_core::Plan> {
    plexus_core::load(text, source, opts).map_err(|problems| {
        let n = problems.len();
        ApiError::bad_request(format!(
            "the manifest has {n} problem{}",
            if n == 1 { "" } else { "s" }
        ))
        .with_code("invalid_manifest")
        .with_details(serde_json::to_value(problems).unwrap_or(Json_::Null))
    })
}

pub async fn apply(
    State(state): State<AppState>,
    Extension(caller): Extension<crate::auth::Caller>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Json_>)> {
    let bytes = body::read(body, state.config.body_limit).await?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ApiError::bad_request("the manifest is not UTF-8 text"))?;
    let plan = compile(&state, text, "request body")?;
    check_isolation_opt_out(&state, &plan.manifest, Some(&caller)).await?;
    let (row, created) = state
        .store
        .put_workflow(&plan.manifest.name, text, Some(&caller.actor()), now_ms())
        .await?;
    sync_schedule(&state, &plan.manifest, caller.actor()).await?;
    state.intents.workflows_changed();
    state
        .store
        .set_triggers(&plan.manifest.name, &plan.manifest.on)
        .await?;
    state.newest_workflows.put(row.clone());
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(
            json!({"name": row.name, "version": row.version, "created": created, "steps": plan.len()}),
        ),
    ))
}

/// Checks a manifest (the body, YAML or JSON) as this server would run it: the manifest
/// itself, then its agent steps against the agents registered now. Always `200`: the
/// answer says whether it is valid and lists every problem with its line and column.
pub async fn validate(State(state): State<AppState>, body: Body) -> ApiResult<Json<Json_>> {
    let bytes = body::read(body, state.config.body_limit).await?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ApiError::bad_request("the manifest is not UTF-8 text"))?;
    let (problems, warnings) = match plexus_core::load(text, "manifest", &state.compile) {
        Ok(plan) => {
            let problems =
                plexus_engine::agents::check::check_plan(&state.engine.agents, &plan, "manifest");
            let mut warnings = plexus_engine::exec::not_executed(&plan, "manifest");
            warnings.extend(plexus_core::plan::unquoted_inputs(&plan, "manifest"));
            (problems, warnings)
        }
        Err(d) => (d, Vec::new()),
    };
    let (problems, more): (Vec<_>, Vec<_>) = problems
        .into_iter()
        .partition(|d| d.severity == plexus_core::Severity::Error);
    let warnings: Vec<_> = warnings.into_iter().chain(more).collect();
    Ok(Json(json!({
        "valid": problems.is_empty(),
        "problems": problems,
        "warnings": warnings,
    })))
}

pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Json_>> {
    let rows = state.store.list_workflows().await?;
    let items: Vec<Json_> = rows
        .iter()
        .map(|w| json!({"name": w.name, "version": w.version, "created_at": w.created_at}))
        .collect();
    Ok(Json(json!({ "workflows": items })))
}

#[derive(Deserialize)]
pub struct VersionQuery {
    version: Option<u32>,
}

pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<VersionQuery>,
) -> ApiResult<Json<Json_>> {
    let row = state
        .store
        .get_workflow(&name, q.version)
        .await?
        .ok_or_else(|| match q.version {
            Some(v) => ApiError::not_found(format!("workflow `{name}` has no version {v}")),
            None => ApiError::not_found(format!("workflow `{name}` not found")),
        })?;
    Ok(Json(
        json!({"name": row.name, "version": row.version, "created_at": row.created_at, "manifest": row.manifest}),
    ))
}

/// A manifest's `schedule:` becomes the schedule named after the workflow; removing the
/// line removes that schedule (schedules created through the API are left alone).
/// `isolation: none` lets a workflow's steps reach the data directory (the store, the
/// keys): only an admin may apply or start such a manifest, and it is audited.
pub async fn check_isolation_opt_out(
    state: &AppState,
    manifest: &plexus_core::Manifest,
    caller: Option<&crate::auth::Caller>,
) -> ApiResult<()> {
    if !manifest.unisolated {
        return Ok(());
    }
    let Some(caller) = caller.filter(|c| c.role >= crate::auth::Role::Admin) else {
        let who = caller.map_or("this caller".to_owned(), |c| {
            format!("user `{}`", c.username)
        });
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "workflow `{}` says `isolation: none` (its steps could reach the store and the keys): only an admin may run it, and {who} is not one",
                manifest.name
            ),
        ));
    };
    crate::auth::audit(
        state.store.as_ref(),
        &caller.actor(),
        "isolation.disabled",
        &format!("workflow:{}", manifest.name),
        json!({}),
    )
    .await;
    Ok(())
}

async fn sync_schedule(
    state: &AppState,
    manifest: &plexus_core::Manifest,
    by: String,
) -> ApiResult<()> {
    let existing = state.store.get_schedule(&manifest.name).await?;
    let ours = existing.as_ref().is_none_or(|e| e.from_manifest);
    match &manifest.schedule {
        Some(cron) if ours => {
            let row = crate::schedules::new_row(
                manifest.name.clone(),
                manifest.name.clone(),
                cron,
                json!({}),
                plexus_core::schedule::CatchUp::Skip,
                true,
                by,
            )?;
            state.store.put_schedule(row).await?;
        }
        None if existing.is_some() && ours => {
            state.store.delete_schedule(&manifest.name).await?;
        }
        _ => {}
    }
    Ok(())
}

pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if let Some(s) = state.store.get_schedule(&name).await?
        && s.from_manifest
    {
        state.store.delete_schedule(&name).await?;
    }
    state.store.set_triggers(&name, &[]).await?;
    state.newest_workflows.forget(&name);
    if state.store.delete_workflow(&name, now_ms()).await? {
        state.intents.workflows_changed();
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("workflow `{name}` not found")))
    }
}
