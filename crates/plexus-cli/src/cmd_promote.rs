//! `plexus runs promote RUN`: an agentic loop that worked, as a workflow that makes the
//! same tool calls again — one agent step per call that succeeded, in the order made.

use crate::target::Target;
use anyhow::{Context, Result, bail};
use serde_json::Value as Json;
use std::path::PathBuf;

/// A run as both stores show it: its id, workflow, state, inputs and steps' outputs.
async fn fetch(target: &Target<'_>, run: &str) -> Result<Json> {
    match target {
        Target::Local(settings) => {
            let store = settings.open_store().await?;
            let row = store.get_run(run).await?;
            let steps = store.steps(&row.id).await?;
            Ok(serde_json::json!({
                "id": row.id, "workflow": row.workflow, "state": row.status, "inputs": row.inputs,
                "steps": steps.iter().map(|s| serde_json::json!({"id": s.step_id, "output": s.output})).collect::<Vec<_>>(),
            }))
        }
        Target::Remote(c) => {
            c.call(
                "GET",
                &format!("/api/v1/runs/{}", crate::http_client::segment(run)),
                None,
            )
            .await
        }
    }
}

/// A step id from a call's place and action: `call_2_write_note`.
fn step_id(n: usize, action: &str) -> String {
    let clean: String = action
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("call_{n}_{clean}")
}

/// The workflow's YAML (values in JSON's flow style, which YAML reads as it is).
pub fn promoted(run: &Json, name: &str) -> Result<String> {
    if run["state"] != "succeeded" {
        bail!(
            "run {} {}: only a loop that succeeded is promoted",
            run["id"].as_str().unwrap_or(""),
            run["state"].as_str().unwrap_or("")
        );
    }
    let calls: Vec<&Json> = run["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["output"]["tool_calls"].as_array())
        .flatten()
        .filter(|c| c["status"] == "ok")
        .collect();
    if calls.is_empty() {
        bail!(
            "run {} made no tool call that succeeded: nothing to promote",
            run["id"].as_str().unwrap_or("")
        );
    }
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut y = format!("version: plexus/v1\nname: {name}\n");
    let question = run["inputs"]["question"].as_str();
    y.push_str(&format!(
        "description: {}\n",
        q(&format!(
            "Promoted from agentic run {}{}",
            run["id"].as_str().unwrap_or(""),
            question.map(|q| format!(": {q}")).unwrap_or_default()
        ))
    ));
    if let Some(question) = question {
        y.push_str(&format!("intents:\n  - {}\n", q(question)));
    }
    y.push_str("steps:\n");
    let mut previous: Option<String> = None;
    for (i, c) in calls.iter().enumerate() {
        let (agent, action) = (
            c["agent"]
                .as_str()
                .context("a tool call without its agent")?,
            c["action"]
                .as_str()
                .context("a tool call without its action")?,
        );
        let id = step_id(i + 1, action);
        y.push_str(&format!(
            "  - id: {id}\n    agent: {}\n    action: {}\n",
            q(agent),
            q(action)
        ));
        if let Some(p) = &previous {
            y.push_str(&format!("    needs: [{p}]\n"));
        }
        if c["arguments"].as_object().is_some_and(|m| !m.is_empty()) {
            y.push_str(&format!("    with: {}\n", c["arguments"]));
        }
        previous = Some(id);
    }
    Ok(y)
}

pub async fn promote(
    target: &Target<'_>,
    run: &str,
    name: Option<String>,
    file: Option<PathBuf>,
) -> Result<i32> {
    let fetched = fetch(target, run).await?;
    let short: String = fetched["id"]
        .as_str()
        .unwrap_or(run)
        .chars()
        .take(8)
        .collect();
    let name = name.unwrap_or_else(|| format!("promoted-{short}"));
    if !plexus_core::parse::valid_name(&name) {
        bail!("`{name}` is not a workflow name: lower-case letters, digits, - and _");
    }
    let yaml = promoted(&fetched, &name)?;
    match file {
        Some(f) => {
            std::fs::write(&f, &yaml).with_context(|| format!("cannot write {}", f.display()))?;
            crate::output::remark(&format!(
                "wrote {}: check it with `plexus validate {} --server URL`, store it with `plexus workflow apply`",
                f.display(),
                f.display()
            ));
        }
        None => print!("{yaml}"),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_loop_becomes_one_agent_step_per_call_that_succeeded() {
        let run = json!({"id": "01abcdef99", "state": "succeeded", "inputs": {"question": "tidy \"reports\""},
            "steps": [{"id": "loop", "output": {"tool_calls": [
                {"agent": "ops", "action": "inspect", "arguments": {"path": "reports"}, "status": "ok"},
                {"agent": "ops", "action": "inspect", "arguments": {"path": 5}, "status": "invalid"},
                {"agent": "ops", "action": "write-note", "arguments": {"path": "n.txt", "text": "a: b"}, "status": "ok"},
                {"agent": "ops", "action": "write-note", "arguments": {}, "status": "rejected"}]}}]});
        let y = promoted(&run, "tidy").unwrap();
        assert_eq!(
            y,
            "version: plexus/v1\nname: tidy\ndescription: \"Promoted from agentic run 01abcdef99: tidy \\\"reports\\\"\"\n\
             intents:\n  - \"tidy \\\"reports\\\"\"\nsteps:\n  - id: call_1_inspect\n    agent: \"ops\"\n    action: \"inspect\"\n    with: {\"path\":\"reports\"}\n  \
             - id: call_2_write_note\n    agent: \"ops\"\n    action: \"write-note\"\n    needs: [call_1_inspect]\n    with: {\"path\":\"n.txt\",\"text\":\"a: b\"}\n"
        );
        let plan = plexus_core::node::parse_document(&y).unwrap();
        let mut problems = Vec::new();
        let m = plexus_core::parse::manifest_from_node(&plan, &mut problems).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(m.steps.len(), 2);
        let failed = json!({"id": "x", "state": "failed", "steps": []});
        assert!(
            promoted(&failed, "x")
                .unwrap_err()
                .to_string()
                .contains("only a loop that succeeded")
        );
    }
}
