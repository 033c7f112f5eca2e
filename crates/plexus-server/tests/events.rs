//! Events start the workflows that subscribe with `on:`; what reaches nothing is kept.

mod common;
use axum::http::StatusCode;
use common::Api;
use serde_json::json;

const DEPLOY: &str = "version: plexus/v1\nname: deploy\non: [release.published]\ninputs:\n  version: {type: string, required: true}\n  event: {type: object}\nsteps:\n- {id: a, builtin: echo, with: {v: '{{ inputs.version }}', t: '{{ inputs.event.type }}'}}\noutputs: {v: '{{ steps.a.output.v }}', t: '{{ steps.a.output.t }}'}\n";

#[tokio::test]
async fn an_event_starts_every_subscribed_workflow_once() {
    let api = Api::new().await;
    let (s, _) = api.call("POST", "/api/v1/workflows", DEPLOY, &[]).await;
    assert_eq!(s, StatusCode::CREATED);
    let notify = "version: plexus/v1\nname: notify\non: release.published\nsteps: [{id: a, builtin: noop}]\n";
    api.call("POST", "/api/v1/workflows", notify, &[]).await;
    let event = json!({"type": "release.published", "payload": {"version": "1.4.0"}, "dedupe_key": "rel-1.4.0"});
    let (s, v) = api.post("/api/v1/events", event.clone()).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let runs = v["runs"].as_array().unwrap().clone();
    assert_eq!(runs.len(), 2);
    assert!(v["dead_letter"].is_null());
    let deploy_run = api.wait_state(runs[0].as_str().unwrap(), "succeeded").await;
    assert_eq!(
        deploy_run["outputs"],
        json!({"v": "1.4.0", "t": "release.published"})
    );
    let (s, again) = api.post("/api/v1/events", event).await;
    assert_eq!(
        (s, again["duplicate"].clone()),
        (StatusCode::OK, json!(true))
    );
    assert_eq!(
        again["runs"].as_array().unwrap(),
        &runs,
        "a repeated dedupe key starts nothing new"
    );
}

#[tokio::test]
async fn what_reaches_nothing_becomes_a_dead_letter() {
    let api = Api::new().await;
    let (s, v) = api
        .post(
            "/api/v1/events",
            json!({"type": "nobody.listens", "payload": {"x": 1}}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert!(v["dead_letter"].is_i64(), "{v}");
    // A subscribed workflow that cannot start (a required input is missing) also counts.
    api.call("POST", "/api/v1/workflows", DEPLOY, &[]).await;
    let (_, v) = api
        .post(
            "/api/v1/events",
            json!({"type": "release.published", "payload": {}}),
        )
        .await;
    assert_eq!(v["failed"][0]["workflow"], "deploy");
    assert!(v["dead_letter"].is_i64());

    let flow = "version: plexus/v1\nname: gate\nsteps:\n- {id: first, approval: {}}\n- {id: sig, needs: [first], wait: {signal: go}}\n";
    api.call("POST", "/api/v1/workflows", flow, &[]).await;
    let (_, run) = api.post("/api/v1/runs", json!({"workflow": "gate"})).await;
    let id = run["id"].as_str().unwrap().to_owned();
    api.wait_step(&id, "first", "awaiting_approval").await;
    let (s, v) = api
        .post(
            &format!("/api/v1/runs/{id}/steps/sig/signal"),
            json!({"data": {"early": true}}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(v["details"]["dead_letter"].is_i64(), "{v}");

    let (_, letters) = api.get("/api/v1/dead-letters").await;
    let letters = letters["dead_letters"].as_array().unwrap();
    let kinds: Vec<&str> = letters
        .iter()
        .map(|l| l["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["signal", "event", "event"]);
    assert_eq!(letters[0]["target"], format!("{id}/sig"));
    assert_eq!(letters[0]["payload"], json!({"data": {"early": true}}));
    assert!(
        letters[2]["reason"]
            .as_str()
            .unwrap()
            .contains("no workflow starts on `nobody.listens`")
    );
}
