//! A chain of shell steps: the next step is queued and granted in the transition that
//! ends the previous one, so its start shares that commit (one commit per step, not two)
//! and it still runs only after the previous step's end is durable.

use plexus_core::machine::RunStatus;
use plexus_engine::{Engine, EngineConfig, Submission};
use plexus_store::{RunStore, SqliteOptions, SqliteStore};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_shell_steps_costs_one_commit_per_step_and_keeps_its_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("order.log");
    let n = 20;
    let mut yaml = String::from("version: plexus/v1\nname: chain\nsteps:\n");
    for i in 0..n {
        let needs = if i > 0 {
            format!("\n    needs: [s{}]", i - 1)
        } else {
            String::new()
        };
        yaml.push_str(&format!(
            "  - id: s{i}\n    run: echo s{i} >> {}{needs}\n",
            log.display()
        ));
    }
    let pools = BTreeMap::from([("default".to_owned(), 2)]);
    let opts = plexus_core::CompileOptions {
        pools: pools.clone(),
        default_mode: None,
        action_floors: Default::default(),
    };
    let plan = plexus_core::load(&yaml, "chain.yaml", &opts).expect("valid");
    let store = Arc::new(
        SqliteStore::open(dir.path().join("plexus.db"), SqliteOptions::default()).unwrap(),
    );
    let engine = Engine::start(
        store.clone(),
        EngineConfig::new(dir.path().to_path_buf(), pools),
    );
    let mut finished = engine.finished();
    let id = engine
        .submit(Submission {
            plan: Arc::new(plan),
            manifest_text: yaml,
            base_dir: dir.path().to_path_buf(),
            inputs: json!({}),
            idempotency_key: None,
            workflow_version: None,
            newest_version: false,
            started_by: None,
            responsible: Vec::new(),
        })
        .await
        .unwrap();
    loop {
        let (run, status) = finished.recv().await.unwrap();
        if *run == *id {
            assert_eq!(status, RunStatus::Succeeded);
            break;
        }
    }
    let order = std::fs::read_to_string(&log).unwrap();
    let expected: String = (0..n).map(|i| format!("s{i}\n")).collect();
    assert_eq!(order, expected);

    // Each step's start is in the same commit as the end of the step before it: one
    // commit per step plus the run's own (the old path took two per step).
    let (commits, _, _) = engine.stats.snapshot();
    assert!(
        commits <= n as u64 + n as u64 / 2,
        "{commits} commits for a chain of {n} steps"
    );

    // And in the event log, each start follows the end of the step it needs.
    let events = store.events(&id, 0, 10_000).await.unwrap();
    let position = |kind: &str, step: &str| {
        events
            .iter()
            .position(|e| e.kind.type_name() == kind && e.kind.step_id() == Some(step))
            .unwrap_or_else(|| panic!("no {kind} of {step}"))
    };
    for i in 1..n {
        assert!(
            position("step_succeeded", &format!("s{}", i - 1))
                < position("step_started", &format!("s{i}"))
        );
    }
}
