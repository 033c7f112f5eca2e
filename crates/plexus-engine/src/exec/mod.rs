//! Executors: what performs an attempt. The scheduler knows no kind of work: it asks
//! [`Executors::for_work`] for the [`Executor`] of a task and gets back an
//! [`AttemptResult`]. Builtins answer inside the scheduler's loop ([`builtin`]); shell and
//! python steps run as subprocesses in their own process group ([`local`]); agent steps
//! call a registered agent's action ([`agent`]). LLM calls and remote workers come next,
//! each as one more implementation and one more arm in [`Executors::for_work`].

pub mod agent;
pub mod artifacts;
mod builtin;
pub mod held;
pub mod isolation;
pub mod leftovers;
pub mod llm;
mod llm_loop;
pub mod local;
pub mod process;
pub mod scratch;
pub(crate) mod spawn;
mod workflow;

pub use builtin::Builtins;
pub use local::LocalProcesses;
pub use process::LogChunk;
pub use workflow::SubWorkflows;

use crate::pools::RunId;
use plexus_core::machine::{Outcome, Task, Work};
use plexus_core::manifest::StepKind;
use plexus_core::{Diagnostic, Plan};
use serde_json::Value as Json;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{broadcast, oneshot};

/// What an attempt produced, whatever performed it.
#[derive(Debug)]
pub struct AttemptResult {
    pub outcome: Outcome,
    /// Files the attempt left, stored content-addressed.
    pub artifacts: Vec<artifacts::Collected>,
    /// What the attempt printed, kept apart when its output does not carry it.
    pub logs: Option<AttemptLogs>,
    /// What the attempt consumed (tokens, cost) for accounting; `Null` when nothing.
    pub usage: Json,
    /// Whether the attempt recorded itself with [`AttemptCtx::record`], so that the
    /// record is cleared with its end.
    pub recorded: bool,
}

impl AttemptResult {
    /// An attempt that produced only an outcome.
    pub fn of(outcome: Outcome) -> Self {
        AttemptResult {
            outcome,
            artifacts: Vec::new(),
            logs: None,
            usage: Json::Null,
            recorded: false,
        }
    }

    pub fn failed(error: impl Into<String>) -> Self {
        Self::of(Outcome::Failure {
            error: error.into(),
            output: Json::Null,
        })
    }
}

/// What an attempt printed, as stored when its output does not carry it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptLogs {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: Option<i32>,
}

/// What the engine gives an attempt: where it runs and how it reports along the way.
pub struct AttemptCtx {
    pub run_id: RunId,
    /// The directory relative paths of the run resolve against.
    pub base_dir: PathBuf,
    /// Live output for followers (`--follow-logs`), when someone listens.
    pub logs: Option<broadcast::Sender<LogChunk>>,
    /// Records what the executor must find again should the engine die during the
    /// attempt (its own data: a process group for the local executor); made durable with
    /// the next commit, cleared when the attempt ends, handed back to
    /// [`Executor::clean_up`] when the run is resumed after a crash.
    pub record: Box<dyn FnOnce(Json) + Send>,
    /// Appends to the step's journal (see [`Task::journal`]).
    pub journal: Journal,
}

/// Where an attempt writes the step's journal: as run events, through the scheduler.
#[derive(Clone)]
pub struct Journal {
    to: JournalSink,
}

#[derive(Clone)]
enum JournalSink {
    Scheduler {
        tx: tokio::sync::mpsc::Sender<crate::Msg>,
        run_id: RunId,
        unit: plexus_core::machine::Unit,
        attempt: u32,
    },
    Memory(Arc<std::sync::Mutex<Vec<Json>>>),
}

impl Journal {
    pub(crate) fn scheduler(
        tx: tokio::sync::mpsc::Sender<crate::Msg>,
        run_id: RunId,
        unit: plexus_core::machine::Unit,
        attempt: u32,
    ) -> Journal {
        Journal {
            to: JournalSink::Scheduler {
                tx,
                run_id,
                unit,
                attempt,
            },
        }
    }

    /// A journal kept in `entries` (for executors driven without an engine, in tests).
    pub fn memory(entries: Arc<std::sync::Mutex<Vec<Json>>>) -> Journal {
        Journal {
            to: JournalSink::Memory(entries),
        }
    }

    /// Appends `entry`; answers once it is durable. An error means it is not (the run
    /// ended, the attempt is no longer the step's current one, the store failed): the
    /// attempt must not act on what the entry records.
    pub async fn append(&self, entry: Json) -> Result<(), String> {
        match &self.to {
            JournalSink::Memory(entries) => {
                entries
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(entry);
                Ok(())
            }
            JournalSink::Scheduler {
                tx,
                run_id,
                unit,
                attempt,
            } => {
                let (reply, answer) = oneshot::channel();
                tx.send(crate::Msg::Input {
                    run_id: run_id.to_string(),
                    input: plexus_core::machine::Input::Progress {
                        unit: *unit,
                        attempt: *attempt,
                        entry,
                    },
                    reply: Some(reply),
                })
                .await
                .map_err(|_| "the engine stopped".to_owned())?;
                match answer.await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(format!("the journal entry was not recorded: {e:?}")),
                    Err(_) => Err("the engine stopped before the entry was durable".to_owned()),
                }
            }
        }
    }
}

/// Lets a [`Held`] attempt take effect.
pub type Release = Box<dyn FnOnce() + Send>;

/// A running attempt.
pub type AttemptFuture = Pin<Box<dyn Future<Output = AttemptResult> + Send>>;

/// An attempt started before its start event is durable: nothing of it takes effect
/// until `release` is called (once that event is durable). Dropping `release` instead
/// makes the attempt end without having done anything.
pub struct Held {
    pub release: Release,
    pub attempt: AttemptFuture,
}

/// One kind of work.
pub trait Executor: Send + Sync {
    /// The name its attempt records are kept under.
    fn name(&self) -> &'static str;

    /// Before a run is resumed after its engine died: deal with what the dead engine's
    /// attempts left (the records this executor wrote and that never ended). The
    /// records are removed afterwards.
    fn clean_up(&self, _records: &[plexus_store::AttemptRecord]) {}

    /// Whether this executor answers every task at once with [`Executor::answer_now`].
    fn answers_now(&self) -> bool {
        false
    }

    /// Answers work that needs no I/O at once, inside the scheduler's loop; `None` means
    /// the work runs as an attempt of its own ([`Executor::start`]).
    fn answer_now(&self, _task: &Task) -> Option<Outcome> {
        None
    }

    /// Whether [`Executor::hold`] can get this attempt ready before its start is durable.
    fn can_hold(&self, _task: &Task) -> bool {
        false
    }

    /// Gets an attempt ready while its start is being made durable (see [`Held`]). Only
    /// called when [`Executor::can_hold`] said yes.
    fn hold(&self, task: Task, ctx: AttemptCtx, kill: oneshot::Receiver<()>) -> Held {
        let attempt = self.start(task, ctx, kill);
        Held {
            release: Box::new(|| {}),
            attempt,
        }
    }

    /// Runs an attempt whose start is durable; `kill` ends it early (timeout is the
    /// executor's to enforce, from `task.timeout`).
    fn start(&self, task: Task, ctx: AttemptCtx, kill: oneshot::Receiver<()>) -> AttemptFuture;
}

/// The executor of every kind of work, chosen by the task's work.
#[derive(Clone)]
pub struct Executors {
    builtins: Arc<Builtins>,
    local: Arc<LocalProcesses>,
    workflows: Arc<SubWorkflows>,
    agents: Arc<agent::AgentCalls>,
    llm: Arc<llm::LlmCalls>,
}

impl Executors {
    pub fn new(
        local: LocalProcesses,
        workflows: SubWorkflows,
        agents: agent::AgentCalls,
        llm: llm::LlmCalls,
    ) -> Self {
        Executors {
            builtins: Arc::new(Builtins),
            local: Arc::new(local),
            workflows: Arc::new(workflows),
            agents: Arc::new(agents),
            llm: Arc::new(llm),
        }
    }

    /// The executor that writes records under `name`, if there is one.
    pub fn by_name(&self, name: &str) -> Option<&dyn Executor> {
        [
            self.builtins.as_ref() as &dyn Executor,
            self.local.as_ref(),
            self.workflows.as_ref(),
            self.agents.as_ref(),
            self.llm.as_ref(),
        ]
        .into_iter()
        .find(|e| e.name() == name)
    }

    pub fn for_work(&self, work: &Work) -> &dyn Executor {
        match work {
            Work::Shell { .. } | Work::Python { .. } => self.local.as_ref(),
            Work::Workflow { .. } => self.workflows.as_ref(),
            Work::Agent(_) => self.agents.as_ref(),
            Work::Llm(_) => self.llm.as_ref(),
            Work::Noop | Work::Echo(_) | Work::Fail(_) | Work::Unsupported(_) => {
                self.builtins.as_ref()
            }
        }
    }

    /// Whether an attempt of this kind that was running when its engine stopped goes on
    /// where it was (re-attached) rather than starting again as a new attempt. A
    /// sub-workflow's child run is durable on its own, so it is re-attached; a process
    /// died with its engine.
    pub fn reattaches(kind: &StepKind) -> bool {
        matches!(kind, StepKind::Workflow(_))
    }
}

/// What `plexus validate` and `plexus run` warn about: what is not executed yet, and
/// inputs put into commands unquoted.
pub fn warnings(plan: &Plan, file: &str) -> Vec<Diagnostic> {
    let mut out = not_executed(plan, file);
    out.extend(plexus_core::plan::unquoted_inputs(plan, file));
    out
}

/// What in a valid plan this engine does not carry out yet, as warnings naming the step:
/// resource requests and placement constraints (accepted, not enforced).
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
