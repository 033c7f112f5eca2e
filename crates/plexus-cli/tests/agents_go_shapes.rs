//! A plugin speaking exactly the public Go SDK's shapes against a real `plexus serve`,
//! modelled on the public metrics-query agent: `application/grpc+json`, base64 bytes,
//! parameter lists with `Name/Type/Required/Description`, string parameters, failures
//! as `{"error": ...}` results. (Go itself is too old here to build the Go SDK.) The
//! messages are written by hand below, as the Go SDK writes them; the plugin's side of
//! the transport is the Rust SDK's.

mod common;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::agents::*;
use common::server::*;
use common::*;
use plexus_agent::rpc::{Call, Handler, JsonService, PluginServiceName};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Status;

const NAME: &str = "query_vmetrics";

/// What the plugin saw.
#[derive(Default)]
struct Seen {
    /// Execute requests as they arrived (raw JSON).
    executes: Vec<Value>,
    /// ConfigUpdated pushes.
    pushed: Vec<BTreeMap<String, String>>,
    /// What each request said its content type was.
    content_types: Vec<String>,
}

struct GoAgent {
    seen: Arc<Mutex<Seen>>,
    engine: plexus_agent::Engine,
    /// The engine for messages written by hand, as the Go SDK writes them.
    raw: plexus_agent::rpc::Peer,
}

fn b64(v: &Value) -> String {
    B64.encode(v.to_string())
}

fn action(id: &str, permission: i32, params: Value) -> Value {
    json!({
        "id": id,
        "description": format!("{id} against VictoriaMetrics"),
        "permission": permission,
        "stages": [8],
        "intents": [{"pattern": format!("{id} metrics"), "confidence": 0.9, "priority": 9}],
        "input_params": b64(&params),
        "routing_semantics": {"schema_version": "", "accepted_intent_domains": null,
            "capability_domain": "", "positive_use_cases": null, "negative_use_cases": null}
    })
}

fn actions() -> Value {
    json!([
        action(
            "query",
            1,
            json!([
                {"Name": "query", "Type": "string", "Required": true, "Description": "MetricsQL"},
                {"Name": "step", "Type": "number", "Required": false, "Description": "seconds"}
            ])
        ),
        action(
            "delete_series",
            2,
            json!([
                {"Name": "match", "Type": "string", "Required": true, "Description": "series selector"}
            ])
        ),
        action("broken", 1, Value::Null),
        action("slow", 1, Value::Null),
        action(
            "forward",
            1,
            json!([{"Name": "target_action", "Type": "string", "Required": true, "Description": ""}])
        ),
    ])
}

/// An Execute answer as the Go SDK writes it: `result_json` in base64.
fn answer(result: Value) -> Value {
    json!({"success": true, "result_json": b64(&result), "error": "", "duration_ms": 3})
}

impl GoAgent {
    async fn execute(&self, req: Value) -> Result<Value, Status> {
        self.seen.lock().unwrap().executes.push(req.clone());
        let params: BTreeMap<String, String> = serde_json::from_slice(
            &B64.decode(req["params_json"].as_str().unwrap_or_default())
                .map_err(|e| Status::invalid_argument(format!("params_json is not base64: {e}")))?,
        )
        .map_err(|e| Status::invalid_argument(format!("Go agents take string params: {e}")))?;
        let action = params.get("action").cloned().unwrap_or_default();
        let err = |e: plexus_agent::rpc::CallError| Status::internal(e.to_string());
        match action.as_str() {
            "query" => {
                let config = self.engine.config().await.map_err(err)?;
                let Some(url) = config.get("metrics_url") else {
                    return Ok(answer(json!({"error": "metrics_url is not configured"})));
                };
                let key = format!(
                    "metrics:{}:{}",
                    req["tenant_id"].as_str().unwrap(),
                    params["query"]
                );
                // A gzip header and bytes that are not UTF-8: kept exactly.
                let blob: Vec<u8> = vec![0x1f, 0x8b, 0x08, 0x00, 0xff, 0xfe, 0x00, 0x80];
                let cached = match self.engine.cache_get(&key).await.map_err(err)? {
                    Some(v) => {
                        assert_eq!(v, blob, "cache values come back byte for byte");
                        true
                    }
                    None => {
                        self.engine
                            .cache_set(&key, &blob, Some(Duration::from_secs(60)))
                            .await
                            .map_err(err)?;
                        false
                    }
                };
                let window = req["time_range"]["end_epoch_ms"].as_i64().unwrap_or(0)
                    - req["time_range"]["start_epoch_ms"].as_i64().unwrap_or(0);
                Ok(answer(json!({
                    "url": url, "query": params["query"], "step": params.get("step"),
                    "cached": cached, "window_ms": window
                })))
            }
            "delete_series" => {
                let approved = self
                    .engine
                    .request_approval(
                        req["execution_id"].as_str().unwrap(),
                        &format!("delete every series matching {}", params["match"]),
                        plexus_agent::Permission::Modify,
                        &json!({"series": 3}),
                        Duration::from_secs(60),
                    )
                    .await
                    .map_err(err)?;
                if !approved {
                    return Ok(answer(json!({"error": "deletion not approved"})));
                }
                self.engine
                    .log_event(
                        "series deleted",
                        "info",
                        &json!({"match": params["match"], "count": 3}),
                    )
                    .await
                    .map_err(err)?;
                Ok(answer(json!({"deleted": 3})))
            }
            "slow" => {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                Ok(answer(json!({"slept": true})))
            }
            "broken" => Ok(answer(
                json!({"error": "backend unreachable: dial tcp 10.0.0.9:8428"}),
            )),
            // CallPlugin as the Go SDK sends it: the action among string params, no
            // action_id, no timeout.
            "forward" => {
                let target = params["target_action"].clone();
                let call_params = if target == "query" {
                    json!({"action": target, "query": "up"})
                } else {
                    json!({"action": target, "match": "{job=\"x\"}"})
                };
                let reply = self
                    .raw
                    .call(
                        "CallPlugin",
                        json!({"caller_plugin": NAME, "target_plugin": NAME,
                               "params_json": b64(&call_params), "tenant_id": req["tenant_id"]}),
                        Duration::from_secs(60),
                    )
                    .await
                    .map_err(err)?;
                let result: Value = match reply["result_json"].as_str() {
                    Some(r) if !r.is_empty() => {
                        serde_json::from_slice(&B64.decode(r).unwrap()).unwrap()
                    }
                    _ => Value::Null,
                };
                Ok(answer(
                    json!({"success": reply["success"], "result": result, "error": reply["error"]}),
                ))
            }
            other => Ok(json!({"success": false, "error": format!("unknown action {other}")})),
        }
    }
}

impl Handler for GoAgent {
    async fn call(&self, call: Call) -> Result<Value, Status> {
        let ct = if call.style == plexus_agent::wire::Style::Go {
            "application/grpc+json"
        } else {
            "other"
        };
        self.seen.lock().unwrap().content_types.push(ct.to_owned());
        match call.method.as_str() {
            // Go's Info: `metadata` null, `permission` the first declared + 1.
            "Info" => Ok(json!({
                "name": NAME, "version": "0.2.0", "description": "Queries VictoriaMetrics",
                "type": 1, "permission": 1, "devops_stages": [8],
                "default_intents": [{"pattern": "show metrics", "confidence": 0.8, "priority": 8}],
                "actions": actions(),
                "config_schema": [{"key": "metrics_url", "type": "string", "required": true,
                    "default": "", "description": "VictoriaMetrics base URL", "is_secret": false}],
                "metadata": null,
                "instance_id": "go-instance-1"
            })),
            "GetSchema" => Ok(json!({
                "params_json_schema": B64.encode("null"),
                "result_json_schema": B64.encode("null"),
                "actions": actions()
            })),
            "Execute" => self.execute(call.body).await,
            "HealthCheck" => Ok(json!({"healthy": true, "message": "ok", "details": null})),
            "ConfigUpdated" => {
                let config: BTreeMap<String, String> =
                    serde_json::from_value(call.body["config"].clone()).unwrap_or_default();
                self.seen.lock().unwrap().pushed.push(config);
                Ok(json!({"acknowledged": true, "error": ""}))
            }
            other => Err(Status::unimplemented(format!("{other} not implemented"))),
        }
    }
}

fn health(p: &Plexus, addr: &str) -> Option<String> {
    cli_json(p, addr, &["agent", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == NAME)
        .map(|a| a["health"].as_str().unwrap().to_owned())
}

#[test]
fn a_plugin_with_the_go_sdks_shapes_works_through_the_whole_path() {
    let p = Plexus::new();
    std::fs::write(
        p.dir.path().join("plexus.toml"),
        "[plugins]\nhealth_check_interval = \"1s\"\nregistration_grace = \"0s\"\n",
    )
    .unwrap();
    let grpc = free_addr();
    let (mut server, addr) = start_server_on(&p, &grpc);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let tenant = plexus_agent::tenant_id("default");
    let engine = plexus_agent::Engine::new(&grpc, NAME, "go-instance-1", &tenant, None).unwrap();
    let plugin_addr = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        let agent = GoAgent {
            seen: seen.clone(),
            engine: engine.clone(),
            raw: plexus_agent::rpc::Peer::lazy("mirastack.plugin.v1.EngineService", &grpc)
                .unwrap()
                .with_header("x-plugin-name", NAME),
        };
        let service = JsonService::<GoAgent, PluginServiceName>::new(Arc::new(agent));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        local.to_string()
    });
    // Registration: the engine reads Info and GetSchema back within the SDKs' 10 s. The
    // SDKs advertise `hostname:port`; a hostname that does not resolve is replaced by
    // the address the plugin called from.
    let port = plugin_addr.rsplit_once(':').unwrap().1;
    let plugin_addr = format!("plexus-test-host.invalid:{port}");
    let started = Instant::now();
    rt.block_on(engine.register("0.2.0", &plugin_addr))
        .expect("registered");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Heartbeats as the Go SDK sends them, registering again when told to.
    let registrations = Arc::new(Mutex::new(1));
    {
        let (engine, plugin_addr, registrations) =
            (engine.clone(), plugin_addr.clone(), registrations.clone());
        rt.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if let Ok(beat) = engine.heartbeat().await
                    && beat.re_register
                    && engine.register("0.2.0", &plugin_addr).await.is_ok()
                {
                    *registrations.lock().unwrap() += 1;
                }
            }
        });
    }
    assert_eq!(health(&p, &addr).as_deref(), Some("healthy"));
    let got = cli_json(&p, &addr, &["agent", "get", NAME]);
    let query = got["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "query")
        .unwrap();
    assert_eq!(query["permission"], "read");
    assert_eq!(
        query["params_schema"]["required"],
        json!(["query"]),
        "{query}"
    );

    // Configuration: set by an admin, pushed to the plugin at once, read back by it.
    let out = cli(&p, &addr)
        .args(["agent", "config-set", NAME, "metrics_url", "http://vm:8428"])
        .output()
        .unwrap();
    assert!(out.status.success());
    wait_for("the configuration push", || {
        seen.lock()
            .unwrap()
            .pushed
            .iter()
            .any(|c| c.get("metrics_url").map(String::as_str) == Some("http://vm:8428"))
    });
    // A secret is sealed in the store, shown to people only as set, and opened for the
    // plugin alone.
    let out = cli(&p, &addr)
        .args(["agent", "config-set", NAME, "api_token", "--value-stdin"])
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"s3cr3t-token")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = cli_json(&p, &addr, &["agent", "config", NAME]);
    assert_eq!(shown["api_token"], json!({"set": true}), "{shown}");
    assert!(!shown.to_string().contains("s3cr3t"));
    let opened = rt.block_on(engine.config()).unwrap();
    assert_eq!(opened["api_token"], "s3cr3t-token");
    assert_eq!(opened["metrics_url"], "http://vm:8428");

    let runner = spawn_run(
        &p,
        &addr,
        "metrics",
        r#"version: plexus/v1
name: metrics
steps:
  - id: first
    agent: query_vmetrics
    action: query
    with: {query: up, step: 60, time_range: 1h}
  - id: again
    agent: query_vmetrics
    action: query
    needs: [first]
    with: {query: up, time_range: 1h}
  - id: delete
    agent: query_vmetrics
    action: delete_series
    needs: [again]
    with: {match: "{job=\"old\"}"}
"#,
    );
    // The MODIFY action is gated before it runs; inside, the agent asks again.
    approve_when_asked(&p, &addr, Some("delete"), Some("agent"));
    approve_when_asked(&p, &addr, Some("delete"), Some("agent_request"));
    let run = finish_run(runner, 0);
    let output = |id: &str| {
        run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .unwrap()["output"]
            .clone()
    };
    assert_eq!(
        output("first"),
        json!({"url": "http://vm:8428", "query": "up", "step": "60", "cached": false, "window_ms": 3_600_000})
    );
    assert_eq!(
        output("again")["cached"],
        true,
        "the second call hit the engine's cache"
    );
    assert_eq!(output("delete"), json!({"deleted": 3}));

    // What the plugin received is what Go agents expect.
    let seen_now = seen.lock().unwrap();
    assert!(
        seen_now
            .content_types
            .iter()
            .all(|c| c == "application/grpc+json")
    );
    let first = &seen_now.executes[0];
    let params: Value =
        serde_json::from_slice(&B64.decode(first["params_json"].as_str().unwrap()).unwrap())
            .unwrap();
    assert_eq!(
        params,
        json!({"query": "up", "step": "60", "action": "query"}),
        "strings, and the action"
    );
    assert_eq!(first["action_id"], "query");
    assert_eq!(first["execution_mode"], 2, "guided");
    assert_eq!(first["mode"], 2);
    assert_eq!(first["tenant_id"], tenant);
    assert_eq!(first["step_id"], "first");
    assert_eq!(first["execution_id"], run["id"]);
    assert_eq!(first["time_range"]["original_expression"], "1h");
    assert!(
        first["context"]["idempotency_key"]
            .as_str()
            .unwrap()
            .ends_with("/first/-")
    );
    drop(seen_now);

    // The agent's audit event and its approval are in the audit log.
    let (_, audit) = http(&addr, "GET", "/api/v1/audit?limit=1000", None);
    let text = audit.to_string();
    for action in [
        "agent.event.series_deleted",
        "agent.approval_requested",
        "agent.approval_approved",
    ] {
        assert!(
            text.contains(&format!("\"{action}\"")),
            "{action} in {text}"
        );
    }

    // A failure reported as `{"error": ...}` fails the step with that message.
    let out = cli(&p, &addr)
        .args(["action", "invoke", NAME, "broken", "-o", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = run["steps"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("backend unreachable: dial tcp 10.0.0.9:8428"),
        "{error}"
    );

    // A plugin that hangs: the step's timeout ends each attempt, retries follow the
    // policy, and the run ends — it never hangs.
    let hang = p.dir.path().join("hang.yaml");
    std::fs::write(
        &hang,
        "version: plexus/v1\nname: hang\nsteps:\n- id: nap\n  agent: query_vmetrics\n  action: slow\n  timeout: 300ms\n  retry: {max_attempts: 2, backoff: 10ms}\n",
    )
    .unwrap();
    let started = Instant::now();
    let out = cli(&p, &addr)
        .args(["run", hang.to_str().unwrap(), "-o", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(10));
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    let nap = &run["steps"][0];
    assert_eq!(nap["attempt"], 2, "{nap}");
    assert!(
        nap["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 300ms"),
        "{nap}"
    );

    // One plugin calling another through the engine (here, itself): a READ action at
    // once; a MODIFY one after a person approves it in the name of the calling step.
    let run = cli_json(
        &p,
        &addr,
        &[
            "action",
            "invoke",
            NAME,
            "forward",
            "-p",
            "target_action=query",
        ],
    );
    let out = &run["steps"][0]["output"];
    assert_eq!(out["success"], true, "{run}");
    assert_eq!(out["result"]["query"], "up", "{run}");
    let runner = cli(&p, &addr)
        .args(["action", "invoke", NAME, "forward"])
        .args(["-p", "target_action=delete_series", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    approve_when_asked(&p, &addr, Some("invoke"), Some("agent_request")); // the call itself
    approve_when_asked(&p, &addr, Some("invoke"), Some("agent_request")); // delete_series asks again
    let done = runner.wait_with_output().unwrap();
    let run: Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_eq!(
        run["steps"][0]["output"]["result"],
        json!({"deleted": 3}),
        "{run}"
    );
    // Another tenant's call is refused.
    let other_tenant = json!({"caller_plugin": NAME, "target_plugin": NAME, "action_id": "query",
                              "tenant_id": plexus_agent::tenant_id("someone-else")});
    let err = rt
        .block_on(
            plexus_agent::rpc::Peer::lazy("mirastack.plugin.v1.EngineService", &grpc)
                .unwrap()
                .call("CallPlugin", other_tenant, Duration::from_secs(5)),
        )
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::PermissionDenied));

    // kill -9 during a call: after the restart the plugin registers again (its next
    // heartbeat is told to), the run resumes, the action is called again with the same
    // idempotency key — at least once — and the step completes once.
    std::fs::write(
        p.dir.path().join("plexus.toml"),
        "[plugins]\nhealth_check_interval = \"1s\"\nregistration_grace = \"30s\"\n",
    )
    .unwrap();
    let (_, started) = http(
        &addr,
        "POST",
        "/api/v1/runs",
        Some(
            &json!({"manifest": "version: plexus/v1\nname: slow\nsteps:\n- {id: nap, agent: query_vmetrics, action: slow}\n"}),
        ),
    );
    let run_id = started["id"].as_str().unwrap().to_owned();
    // The calls of this run's step (the hanging run above called `slow` too).
    let slow_calls = |seen: &Seen| -> Vec<Value> {
        seen.executes
            .iter()
            .filter(|e| e["action_id"] == "slow" && e["execution_id"] == run_id.as_str())
            .cloned()
            .collect()
    };
    wait_for("the slow call", || {
        slow_calls(&seen.lock().unwrap()).len() == 1
    });
    server.kill().unwrap();
    server.wait().unwrap();
    let before = *registrations.lock().unwrap();
    let (mut server, addr) = start_server_on(&p, &grpc);
    wait_for("registration after the restart", || {
        health(&p, &addr).as_deref() == Some("healthy")
    });
    assert!(*registrations.lock().unwrap() > before);
    let (status, run) = http(
        &addr,
        "GET",
        &format!("/api/v1/runs/{run_id}?wait=30s"),
        None,
    );
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["steps"][0]["output"], json!({"slept": true}));
    let calls = slow_calls(&seen.lock().unwrap());
    assert_eq!(calls.len(), 2, "called again after the crash");
    assert_eq!(
        calls[0]["context"]["idempotency_key"], calls[1]["context"]["idempotency_key"],
        "with the same idempotency key"
    );
    assert_eq!(calls[0]["context"]["attempt"], "1");
    assert_eq!(calls[1]["context"]["attempt"], "2");
    let (_, events) = http(&addr, "GET", &format!("/api/v1/runs/{run_id}/events"), None);
    let succeeded = events["events"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .filter(|e| e["type"] == "step_succeeded")
        .count();
    assert_eq!(succeeded, 1, "the step completed once: {events}");
    stop(&mut server);
}
