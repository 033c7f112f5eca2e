//! Plexus agents in Rust, and the agent plugin protocol they speak.
//!
//! An agent is a process that offers named actions, each with a declared permission;
//! the engine calls them from workflow steps, asking a person first before a MODIFY or
//! ADMIN action runs. The protocol is `mirastack.plugin.v1` — JSON over gRPC — so the
//! engine also runs agents written with the public Go and Python agent SDKs.
//!
//! ```no_run
//! use plexus_agent::{Action, Agent, Permission, Request, Stage};
//!
//! #[derive(serde::Deserialize, schemars::JsonSchema)]
//! struct Greet { name: String }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let agent = Agent::new("greeter", "0.1.0", "Says hello")
//!         .stage(Stage::Operate)
//!         .action(Action::new("greet", "Greets someone", Permission::Read,
//!             |_req: Request, p: Greet| async move {
//!                 Ok(serde_json::json!({"greeting": format!("hello {}", p.name)}))
//!             }));
//!     plexus_agent::serve(agent).await?;
//!     Ok(())
//! }
//! ```
//!
//! Modules: [`wire`] (the messages), [`params`] (parameter lists and JSON Schema),
//! [`rpc`] (JSON over gRPC, both ways), [`engine`] (the engine's callbacks).

mod agent;
pub mod engine;
pub mod params;
pub mod rpc;
mod serve;
pub mod wire;

pub use agent::{
    Action, ActionError, Agent, ConfigKey, Permission, Request, Stage, declared_params,
};
pub use engine::Engine;
pub use serve::{DEFAULT_TENANT_SLUG, ServeError, Settings, serve, serve_with, tenant_id};
