//! A plan's agent steps checked against the agents registered now: unknown agents and
//! actions, and parameters that do not fit an action's schema — each at its place in the
//! manifest. Parameters given as templates are checked when the step runs.

use super::Agents;
use plexus_core::diagnostic::did_you_mean;
use plexus_core::manifest::StepKind;
use plexus_core::{Diagnostic, Plan};
use serde_json::Value as Json;

fn templated(v: &Json) -> bool {
    match v {
        Json::String(s) => s.contains("{{") || s.contains("{%"),
        Json::Array(items) => items.iter().any(templated),
        Json::Object(m) => m.values().any(templated),
        _ => false,
    }
}

/// Problems of `plan`'s agent steps (errors), for `file`.
pub fn check_plan(agents: &Agents, plan: &Plan, file: &str) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let registered = agents.list();
    for step in &plan.manifest.steps {
        if let StepKind::Llm(spec) = &step.kind {
            out.extend(check_tools(agents, &registered, step, spec, file));
            continue;
        }
        let StepKind::Agent { agent, action } = &step.kind else {
            continue;
        };
        let mut problem =
            |field: &str, code: &'static str, message: String, hint: Option<String>| {
                let mut d = Diagnostic::new(code, step.locs.field(field), message)
                    .with_step(Some(&step.id));
                if let Some(h) = hint {
                    d = d.with_hint(h);
                }
                d.file = file.to_owned();
                out.push(d);
            };
        let Some(instance) = registered.iter().find(|i| &i.name == agent) else {
            let names: Vec<&str> = registered.iter().map(|i| i.name.as_str()).collect();
            let hint = match did_you_mean(agent, names.iter().copied()) {
                Some(n) => format!("did you mean `{n}`?"),
                None if names.is_empty() => "no agent is registered with this server".to_owned(),
                None => format!("registered: {}", names.join(", ")),
            };
            problem(
                "agent",
                "unknown-agent",
                format!("no agent `{agent}` is registered"),
                Some(hint),
            );
            continue;
        };
        let Some(spec) = agents.action(agent, action) else {
            let ids: Vec<&str> = instance.actions.iter().map(|a| a.id.as_str()).collect();
            let hint = match did_you_mean(action, ids.iter().copied()) {
                Some(a) => format!("did you mean `{a}`?"),
                None => format!("`{agent}` offers: {}", ids.join(", ")),
            };
            problem(
                "action",
                "unknown-action",
                format!("agent `{agent}` has no action `{action}`"),
                Some(hint),
            );
            continue;
        };
        let with = match &step.with {
            None => serde_json::Map::new(),
            Some(Json::Object(m)) => m.clone(),
            Some(_) => continue, // reported by validation itself
        };
        // Literal values are checked now; templated ones count as given.
        let given: Vec<&String> = with.keys().collect();
        let literal: serde_json::Map<String, Json> = with
            .iter()
            .filter(|(k, v)| !templated(v) && k.as_str() != "time_range")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for e in spec.check(&Json::Object(literal)) {
            if given
                .iter()
                .any(|k| e == format!("\"{k}\" is a required property"))
            {
                continue;
            }
            problem(
                "with",
                "bad-params",
                format!("the parameters do not fit `{agent}/{action}`: {e}"),
                Some(format!("`plexus agent get {agent}` shows its parameters")),
            );
        }
    }
    out
}

/// The `tools` of an `llm` step: each names a registered agent (and one of its actions).
fn check_tools(
    agents: &Agents,
    registered: &[super::InstanceView],
    step: &plexus_core::manifest::Step,
    spec: &Json,
    file: &str,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let names: Vec<&str> = registered
        .iter()
        .filter(|i| i.kind == "agent")
        .map(|i| i.name.as_str())
        .collect();
    for tool in spec["tools"].as_array().into_iter().flatten() {
        let Some(tool) = tool.as_str().filter(|t| *t != "*") else {
            continue;
        };
        let (agent, action) = match tool.split_once(['.', '/']) {
            Some((a, b)) => (a, Some(b)),
            None => (tool, None),
        };
        let (code, message, hint) = if !names.contains(&agent) {
            let hint = match did_you_mean(agent, names.iter().copied()) {
                Some(n) => format!("did you mean `{n}`?"),
                None if names.is_empty() => "no agent is registered with this server".to_owned(),
                None => format!("registered: {}", names.join(", ")),
            };
            (
                "unknown-agent",
                format!("tool `{tool}`: no agent `{agent}` is registered"),
                hint,
            )
        } else if let Some(action) = action.filter(|a| agents.action(agent, a).is_none()) {
            (
                "unknown-action",
                format!("tool `{tool}`: agent `{agent}` has no action `{action}`"),
                format!("list the agent's actions with `plexus agent get {agent}`"),
            )
        } else {
            continue;
        };
        let mut d = Diagnostic::new(code, step.locs.field("llm"), message)
            .with_step(Some(&step.id))
            .with_hint(hint);
        d.file = file.to_owned();
        out.push(d);
    }
    out
}
