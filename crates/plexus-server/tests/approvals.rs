//! Approvals through the real router and a real SQLite store: who may decide what, what
//! approvers are shown, self-approval and its laundering, and what turns isolation off.

mod common;
use axum::http::StatusCode;
use common::Api;
use serde_json::{Value, json};

const GATED: &str = r#"{"version": "plexus/v1", "name": "gated", "steps": [
  {"id": "change", "permission": "modify", "run": "echo changing"},
  {"id": "admin-only", "needs": ["change"], "permission": "admin", "run": "echo root things"},
  {"id": "after", "needs": ["admin-only"], "trigger": "all_done", "builtin": "noop"}]}"#;

async fn step_state(api: &Api, run: &str, step: &str) -> String {
    let (_, r) = api.get(&format!("/api/v1/runs/{run}")).await;
    r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == step)
        .map(|s| s["state"].as_str().unwrap().to_owned())
        .unwrap()
}

/// Turns on `approvals.forbid_self_approval`.
async fn forbid_self_approval(api: &Api) {
    let (s, body) = api
        .call(
            "PUT",
            "/api/v1/settings/approvals.forbid_self_approval",
            json!({"value": true}).to_string(),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
}

/// The first step of the only run of `workflow` waits for approval; its run id.
async fn gated_run_of(api: &Api, workflow: &str) -> String {
    let id = loop {
        let (_, runs) = api.get(&format!("/api/v1/runs?workflow={workflow}")).await;
        if let Some(id) = runs["runs"][0]["id"].as_str() {
            break id.to_owned();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    api.wait_step(&id, "change", "awaiting_approval").await;
    id
}

/// With `approvals.forbid_self_approval`, whoever a run's start traces back to cannot
/// approve it: the poster of the event and the author of the trigger it hit, the author
/// of the schedule that fired it, the starter of a parent run for its sub-workflow.
#[tokio::test]
async fn self_approval_cannot_be_laundered() {
    let api = Api::new().await;
    let ada = api.as_user(Some(&api.user_key("ada", "engineer").await));
    let bob = api.as_user(Some(&api.user_key("bob", "engineer").await));
    let cyd = api.as_user(Some(&api.user_key("cyd", "engineer").await));
    forbid_self_approval(&api).await;
    let approve = |who: &Api, run: &str, step: &str| {
        let (who, path) = (
            who.as_user(who.bearer.as_deref()),
            format!("/api/v1/runs/{run}/steps/{step}/approve"),
        );
        async move { who.post(&path, json!({})).await.0 }
    };
    let gated = |name: &str, extra: &str| {
        format!(
            "version: plexus/v1\nname: {name}\n{extra}steps:\n- {{id: change, permission: modify, run: 'echo change'}}\n"
        )
    };

    // A trigger ada wrote, hit by an event bob posted: neither decides; cyd does.
    let (s, _) = ada
        .call(
            "POST",
            "/api/v1/workflows",
            gated("on-event", "on: cleanup.requested\n"),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = bob
        .post("/api/v1/events", json!({"type": "cleanup.requested"}))
        .await;
    assert!(s.is_success(), "{s}");
    let run = gated_run_of(&api, "on-event").await;
    assert_eq!(approve(&ada, &run, "change").await, StatusCode::FORBIDDEN);
    assert_eq!(approve(&bob, &run, "change").await, StatusCode::FORBIDDEN);
    assert_eq!(approve(&cyd, &run, "change").await, StatusCode::OK);

    // A schedule bob created (for a workflow cyd applied), fired by the server: not bob.
    let (s, _) = cyd
        .call("POST", "/api/v1/workflows", gated("nightly", ""), &[])
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, body) = bob
        .post(
            "/api/v1/schedules",
            json!({"workflow": "nightly", "cron": "0 3 * * *"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    // ...and ada paused and resumed it last: now it is hers too.
    ada.post("/api/v1/schedules/nightly/pause", json!({})).await;
    ada.post("/api/v1/schedules/nightly/resume", json!({}))
        .await;
    let tomorrow = plexus_engine::now_ms() + 2 * 24 * 3600 * 1000;
    plexus_server::schedules::fire_due_at(&api.state, tomorrow)
        .await
        .unwrap();
    let run = gated_run_of(&api, "nightly").await;
    assert_eq!(approve(&ada, &run, "change").await, StatusCode::FORBIDDEN);
    assert_eq!(approve(&cyd, &run, "change").await, StatusCode::OK);

    // A sub-workflow of a run ada started is hers as well.
    std::fs::write(api.dir.path().join("child.yaml"), gated("child", "")).unwrap();
    let (s, parent) = ada
        .post(
            "/api/v1/runs",
            json!({"manifest": "version: plexus/v1\nname: parent\nsteps:\n- {id: call, workflow: child.yaml}\n"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{parent}");
    let child = gated_run_of(&api, "child").await;
    assert_eq!(approve(&ada, &child, "change").await, StatusCode::FORBIDDEN);
    assert_eq!(approve(&bob, &child, "change").await, StatusCode::OK);
}

#[tokio::test]
async fn approvals_follow_the_approvers_role() {
    let api = Api::new().await;
    let operator = api.as_user(Some(&api.user_key("oli", "operator").await));
    let engineer = api.as_user(Some(&api.user_key("eng", "engineer").await));
    let other = api.as_user(Some(&api.user_key("eng2", "engineer").await));
    let manifest: Value = serde_json::from_str(GATED).unwrap();
    let (s, run) = engineer
        .post("/api/v1/runs", json!({"manifest": manifest}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{run}");
    let id = run["id"].as_str().unwrap().to_owned();
    api.wait_step(&id, "change", "awaiting_approval").await;

    // The inbox says what will run, who asked and who may decide.
    let (_, inbox) = operator.get("/api/v1/approvals").await;
    let item = &inbox["approvals"][0];
    assert_eq!(item["step_id"], "change");
    assert_eq!(item["requested_by"], "user:eng");
    assert_eq!(item["approver_role"], "engineer");
    assert_eq!(item["detail"]["command"], "echo changing");

    let approve = |who: &Api, step: &str| {
        let (who, path) = (
            who.as_user(who.bearer.as_deref()),
            format!("/api/v1/runs/{id}/steps/{step}/approve"),
        );
        async move { who.post(&path, json!({"comment": "ok"})).await }
    };
    let (s, _) = approve(&operator, "change").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "operators approve nothing");

    // No one approves their own run when the setting says so.
    forbid_self_approval(&api).await;
    let (s, body) = approve(&engineer, "change").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("forbid_self_approval")
    );
    // A decision names the digest of what the approver saw; another digest is refused.
    let digest = item["detail"]["digest"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/runs/{id}/steps/change/approve");
    let (s, body) = other.post(&path, json!({"digest": "0".repeat(64)})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "approval_changed");
    let (s, body) = other.post(&path, json!({"digest": digest})).await;
    assert_eq!(s, StatusCode::OK, "{body}");

    // ADMIN steps need an admin.
    api.wait_step(&id, "admin-only", "awaiting_approval").await;
    let (s, _) = approve(&other, "admin-only").await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "engineers do not approve ADMIN steps"
    );
    // A rejection skips the step with reason `rejected`; downstream follows its trigger.
    let (s, _) = api
        .post(
            &format!("/api/v1/runs/{id}/steps/admin-only/reject"),
            json!({"comment": "not today"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let done = api.wait_state(&id, "succeeded").await;
    let skipped = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "admin-only")
        .unwrap();
    assert_eq!(skipped["state"], "skipped");
    assert_eq!(step_state(&api, &id, "after").await, "succeeded");
    let (_, events) = api.get(&format!("/api/v1/runs/{id}/events")).await;
    let rejection = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "step_skipped")
        .unwrap();
    assert_eq!(
        (
            &rejection["reason"],
            &rejection["by"],
            &rejection["comment"]
        ),
        (
            &json!("rejected"),
            &json!("user:admin"),
            &json!("not today")
        )
    );

    // Every decision is in the audit log with its actor.
    let (_, audit) = api.get("/api/v1/audit?domain=workflow").await;
    let actions: Vec<(String, String)> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_owned(),
                r["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for expected in [
        ("run.started", "user:eng"),
        ("approval.requested", "user:eng"),
        ("approval.granted", "user:eng2"),
        ("approval.rejected", "user:admin"),
        ("run.succeeded", "system"),
    ] {
        assert!(
            actions.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "{expected:?} missing from {actions:?}"
        );
    }
    let (_, security) = api.get("/api/v1/audit?domain=security").await;
    let denied = security["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "permission.denied")
        .count();
    assert!(denied >= 3, "each refused approval is audited: {security}");
}

/// `isolation: none` lets a workflow's steps reach the store and the keys: only an admin
/// may apply or start one, and it is audited; its steps then see the data directory.
#[tokio::test]
async fn only_an_admin_turns_isolation_off() {
    let api = Api::new().await;
    let engineer = api.as_user(Some(&api.user_key("iso-eng", "engineer").await));
    let manifest = "version: plexus/v1\nname: raw-access\nisolation: none\nsteps:\n- {id: peek, run: 'head -c 15 plexus.db'}\n";
    let (s, body) = engineer
        .call("POST", "/api/v1/workflows", manifest, &[])
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let (s, body) = engineer
        .post("/api/v1/runs", json!({"manifest": manifest}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("only an admin"),
        "{body}"
    );
    assert_eq!(api.audit_count("isolation.disabled").await, 0);

    let (s, _) = api.call("POST", "/api/v1/workflows", manifest, &[]).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(api.audit_count("isolation.disabled").await, 1);
    // An engineer may start the version an admin applied; its step sees the store.
    let (s, run) = engineer
        .post("/api/v1/runs", json!({"workflow": "raw-access"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{run}");
    let done = api
        .wait_state(run["id"].as_str().unwrap(), "succeeded")
        .await;
    assert_eq!(done["steps"][0]["output"]["stdout"], "SQLite format 3");

    // The same step isolated sees no store.
    let isolated = manifest
        .replace("isolation: none\n", "")
        .replace("raw-access", "isolated");
    let (_, run) = engineer
        .post("/api/v1/runs", json!({"manifest": isolated}))
        .await;
    let done = api
        .wait_state(run["id"].as_str().unwrap(), "succeeded")
        .await;
    assert_eq!(done["steps"][0]["output"]["stdout"], "", "{done}");
}
