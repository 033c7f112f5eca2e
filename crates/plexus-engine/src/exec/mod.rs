//! Executors: what performs an attempt. Builtins are answered inside the scheduler loop;
//! shell and python steps run as subprocesses in their own process group.

pub mod artifacts;
pub mod held;
pub mod leftovers;
pub mod process;
pub mod scratch;

use plexus_core::machine::{Outcome, Work};
use serde_json::Value as Json;

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
