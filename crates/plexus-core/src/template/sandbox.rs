//! Rendering a template that is not provably bounded (see [`super::bounded`]) somewhere
//! its memory and time can be capped by the operating system.
//!
//! The core stays pure: it describes the work as a [`Job`] and hands it to the
//! [`Sandbox`] the program installed at start (the `plexus` binary installs one that
//! talks to a worker process). A library user that installs none gets the in-process
//! rendering, bounded by fuel and output size only.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::sync::OnceLock;

/// What a job produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// A template rendered as text (a JSON string comes back).
    Text,
    /// A template rendered into a `/bin/sh` command line.
    Shell,
    /// A template rendered into Python source.
    Python,
    /// An expression evaluated strictly, its value as JSON.
    Value,
    /// A `when` condition (undefined is false), a JSON boolean.
    Condition,
}

/// One rendering, self-contained: the template and everything it may read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub kind: JobKind,
    pub src: String,
    pub ctx: Json,
}

/// Renders jobs away from the engine's memory. Errors are the messages a step fails with.
pub trait Sandbox: Send + Sync {
    fn run(&self, job: &Job) -> Result<Json, String>;
}

static SANDBOX: OnceLock<Box<dyn Sandbox>> = OnceLock::new();

/// Installs the sandbox for the rest of the process; false when one was installed already.
pub fn install(sandbox: Box<dyn Sandbox>) -> bool {
    SANDBOX.set(sandbox).is_ok()
}

pub(super) fn installed() -> Option<&'static dyn Sandbox> {
    SANDBOX.get().map(|b| b.as_ref())
}

/// Runs a job in this process, with the in-process limits: what the sandbox's worker
/// does with each job it receives.
pub fn run_here(job: &Job) -> Result<Json, String> {
    let ctx = super::context_of(&job.ctx);
    match job.kind {
        JobKind::Text => super::render_here(&job.src, &ctx, super::Target::Text).map(Json::String),
        JobKind::Shell => {
            super::render_here(&job.src, &ctx, super::Target::Shell).map(Json::String)
        }
        JobKind::Python => {
            super::render_here(&job.src, &ctx, super::Target::Python).map(Json::String)
        }
        JobKind::Value => super::eval_value_here(&job.src, &ctx),
        JobKind::Condition => super::eval_condition_here(&job.src, &ctx).map(Json::Bool),
    }
}

/// Hands a job to the installed sandbox; `None` when there is none.
pub(super) fn delegate(
    kind: JobKind,
    src: &str,
    ctx: &minijinja::Value,
) -> Option<Result<Json, String>> {
    let sandbox = installed()?;
    let ctx = match serde_json::to_value(ctx) {
        Ok(ctx) => ctx,
        Err(e) => return Some(Err(format!("the template's context cannot be copied: {e}"))),
    };
    Some(sandbox.run(&Job {
        kind,
        src: src.to_owned(),
        ctx,
    }))
}
