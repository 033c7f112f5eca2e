//! gRPC JobService and health over a real socket, with the generated client.

mod common;
use common::Api;
use pb::job_service_client::JobServiceClient;
use plexus_server::grpc::pb;
use tokio_stream::StreamExt;

async fn serve(api: &Api) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (jobs, health) = plexus_server::grpc::services(api.state.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(jobs)
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap()
    });
    format!("http://{addr}")
}

type AddAuth =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
type Client = JobServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, AddAuth>,
>;

/// A JobService client sending `authorization: Bearer <bearer>` (none: anonymous).
async fn client(url: &str, bearer: Option<String>) -> Client {
    let channel = tonic::transport::Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let add: AddAuth = Box::new(move |mut req: tonic::Request<()>| {
        if let Some(b) = &bearer {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {b}").parse().unwrap());
        }
        Ok(req)
    });
    JobServiceClient::with_interceptor(channel, add)
}

#[tokio::test]
async fn submit_get_list_stream_and_control() {
    let api = Api::new().await;
    let url = serve(&api).await;
    let mut client = client(&url, api.bearer.clone()).await;
    let manifest = "version: plexus/v1\nname: g\ninputs: {who: {type: string}}\nsteps:\n- {id: hold, wait: {signal: go}}\n- {id: hi, needs: [hold], builtin: echo, with: {m: 'hi {{ inputs.who }}'}}\noutputs: {m: '{{ steps.hi.output.m }}'}\n";
    let req = pb::SubmitRequest {
        manifest: manifest.into(),
        inputs_json: r#"{"who": "grpc"}"#.into(),
        idempotency_key: "k1".into(),
        ..Default::default()
    };
    let run = client.submit(req.clone()).await.unwrap().into_inner();
    let again = client.submit(req).await.unwrap().into_inner();
    assert_eq!(run.id, again.id, "the idempotency key returns the same run");

    let mut stream = client
        .stream_events(pb::StreamEventsRequest {
            run_id: run.id.clone(),
            after: 0,
        })
        .await
        .unwrap()
        .into_inner();
    api.wait_step(&run.id, "hold", "waiting").await;
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!((first.seq, first.r#type.as_str()), (1, "run_started"));
    api.post(
        &format!("/api/v1/runs/{}/steps/hold/signal", run.id),
        serde_json::json!({}),
    )
    .await;
    let mut seqs = vec![first.seq];
    // Bounded, so that a stream that stops short fails here and says what it saw.
    let read = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(e) = stream.next().await {
            let e = e.unwrap();
            seqs.push(e.seq);
            if e.r#type == "run_succeeded" {
                break;
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the stream stopped short of the run's end: {seqs:?}"
    );
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "every event once, in order"
    );

    let got = client
        .get(pb::GetRequest { id: run.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.state, "succeeded");
    assert_eq!(got.outputs_json, r#"{"m":"hi grpc"}"#);
    assert_eq!(got.steps.len(), 2);
    let list = client
        .list(pb::ListRequest {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.runs.len(), 1);

    let err = client
        .cancel(pb::RunRef { id: run.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    let err = client
        .get(pb::GetRequest {
            id: "ffffffff".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = client
        .submit(pb::SubmitRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let bad = pb::SubmitRequest {
        manifest: "version: plexus/v1\nname: b\nsteps: [{id: a}]\n".into(),
        ..Default::default()
    };
    assert_eq!(
        client.submit(bad).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );

    let channel = tonic::transport::Channel::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "plexus.v1.JobService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

/// Every method of the proto's JobService, called by anonymous and by each role: refused
/// exactly when the method's rule says so. A method added to the proto without a rule in
/// `grpc::METHODS` fails here.
#[tokio::test]
async fn every_method_checks_the_callers_role() {
    use plexus_server::auth::{Access, Role};
    let proto = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../proto/plexus/v1/jobs.proto"
    ))
    .unwrap();
    let declared: Vec<&str> = proto
        .lines()
        .filter_map(|l| l.trim().strip_prefix("rpc "))
        .map(|l| l.split('(').next().unwrap().trim())
        .collect();
    let ruled: Vec<&str> = plexus_server::grpc::METHODS
        .iter()
        .map(|(m, _)| *m)
        .collect();
    assert_eq!(
        declared, ruled,
        "every rpc of jobs.proto needs a rule in grpc::METHODS"
    );

    let api = Api::new().await;
    let url = serve(&api).await;
    let mut callers = vec![(None, None)];
    for role in Role::ALL {
        let key = api
            .user_key(&format!("g-{}", role.as_str()), role.as_str())
            .await;
        callers.push((Some(role), Some(key)));
    }
    for (role, key) in callers {
        let mut c = client(&url, key).await;
        for (method, access) in plexus_server::grpc::METHODS {
            let id = "00000000-0000-0000-0000-000000000000".to_owned();
            let code = match *method {
                "Submit" => c.submit(pb::SubmitRequest::default()).await.err(),
                "Get" => c.get(pb::GetRequest { id }).await.err(),
                "List" => c.list(pb::ListRequest::default()).await.err(),
                "Cancel" => c.cancel(pb::RunRef { id }).await.err(),
                "Pause" => c.pause(pb::RunRef { id }).await.err(),
                "Resume" => c.resume(pb::RunRef { id }).await.err(),
                "StreamEvents" => c
                    .stream_events(pb::StreamEventsRequest {
                        run_id: id,
                        after: 0,
                    })
                    .await
                    .err(),
                other => panic!("no call written for {other}"),
            }
            .map(|e| e.code());
            let expected = match (role, access.allows(role)) {
                (None, _) if *access != Access::Public => Some(tonic::Code::Unauthenticated),
                (Some(_), false) => Some(tonic::Code::PermissionDenied),
                _ => None,
            };
            match expected {
                Some(want) => assert_eq!(code, Some(want), "{method} as {role:?}"),
                None => assert!(
                    !matches!(
                        code,
                        Some(tonic::Code::Unauthenticated | tonic::Code::PermissionDenied)
                    ),
                    "{method} as {role:?} was refused: {code:?}"
                ),
            }
        }
    }
}

/// A gRPC event stream ends when the key it was opened with is revoked.
#[tokio::test]
async fn a_stream_ends_when_its_key_is_revoked() {
    let api = Api::new().await;
    let url = serve(&api).await;
    let key = api.user_key("grpc-watcher", "operator").await;
    let manifest = "version: plexus/v1\nname: w\nsteps:\n- {id: hold, wait: {signal: go}}\n";
    let (_, run) = api
        .post("/api/v1/runs", serde_json::json!({"manifest": manifest}))
        .await;
    let id = run["id"].as_str().unwrap().to_owned();
    api.wait_step(&id, "hold", "waiting").await;
    let mut watcher = client(&url, Some(key.clone())).await;
    let mut stream = watcher
        .stream_events(pb::StreamEventsRequest {
            run_id: id,
            after: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stream.next().await.unwrap().is_ok(), "the backlog arrives");
    let key_id = key.trim_start_matches("plx_").split('_').next().unwrap();
    api.call("DELETE", &format!("/api/v1/api-keys/{key_id}"), "", &[])
        .await;
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends");
    let status = ended.expect("an error, not a quiet end").unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().contains("revoked"), "{status}");
}
