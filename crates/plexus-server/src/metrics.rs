//! `GET /metrics` in the Prometheus text format, and the HTTP request metrics.

use crate::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Instant;

/// The process-wide recorder (metrics are global; every server in the process shares it).
fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let buckets = [
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0, 300.0,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets(&buckets)
            .expect("buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Only the first server of a process installs it; later ones share it.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Installs the recorder; call before the engine starts recording.
pub fn install() {
    handle();
}

pub async fn render(State(state): State<AppState>) -> Response {
    if let Ok(counts) = state.store.count_runs_by_status().await {
        for state_name in [
            "queued",
            "running",
            "paused",
            "succeeded",
            "failed",
            "cancelled",
        ] {
            let n = counts
                .iter()
                .find(|(s, _)| s == state_name)
                .map_or(0, |c| c.1);
            metrics::gauge!("plexus_runs", "state" => state_name).set(n as f64);
        }
    }
    if let Ok(pools) = state.engine.pool_stats().await {
        for p in pools {
            metrics::gauge!("plexus_pool_slots_in_use", "pool" => p.name.clone())
                .set(p.used as f64);
            metrics::gauge!("plexus_pool_capacity", "pool" => p.name.clone())
                .set(p.capacity as f64);
            metrics::gauge!("plexus_pool_queue_depth", "pool" => p.name).set(p.queued as f64);
        }
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle().render(),
    )
        .into_response()
}

/// Counts every request by method, route (the pattern, not the raw path) and status.
pub async fn track(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("plexus_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("plexus_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
