//! Logs and traces: the `tracing` subscriber of the binary.
//!
//! Logs go to stderr (JSON lines under `serve`, text for people otherwise), filtered by
//! `PLEXUS_LOG`. When `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set, the
//! engine's run and attempt spans are also exported over OTLP/gRPC, batched on a thread of
//! their own; the log filter never hides them and they never appear in the logs.

use anyhow::{Context, Result, bail};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use plexus_engine::spans::SPAN_TARGET;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::prelude::*;

/// Keeps the exporter alive; [`Telemetry::shutdown`] sends what is still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans not sent yet (bounded by the exporter's timeout).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: traces not all exported: {e}");
        }
    }
}

/// Installs the global subscriber. Must run inside the tokio runtime (the gRPC exporter
/// needs it).
pub fn init(json_logs: bool, default_level: &str) -> Result<Telemetry> {
    let filter = EnvFilter::try_from_env("PLEXUS_LOG")
        .unwrap_or_else(|_| EnvFilter::new(default_level))
        .add_directive(format!("{SPAN_TARGET}=off").parse()?);
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if json_logs {
        logs.json().boxed()
    } else {
        logs.with_ansi(crate::output::colors(&std::io::stderr()))
            .boxed()
    };
    let provider = otlp_provider()?;
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("plexus"))
            .with_filter(Targets::new().with_target(SPAN_TARGET, tracing::Level::INFO))
    });
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(traces)
        .try_init()
        .context("installing the log subscriber")?;
    Ok(Telemetry { provider })
}

fn otlp_provider() -> Result<Option<SdkTracerProvider>> {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return Ok(None);
    }
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Ok(protocol) = std::env::var(name)
            && protocol != "grpc"
        {
            bail!(
                "{name}={protocol}: plexus exports traces over OTLP/gRPC only; \
                 set it to `grpc` (collectors listen on port 4317 for it)"
            );
        }
    }
    // The endpoint (and OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT) are read from the
    // environment by the exporter itself.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .context("OTEL_EXPORTER_OTLP_ENDPOINT: cannot set up the OTLP exporter")?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "plexus".into());
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(service).build())
            .build(),
    ))
}
