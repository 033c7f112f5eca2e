//! OTLP traces: the real binary exports a span per run and per step attempt to an OTLP/gRPC
//! collector (a real tonic server speaking the collector protocol, in this test process).

mod common;
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .map(|a| attr_text(a.value.as_ref().and_then(|v| v.value.as_ref())))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                spans.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attr_text(v: Option<&AnyValue>) -> String {
    match v {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn attr(span: &Span, key: &str) -> String {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .map(|a| attr_text(a.value.as_ref().and_then(|v| v.value.as_ref())))
        .unwrap_or_default()
}

#[test]
fn a_run_exports_a_span_per_run_and_per_attempt() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let collector = Collector::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(collector.clone());
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let p = Plexus::new();
    std::fs::create_dir_all(p.dir.path().join("lib")).unwrap();
    std::fs::copy(
        examples().join("lib/greet.yaml"),
        p.dir.path().join("lib/greet.yaml"),
    )
    .unwrap();
    let flow = p.dir.path().join("flow.yaml");
    // `flaky` fails its first attempt and succeeds on the second.
    std::fs::write(
        &flow,
        "version: plexus/v1\nname: traced\nsteps:\n\
         - id: first\n  run: echo one\n\
         - id: flaky\n  needs: [first]\n  retry: {max_attempts: 2, backoff: 10ms}\n  \
           run: test -e marker || { touch marker; echo broken >&2; exit 3; }\n\
         - id: child\n  needs: [flaky]\n  workflow: lib/greet.yaml\n  with: {who: ada}\n",
    )
    .unwrap();
    let out = p
        .cmd()
        .args(["run", flow.to_str().unwrap(), "-o", "json"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"))
        .env("OTEL_SERVICE_NAME", "plexus-test")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let run_id = run["id"].as_str().unwrap().to_owned();

    // The binary exported everything before it exited.
    let spans = collector.spans.lock().unwrap().clone();
    assert!(spans.iter().all(|(service, _)| service == "plexus-test"));
    let spans: Vec<Span> = spans.into_iter().map(|(_, s)| s).collect();
    let named = |name: &str| -> Vec<&Span> { spans.iter().filter(|s| s.name == name).collect() };

    let runs = named("run traced");
    assert_eq!(runs.len(), 1, "one span for the run: {spans:#?}");
    let root = runs[0];
    assert_eq!(attr(root, "run_id"), run_id);
    assert_eq!(attr(root, "state"), "succeeded");
    assert!(root.parent_span_id.is_empty(), "the run span is a root");

    // A span per attempt, each a child of the run's span, with its outcome.
    let flaky = named("step flaky");
    assert_eq!(flaky.len(), 2, "two attempts of flaky: {spans:#?}");
    let mut attempts: Vec<(String, String, i32)> = flaky
        .iter()
        .map(|s| {
            (
                attr(s, "attempt"),
                attr(s, "outcome"),
                s.status.as_ref().map_or(0, |st| st.code),
            )
        })
        .collect();
    attempts.sort();
    assert_eq!(
        attempts,
        vec![
            ("1".into(), "failed".into(), StatusCode::Error as i32),
            ("2".into(), "succeeded".into(), StatusCode::Unset as i32),
        ]
    );
    for s in named("step first")
        .into_iter()
        .chain(flaky)
        .chain(named("step child"))
    {
        assert_eq!(
            s.trace_id, root.trace_id,
            "{} is in the run's trace",
            s.name
        );
        assert_eq!(
            s.parent_span_id, root.span_id,
            "{} is a child of the run",
            s.name
        );
        assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
        assert_eq!(attr(s, "run_id"), run_id);
    }

    // The sub-workflow's run is a child of the attempt that started it.
    let child_step = named("step child");
    assert_eq!(child_step.len(), 1);
    let sub = named("run greet");
    assert_eq!(sub.len(), 1, "{spans:#?}");
    assert_eq!(sub[0].trace_id, root.trace_id);
    assert_eq!(sub[0].parent_span_id, child_step[0].span_id);
    let say = named("step say");
    assert_eq!(say[0].parent_span_id, sub[0].span_id);
}

#[test]
fn an_unsupported_otlp_protocol_is_named() {
    let p = Plexus::new();
    let out = p
        .cmd()
        .args(["validate", examples().join("hello.yaml").to_str().unwrap()])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf") && err.contains("grpc"),
        "{err}"
    );
}
