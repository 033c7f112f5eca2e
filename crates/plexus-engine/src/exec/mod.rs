//! Executors: what performs an attempt. Builtins are answered inside the scheduler loop;
//! shell and python steps run as subprocesses in their own process group.

pub mod artifacts;
pub mod held;
pub mod leftovers;
pub mod process;
pub mod scratch;

use plexus_core::machine::{Outcome, Work};
use plexus_core::manifest::StepKind;
use plexus_core::{Diagnostic, Plan};
use serde_json::Value as Json;

/// What in a valid plan this engine does not carry out yet, as warnings naming the step:
/// agent and LLM steps (their attempts fail), and resource requests and placement
/// constraints (accepted, not enforced).
pub fn not_executed(plan: &Plan, file: &str) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for step in &plan.manifest.steps {
        let mut warn = |field: &str, message: String, hint: &str| {
            let mut d = Diagnostic::new("not-executed", step.locs.field(field), message)
                .with_step(Some(&step.id))
                .with_hint(hint)
                .warning();
            d.file = file.to_owned();
            out.push(d);
        };
        match &step.kind {
            StepKind::Agent { .. } => warn(
                "agent",
                "agent steps are not executed by this version yet: the step will fail when it runs"
                    .into(),
                "run the action from a `run:` step until the agent runtime is available",
            ),
            StepKind::Llm(_) => warn(
                "llm",
                "llm steps are not executed by this version yet: the step will fail when it runs"
                    .into(),
                "call the model from a `run:` or `python:` step until the LLM runtime is available",
            ),
            _ => {}
        }
        if step.resources.is_some() {
            warn(
                "resources",
                "`resources` are not enforced yet: the step runs wherever a pool slot is free"
                    .into(),
                "use `pool` and `pool_slots` to limit what runs at once",
            );
        }
        if !step.constraints.is_empty() {
            warn(
                "constraints",
                "`constraints` are not enforced yet: there is one node, and the step runs on it"
                    .into(),
                "remove them, or keep them for when remote workers arrive",
            );
        }
    }
    out
}

/// Answers in-process work at once; `None` means the work needs a subprocess.
pub fn run_inline(work: &Work) -> Option<Outcome> {
    Some(match work {
        Work::Noop => Outcome::Success(Json::Null),
        Work::Echo(v) => Outcome::Success(v.clone()),
        Work::Fail(message) => Outcome::Failure {
            error: message.clone(),
            output: Json::Null,
        },
        Work::Unsupported(message) => Outcome::Failure {
            error: message.clone(),
            output: Json::Null,
        },
        Work::Shell { .. } | Work::Python { .. } => return None,
    })
}
