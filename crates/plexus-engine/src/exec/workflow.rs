//! The sub-workflow executor: an attempt of a `workflow:` step is a child run whose id is
//! derived from the attempt's idempotency key, so starting it again after a crash finds
//! the same child — a finished one reports its end, an unfinished one is taken over — and
//! the attempt ends when the child ends. The child run is durable on its own, so an
//! attempt running when its engine stopped is re-attached, not started again.

use super::{AttemptCtx, AttemptFuture, AttemptResult, Executor};
use crate::{Engine, Msg, now_ms};
use plexus_core::machine::{Input, Outcome, RunState, RunStatus, Task, Work};
use plexus_store::{NewRun, ParentRef, RunRow};
use serde_json::{Value as Json, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, oneshot};

pub struct SubWorkflows {
    engine: Engine,
}

impl SubWorkflows {
    pub(crate) fn new(engine: Engine) -> Self {
        SubWorkflows { engine }
    }
}

impl Executor for SubWorkflows {
    fn name(&self) -> &'static str {
        "workflow"
    }

    fn start(&self, task: Task, ctx: AttemptCtx, mut kill: oneshot::Receiver<()>) -> AttemptFuture {
        let engine = self.engine.clone();
        Box::pin(async move {
            let Work::Workflow { path, inputs, mode } = &task.work else {
                return AttemptResult::failed(format!("not a sub-workflow: {:?}", task.work));
            };
            let child =
                uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, task.key.as_bytes()).to_string();
            let parent = ParentRef {
                run_id: ctx.run_id.to_string(),
                step_id: task.step_id.clone(),
                item: task.unit.item,
                attempt: task.attempt,
            };
            // Listening before the child can end, so its end is never missed.
            let mut ends = engine.finished();
            let file = match confined(&ctx.base_dir, path) {
                Ok(file) => file,
                Err(error) => return AttemptResult::failed(error),
            };
            match start_child(&engine, &file, inputs.clone(), &child, parent, *mode).await {
                Err(error) => return AttemptResult::failed(error),
                Ok(Some(ended)) => return AttemptResult::of(ended),
                Ok(None) => {}
            }
            // A timeout ends the attempt and cancels the child, as a process step's
            // timeout kills its process group.
            let timeout = task.timeout.unwrap_or(Duration::from_secs(u64::MAX / 4));
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    end = ends.recv() => match end {
                        Ok((run, _)) if *run == *child => break,
                        Ok(_) => {}
                        // Too many ends at once to see them all: the store says.
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            if let Ok(Some(outcome)) = ended(&engine, &child).await {
                                return AttemptResult::of(outcome);
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => {
                            return AttemptResult::failed("the engine stopped");
                        }
                    },
                    // The parent's attempt is cancelled; the child run is its own and
                    // goes on (cancel it by its id).
                    _ = &mut kill => return AttemptResult::failed("cancelled"),
                    _ = &mut deadline => {
                        let reason = format!(
                            "timed out after {}",
                            plexus_core::duration::format_duration(timeout)
                        );
                        let cancel = Input::Cancel { reason: reason.clone() };
                        if let Err(e) = engine.input(&child, cancel).await {
                            tracing::warn!(run = %child, error = %e, "cancelling a timed-out sub-workflow");
                        }
                        return AttemptResult::failed(format!("sub-workflow run {child} {reason}"));
                    }
                }
            }
            match ended(&engine, &child).await {
                Ok(Some(outcome)) => AttemptResult::of(outcome),
                Ok(None) => AttemptResult::failed(format!("sub-workflow run {child} did not end")),
                Err(e) => AttemptResult::failed(e),
            }
        })
    }
}

/// The outcome of a finished child run, from its stored row; `None` while it runs.
async fn ended(engine: &Engine, child: &str) -> Result<Option<Outcome>, String> {
    let row = engine
        .store
        .get_run(child)
        .await
        .map_err(|e| e.to_string())?;
    Ok(RunStatus::parse(&row.status)
        .filter(|s| s.is_terminal())
        .map(|status| outcome_of(&row, status)))
}

fn outcome_of(row: &RunRow, status: RunStatus) -> Outcome {
    match status {
        RunStatus::Succeeded => Outcome::Success(row.outputs.clone()),
        _ => Outcome::Failure {
            error: format!(
                "sub-workflow `{}` (run {}) {}: {}",
                row.workflow,
                row.id,
                status.as_str(),
                row.error.clone().unwrap_or_default()
            ),
            output: json!({"run_id": row.id, "outputs": row.outputs}),
        },
    }
}

/// Loads, checks, records and starts the child run — or, when it exists from before a
/// restart, reports its end (`Some`) or makes sure it is driven (`None`).
async fn start_child(
    engine: &Engine,
    file: &Path,
    inputs: Json,
    child: &str,
    parent: ParentRef,
    mode: plexus_core::manifest::Mode,
) -> Result<Option<Outcome>, String> {
    if let Some(outcome) = existing(engine, child).await? {
        return Ok(outcome);
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read sub-workflow {}: {e}", file.display()))?;
    // A file that is not a manifest must not show up in a run's error line by line (run
    // errors are read by every operator): positions and codes only.
    // A sub-workflow that sets no mode runs in its parent's.
    let mut opts = plexus_core::CompileOptions {
        default_mode: Some(mode),
        ..engine.config.compile_options()
    };
    let mut compiled = plexus_core::load(&text, &file.to_string_lossy(), &opts);
    // Agent steps are gated at least at the permission their actions declare.
    if let Ok(plan) = &compiled {
        opts.action_floors = engine.agents.floors(&plan.agent_actions());
        if !opts.action_floors.is_empty() {
            compiled = plexus_core::load(&text, &file.to_string_lossy(), &opts);
        }
    }
    let plan = compiled.map_err(|d| {
        let errors: Vec<String> = d
            .iter()
            .filter(|d| d.severity == plexus_core::Severity::Error)
            .map(|d| format!("{}:{} {}", d.line, d.column, d.code))
            .collect();
        format!(
            "sub-workflow {} is not a valid manifest ({}); `plexus validate {}` shows why",
            file.display(),
            errors.join(", "),
            file.display()
        )
    })?;
    let given = match inputs {
        Json::Object(m) => m,
        Json::Null => serde_json::Map::new(),
        other => {
            return Err(format!(
                "`with` of a workflow step must be a mapping of inputs, got {other}"
            ));
        }
    };
    let inputs = plexus_core::parse::resolve_inputs(&plan.manifest, &given)
        .map_err(|e| format!("sub-workflow inputs: {}", e.join("; ")))?;
    let inputs = Json::Object(inputs);
    let parent_row = engine
        .store
        .get_run(&parent.run_id)
        .await
        .map_err(|e| e.to_string())?;
    let mut responsible = parent_row.responsible;
    responsible.extend(parent_row.started_by);
    responsible.sort();
    responsible.dedup();
    let now = now_ms();
    let base_dir = file
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let created = engine
        .store
        .create_run(NewRun {
            id: child.to_owned(),
            workflow: plan.manifest.name.clone(),
            manifest: text,
            base_dir: Some(base_dir.to_string_lossy().into_owned()),
            inputs: inputs.clone(),
            step_ids: plan.manifest.steps.iter().map(|s| s.id.clone()).collect(),
            parent: Some(parent.clone()),
            owner: Some(engine.config.owner.clone()),
            lease_until: Some(now + engine.config.lease.as_millis() as u64),
            created_at: now,
            idempotency_key: None,
            workflow_version: None,
            newest_version: false,
            started_by: None,
            mode: Some(plan.mode.as_str().to_owned()),
            plan: Some(plan.options.to_stored()),
            // Whoever answers for the parent answers for its children: a sub-workflow is
            // no way around `approvals.forbid_self_approval`.
            responsible,
        })
        .await
        .map_err(|e| e.to_string())?;
    if !created {
        // Recorded meanwhile by another attempt of the same key.
        return Ok(existing(engine, child).await?.flatten());
    }
    let state = RunState::new(child.to_owned(), Arc::new(plan), inputs);
    engine
        .tx
        .send(Msg::Adopt {
            state: Box::new(state),
            base_dir,
            parent: Some(parent),
            reply: None,
            first: None,
            // Created owned by this engine just now.
            fence: Some(0),
        })
        .await
        .map_err(|_| "the engine stopped".to_owned())?;
    Ok(None)
}

/// A child run recorded before: `Some(Some(outcome))` when it ended, `Some(None)` once it
/// is driven (taken over if its engine died), `None` when there is none yet.
async fn existing(engine: &Engine, child: &str) -> Result<Option<Option<Outcome>>, String> {
    let row = match engine.store.get_run(child).await {
        Ok(row) => row,
        Err(plexus_store::StoreError::RunNotFound(_)) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if let Some(status) = RunStatus::parse(&row.status).filter(|s| s.is_terminal()) {
        return Ok(Some(Some(outcome_of(&row, status))));
    }
    // Driven here already: it reports its end like any run.
    if engine.is_active(child).await.map_err(|e| e.to_string())? {
        return Ok(Some(None));
    }
    // Left by an engine that died: taken over (its leftovers stopped first).
    match engine.resume(child).await {
        Ok(_) | Err(crate::EngineError::Owned { .. }) => Ok(Some(None)),
        Err(e) => Err(e.to_string()),
    }
}

/// The sub-workflow's file, which must be inside the directory tree of the manifest that
/// names it (after resolving `..` and symbolic links): a workflow cannot read
/// `/etc/shadow` or another team's files through a `workflow:` step.
fn confined(base_dir: &Path, path: &str) -> Result<PathBuf, String> {
    let base = base_dir.canonicalize().map_err(|e| {
        format!(
            "the workflow's directory {} cannot be read: {e}",
            base_dir.display()
        )
    })?;
    let file = base
        .join(path)
        .canonicalize()
        .map_err(|e| format!("cannot read sub-workflow {path}: {e}"))?;
    if !file.starts_with(&base) {
        return Err(format!(
            "sub-workflow `{path}` is outside the workflow's directory {}; a sub-workflow must be in the directory tree of the manifest that names it",
            base.display()
        ));
    }
    Ok(file)
}
