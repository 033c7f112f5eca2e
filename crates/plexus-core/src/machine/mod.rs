//! The run state machine. The engine feeds it [`Input`]s; it answers with a
//! [`Transition`]: events to persist and actions to perform once they are durable.
//! Restoring a run folds its persisted events back into the same state.

mod event;
mod state;
mod trigger;

pub use event::{APPROVAL_TIMED_OUT, EVENT_SCHEMA, Event, EventKind, Millis, REJECTED, skip_text};
pub use state::RunState;

use crate::manifest::Permission;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Paused,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Paused => "paused",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        Some(match s {
            "queued" => RunStatus::Queued,
            "running" => RunStatus::Running,
            "paused" => RunStatus::Paused,
            "succeeded" => RunStatus::Succeeded,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    /// Waiting for a pool slot (in memory only: recomputed after a restart).
    Queued,
    Running,
    RetryWait,
    AwaitingApproval,
    Waiting,
    /// A foreach step with some failed items and others still running.
    Partial,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl StepStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StepStatus::Succeeded
                | StepStatus::Failed
                | StepStatus::Skipped
                | StepStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Queued => "queued",
            StepStatus::Running => "running",
            StepStatus::RetryWait => "retry_wait",
            StepStatus::AwaitingApproval => "awaiting_approval",
            StepStatus::Waiting => "waiting",
            StepStatus::Partial => "partial",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::Cancelled => "cancelled",
        }
    }
}

/// A unit of work: a step, or one item of a foreach step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Unit {
    pub step: usize,
    pub item: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimerPurpose {
    /// Start the next attempt after a backoff.
    Retry,
    /// A `wait: {timer}` or `builtin: sleep` finished.
    Elapsed,
    /// A wait or an approval gave up.
    Timeout,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Begin a new run.
    Start,
    /// The engine's pool granted the unit its slots.
    SlotGranted(Unit),
    AttemptFinished {
        unit: Unit,
        attempt: u32,
        outcome: Outcome,
    },
    TimerFired {
        unit: Unit,
        attempt: u32,
        purpose: TimerPurpose,
    },
    Signal {
        step_id: String,
        data: Json,
    },
    Approve {
        step_id: String,
        by: String,
        comment: Option<String>,
    },
    Reject {
        step_id: String,
        by: String,
        comment: Option<String>,
    },
    Cancel {
        reason: String,
    },
    /// Start no new step until [`Input::Resume`].
    Pause {
        by: String,
    },
    Resume {
        by: String,
    },
    /// Run a failed or cancelled run again from the steps that did not succeed.
    Retry {
        by: String,
    },
    /// A running attempt's journal entry (see [`EventKind::StepProgress`]); refused
    /// unless the attempt is the step's current one (not a foreach item).
    Progress {
        unit: Unit,
        attempt: u32,
        entry: Json,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Success(Json),
    Failure { error: String, output: Json },
}

/// Side effects to perform after the transition's events are durable.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Ask the pool for slots; answer with [`Input::SlotGranted`].
    Enqueue {
        unit: Unit,
        pool: String,
        slots: u32,
    },
    /// Forget a queued request (the unit was cancelled before it got slots).
    Dequeue { unit: Unit },
    /// Run an attempt; answer with [`Input::AttemptFinished`].
    Execute(Task),
    SetTimer {
        at: Millis,
        unit: Unit,
        attempt: u32,
        purpose: TimerPurpose,
    },
    /// Stop a running attempt (its process group is killed).
    Kill { unit: Unit, attempt: u32 },
    /// The run reached a terminal state.
    Finished { status: RunStatus },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub unit: Unit,
    pub step_id: String,
    pub attempt: u32,
    pub key: String,
    pub work: Work,
    pub timeout: Option<Duration>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub pool: String,
    /// Run isolated from the data directory (unless the workflow says `isolation: none`).
    pub isolate: bool,
    /// The permission the step runs with (and was approved at, when it is gated).
    pub permission: crate::manifest::Permission,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    Shell {
        command: String,
    },
    Python {
        script: String,
    },
    /// Output is the given value.
    Echo(Json),
    Noop,
    Fail(String),
    /// Kinds this version parses but cannot execute.
    Unsupported(String),
    /// A call of a model: the step's `llm:` mapping with its strings rendered (`llm:
    /// "text"` becomes `{prompt: "text"}`), in the run's mode (which gates its tool calls).
    Llm(Box<LlmWork>),
    /// An action of an agent (boxed: it is the largest kind and tasks are many).
    Agent(Box<AgentWork>),
    /// A child run of the workflow file at `path` (relative to the run's directory),
    /// compiled in `mode` unless it sets its own.
    Workflow {
        path: String,
        inputs: Json,
        mode: crate::manifest::Mode,
    },
}

/// A model to ask (see [`Work::Llm`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LlmWork {
    pub spec: Json,
    pub mode: crate::manifest::Mode,
    /// What earlier attempts of the step recorded with [`Input::Progress`], oldest
    /// first: where an attempt after a crash takes up the work.
    pub journal: Vec<Json>,
}

/// An agent action to call, with its parameters rendered (`with:`), in the run's mode.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentWork {
    pub agent: String,
    pub action: String,
    pub params: Json,
    pub mode: crate::manifest::Mode,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Transition {
    pub events: Vec<Event>,
    pub actions: Vec<Action>,
}

/// Why an input could not be applied (the run is unchanged).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejected {
    #[error("unknown step `{0}`")]
    UnknownStep(String),
    #[error("step `{step}` is {status}, not {expected}")]
    WrongState {
        step: String,
        status: &'static str,
        expected: &'static str,
    },
    #[error("the run is already {0}")]
    RunFinished(&'static str),
    #[error("the run is {status}, not {expected}")]
    RunNotIn {
        status: &'static str,
        expected: &'static str,
    },
}

/// Why a run's stored events cannot be folded back into its state. The run is left as
/// it is in the store; nothing is guessed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RestoreError {
    #[error(
        "run `{run}`: its stored events are not contiguous (event {found} follows event {after}, \
         expected {}); the run cannot be resumed safely", after + 1
    )]
    Gap { run: String, after: u64, found: u64 },
    #[error(
        "run `{run}`: stored event {seq} names step `{step}`, which its workflow does not have"
    )]
    UnknownStep { run: String, seq: u64, step: String },
}

/// Who may approve what, and what they are approving.
pub fn permission_name(p: Permission) -> &'static str {
    match p {
        Permission::Read => "read",
        Permission::Modify => "modify",
        Permission::Admin => "admin",
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
