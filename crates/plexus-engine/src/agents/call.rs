//! One call of an agent's action (Execute): the parameters checked against the action's
//! schema and sent the way the agent reads them, the call tracked while it runs (an
//! approval the agent asks for belongs to it), the answer turned into an outcome.

use super::{ActionSpec, Agents, Instance, unreachable};
use plexus_agent::wire::{self, Blob};
use plexus_core::machine::Outcome;
use serde_json::{Map, Value as Json};
use std::collections::BTreeMap;
use std::time::Duration;

/// What to call an action with.
pub struct ActionCall {
    /// The run (`execution_id` on the wire).
    pub execution_id: String,
    pub step_id: String,
    pub params: Map<String, Json>,
    /// The execution mode on the wire.
    pub mode: i32,
    pub context: BTreeMap<String, String>,
    pub time_range: Option<wire::TimeRange>,
    pub tenant_id: String,
    pub deadline: Duration,
}

impl Agents {
    /// Calls `spec` on `instance`; every way it can go wrong is a failure outcome.
    pub async fn execute(
        &self,
        instance: &Instance,
        spec: &ActionSpec,
        call: ActionCall,
    ) -> Outcome {
        let (agent, action) = (instance.name.as_str(), spec.id.as_str());
        let failure = |error: String| Outcome::Failure {
            error,
            output: Json::Null,
        };
        let problems = spec.check(&Json::Object(call.params.clone()));
        if !problems.is_empty() {
            return failure(format!(
                "the parameters do not fit `{agent}/{action}`: {}",
                problems.join("; ")
            ));
        }
        let mut sent = spec.params.values_for_agent(&call.params);
        // The public agents look for the action among the parameters.
        sent.insert("action".into(), Json::String(action.to_owned()));
        let request = wire::ExecuteRequest {
            execution_id: call.execution_id,
            step_id: call.step_id,
            action_id: action.to_owned(),
            params_json: Blob::json(&Json::Object(sent), instance.style),
            mode: call.mode,
            execution_mode: call.mode,
            context: call.context,
            time_range: call.time_range,
            tenant_id: call.tenant_id,
        };
        let started = std::time::Instant::now();
        // While the call runs, an approval the agent asks for belongs to this step.
        let _in_flight = self.approvals.calling(
            &request.execution_id,
            &request.step_id,
            agent,
            started + call.deadline,
        );
        let outcome = match &instance.link {
            super::Link::Plugin(peer) => {
                let answer = peer
                    .call("Execute", wire::encode(&request), call.deadline)
                    .await;
                match answer {
                    Ok(answer) => outcome_of(agent, action, answer),
                    Err(e) => {
                        if unreachable(&e) {
                            self.set_health(
                                &instance.name,
                                &instance.instance_id,
                                false,
                                &e.to_string(),
                            );
                        }
                        let e = if e.code() == Some(plexus_agent::rpc::Code::DeadlineExceeded) {
                            format!(
                                "timed out after {}",
                                plexus_core::duration::format_duration(call.deadline)
                            )
                        } else {
                            e.to_string()
                        };
                        failure(format!("`{agent}/{action}`: {e}"))
                    }
                }
            }
            // A tool takes the parameters as they are.
            super::Link::Mcp(peer) => {
                match super::mcp::call_tool(peer, action, call.params, call.deadline).await {
                    Ok(output) => Outcome::Success(output),
                    Err(e) => failure(format!("`{agent}/{action}`: {e}")),
                }
            }
        };
        metrics::histogram!("plexus_agent_call_seconds", "agent" => agent.to_owned())
            .record(started.elapsed().as_secs_f64());
        let label = if matches!(outcome, Outcome::Success(_)) {
            "success"
        } else {
            "failure"
        };
        metrics::counter!("plexus_agent_calls_total", "agent" => agent.to_owned(), "outcome" => label)
            .increment(1);
        outcome
    }
}

/// What an Execute answer means for the step.
fn outcome_of(agent: &str, action: &str, answer: Json) -> Outcome {
    let failure = |error: String, output: Json| Outcome::Failure { error, output };
    let response: wire::ExecuteResponse = match wire::decode(answer) {
        Ok(r) => r,
        Err(e) => {
            return failure(
                format!("`{agent}/{action}` answered garbage: {e}"),
                Json::Null,
            );
        }
    };
    let result = match response.result_json.to_json() {
        Ok(r) => r.unwrap_or(Json::Null),
        Err(e) => {
            return failure(
                format!("`{agent}/{action}` answered a result that is not JSON: {e}"),
                Json::Null,
            );
        }
    };
    if !response.success {
        let error = if response.error.trim().is_empty() {
            "the agent reported a failure without a message".to_owned()
        } else {
            response.error
        };
        return failure(format!("`{agent}/{action}`: {error}"), result);
    }
    // The public agents report failures as a successful call with `{"error": ...}`.
    if let Some(error) = result.get("error").filter(|e| !e.is_null() && *e != "") {
        let error = error
            .as_str()
            .map_or_else(|| error.to_string(), str::to_owned);
        return failure(format!("`{agent}/{action}`: {error}"), result);
    }
    Outcome::Success(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_answer_becomes_the_steps_outcome() {
        let ok = outcome_of(
            "a",
            "q",
            json!({"success": true, "result_json": wire::Blob::json(&json!({"n": 1}), wire::Style::Go).0}),
        );
        assert_eq!(ok, Outcome::Success(json!({"n": 1})));
        let raw = outcome_of(
            "a",
            "q",
            json!({"success": true, "result_json": "{\"n\": 2}"}),
        );
        assert_eq!(raw, Outcome::Success(json!({"n": 2})));
        let Outcome::Failure { error, .. } = outcome_of(
            "a",
            "q",
            json!({"success": true, "result_json": "{\"error\": \"backend down\"}"}),
        ) else {
            panic!("an error result is a failure")
        };
        assert_eq!(error, "`a/q`: backend down");
        let Outcome::Failure { error, .. } = outcome_of(
            "a",
            "q",
            json!({"success": false, "error": "no such metric"}),
        ) else {
            panic!()
        };
        assert!(error.ends_with("no such metric"));
        let Outcome::Failure { error, .. } =
            outcome_of("a", "q", json!({"success": true, "result_json": "%%%"}))
        else {
            panic!()
        };
        assert!(error.contains("not JSON"), "{error}");
        let Outcome::Failure { error, .. } = outcome_of("a", "q", json!([1, 2])) else {
            panic!()
        };
        assert!(error.contains("garbage"), "{error}");
    }
}
