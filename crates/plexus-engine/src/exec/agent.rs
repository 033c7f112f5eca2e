//! Agent steps: an action of a registered agent, called over the plugin protocol's
//! `Execute`. Parameters are checked against the action's schema before the call; a
//! plugin that dies, hangs or answers garbage fails the attempt (retried per policy).
//!
//! Delivery is at least once: an attempt whose outcome was lost with a crashed engine is
//! started again, and the agent sees the same `idempotency_key` in the request's
//! `context` (with `attempt` telling the tries apart).

use super::{AttemptCtx, AttemptFuture, AttemptResult, Executor};
use crate::agents::{ActionCall, Agents};
use plexus_agent::wire;
use plexus_core::machine::{Task, Work};
use plexus_core::manifest::{Mode, Permission};
use serde_json::{Map, Value as Json};
use std::collections::BTreeMap;
use tokio::sync::oneshot;

pub struct AgentCalls {
    agents: Agents,
    tenant_id: String,
}

impl AgentCalls {
    pub fn new(agents: Agents) -> Self {
        AgentCalls {
            agents,
            tenant_id: plexus_agent::tenant_id(plexus_agent::DEFAULT_TENANT_SLUG),
        }
    }
}

pub(crate) fn mode_wire(mode: Mode) -> i32 {
    match mode {
        Mode::Manual => wire::mode::MANUAL,
        Mode::Guided => wire::mode::GUIDED,
        Mode::Autonomous => wire::mode::AUTONOMOUS,
    }
}

fn permission_name(p: Permission) -> &'static str {
    plexus_core::machine::permission_name(p)
}

/// The unit's key without the attempt: the same for every try of one step (or item).
fn idempotency_key(attempt_key: &str) -> &str {
    attempt_key.rsplit_once('/').map_or(attempt_key, |(k, _)| k)
}

impl Executor for AgentCalls {
    fn name(&self) -> &'static str {
        "agent"
    }

    fn start(&self, task: Task, ctx: AttemptCtx, mut kill: oneshot::Receiver<()>) -> AttemptFuture {
        let agents = self.agents.clone();
        let tenant_id = self.tenant_id.clone();
        Box::pin(async move {
            let Work::Agent(work) = task.work else {
                return AttemptResult::failed("not an agent step");
            };
            let plexus_core::machine::AgentWork {
                agent,
                action,
                params,
                mode,
            } = *work;
            let params = match params {
                Json::Null => Map::new(),
                Json::Object(m) => m,
                other => {
                    return AttemptResult::failed(format!(
                        "`with` of an agent step must be a mapping of parameters, not {other}"
                    ));
                }
            };
            let picked = tokio::select! {
                picked = agents.pick_patiently(&agent, &action) => picked,
                _ = &mut kill => return AttemptResult::failed("cancelled"),
            };
            let (instance, spec) = match picked {
                Ok(found) => found,
                Err(e) => return AttemptResult::failed(e.to_string()),
            };
            if spec.permission > task.permission {
                // The agent raised the action's permission after the run was planned:
                // the step was not approved for what it would do now.
                return AttemptResult::failed(format!(
                    "`{agent}/{action}` now declares {} permission but the step was planned with {}: start the run again to have it approved",
                    permission_name(spec.permission),
                    permission_name(task.permission)
                ));
            }
            let mut params = params;
            let time_range = match params.remove("time_range").map(|v| time_range(&v)) {
                None => None,
                Some(Ok(t)) => Some(t),
                Some(Err(e)) => return AttemptResult::failed(format!("`time_range`: {e}")),
            };
            let call = ActionCall {
                execution_id: ctx.run_id.to_string(),
                step_id: task.step_id.clone(),
                params,
                mode: mode_wire(mode),
                context: BTreeMap::from([
                    (
                        "idempotency_key".to_owned(),
                        idempotency_key(&task.key).to_owned(),
                    ),
                    ("attempt".to_owned(), task.attempt.to_string()),
                ]),
                time_range,
                tenant_id,
                deadline: task.timeout.unwrap_or(agents.config.default_deadline),
            };
            let outcome = tokio::select! {
                outcome = agents.execute(&instance, &spec, call) => outcome,
                _ = &mut kill => return AttemptResult::failed("cancelled"),
            };
            AttemptResult::of(outcome)
        })
    }
}

/// The window an action looks at, from a step's `time_range` parameter: a duration
/// back from now (`1h`, `15m`), or `{start_epoch_ms, end_epoch_ms}`.
fn time_range(v: &Json) -> Result<wire::TimeRange, String> {
    let now = crate::now_ms() as i64;
    match v {
        Json::String(text) => {
            let back =
                plexus_core::duration::parse_duration(text.trim_start_matches("last ").trim())
                    .map_err(|e| format!("{e} (write a duration back from now such as 1h)"))?;
            Ok(wire::TimeRange {
                start_epoch_ms: now - back.as_millis() as i64,
                end_epoch_ms: now,
                timezone: "UTC".into(),
                original_expression: text.clone(),
            })
        }
        Json::Object(m) => {
            let ms = |k: &str| m.get(k).and_then(Json::as_i64);
            let start = ms("start_epoch_ms").ok_or("`start_epoch_ms` is missing")?;
            let end = ms("end_epoch_ms").unwrap_or(now);
            if start <= 0 || end < start {
                return Err(
                    "`start_epoch_ms` must be positive and not after `end_epoch_ms`".into(),
                );
            }
            Ok(wire::TimeRange {
                start_epoch_ms: start,
                end_epoch_ms: end,
                timezone: m
                    .get("timezone")
                    .and_then(Json::as_str)
                    .unwrap_or("UTC")
                    .to_owned(),
                original_expression: String::new(),
            })
        }
        other => Err(format!(
            "a duration such as 1h or {{start_epoch_ms, end_epoch_ms}}, not {other}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_time_range_is_a_window_back_from_now_or_given_in_epoch_ms() {
        let t = time_range(&json!("1h")).unwrap();
        assert_eq!(t.end_epoch_ms - t.start_epoch_ms, 3_600_000);
        assert_eq!(t.original_expression, "1h");
        let t = time_range(&json!({"start_epoch_ms": 1000, "end_epoch_ms": 5000})).unwrap();
        assert_eq!((t.start_epoch_ms, t.end_epoch_ms), (1000, 5000));
        assert!(time_range(&json!("soon")).is_err());
        assert!(time_range(&json!({"start_epoch_ms": 9, "end_epoch_ms": 5})).is_err());
        assert!(time_range(&json!(3)).is_err());
    }

    #[test]
    fn the_idempotency_key_is_the_same_for_every_attempt() {
        assert_eq!(idempotency_key("r1/step/-/1"), "r1/step/-");
        assert_eq!(idempotency_key("r1/step/-/2"), "r1/step/-");
    }
}
