//! How events change the `runs` and `steps` rows. Shared by every store implementation so
//! that the materialised rows mean the same thing everywhere.

use plexus_core::machine::{Event, EventKind, Millis};
use serde_json::Value as Json;

#[derive(Debug, Clone, PartialEq)]
pub struct StepChange {
    pub step_id: String,
    pub status: &'static str,
    pub attempt: Option<u32>,
    pub started: Option<Millis>,
    pub finished: Option<Millis>,
    /// Shared with the event (a foreach's output can be large).
    pub output: Option<std::sync::Arc<Json>>,
    /// `Some(None)` clears the error.
    pub error: Option<Option<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RowChange {
    Step(StepChange),
    Run {
        status: &'static str,
        finished: Option<Millis>,
        outputs: Option<Json>,
        error: Option<String>,
    },
    /// A retried run is running again: no end, no error, no outputs.
    RunReopened,
    /// A reset step is pending again, with nothing of its last attempts shown.
    StepReopened {
        step_id: String,
    },
    /// The event changes no row beyond `last_seq`.
    None,
}

pub fn materialize(e: &Event) -> RowChange {
    let step = |step_id: &str, status: &'static str| StepChange {
        step_id: step_id.to_owned(),
        status,
        attempt: None,
        started: None,
        finished: None,
        output: None,
        error: None,
    };
    match &e.kind {
        EventKind::RunStarted { .. } => RowChange::Run {
            status: "running",
            finished: None,
            outputs: None,
            error: None,
        },
        EventKind::RunSucceeded { outputs } => RowChange::Run {
            status: "succeeded",
            finished: Some(e.time),
            outputs: Some(outputs.clone()),
            error: None,
        },
        EventKind::RunFailed { error, outputs } => RowChange::Run {
            status: "failed",
            finished: Some(e.time),
            outputs: Some(outputs.clone()),
            error: Some(error.clone()),
        },
        EventKind::RunPaused { .. } => RowChange::Run {
            status: "paused",
            finished: None,
            outputs: None,
            error: None,
        },
        EventKind::RunResumed { .. } => RowChange::Run {
            status: "running",
            finished: None,
            outputs: None,
            error: None,
        },
        EventKind::RunRetried { .. } => RowChange::RunReopened,
        EventKind::StepReset { step_id } => RowChange::StepReopened {
            step_id: step_id.clone(),
        },
        EventKind::RunCancelled { reason } => RowChange::Run {
            status: "cancelled",
            finished: Some(e.time),
            outputs: None,
            error: Some(reason.clone()),
        },
        EventKind::StepExpanded { step_id, .. } => RowChange::Step(StepChange {
            started: Some(e.time),
            ..step(step_id, "running")
        }),
        EventKind::StepAwaitingApproval { step_id, .. } => {
            RowChange::Step(step(step_id, "awaiting_approval"))
        }
        EventKind::StepApproved { step_id, .. } => RowChange::Step(step(step_id, "pending")),
        EventKind::StepStarted {
            step_id,
            item,
            attempt,
            ..
        } => RowChange::Step(StepChange {
            attempt: item.is_none().then_some(*attempt),
            started: Some(e.time),
            ..step(step_id, "running")
        }),
        EventKind::StepWaiting {
            step_id,
            item,
            attempt,
            ..
        } => RowChange::Step(StepChange {
            attempt: item.is_none().then_some(*attempt),
            started: Some(e.time),
            ..step(step_id, if item.is_some() { "running" } else { "waiting" })
        }),
        EventKind::StepSucceeded {
            step_id,
            item: Some(_),
            ..
        } => RowChange::Step(step(step_id, "running")),
        EventKind::StepSucceeded {
            step_id,
            item: None,
            attempt,
            output,
        } => RowChange::Step(StepChange {
            attempt: (*attempt > 0).then_some(*attempt),
            finished: Some(e.time),
            output: Some(output.clone()),
            error: Some(None),
            ..step(step_id, "succeeded")
        }),
        EventKind::StepFailed {
            step_id,
            item: Some(_),
            retry_at: None,
            error,
            ..
        } => RowChange::Step(StepChange {
            error: Some(Some(error.clone())),
            ..step(step_id, "partial")
        }),
        EventKind::StepFailed {
            step_id,
            item: Some(_),
            ..
        } => RowChange::Step(step(step_id, "running")),
        EventKind::StepFailed {
            step_id,
            item: None,
            attempt,
            error,
            output,
            retry_at,
        } => RowChange::Step(StepChange {
            attempt: (*attempt > 0).then_some(*attempt),
            finished: retry_at.is_none().then_some(e.time),
            output: Some(output.clone()),
            error: Some(Some(error.clone())),
            ..step(
                step_id,
                if retry_at.is_some() {
                    "retry_wait"
                } else {
                    "failed"
                },
            )
        }),
        EventKind::StepInterrupted {
            step_id,
            item: None,
            ..
        } => RowChange::Step(step(step_id, "pending")),
        EventKind::StepInterrupted { .. } | EventKind::StepProgress { .. } => RowChange::None,
        EventKind::StepSkipped {
            step_id,
            reason,
            by,
            comment,
        } => RowChange::Step(StepChange {
            finished: Some(e.time),
            error: Some(Some(plexus_core::machine::skip_text(
                reason,
                by.as_deref(),
                comment.as_deref(),
            ))),
            ..step(step_id, "skipped")
        }),
        EventKind::StepCancelled { step_id } => RowChange::Step(StepChange {
            finished: Some(e.time),
            ..step(step_id, "cancelled")
        }),
    }
}

/// What a run event contributes to the audit log (workflow domain), if anything.
#[derive(Debug, Clone, PartialEq)]
pub struct RunAudit {
    /// `run.started`, `run.succeeded`, `run.failed`, `run.cancelled`,
    /// `approval.requested`, `approval.granted`, `approval.rejected`, `approval.timed_out`.
    pub action: &'static str,
    /// Who did it; `None` means the run's starter (who asked, for approval requests) or
    /// the system for outcomes.
    pub actor: Option<String>,
    pub step_id: Option<String>,
    pub details: Json,
}

pub fn run_audit(e: &Event) -> Option<RunAudit> {
    let audit = |action, actor, step_id: Option<&String>, details| {
        Some(RunAudit {
            action,
            actor,
            step_id: step_id.cloned(),
            details,
        })
    };
    match &e.kind {
        EventKind::RunStarted { .. } => audit("run.started", None, None, Json::Null),
        EventKind::RunSucceeded { .. } => {
            audit("run.succeeded", Some("system".into()), None, Json::Null)
        }
        EventKind::RunFailed { error, .. } => audit(
            "run.failed",
            Some("system".into()),
            None,
            serde_json::json!({ "error": error }),
        ),
        EventKind::RunCancelled { reason } => audit(
            "run.cancelled",
            Some("system".into()),
            None,
            serde_json::json!({ "reason": reason }),
        ),
        EventKind::StepAwaitingApproval {
            step_id,
            permission,
            detail,
            expires_at,
        } => audit(
            "approval.requested",
            None,
            Some(step_id),
            serde_json::json!({ "permission": permission, "detail": detail, "expires_at": expires_at }),
        ),
        EventKind::StepApproved {
            step_id,
            by,
            comment,
        } => audit(
            "approval.granted",
            Some(by.clone()),
            Some(step_id),
            serde_json::json!({ "comment": comment }),
        ),
        EventKind::StepSkipped {
            step_id,
            reason,
            by: Some(by),
            comment,
        } if reason == plexus_core::machine::REJECTED => audit(
            "approval.rejected",
            Some(by.clone()),
            Some(step_id),
            serde_json::json!({ "comment": comment }),
        ),
        EventKind::StepSkipped {
            step_id, reason, ..
        } if reason == plexus_core::machine::APPROVAL_TIMED_OUT => audit(
            "approval.timed_out",
            Some("system".into()),
            Some(step_id),
            serde_json::json!({ "reason": reason }),
        ),
        // A tool-calling loop's approvals and calls (see the engine's `llm_loop`).
        EventKind::StepProgress { step_id, entry, .. } => {
            let call = serde_json::json!({
                "tool_call": entry["call"], "agent": entry["agent"], "action": entry["action"],
            });
            let with = |k: &str| {
                let mut d = call.clone();
                d[k] = entry[k].clone();
                d
            };
            match entry["type"].as_str() {
                Some("approval_requested") => audit(
                    "approval.requested",
                    None,
                    Some(step_id),
                    serde_json::json!({"permission": entry["permission"], "detail": {
                        "kind": "tool_call", "tool_call": entry["call"], "agent": entry["agent"],
                        "action": entry["action"], "arguments": entry["arguments"]}}),
                ),
                Some("approval") if entry["approved"] == true => audit(
                    "approval.granted",
                    entry["by"].as_str().map(str::to_owned),
                    Some(step_id),
                    with("comment"),
                ),
                Some("approval") => match entry["by"].as_str().filter(|b| !b.is_empty()) {
                    Some(by) => audit(
                        "approval.rejected",
                        Some(by.to_owned()),
                        Some(step_id),
                        with("comment"),
                    ),
                    None => audit(
                        "approval.timed_out",
                        Some("system".into()),
                        Some(step_id),
                        call,
                    ),
                },
                Some("tool") => audit("tool.called", None, Some(step_id), with("status")),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The workflow audit record of a run event, given the run's workflow and starter: what
/// every backend appends in the commit that stores the event. Workflow events also go to
/// the JSON log.
pub fn run_audit_entry(
    run_id: &str,
    time: Millis,
    audit: RunAudit,
    workflow: &str,
    started_by: Option<String>,
) -> plexus_core::audit::AuditEntry {
    let actor = audit
        .actor
        .or(started_by)
        .unwrap_or_else(|| "system".into());
    let target = match &audit.step_id {
        Some(step) => format!("run:{run_id}/{step}"),
        None => format!("run:{run_id}"),
    };
    let mut details = serde_json::json!({ "workflow": workflow });
    if let Json::Object(extra) = audit.details {
        details.as_object_mut().expect("an object").extend(extra);
    }
    // A run's start and end are logged at info by the engine already ("run event");
    // their audit lines would double every run's log at info, and this runs on the
    // store's writer, the one thread every commit waits for.
    if audit.action.starts_with("run.") {
        tracing::debug!(target: "plexus::audit", actor, action = audit.action, target, "audit");
    } else {
        tracing::info!(target: "plexus::audit", actor, action = audit.action, target, "audit");
    }
    plexus_core::audit::AuditEntry {
        time,
        actor,
        domain: plexus_core::audit::Domain::Workflow,
        action: audit.action.to_owned(),
        target,
        details: details.to_string(),
    }
}
