//! Builtins (`noop`, `echo`, `fail`) and work this version cannot do: answered inside the
//! scheduler's loop, with no task, thread or I/O.

use super::{AttemptCtx, AttemptFuture, AttemptResult, Executor};
use plexus_core::machine::{Outcome, Task, Work};
use serde_json::Value as Json;
use tokio::sync::oneshot;

pub struct Builtins;

impl Builtins {
    fn answer(work: &Work) -> Outcome {
        match work {
            Work::Noop => Outcome::Success(Json::Null),
            Work::Echo(v) => Outcome::Success(v.clone()),
            Work::Fail(message) | Work::Unsupported(message) => Outcome::Failure {
                error: message.clone(),
                output: Json::Null,
            },
            other => Outcome::Failure {
                error: format!("not a builtin: {other:?}"),
                output: Json::Null,
            },
        }
    }
}

impl Executor for Builtins {
    fn name(&self) -> &'static str {
        "builtin"
    }

    fn answers_now(&self) -> bool {
        true
    }

    fn answer_now(&self, task: &Task) -> Option<Outcome> {
        Some(Self::answer(&task.work))
    }

    fn start(&self, task: Task, _ctx: AttemptCtx, _kill: oneshot::Receiver<()>) -> AttemptFuture {
        let outcome = Self::answer(&task.work);
        Box::pin(async move { AttemptResult::of(outcome) })
    }
}
