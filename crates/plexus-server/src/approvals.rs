//! `/api/v1/approvals`: the inbox of steps waiting for a human decision, and the rules on
//! who may decide: engineers approve MODIFY steps, admins approve ADMIN steps, operators
//! approve nothing; with `approvals.forbid_self_approval`, nobody decides on a run they
//! started.

use crate::auth::{Caller, Role, approver_role, audit};
use crate::error::{ApiError, ApiResult};
use crate::{AppState, settings};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use plexus_core::manifest::Permission;
use serde_json::{Value as Json_, json};

fn permission_of(request: &Json_) -> Permission {
    serde_json::from_value(request["permission"].clone()).unwrap_or(Permission::Admin)
}

pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Json_>> {
    let pending = state.store.awaiting_approvals().await?;
    let items: Vec<Json_> = pending
        .iter()
        .map(|p| {
            let permission = permission_of(&p.request);
            json!({
                "run_id": p.run_id,
                "workflow": p.workflow,
                "step_id": p.step_id,
                "requested_by": p.requested_by,
                "requested_at": p.request["time"],
                "permission": permission,
                "approver_role": approver_role(permission).as_str(),
                "detail": p.request["detail"],
                "expires_at": p.request["expires_at"],
            })
        })
        .collect();
    let mut items = items;
    // What agents ask for while they run, decided the same way.
    for a in state.engine.agents.approvals.pending() {
        let workflow = match state.store.get_run(&a.run_id).await {
            Ok(row) => Json_::String(row.workflow),
            Err(_) => Json_::Null,
        };
        items.push(json!({
            "run_id": a.run_id,
            "workflow": workflow,
            "step_id": a.step_id,
            "requested_by": format!("agent:{}", a.agent),
            "requested_at": a.requested_at,
            "permission": a.permission,
            "approver_role": approver_role(a.permission).as_str(),
            // A model's tool call in an agentic loop, or an agent's own request.
            "detail": {"kind": if a.context.get("tool_call").is_some() { "tool_call" } else { "agent_request" },
                       "agent": a.agent, "description": a.description, "context": a.context},
            "expires_at": a.expires_at,
        }));
    }
    Ok(Json(json!({ "approvals": items })))
}

/// Decides an approval an agent waits for, if one waits at this run and step; `None`
/// when none does (the step's own gate is then decided by the engine).
pub async fn decide_agent_request(
    state: &AppState,
    caller: &Caller,
    run_id: &str,
    step: &str,
    approve: bool,
    comment: Option<&str>,
) -> ApiResult<Option<Json_>> {
    let approvals = &state.engine.agents.approvals;
    let Some(a) = approvals.find(run_id, step) else {
        return Ok(None);
    };
    let needed = approver_role(a.permission);
    let target = format!("run:{run_id}/{step}");
    if caller.role < needed {
        let message = format!(
            "`{}` asks for {} approval, which needs the {} role; you are {}",
            a.agent,
            plexus_core::machine::permission_name(a.permission),
            needed.as_str(),
            caller.role.as_str()
        );
        audit(
            state.store.as_ref(),
            &caller.actor(),
            "permission.denied",
            &target,
            json!({"reason": message}),
        )
        .await;
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", message));
    }
    let decided = approvals.decide(
        &a.id,
        plexus_engine::agents::Decision {
            approved: approve,
            by: caller.actor(),
            comment: comment.unwrap_or_default().to_owned(),
        },
    );
    if !decided {
        return Err(ApiError::conflict(format!(
            "the request of `{}` is no longer waiting (it timed out or its call ended)",
            a.agent
        )));
    }
    let action = if approve { "approve" } else { "reject" };
    audit(
        state.store.as_ref(),
        &caller.actor(),
        &format!("agent.approval_{}", if approve { "approved" } else { "rejected" }),
        &target,
        json!({"agent": a.agent, "description": a.description, "permission": a.permission, "comment": comment}),
    )
    .await;
    Ok(Some(
        json!({"run": run_id, "action": action, "step": step, "outcome": "applied"}),
    ))
}

/// Whether `actor` answers for the run the approval belongs to: who started it, or anyone
/// the run's start is traced to (an event's poster, a schedule's or trigger's author).
fn answers_for(p: &plexus_store::PendingApproval, actor: &str) -> bool {
    p.requested_by.as_deref() == Some(actor) || p.responsible.iter().any(|r| r == actor)
}

/// Refuses (403, audited) a decision the caller may not take on this step.
pub async fn check_decider(
    state: &AppState,
    caller: &Caller,
    run_id: &str,
    step_id: &str,
    digest: Option<&str>,
) -> ApiResult<()> {
    let pending = state.store.awaiting_approvals().await?;
    let Some(p) = pending
        .iter()
        .find(|p| p.run_id == run_id && p.step_id == step_id)
    else {
        return Ok(()); // not waiting: the engine answers 409 with the step's state
    };
    let shown = p.request["detail"]["digest"].as_str();
    if let Some(seen) = digest
        && shown != Some(seen)
    {
        return Err(ApiError::conflict(format!(
            "the request changed since you looked at it (digest {} now, {seen} seen); review it again",
            shown.unwrap_or("none")
        ))
        .with_code("approval_changed"));
    }
    let permission = permission_of(&p.request);
    let needed = approver_role(permission);
    let mut refusal = None;
    if caller.role < needed {
        refusal = Some(format!(
            "step `{step_id}` needs the {} role to approve or reject (its permission is {}); you are {}",
            needed.as_str(),
            plexus_core::machine::permission_name(permission),
            caller.role.as_str()
        ));
    } else if answers_for(p, &caller.actor())
        && settings::value(state, "approvals.forbid_self_approval").await? == Some(json!(true))
    {
        refusal = Some(format!(
            "you answer for run {run_id} (you started it, posted the event that started it, or created or last changed the schedule or trigger that did); approvals.forbid_self_approval asks someone else to decide"
        ));
    }
    if let Some(message) = refusal {
        audit(
            state.store.as_ref(),
            &caller.actor(),
            "permission.denied",
            &format!("run:{run_id}/{step_id}"),
            json!({"reason": message}),
        )
        .await;
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", message));
    }
    debug_assert!(needed >= Role::Engineer);
    Ok(())
}
