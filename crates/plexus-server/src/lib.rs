//! The Plexus HTTP API. [`app`] builds the router from [`ROUTES`], a single table, so the
//! OpenAPI document and the role tests can be checked against every route that exists.

mod body;
mod error;
mod events;
pub mod grpc;
mod health;
pub mod metrics;
mod runs;
pub mod schedules;
mod workflows;
mod ws;

pub use error::{ApiError, ApiResult};

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
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            body_limit: 4 * 1024 * 1024,
            base_dir: PathBuf::from("."),
            artifact_root: PathBuf::from("artifacts"),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub store: Arc<dyn Store>,
    pub compile: CompileOptions,
    pub config: Arc<ServerConfig>,
}

pub(crate) fn now_ms() -> u64 {
    plexus_engine::now_ms()
}

/// Declares every route once: the router and the [`ROUTES`] list come from the same lines.
macro_rules! api {
    ($($method:ident $path:literal => $handler:path),* $(,)?) => {
        /// Every route as (method, path).
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        /// The HTTP API.
        pub fn app(state: AppState) -> Router {
            metrics::install();
            Router::new()
                $(.route($path, axum::routing::$method($handler)))*
                .fallback(|| async { ApiError::not_found("no such route; see /api/v1/openapi.json") })
                .layer(axum::middleware::from_fn(metrics::track))
                .with_state(state)
        }
    };
}

api! {
    get "/healthz" => health::healthz,
    get "/ws" => ws::upgrade,
    get "/metrics" => metrics::render,
    get "/api/v1/openapi.json" => health::openapi,
    post "/api/v1/workflows" => workflows::apply,
    get "/api/v1/workflows" => workflows::list,
    get "/api/v1/workflows/{name}" => workflows::get,
    delete "/api/v1/workflows/{name}" => workflows::delete,
    post "/api/v1/runs" => runs::start,
    get "/api/v1/runs" => runs::list,
    get "/api/v1/runs/{id}" => runs::get,
    get "/api/v1/runs/{id}/events" => runs::events,
    get "/api/v1/runs/{id}/outputs" => runs::outputs,
    get "/api/v1/runs/{id}/steps/{step}/logs" => runs::logs,
    get "/api/v1/runs/{id}/artifacts" => runs::artifacts,
    get "/api/v1/artifacts/{sha256}" => runs::artifact,
    post "/api/v1/runs/{id}/cancel" => runs::cancel,
    post "/api/v1/runs/{id}/pause" => runs::pause,
    post "/api/v1/runs/{id}/resume" => runs::resume,
    post "/api/v1/runs/{id}/retry" => runs::retry,
    post "/api/v1/runs/{id}/steps/{step}/{action}" => runs::step_action,
    post "/api/v1/schedules" => schedules::create,
    get "/api/v1/schedules" => schedules::list,
    get "/api/v1/schedules/{name}" => schedules::get,
    delete "/api/v1/schedules/{name}" => schedules::delete,
    post "/api/v1/schedules/{name}/pause" => schedules::pause,
    post "/api/v1/schedules/{name}/resume" => schedules::resume,
    post "/api/v1/events" => events::post,
    get "/api/v1/dead-letters" => events::dead_letters,
}
