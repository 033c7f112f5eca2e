//! Schedules fire each tick exactly once, across replicas and restarts, with a catch-up
//! policy for ticks missed while paused or stopped.

mod common;
use axum::http::StatusCode;
use common::Api;
use plexus_server::schedules::{fire_due_at, run_scheduler};
use plexus_store::RunFilter;
use serde_json::json;
use std::time::Duration;

const NOOP: &str = "version: plexus/v1\nname: tick\nsteps: [{id: a, builtin: noop}]\n";

async fn run_keys(api: &Api) -> Vec<String> {
    let runs = api
        .state
        .store
        .list_runs(RunFilter {
            workflow: Some("tick".into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    runs.iter().map(|r| r.id.clone()).collect()
}

#[tokio::test]
async fn a_tick_fires_once_even_with_two_replicas() {
    let a = Api::new().await;
    let b = a.replica();
    a.call("POST", "/api/v1/workflows", NOOP, &[]).await;
    let (s, sched) = a
        .post(
            "/api/v1/schedules",
            json!({"workflow": "tick", "cron": "* * * * * *"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{sched}");
    let first_tick = sched["next_fire_at"].as_u64().unwrap();
    // The clock moved past the first tick and a bit more (no waiting for it).
    let later = first_tick + 1_300;
    let (fa, fb) = tokio::join!(fire_due_at(&a.state, later), fire_due_at(&b.state, later));
    fa.unwrap();
    fb.unwrap();
    assert_eq!(
        run_keys(&a).await.len(),
        1,
        "skip policy: the newest due tick once, whichever replica got there"
    );
    assert_eq!(
        fire_due_at(&a.state, later).await.unwrap(),
        0,
        "nothing is due any more"
    );
    let (_, now) = a.get("/api/v1/schedules/tick").await;
    assert!(now["next_fire_at"].as_u64().unwrap() > later);
}

#[tokio::test]
async fn paused_ticks_are_caught_up_by_policy() {
    let api = Api::new().await;
    api.call("POST", "/api/v1/workflows", NOOP, &[]).await;
    let (_, sched) = api.post("/api/v1/schedules", json!({"name": "every-second", "workflow": "tick", "cron": "* * * * * *", "catch_up": "run_missed"})).await;
    let first_tick = sched["next_fire_at"].as_u64().unwrap();
    let (s, paused) = api
        .post("/api/v1/schedules/every-second/pause", json!({}))
        .await;
    assert_eq!((s, paused["paused"].clone()), (StatusCode::OK, json!(true)));
    let later = first_tick + 2_300;
    assert_eq!(
        fire_due_at(&api.state, later).await.unwrap(),
        0,
        "a paused schedule does not fire"
    );
    api.post("/api/v1/schedules/every-second/resume", json!({}))
        .await;
    let fired = fire_due_at(&api.state, later).await.unwrap();
    assert_eq!(fired, 3, "run_missed fires every missed tick");
    assert_eq!(run_keys(&api).await.len(), fired);
    assert_eq!(fire_due_at(&api.state, later).await.unwrap(), 0);
}

#[tokio::test]
async fn the_scheduler_task_fires_and_stops() {
    let api = Api::new().await;
    api.call("POST", "/api/v1/workflows", NOOP, &[]).await;
    api.post(
        "/api/v1/schedules",
        json!({"workflow": "tick", "cron": "* * * * * *", "inputs": {}}),
    )
    .await;
    let mut finished = api.state.engine.finished();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(run_scheduler(api.state.clone(), stopped));
    // The run the scheduler starts at the next tick ends (waited for by notification).
    let (run, status) = tokio::time::timeout(Duration::from_secs(5), finished.recv())
        .await
        .expect("the scheduler started a run at its first tick")
        .unwrap();
    assert_eq!(status, plexus_core::machine::RunStatus::Succeeded);
    assert_eq!(run_keys(&api).await, [run.to_string()]);
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the scheduler stops")
        .unwrap();
}

#[tokio::test]
async fn a_manifest_schedule_follows_the_manifest() {
    let api = Api::new().await;
    let scheduled = "version: plexus/v1\nname: nightly\nschedule: '0 3 * * *'\nsteps: [{id: a, builtin: noop}]\n";
    api.call("POST", "/api/v1/workflows", scheduled, &[]).await;
    let (s, sched) = api.get("/api/v1/schedules/nightly").await;
    assert_eq!(
        (s, sched["from_manifest"].clone(), sched["cron"].clone()),
        (StatusCode::OK, json!(true), json!("0 3 * * *"))
    );
    let unscheduled = "version: plexus/v1\nname: nightly\nsteps: [{id: a, builtin: noop}]\n";
    api.call("POST", "/api/v1/workflows", unscheduled, &[])
        .await;
    let (s, _) = api.get("/api/v1/schedules/nightly").await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "removing `schedule:` removes the schedule"
    );
    let (s, v) = api
        .post(
            "/api/v1/schedules",
            json!({"workflow": "nightly", "cron": "every day"}),
        )
        .await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("bad_cron"))
    );
    let (s, _) = api
        .post(
            "/api/v1/schedules",
            json!({"workflow": "ghost", "cron": "* * * * *"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api
        .call(
            "DELETE",
            "/api/v1/schedules/nope",
            axum::body::Body::empty(),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
