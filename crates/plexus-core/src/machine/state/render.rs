//! What templates see (a context of shared values) and how a step's work is rendered.

use super::*;
use crate::manifest::{Builtin, StepKind};
use crate::template;
use minijinja::Value as TemplateValue;
use serde_json::json;

impl RunState {
    /// What templates see of step `i`: `output`, `status`, `error`.
    pub(super) fn step_context(&self, i: usize) -> TemplateValue {
        let s = &self.steps[i];
        let output = s
            .output_value
            .get_or_init(|| template::context_of(&s.unit.output))
            .clone();
        minijinja::context! {
            output => output,
            status => s.unit.status.as_str(),
            error => s.unit.error.clone(),
        }
    }

    pub(super) fn inputs_context(&self) -> TemplateValue {
        self.inputs_value
            .get_or_init(|| template::context_of(&self.inputs))
            .clone()
    }

    pub(super) fn run_context(&self) -> TemplateValue {
        minijinja::context! { id => self.run_id.clone(), workflow => self.plan.manifest.name.clone() }
    }

    /// The template context of a step: inputs, the steps it reads, the foreach item. Its
    /// parts are shared values, so making it costs the number of steps read, not their size.
    pub(super) fn context(&self, i: usize, item: Option<u32>) -> TemplateValue {
        let steps = TemplateValue::from_pairs(
            (self.plan.nodes[i].refs.iter())
                .map(|&r| (self.plan.step(r).id.clone(), self.step_context(r))),
        );
        let (inputs, run) = (self.inputs_context(), self.run_context());
        match (item, &self.steps[i].items) {
            (Some(k), Some(items)) => minijinja::context! {
                inputs, steps, run,
                item => template::context_of(&items.values[k as usize]),
                item_index => k,
            },
            _ => minijinja::context! { inputs, steps, run },
        }
    }

    /// The context of the run `outputs`: only the steps they read.
    pub(super) fn outputs_context(&self) -> TemplateValue {
        let steps = TemplateValue::from_pairs(
            (self.plan.output_refs.iter())
                .map(|&i| (self.plan.step(i).id.clone(), self.step_context(i))),
        );
        let (inputs, run) = (self.inputs_context(), self.run_context());
        minijinja::context! { inputs, steps, run }
    }
}

pub(super) type Rendered = (
    Work,
    Json,
    std::collections::BTreeMap<String, String>,
    Option<String>,
);

/// The work of a step's attempt, rendered; `mode` is the run's, which a sub-workflow
/// that sets none runs in.
pub(super) fn render_work(
    step: &crate::manifest::Step,
    ctx: &TemplateValue,
    mode: crate::manifest::Mode,
    defaults: &crate::manifest::Defaults,
) -> Result<Rendered, String> {
    let env = step
        .env
        .iter()
        .map(|(k, v)| Ok((k.clone(), template::render_str(v, ctx)?)))
        .collect::<Result<_, String>>()?;
    let workdir = step
        .workdir
        .as_deref()
        .map(|w| template::render_str(w, ctx))
        .transpose()?;
    let with = match &step.with {
        Some(w) => template::render_value(w, ctx)?,
        None => Json::Null,
    };
    let (work, detail) = match &step.kind {
        StepKind::Run(c) => {
            // Each value is one shell word: an input cannot add a command.
            let command = template::render_for(c, ctx, template::Target::Shell)?;
            (
                (Work::Shell {
                    command: command.clone(),
                }),
                json!({"command": command}),
            )
        }
        StepKind::Python(s) => {
            // Each value is a Python literal: data, not code.
            let script = template::render_for(s, ctx, template::Target::Python)?;
            ((Work::Python { script }), Json::Null)
        }
        StepKind::Builtin(Builtin::Noop) => ((Work::Noop), Json::Null),
        StepKind::Builtin(Builtin::Echo) => ((Work::Echo(with)), Json::Null),
        StepKind::Builtin(Builtin::Fail) => {
            let msg = with
                .get("message")
                .and_then(Json::as_str)
                .unwrap_or("failed by `builtin: fail`")
                .to_owned();
            ((Work::Fail(msg)), Json::Null)
        }
        StepKind::Builtin(Builtin::Sleep) => unreachable_sleep(),
        StepKind::Workflow(p) => {
            let path = template::render_str(p, ctx)?;
            let detail = json!({"workflow": path, "inputs": with});
            (
                Work::Workflow {
                    path,
                    inputs: with,
                    mode,
                },
                detail,
            )
        }
        StepKind::Agent { agent, action } => {
            let detail = json!({"agent": agent, "action": action, "with": with});
            (
                Work::Agent(Box::new(crate::machine::AgentWork {
                    agent: agent.clone(),
                    action: action.clone(),
                    params: with,
                    mode,
                })),
                detail,
            )
        }
        StepKind::Llm(spec) => {
            let mut spec = match spec {
                Json::String(_) => json!({"prompt": spec}),
                other => other.clone(),
            };
            // The workflow's `defaults.llm` under the step's own keys.
            if let (Some(Json::Object(d)), Json::Object(s)) = (&defaults.llm, &mut spec) {
                for (k, v) in d {
                    s.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            let rendered = template::render_value(&spec, ctx)?;
            (
                Work::Llm(Box::new(crate::machine::LlmWork {
                    spec: rendered.clone(),
                    mode,
                    journal: Vec::new(),
                })),
                rendered,
            )
        }
        StepKind::Wait(_) | StepKind::Approval(_) => ((Work::Noop), Json::Null),
    };
    Ok((work, detail, env, workdir))
}

/// Sleep is a timer, handled in `launch_unit`; it never reaches rendering.
fn unreachable_sleep() -> (Work, Json) {
    ((Work::Noop), Json::Null)
}
