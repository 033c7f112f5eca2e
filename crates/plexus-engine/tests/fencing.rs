//! An engine whose run was taken over by another (its lease ran out while it stalled)
//! can never write to that run again: every commit names the run's fencing token, and
//! the store refuses a commit whose token has moved on — on SQLite and on PostgreSQL.

use plexus_engine::{Engine, EngineConfig, Submission};
use plexus_store::{PgStore, PostgresOptions, SqliteOptions, SqliteStore, Store};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

async fn a_replaced_engine_writes_nothing_more(store: Arc<dyn Store>, dir: &std::path::Path) {
    let yaml = "version: plexus/v1\nname: slow\nsteps:\n  - id: a\n    run: sleep 1\n  - id: b\n    run: echo b\n    needs: [a]\n";
    let pools = BTreeMap::from([("default".to_owned(), 2)]);
    let opts = plexus_core::CompileOptions {
        pools: pools.clone(),
        default_mode: None,
        action_floors: Default::default(),
    };
    let plan = plexus_core::load(yaml, "slow.yaml", &opts).expect("valid");
    let engine = Engine::start(store.clone(), EngineConfig::new(dir.to_path_buf(), pools));
    let id = engine
        .submit(Submission {
            plan: Arc::new(plan),
            manifest_text: yaml.into(),
            base_dir: dir.to_path_buf(),
            inputs: json!({}),
            idempotency_key: None,
            workflow_version: None,
            newest_version: false,
            started_by: None,
            responsible: Vec::new(),
        })
        .await
        .unwrap();
    // While step `a` runs, another engine takes the run over.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while store.steps(&id).await.unwrap()[0].status != "running" {
        assert!(std::time::Instant::now() < deadline, "step a never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let now = plexus_engine::now_ms();
    let fence = store
        .claim_run(&id, "plexus/elsewhere/1/other", now + 600_000, now, true)
        .await
        .unwrap()
        .expect("claimed");
    assert!(fence >= 1);
    let events_then = store.events(&id, 0, 0).await.unwrap().len();
    // Step `a` ends in the first engine; its end is refused, and so is all after it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let health = engine.health().await;
        if health.state == "stopped" {
            let reason = health.reason.unwrap_or_default();
            assert!(reason.contains("taken over"), "{reason}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the engine went on: {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = store.events(&id, 0, 0).await.unwrap();
    assert_eq!(
        events.len(),
        events_then,
        "no event after the takeover: {events:?}"
    );
    let row = store.get_run(&id).await.unwrap();
    assert_eq!(row.status, "running");
    assert_eq!(row.owner.as_deref(), Some("plexus/elsewhere/1/other"));
    assert_eq!(store.steps(&id).await.unwrap()[0].status, "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(dir.path().join("plexus.db"), SqliteOptions::default()).unwrap(),
    );
    a_replaced_engine_writes_nothing_more(store, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let url = plexus_store::test_postgres::fresh_database().await;
    let store = Arc::new(
        PgStore::open(&url, PostgresOptions::default())
            .await
            .unwrap(),
    );
    a_replaced_engine_writes_nothing_more(store, dir.path()).await;
}
