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
}

impl LocalProcesses {
    pub fn new(settings: ProcessSettings) -> Self {
        LocalProcesses { settings }
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
        Box::pin(async move {
            let AttemptCtx {
                run_id,
                base_dir,
                logs,
                record,
            } = ctx;
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
