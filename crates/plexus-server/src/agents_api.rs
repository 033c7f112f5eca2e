//! `/api/v1/agents`: the agents the engine knows, their health, and their actions run on
//! request — as a one-step run, so an action invoked by hand takes the same permission,
//! approval and audit path as a workflow step.

use crate::auth::Caller;
use crate::body;
use crate::error::{ApiError, ApiResult};
use crate::runs::{Origin, Start, WaitQuery, answer_after, start_watched};
use crate::{AppState, auth::audit};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use plexus_engine::agents::InstanceView;
use serde::Deserialize;
use serde_json::{Value as Json_, json};

/// Instances grouped by agent name: what `plexus agent list` shows.
fn grouped(instances: Vec<InstanceView>) -> Vec<Json_> {
    let mut out: Vec<Json_> = Vec::new();
    let mut names: Vec<String> = instances.iter().map(|i| i.name.clone()).collect();
    names.dedup();
    for name in names {
        let of: Vec<&InstanceView> = instances.iter().filter(|i| i.name == name).collect();
        // An agent is as healthy as its best instance: work goes to the healthy ones.
        let health = ["healthy", "unhealthy", "silent"]
            .into_iter()
            .find(|h| of.iter().any(|i| i.health == *h))
            .unwrap_or("unhealthy");
        let newest = of
            .iter()
            .max_by_key(|i| i.registered_at)
            .expect("a name has an instance");
        out.push(json!({
            "name": name,
            "version": newest.version,
            "description": newest.description,
            "permission": newest.permission,
            "health": health,
            "actions": newest.actions,
            "instances": of.iter().map(|i| json!({
                "instance_id": i.instance_id,
                "addr": i.addr,
                "version": i.version,
                "source": i.source,
                "health": i.health,
                "health_message": i.health_message,
                "registered_at": i.registered_at,
                "seconds_since_seen": i.seconds_since_seen,
            })).collect::<Vec<_>>(),
        }));
    }
    out
}

fn one(state: &AppState, name: &str) -> ApiResult<Json_> {
    grouped(
        state
            .engine
            .agents
            .list()
            .into_iter()
            .filter(|i| i.name == name)
            .collect(),
    )
    .pop()
    .ok_or_else(|| {
        ApiError::not_found(format!(
            "no agent `{name}` is registered; `plexus agent list` shows those that are"
        ))
    })
}

pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Json_>> {
    Ok(Json(json!({"agents": grouped(state.engine.agents.list())})))
}

pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Json_>> {
    Ok(Json(one(&state, &name)?))
}

/// Asks every instance for its health now (instead of at the next periodic check).
pub async fn check(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Json_>> {
    one(&state, &name)?;
    state.engine.agents.check_health().await;
    Ok(Json(one(&state, &name)?))
}

/// Forgets every instance of an agent. A plugin that is still running registers again at
/// its next heartbeat; stop the plugin to be rid of it.
pub async fn remove(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<Json_>> {
    // An MCP server is configured: forgetting it means removing its configuration.
    let mcp = state.store.delete_setting(&format!("mcp.{name}")).await?;
    if mcp {
        state.engine.mcp.apply(&name, None);
    }
    let n = state.engine.agents.remove(&name);
    if n == 0 && !mcp {
        return Err(ApiError::not_found(format!(
            "no agent `{name}` is registered"
        )));
    }
    audit(
        state.store.as_ref(),
        &caller.actor(),
        "agent.removed",
        &format!("agent:{name}"),
        json!({"instances": n}),
    )
    .await;
    Ok(Json(json!({"name": name, "removed_instances": n})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Invoke {
    #[serde(default)]
    params: serde_json::Map<String, Json_>,
}

/// The one-step workflow that runs an action on request.
pub fn invoke_manifest(
    agent: &str,
    action: &str,
    params: &serde_json::Map<String, Json_>,
) -> String {
    let name: String = format!("invoke-{agent}-{action}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    json!({
        "version": "plexus/v1",
        "name": name,
        "description": format!("{agent}/{action} invoked on request"),
        "steps": [{"id": "invoke", "agent": agent, "action": action, "with": params}],
    })
    .to_string()
}

/// Runs an action as a one-step run (`?wait=` as for starting runs).
pub async fn invoke(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((agent, action)): Path<(String, String)>,
    Query(q): Query<WaitQuery>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Json_>)> {
    let wait = q.duration()?;
    let bytes = body::read(body, state.config.body_limit).await?;
    let req: Invoke = if bytes.is_empty() {
        Invoke::default()
    } else {
        body::json(&bytes)?
    };
    let Some(spec) = state.engine.agents.action(&agent, &action) else {
        one(&state, &agent)?;
        return Err(ApiError::not_found(format!(
            "agent `{agent}` has no action `{action}`"
        )));
    };
    // Bad parameters are the caller's mistake: say so now rather than in a failed run.
    let problems = spec.check(&Json_::Object(req.params.clone()));
    if !problems.is_empty() {
        return Err(ApiError::bad_request(format!(
            "the parameters do not fit `{agent}/{action}`: {}",
            problems.join("; ")
        ))
        .with_code("invalid_params")
        .with_details(json!(problems)));
    }
    let text = invoke_manifest(&agent, &action, &req.params);
    let inputs = Default::default();
    let start = Start {
        text,
        version: None,
        newest: false,
        inputs: &inputs,
        key: None,
        origin: Origin::caller(&caller),
    };
    let (id, just_made) = start_watched(&state, start).await?;
    answer_after(
        &state,
        &id,
        wait,
        StatusCode::CREATED,
        q.view(wait),
        just_made,
    )
    .await
}
