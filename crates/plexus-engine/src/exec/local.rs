//! The local-process executor: shell and python steps as subprocesses of this engine.
//! Everything about processes lives here and below — scratch directories, held shells
//! started ahead of their steps, process groups — so the scheduler sees attempts only.

use super::held;
use super::process::{self, Controls, ProcessSettings};
use super::{AttemptCtx, AttemptFuture, Executor, Held};
use plexus_core::machine::Task;
use tokio::sync::oneshot;

pub struct LocalProcesses {
    settings: ProcessSettings,
    /// This machine, as written in attempt records: only its own groups are stopped.
    host: String,
}

/// What an attempt record of this executor holds: the attempt's process group, and its
/// leader's start time (so a pid used again by another process is never mistaken).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProcessGroup {
    pub host: String,
    pub pgid: i32,
    pub start_ticks: u64,
}

impl LocalProcesses {
    pub fn new(settings: ProcessSettings, host: String) -> Self {
        LocalProcesses { settings, host }
    }

    fn run(
        &self,
        task: Task,
        ctx: AttemptCtx,
        kill: oneshot::Receiver<()>,
        gate: Option<held::HeldGate>,
    ) -> AttemptFuture {
        // The attempt owns a handle on the scratch pool and idle shells; it lets go of it
        // before the engine learns of its end, so an engine whose last attempt ended can
        // free them at once.
        let settings = self.settings.clone();
        let host = self.host.clone();
        Box::pin(async move {
            let AttemptCtx {
                run_id,
                base_dir,
                logs,
                record,
                ..
            } = ctx;
            let record = move |pgid, start_ticks| {
                let group = ProcessGroup {
                    host,
                    pgid,
                    start_ticks,
                };
                record(serde_json::to_value(group).unwrap_or_default());
            };
            process::run(
                &task,
                run_id,
                &base_dir,
                &settings,
                logs,
                Controls { kill, gate },
                record,
            )
            .await
        })
    }
}

impl Executor for LocalProcesses {
    fn name(&self) -> &'static str {
        "local"
    }

    /// Stops the process groups a dead engine's attempts left running on this host, so a
    /// new attempt never races the old one.
    fn clean_up(&self, records: &[plexus_store::AttemptRecord]) {
        for r in records {
            match serde_json::from_value::<ProcessGroup>(r.data.clone()) {
                Ok(group) => {
                    super::leftovers::kill(&r.key, &group, &self.host);
                }
                Err(e) => {
                    tracing::warn!(run = %r.key.run_id, step = %r.key.step_id, error = %e, "an attempt record this version cannot read")
                }
            }
        }
    }
    /// A shell step whose variables its script can set is held: its shell is started
    /// while its start is made durable, and gets its script only then.
    fn can_hold(&self, task: &Task) -> bool {
        process::can_hold(task)
    }

    fn hold(&self, task: Task, ctx: AttemptCtx, kill: oneshot::Receiver<()>) -> Held {
        let (gate, held) = held::gate();
        Held {
            release: Box::new(move || gate.open()),
            attempt: self.run(task, ctx, kill, Some(held)),
        }
    }

    fn start(&self, task: Task, ctx: AttemptCtx, kill: oneshot::Receiver<()>) -> AttemptFuture {
        self.run(task, ctx, kill, None)
    }
}
