//! The pure domain of Plexus: workflow manifests, their validation into a [`plan::Plan`],
//! templates, and the run state machine. Nothing here performs I/O; time and randomness
//! come in as arguments so every decision is reproducible in tests.

pub mod audit;
pub mod diagnostic;
pub mod duration;
pub mod machine;
pub mod manifest;
pub mod node;
pub mod parse;
pub mod plan;
pub mod schedule;
pub mod secrets;
pub mod template;

pub use diagnostic::{Diagnostic, Loc, Severity};
pub use manifest::Manifest;
pub use plan::{CompileOptions, Plan, load};
