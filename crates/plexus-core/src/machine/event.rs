//! Run events: the durable record of everything that happened to a run. A run's state is
//! the fold of its events ([`super::RunState::apply`]).

use crate::manifest::Permission;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::sync::Arc;

fn is_null(v: &Arc<Json>) -> bool {
    v.is_null()
}

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// The schema version of [`Event`]'s stored JSON. Stores keep it with each event and
/// refuse to read events newer than this; a change that older events cannot be read as
/// raises it (and keeps reading the old ones: `tests/fixtures` holds a run of every
/// version, restored by a test).
pub const EVENT_SCHEMA: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// 1, 2, 3... per run, without gaps.
    pub seq: u64,
    pub time: Millis,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    RunStarted {
        inputs: Json,
    },
    /// A foreach step's list was evaluated; items run as units `0..items.len()`.
    StepExpanded {
        step_id: String,
        items: Vec<Json>,
    },
    StepAwaitingApproval {
        step_id: String,
        permission: Permission,
        /// What will run (rendered command, parameters) so the approver can judge it.
        detail: Json,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<Millis>,
    },
    StepApproved {
        step_id: String,
        by: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
    },
    StepStarted {
        step_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<u32>,
        attempt: u32,
        /// `{run_id}/{step_id}/{item}/{attempt}`, handed to executors for idempotency.
        key: String,
        /// The rendered work (command, script, parameters), for inspection and audit.
        #[serde(default, skip_serializing_if = "Json::is_null")]
        detail: Json,
    },
    StepWaiting {
        step_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<u32>,
        attempt: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<String>,
        /// When the timer ends (timer waits) or the wait gives up (timeouts).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<Millis>,
    },
    StepSucceeded {
        step_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<u32>,
        attempt: u32,
        /// Shared with the run's state (a foreach's output can be 100,000 values).
        output: Arc<Json>,
    },
    StepFailed {
        step_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<u32>,
        attempt: u32,
        error: String,
        #[serde(default, skip_serializing_if = "is_null")]
        output: Arc<Json>,
        /// Set when another attempt follows at this time.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_at: Option<Millis>,
    },
    /// The process running the attempt stopped (crash, kill -9) before it finished; the
    /// attempt does not count against the retry budget.
    StepInterrupted {
        step_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<u32>,
        attempt: u32,
    },
    /// A step's attempt recorded progress it must find again should the engine stop:
    /// an entry of the step's journal (an LLM reply, a tool call's result). Every later
    /// attempt of the step is handed the journal (see [`super::Task::journal`]).
    StepProgress {
        step_id: String,
        attempt: u32,
        entry: Json,
    },
    StepSkipped {
        step_id: String,
        /// `rejected` for a rejected approval; otherwise why the step did not run.
        reason: String,
        /// Who rejected it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
    },
    StepCancelled {
        step_id: String,
    },
    RunSucceeded {
        outputs: Json,
    },
    RunFailed {
        error: String,
        #[serde(default, skip_serializing_if = "Json::is_null")]
        outputs: Json,
    },
    RunCancelled {
        reason: String,
    },
    /// No new step starts until the run is resumed; running steps go on.
    RunPaused {
        by: String,
    },
    RunResumed {
        by: String,
    },
    /// A failed or cancelled run is started again from the steps that did not succeed;
    /// each of them is reset with a [`EventKind::StepReset`] that follows.
    RunRetried {
        by: String,
    },
    /// The step is pending again (its attempt numbers go on).
    StepReset {
        step_id: String,
    },
}

/// The skip reason of a rejected approval.
pub const REJECTED: &str = "rejected";
/// The skip reason of an approval that timed out under the `reject` policy.
pub const APPROVAL_TIMED_OUT: &str = "approval timed out (rejected)";

/// How a skip reads for people: `rejected by user:ada: not now`, or the reason itself.
pub fn skip_text(reason: &str, by: Option<&str>, comment: Option<&str>) -> String {
    match (by, comment) {
        (Some(by), Some(c)) => format!("{reason} by {by}: {c}"),
        (Some(by), None) => format!("{reason} by {by}"),
        (None, _) => reason.to_owned(),
    }
}

impl EventKind {
    /// The `type` field as written in JSON.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::RunStarted { .. } => "run_started",
            EventKind::StepExpanded { .. } => "step_expanded",
            EventKind::StepAwaitingApproval { .. } => "step_awaiting_approval",
            EventKind::StepApproved { .. } => "step_approved",
            EventKind::StepStarted { .. } => "step_started",
            EventKind::StepWaiting { .. } => "step_waiting",
            EventKind::StepSucceeded { .. } => "step_succeeded",
            EventKind::StepFailed { .. } => "step_failed",
            EventKind::StepInterrupted { .. } => "step_interrupted",
            EventKind::StepProgress { .. } => "step_progress",
            EventKind::StepSkipped { .. } => "step_skipped",
            EventKind::StepCancelled { .. } => "step_cancelled",
            EventKind::RunSucceeded { .. } => "run_succeeded",
            EventKind::RunFailed { .. } => "run_failed",
            EventKind::RunCancelled { .. } => "run_cancelled",
            EventKind::RunPaused { .. } => "run_paused",
            EventKind::RunResumed { .. } => "run_resumed",
            EventKind::RunRetried { .. } => "run_retried",
            EventKind::StepReset { .. } => "step_reset",
        }
    }

    pub fn step_id(&self) -> Option<&str> {
        match self {
            EventKind::StepExpanded { step_id, .. }
            | EventKind::StepAwaitingApproval { step_id, .. }
            | EventKind::StepApproved { step_id, .. }
            | EventKind::StepStarted { step_id, .. }
            | EventKind::StepWaiting { step_id, .. }
            | EventKind::StepSucceeded { step_id, .. }
            | EventKind::StepFailed { step_id, .. }
            | EventKind::StepInterrupted { step_id, .. }
            | EventKind::StepSkipped { step_id, .. }
            | EventKind::StepProgress { step_id, .. }
            | EventKind::StepCancelled { step_id }
            | EventKind::StepReset { step_id } => Some(step_id),
            _ => None,
        }
    }

    pub fn attempt(&self) -> Option<u32> {
        match self {
            EventKind::StepStarted { attempt, .. }
            | EventKind::StepWaiting { attempt, .. }
            | EventKind::StepSucceeded { attempt, .. }
            | EventKind::StepFailed { attempt, .. }
            | EventKind::StepInterrupted { attempt, .. }
            | EventKind::StepProgress { attempt, .. } => Some(*attempt),
            _ => None,
        }
    }

    pub fn item(&self) -> Option<u32> {
        match self {
            EventKind::StepStarted { item, .. }
            | EventKind::StepWaiting { item, .. }
            | EventKind::StepSucceeded { item, .. }
            | EventKind::StepFailed { item, .. }
            | EventKind::StepInterrupted { item, .. } => *item,
            _ => None,
        }
    }
}
