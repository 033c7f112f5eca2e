//! The HTTP API against a real engine and a real SQLite store, through the router.

mod common;
use axum::body::Body;
use axum::http::StatusCode;
use common::Api;
use plexus_server::ROUTES;
use serde_json::json;

const HELLO: &str = "version: plexus/v1\nname: hello\ninputs: {who: {type: string, default: world}}\nsteps:\n- {id: greet, builtin: echo, with: {msg: 'hello {{ inputs.who }}'}}\noutputs: {msg: '{{ steps.greet.output.msg }}'}\n";

#[tokio::test]
async fn workflows_are_versioned_listed_and_deleted() {
    let api = Api::new().await;
    let (s, v) = api
        .call(
            "POST",
            "/api/v1/workflows",
            HELLO,
            &[("content-type", "application/yaml")],
        )
        .await;
    assert_eq!((s, v["version"].clone()), (StatusCode::CREATED, json!(1)));
    let (s, v) = api.call("POST", "/api/v1/workflows", HELLO, &[]).await;
    assert_eq!((s, v["created"].clone()), (StatusCode::OK, json!(false)));
    let changed = HELLO.replace("default: world", "default: you");
    let (_, v) = api.call("POST", "/api/v1/workflows", changed, &[]).await;
    assert_eq!(v["version"], 2);
    let (_, v) = api.get("/api/v1/workflows/hello?version=1").await;
    assert!(v["manifest"].as_str().unwrap().contains("default: world"));
    let (_, v) = api.get("/api/v1/workflows").await;
    assert_eq!(v["workflows"][0]["version"], 2);
    let (s, _) = api
        .call("DELETE", "/api/v1/workflows/hello", Body::empty(), &[])
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = api.get("/api/v1/workflows/hello").await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::NOT_FOUND, json!("not_found"))
    );
}

#[tokio::test]
async fn an_invalid_manifest_answers_with_every_problem() {
    let api = Api::new().await;
    let bad = "version: plexus/v1\nname: bad\nsteps:\n- id: a\n  rn: echo\n- {id: b, needs: [zz], run: echo}\n";
    let (s, v) = api.call("POST", "/api/v1/workflows", bad, &[]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["code"], "invalid_manifest");
    let codes: Vec<&str> = v["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["no-kind", "unknown-key", "unknown-need"]);
    assert_eq!(v["details"][1]["line"], 5);
    assert_eq!(v["details"][1]["hint"], "did you mean `run`?");
}

#[tokio::test]
async fn runs_start_by_name_or_inline_and_are_idempotent() {
    let api = Api::new().await;
    api.call("POST", "/api/v1/workflows", HELLO, &[]).await;
    let (s, run) = api
        .post(
            "/api/v1/runs",
            json!({"workflow": "hello", "inputs": {"who": "api"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let id = run["id"].as_str().unwrap().to_owned();
    let done = api.wait_state(&id, "succeeded").await;
    assert_eq!(done["outputs"]["msg"], "hello api");
    assert_eq!(done["steps"][0]["state"], "succeeded");

    let inline = json!({"manifest": {"version": "plexus/v1", "name": "inline", "steps": [{"id": "a", "builtin": "noop"}]}});
    let key = [
        ("content-type", "application/json"),
        ("idempotency-key", "deploy-42"),
    ];
    let (s1, r1) = api
        .call("POST", "/api/v1/runs", inline.to_string(), &key)
        .await;
    let (s2, r2) = api
        .call("POST", "/api/v1/runs", inline.to_string(), &key)
        .await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::OK));
    assert_eq!(
        r1["id"], r2["id"],
        "the same Idempotency-Key is the same run"
    );
    let yaml_text =
        json!({"manifest": "version: plexus/v1\nname: text\nsteps: [{id: a, builtin: noop}]\n"});
    let (s, _) = api.post("/api/v1/runs", yaml_text).await;
    assert_eq!(s, StatusCode::CREATED);

    let (_, page) = api.get("/api/v1/runs?limit=2").await;
    assert_eq!(page["runs"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, next) = api
        .get(&format!("/api/v1/runs?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(next["runs"].as_array().unwrap().len(), 1);
    let (_, filtered) = api.get("/api/v1/runs?workflow=hello").await;
    assert_eq!(filtered["runs"].as_array().unwrap().len(), 1);

    let (_, events) = api.get(&format!("/api/v1/runs/{id}/events?after=1")).await;
    let events = events["events"].as_array().unwrap();
    assert_eq!(events[0]["seq"], 2);
    assert_eq!(events.last().unwrap()["type"], "run_succeeded");
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let api = Api::new().await;
    let (s, v) = api
        .call("POST", "/api/v1/runs", "{\"workflow\": ", &[])
        .await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("malformed_json"))
    );
    assert_eq!(v["details"]["line"], 1);
    let (s, v) = api
        .post("/api/v1/runs", json!({"workflow": "hello", "inputz": {}}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `inputz`"),
        "{v}"
    );
    let (s, _) = api.post("/api/v1/runs", json!({"workflow": "nope"})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api.post("/api/v1/runs", json!({})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    api.call("POST", "/api/v1/workflows", HELLO, &[]).await;
    let (s, v) = api
        .post(
            "/api/v1/runs",
            json!({"workflow": "hello", "inputs": {"whom": 1}}),
        )
        .await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalid_inputs"))
    );
    let huge = "x".repeat(100 * 1024);
    let (s, v) = api.call("POST", "/api/v1/workflows", huge, &[]).await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::PAYLOAD_TOO_LARGE, json!("payload_too_large"))
    );
    let (s, v) = api.get("/api/v1/runs/ffffffff").await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::NOT_FOUND, json!("not_found"))
    );
    let (s, _) = api.get("/api/v1/runs?state=sleeping").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = api.get("/api/v1/nothing-here").await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::NOT_FOUND, json!("not_found"))
    );
    // Errors the framework makes have the same shape as the handlers' own.
    for (method, uri, status, code) in [
        (
            "GET",
            "/api/v1/runs?limit=many",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "GET",
            "/api/v1/audit?since=yesterday",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "PATCH",
            "/api/v1/runs",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ] {
        let (s, v) = api.call(method, uri, "", &[]).await;
        assert_eq!(
            (s, v["code"].clone()),
            (status, json!(code)),
            "{method} {uri}: {v}"
        );
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(v.get("details").is_some(), "{v}");
    }
}

#[tokio::test]
async fn steps_are_approved_signalled_and_runs_cancelled() {
    let api = Api::new().await;
    let flow = "version: plexus/v1\nname: gated\nsteps:\n- {id: gate, approval: {message: ok?}}\n- {id: sig, needs: [gate], wait: {signal: go}}\n- {id: after, needs: [sig], builtin: echo, with: {got: '{{ steps.sig.output }}'}}\n";
    api.call("POST", "/api/v1/workflows", flow, &[]).await;
    let (_, run) = api.post("/api/v1/runs", json!({"workflow": "gated"})).await;
    let id = run["id"].as_str().unwrap().to_owned();
    api.wait_step(&id, "gate", "awaiting_approval").await;
    let (s, v) = api
        .post(
            &format!("/api/v1/runs/{id}/steps/sig/signal"),
            json!({"data": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "sig does not wait yet: {v}");
    let (s, v) = api
        .post(
            &format!("/api/v1/runs/{id}/steps/gate/approve"),
            json!({"comment": "yes"}),
        )
        .await;
    assert_eq!(
        (s, v["outcome"].clone()),
        (StatusCode::OK, json!("applied"))
    );
    api.wait_step(&id, "sig", "waiting").await;
    let (s, _) = api
        .post(
            &format!("/api/v1/runs/{id}/steps/sig/signal"),
            json!({"data": {"n": 7}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let done = api.wait_state(&id, "succeeded").await;
    assert_eq!(done["steps"][2]["output"]["got"], json!({"n": 7}));
    let (s, _) = api
        .post(&format!("/api/v1/runs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "a finished run cannot be cancelled"
    );

    let (_, run) = api.post("/api/v1/runs", json!({"workflow": "gated"})).await;
    let id = run["id"].as_str().unwrap().to_owned();
    api.wait_step(&id, "gate", "awaiting_approval").await;
    let (s, _) = api
        .post(&format!("/api/v1/runs/{id}/steps/gate/dance"), json!({}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api
        .post(&format!("/api/v1/runs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    api.wait_state(&id, "cancelled").await;
}

#[tokio::test]
async fn health_reports_store_and_pools() {
    let api = Api::new().await;
    let (s, v) = api.get("/healthz").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["store"], "ok");
    assert_eq!(v["engine"]["state"], "running", "{v}");
    assert_eq!(v["pools"][0]["name"], "default");
    assert_eq!(v["plugins"], serde_json::json!([]));

    // The database file removed under the running server: whatever it writes from now on
    // is lost at the next restart, so the server is not healthy any more.
    let db = api.dir.path().join("plexus.db");
    std::fs::rename(&db, api.dir.path().join("moved.db")).unwrap();
    let (s, v) = api.get("/healthz").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["status"], "unavailable");
    assert!(v["store"].as_str().unwrap().contains("is gone"), "{v}");
    // Another file in its place is no better.
    std::fs::write(&db, b"").unwrap();
    let (s, v) = api.get("/healthz").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(v["store"].as_str().unwrap().contains("replaced"), "{v}");
    // Put back, it is healthy again.
    std::fs::rename(api.dir.path().join("moved.db"), &db).unwrap();
    let (s, _) = api.get("/healthz").await;
    assert_eq!(s, StatusCode::OK);

    // The store is fine but the engine's loop is gone: not healthy, and it says why.
    api.state.engine.shutdown().await;
    let (s, v) = api.get("/healthz").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["store"], "ok");
    assert_eq!(v["engine"]["state"], "stopped", "{v}");
    assert!(
        v["engine"]["reason"]
            .as_str()
            .unwrap()
            .contains("not running"),
        "{v}"
    );
}

/// Every route of the router is in the OpenAPI document, with its method.
#[tokio::test]
async fn openapi_lists_every_route() {
    let api = Api::new().await;
    let (s, doc) = api.get("/api/v1/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    for r in ROUTES {
        let (method, path) = (r.method, r.path);
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is missing from openapi.json"
        );
        assert_eq!(
            doc["paths"][path][method]["x-plexus-access"],
            r.access.describe(),
            "{method} {path}: the document's access rule is not the router's"
        );
    }
    let documented: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    assert_eq!(
        documented,
        ROUTES.len(),
        "openapi.json documents a route that does not exist"
    );
}

#[tokio::test]
async fn runs_pause_resume_and_retry() {
    let api = Api::new().await;
    let marker = api.dir.path().join("fixed");
    let flow = format!(
        "version: plexus/v1\nname: flaky\nsteps:\n- {{id: hold, wait: {{signal: go}}}}\n- {{id: check, needs: [hold], run: 'test -e {}'}}\n- {{id: after, needs: [check], builtin: noop}}\n",
        marker.display()
    );
    api.call("POST", "/api/v1/workflows", flow, &[]).await;
    let (_, run) = api.post("/api/v1/runs", json!({"workflow": "flaky"})).await;
    let id = run["id"].as_str().unwrap().to_owned();
    api.wait_step(&id, "hold", "waiting").await;
    let (s, _) = api
        .post(&format!("/api/v1/runs/{id}/pause"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    api.wait_state(&id, "paused").await;
    api.post(&format!("/api/v1/runs/{id}/steps/hold/signal"), json!({}))
        .await;
    // The signal ends `hold`; what would follow it starts in that same transition unless
    // the run is paused.
    api.wait_step(&id, "hold", "succeeded").await;
    let (_, paused) = api.get(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(
        paused["steps"][1]["state"], "pending",
        "a paused run starts nothing new"
    );
    let (s, _) = api
        .post(&format!("/api/v1/runs/{id}/pause"), json!({}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "already paused");
    api.post(&format!("/api/v1/runs/{id}/resume"), json!({}))
        .await;
    let failed = api.wait_state(&id, "failed").await;
    assert_eq!(failed["steps"][2]["state"], "skipped");

    std::fs::write(&marker, "").unwrap();
    let (s, again) = api
        .post(&format!("/api/v1/runs/{id}/retry"), json!({}))
        .await;
    assert_eq!(
        (s, again["id"].as_str()),
        (StatusCode::OK, Some(id.as_str()))
    );
    let done = api.wait_state(&id, "succeeded").await;
    assert_eq!(done["steps"][1]["attempt"], 2);
    assert!(done["finished_at"].is_u64());
    let (s, _) = api
        .post(&format!("/api/v1/runs/{id}/retry"), json!({}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "a succeeded run is not retried");
}

#[tokio::test]
async fn metrics_in_prometheus_format() {
    let api = Api::new().await;
    let (_, run) = api.post("/api/v1/runs", json!({"manifest": {"version": "plexus/v1", "name": "m", "steps": [{"id": "a", "run": "true"}]}})).await;
    api.wait_state(run["id"].as_str().unwrap(), "succeeded")
        .await;
    let res = api.text("/metrics").await;
    let value = |name: &str| -> Option<f64> {
        res.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    assert!(
        value("plexus_runs{state=\"succeeded\"}").is_some_and(|v| v >= 1.0),
        "{res}"
    );
    assert!(
        value("plexus_pool_capacity{pool=\"default\"}").is_some_and(|v| v == 2.0),
        "{res}"
    );
    assert!(res.contains("plexus_step_duration_seconds_bucket"), "{res}");
    assert!(res.contains("plexus_store_commit_seconds_count"), "{res}");
    assert!(
        res.contains(
            "plexus_http_requests_total{method=\"POST\",route=\"/api/v1/runs\",status=\"201\"}"
        ),
        "{res}"
    );
}

#[tokio::test]
async fn outputs_artifacts_and_time_filters() {
    let api = Api::new().await;
    let manifest = json!({"version": "plexus/v1", "name": "art", "steps": [
        {"id": "make", "run": "printf 'report body' > \"$PLEXUS_ARTIFACTS/report.txt\""},
        {"id": "shaped", "run": "echo working; echo careful >&2; echo '{\"n\": 3}' > \"$PLEXUS_OUTPUT\""}],
        "outputs": {"done": "yes"}});
    let before = plexus_engine::now_ms();
    let (_, run) = api
        .post("/api/v1/runs", json!({"manifest": manifest}))
        .await;
    let id = run["id"].as_str().unwrap().to_owned();
    api.wait_state(&id, "succeeded").await;
    let (_, logs) = api.get(&format!("/api/v1/runs/{id}/steps/make/logs")).await;
    assert_eq!(
        (logs["stdout"].clone(), logs["exit_code"].clone()),
        (json!(""), json!(0))
    );
    // Its output is the JSON it wrote; what it printed is still kept as its logs.
    let (_, logs) = api
        .get(&format!("/api/v1/runs/{id}/steps/shaped/logs"))
        .await;
    assert_eq!(
        (&logs["stdout"], &logs["stderr"], &logs["exit_code"]),
        (&json!("working\n"), &json!("careful\n"), &json!(0))
    );
    let (_, got) = api.get(&format!("/api/v1/runs/{id}")).await;
    let shaped = got["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "shaped")
        .unwrap();
    assert_eq!(shaped["output"], json!({"n": 3}));
    let (s, _) = api.get(&format!("/api/v1/runs/{id}/steps/nope/logs")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, out) = api.get(&format!("/api/v1/runs/{id}/outputs")).await;
    assert_eq!(out["outputs"], json!({"done": "yes"}));
    let (_, arts) = api.get(&format!("/api/v1/runs/{id}/artifacts")).await;
    let art = &arts["artifacts"][0];
    assert_eq!(
        (art["name"].clone(), art["size"].clone()),
        (json!("report.txt"), json!(11))
    );
    let body = api.text(art["url"].as_str().unwrap()).await;
    assert_eq!(body, "report body");
    let (s, _) = api.get("/api/v1/artifacts/not-a-hash").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = api
        .get(&format!("/api/v1/artifacts/{}", "0".repeat(64)))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, since) = api.get(&format!("/api/v1/runs?since={before}")).await;
    assert_eq!(since["runs"].as_array().unwrap().len(), 1);
    let (_, until) = api.get(&format!("/api/v1/runs?until={before}")).await;
    assert!(until["runs"].as_array().unwrap().is_empty());
}

/// Starting a stored version again uses the plan compiled the first time; a setting that
/// changes how it compiles (execution_mode) makes a new one.
#[tokio::test]
async fn compiled_plans_are_reused_until_their_options_change() {
    let api = Api::new().await;
    api.call("POST", "/api/v1/workflows", HELLO, &[]).await;
    for _ in 0..3 {
        let (s, _) = api.post("/api/v1/runs", json!({"workflow": "hello"})).await;
        assert_eq!(s, StatusCode::CREATED);
    }
    assert_eq!(api.state.plans.len(), 1);
    api.call(
        "PUT",
        "/api/v1/settings/execution_mode",
        json!({"value": "manual"}).to_string(),
        &[],
    )
    .await;
    let (_, run) = api.post("/api/v1/runs", json!({"workflow": "hello"})).await;
    assert_eq!(api.state.plans.len(), 2, "a new plan for the new mode");
    // Manual mode: even a read step waits for a decision.
    api.wait_step(run["id"].as_str().unwrap(), "greet", "awaiting_approval")
        .await;
}

/// `?wait=` answers when the run ends (200, the finished run) or when the wait is over
/// (202, the run so far), on start and as a long poll on a run.
#[tokio::test]
async fn runs_can_be_waited_for_without_a_websocket() {
    let api = Api::new().await;
    let quick = "version: plexus/v1\nname: quick\nsteps:\n- {id: a, builtin: noop}\n";
    let (s, run) = api
        .post("/api/v1/runs?wait=10s", json!({"manifest": quick}))
        .await;
    assert_eq!(
        (s, run["state"].clone()),
        (StatusCode::OK, json!("succeeded")),
        "{run}"
    );

    let held = "version: plexus/v1\nname: held\nsteps:\n- {id: hold, wait: {signal: go}}\n";
    let (s, run) = api
        .post("/api/v1/runs?wait=200ms", json!({"manifest": held}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{run}");
    assert_eq!(run["state"], "running");
    let id = run["id"].as_str().unwrap().to_owned();
    let signaller = api.as_user(api.bearer.as_deref());
    let path = format!("/api/v1/runs/{id}/steps/hold/signal");
    let signal = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        signaller.post(&path, json!({})).await
    });
    let (s, done) = api.get(&format!("/api/v1/runs/{id}?wait=10s")).await;
    assert_eq!(
        (s, done["state"].clone()),
        (StatusCode::OK, json!("succeeded")),
        "{done}"
    );
    signal.await.unwrap();
    let (s, _) = api.get(&format!("/api/v1/runs/{id}?wait=soon")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

/// A start answers light by default (`id`, `state`, `workflow`, `created_at`), the whole
/// run with `?view=full`; a start that waits answers the finished run with its steps.
#[tokio::test]
async fn starts_answer_light_unless_asked_for_the_full_run() {
    let api = Api::new().await;
    let quick = "version: plexus/v1\nname: quick\nsteps:\n- {id: a, builtin: noop}\n";
    let (s, light) = api.post("/api/v1/runs", json!({"manifest": quick})).await;
    assert_eq!(s, StatusCode::CREATED, "{light}");
    let mut keys: Vec<&str> = light
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort();
    assert_eq!(keys, ["created_at", "id", "state", "workflow"], "{light}");
    assert_eq!(light["workflow"], "quick");
    // What the run was when made, as stored.
    assert_eq!(light["state"], "queued", "{light}");
    let (_, stored) = api
        .get(&format!("/api/v1/runs/{}", light["id"].as_str().unwrap()))
        .await;
    assert_eq!(light["created_at"], stored["created_at"], "{stored}");

    let (s, full) = api
        .post("/api/v1/runs?view=full", json!({"manifest": quick}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{full}");
    assert!(
        full["steps"].is_array() && full["inputs"].is_object(),
        "{full}"
    );

    let (_, waited) = api
        .post("/api/v1/runs?wait=10s", json!({"manifest": quick}))
        .await;
    assert_eq!(waited["steps"][0]["state"], "succeeded", "{waited}");
    let (_, waited) = api
        .post(
            "/api/v1/runs?wait=10s&view=light",
            json!({"manifest": quick}),
        )
        .await;
    assert!(waited.get("steps").is_none(), "{waited}");
    assert_eq!(waited["state"], "succeeded", "{waited}");
    let (_, stored) = api
        .get(&format!("/api/v1/runs/{}", waited["id"].as_str().unwrap()))
        .await;
    assert_eq!(waited["created_at"], stored["created_at"], "{stored}");
    assert_eq!(waited["workflow"], "quick", "{waited}");
    // A wait that ends first answers `202` with the run as it was seen.
    let slow = "version: plexus/v1\nname: slow\nsteps:\n- {id: a, wait: {timer: 1h}}\n";
    let (s, waited) = api
        .post(
            "/api/v1/runs?wait=50ms&view=light",
            json!({"manifest": slow}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{waited}");
    assert_eq!(waited["workflow"], "slow", "{waited}");
    assert_ne!(waited["state"], "succeeded", "{waited}");
    let (s, _) = api
        .post("/api/v1/runs?view=everything", json!({"manifest": quick}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

/// A start by name runs the newest version even when another replica applied it (or
/// deleted the workflow) after this one last started it.
#[tokio::test]
async fn a_start_by_name_runs_the_newest_version_applied_anywhere() {
    let a = Api::new().await;
    let b = a.replica();
    let version = |step: &str| {
        format!("version: plexus/v1\nname: moving\nsteps:\n- {{id: {step}, builtin: noop}}\n")
    };
    let steps = |run: &serde_json::Value| -> Vec<String> {
        run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let start = json!({"workflow": "moving"});
    let (s, _) = a
        .call("POST", "/api/v1/workflows", version("first"), &[])
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, run) = a.post("/api/v1/runs?view=full", start.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{run}");
    assert_eq!(steps(&run), ["first"]);

    let (s, _) = b
        .call("POST", "/api/v1/workflows", version("second"), &[])
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, run) = a.post("/api/v1/runs?view=full", start.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{run}");
    assert_eq!(
        steps(&run),
        ["second"],
        "the version applied through the other replica"
    );
    let (s, run) = a.post("/api/v1/runs?view=full", start.clone()).await;
    assert_eq!(
        (s, steps(&run)),
        (StatusCode::CREATED, vec!["second".to_owned()])
    );

    let (s, _) = b.call("DELETE", "/api/v1/workflows/moving", "", &[]).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, answer) = a.post("/api/v1/runs", start.clone()).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{answer}");
    // An older version asked for by number still starts.
    let (s, _) = a
        .call("POST", "/api/v1/workflows", version("third"), &[])
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, run) = a
        .post(
            "/api/v1/runs?view=full",
            json!({"workflow": "moving", "version": 1}),
        )
        .await;
    assert_eq!(
        (s, steps(&run)),
        (StatusCode::CREATED, vec!["first".to_owned()]),
        "{run}"
    );
}
