//! The Plexus HTTP API. [`app`] builds the router from [`ROUTES`], a single table, so the
//! OpenAPI document and the role tests can be checked against every route that exists.

mod accounts;
mod agents_api;
mod approvals;
pub mod ask;
mod audit_api;
pub mod auth;
mod body;
mod error;
mod events;
mod gateway;
pub mod grpc;
mod health;
pub mod metrics;
pub mod plugins;
pub mod replicas;
mod runs;
pub mod schedules;
pub mod settings;
pub mod tls;
mod workflows;
mod ws;

pub use audit_api::verify_chain as audit_chain;
pub use error::{ApiError, ApiResult};

use auth::{Access, Auth, Role};
use axum::Router;
use plexus_core::CompileOptions;
use plexus_engine::Engine;
use plexus_store::Store;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest request body accepted, in bytes (413 above).
    pub body_limit: usize,
    /// Where relative paths of manifests sent inline (sub-workflows) are resolved.
    pub base_dir: PathBuf,
    /// Where the engine stores artifacts (`<data dir>/artifacts`).
    pub artifact_root: PathBuf,
    /// Browser origins (`https://dash.example.com`) that may open `/ws` besides the
    /// server's own; see [`ws::origin_allowed`].
    pub allowed_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            body_limit: 4 * 1024 * 1024,
            base_dir: PathBuf::from("."),
            artifact_root: PathBuf::from("artifacts"),
            allowed_origins: Vec::new(),
        }
    }
}

/// What every handler is given: one `Arc`, since axum clones the state for each request
/// and each layer that takes it (a clone of [`Services`] itself was some twenty reference
/// counts and a map of pools).
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl From<Services> for AppState {
    fn from(services: Services) -> Self {
        AppState(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The engine, the store and what the API keeps beside them.
pub struct Services {
    pub engine: Engine,
    pub store: Arc<dyn Store>,
    pub compile: CompileOptions,
    pub config: Arc<ServerConfig>,
    pub auth: Arc<Auth>,
    /// Compiled plans of manifests started before (see `workflows::compile_for_run`).
    pub plans: Arc<workflows::PlanCache>,
    /// The newest version of each workflow started by name (see `runs::start`).
    pub newest_workflows: Arc<workflows::NewestWorkflows>,
    /// What questions are matched against (see `ask`).
    pub intents: Arc<ask::IntentCache>,
}

pub(crate) fn now_ms() -> u64 {
    plexus_engine::now_ms()
}

/// A route and who may call it.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
}

/// Declares every route once, with its access rule: the router, the [`ROUTES`] table the
/// guard checks, and the role tests all come from the same lines, so a route cannot exist
/// without a rule.
macro_rules! api {
    ($($access:ident $method:ident $path:literal => $handler:path),* $(,)?) => {
        /// Every route with its access rule.
        pub const ROUTES: &[Route] = &[$(Route {
            method: stringify!($method),
            path: $path,
            access: access!($access),
        }),*];

        /// The HTTP API.
        pub fn app(state: AppState) -> Router {
            metrics::install();
            Router::new()
                $(.route($path, axum::routing::$method($handler)))*
                .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::guard))
                .fallback(|| async { ApiError::not_found("no such route; see /api/v1/openapi.json") })
                .layer(axum::middleware::from_fn(error::json_errors))
                .layer(axum::middleware::from_fn(gateway::openai_errors))
                .layer(tower_http::catch_panic::CatchPanicLayer::custom(error::panic_answer))
                .layer(axum::middleware::from_fn(auth::security_headers))
                .layer(axum::middleware::from_fn(metrics::track))
                .with_state(state)
        }
    };
}

macro_rules! access {
    (public) => {
        Access::Public
    };
    (signed) => {
        Access::Signed
    };
    (operator) => {
        Access::Role(Role::Operator)
    };
    (engineer) => {
        Access::Role(Role::Engineer)
    };
    (admin) => {
        Access::Role(Role::Admin)
    };
}

api! {
    public get "/healthz" => health::healthz,
    public get "/api/v1/openapi.json" => health::openapi,
    public post "/api/v1/auth/login" => accounts::login,
    public post "/api/v1/auth/refresh" => accounts::refresh,
    signed post "/api/v1/auth/logout" => accounts::logout,
    signed get "/api/v1/auth/me" => accounts::me,
    signed post "/api/v1/api-keys" => accounts::create_key,
    signed get "/api/v1/api-keys" => accounts::list_keys,
    signed delete "/api/v1/api-keys/{id}" => accounts::revoke_key,
    admin post "/api/v1/users" => accounts::create_user,
    admin get "/api/v1/users" => accounts::list_users,
    admin patch "/api/v1/users/{username}" => accounts::update_user,
    operator get "/ws" => ws::upgrade,
    operator get "/metrics" => metrics::render,
    engineer post "/api/v1/workflows" => workflows::apply,
    engineer post "/api/v1/validate" => workflows::validate,
    operator get "/api/v1/workflows" => workflows::list,
    operator get "/api/v1/workflows/{name}" => workflows::get,
    engineer delete "/api/v1/workflows/{name}" => workflows::delete,
    engineer post "/api/v1/runs" => runs::start,
    engineer post "/api/v1/ask" => ask::ask,
    operator get "/api/v1/runs" => runs::list,
    operator get "/api/v1/runs/{id}" => runs::get,
    operator get "/api/v1/runs/{id}/events" => runs::events,
    operator get "/api/v1/runs/{id}/outputs" => runs::outputs,
    operator get "/api/v1/runs/{id}/steps/{step}/logs" => runs::logs,
    operator get "/api/v1/runs/{id}/artifacts" => runs::artifacts,
    operator get "/api/v1/artifacts/{sha256}" => runs::artifact,
    engineer post "/api/v1/runs/{id}/cancel" => runs::cancel,
    engineer post "/api/v1/runs/{id}/pause" => runs::pause,
    engineer post "/api/v1/runs/{id}/resume" => runs::resume,
    engineer post "/api/v1/runs/{id}/retry" => runs::retry,
    engineer post "/api/v1/runs/{id}/steps/{step}/{action}" => runs::step_action,
    operator get "/api/v1/approvals" => approvals::list,
    operator get "/api/v1/agents" => agents_api::list,
    operator get "/api/v1/agents/{name}" => agents_api::get,
    operator get "/api/v1/agents/{name}/health" => agents_api::check,
    admin delete "/api/v1/agents/{name}" => agents_api::remove,
    engineer post "/api/v1/agents/{name}/actions/{action}" => agents_api::invoke,
    engineer post "/v1/chat/completions" => gateway::chat,
    engineer post "/v1/embeddings" => gateway::embeddings,
    operator get "/v1/models" => gateway::models,
    operator get "/api/v1/providers" => gateway::providers,
    operator get "/api/v1/llm/usage" => gateway::usage,
    engineer post "/api/v1/schedules" => schedules::create,
    operator get "/api/v1/schedules" => schedules::list,
    operator get "/api/v1/schedules/{name}" => schedules::get,
    engineer delete "/api/v1/schedules/{name}" => schedules::delete,
    engineer post "/api/v1/schedules/{name}/pause" => schedules::pause,
    engineer post "/api/v1/schedules/{name}/resume" => schedules::resume,
    engineer post "/api/v1/events" => events::post,
    operator get "/api/v1/dead-letters" => events::dead_letters,
    operator get "/api/v1/replicas" => replicas::list,
    operator get "/api/v1/audit" => audit_api::list,
    operator get "/api/v1/audit/verify" => audit_api::verify,
    admin get "/api/v1/audit/export" => audit_api::export,
    admin get "/api/v1/settings" => settings::list,
    admin get "/api/v1/settings/{key}" => settings::get,
    admin put "/api/v1/settings/{key}" => settings::put,
    admin delete "/api/v1/settings/{key}" => settings::delete,
}
