//! Shell attempts are started ahead of their durable start and held at a gate: the
//! command runs only when the gate opens, never if it is dropped (the engine went away
//! or gave the attempt up), and it sees the same environment as an ungated attempt.

use plexus_core::machine::{Outcome, Task, Unit, Work};
use plexus_engine::exec::process::{Controls, ProcessSettings, gate, run};
use plexus_engine::exec::scratch::ScratchPool;
use std::collections::BTreeMap;
use std::path::Path;
use tokio::sync::oneshot;

fn task(command: &str) -> Task {
    Task {
        unit: Unit {
            step: 0,
            item: None,
        },
        step_id: "s".into(),
        attempt: 1,
        key: "r/s/-/1".into(),
        work: Work::Shell {
            command: command.into(),
        },
        timeout: None,
        env: BTreeMap::new(),
        workdir: None,
        pool: "default".into(),
    }
}

fn settings(dir: &Path) -> ProcessSettings {
    ProcessSettings {
        scratch: std::sync::Arc::new(ScratchPool::new(&dir.join("work"))),
        artifact_root: dir.join("artifacts"),
        output_cap: 1 << 20,
        python: "python3".into(),
    }
}

#[tokio::test]
async fn a_held_command_runs_only_when_its_gate_opens() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let command = format!(
        "touch {}; read line; echo \"stdin: [$line]\"",
        marker.display()
    );
    let s = settings(dir.path());

    // The gate is dropped: the shell was started, the command never ran.
    let (_kill, kill_rx) = oneshot::channel();
    let (open, opens) = gate().unwrap();
    let held = tokio::spawn({
        let (t, s, base) = (task(&command), settings(dir.path()), dir.path().to_owned());
        async move {
            let controls = Controls {
                kill: kill_rx,
                gate: Some(opens),
            };
            run(&t, "r".into(), &base, &s, None, controls, |_, _| {}).await
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!marker.exists(), "nothing runs while the gate is closed");
    drop(open);
    let finished = held.await.unwrap();
    assert!(finished.spawned);
    assert!(
        matches!(&finished.outcome, Outcome::Failure { error, .. } if error.contains("before it started")),
        "{:?}",
        finished.outcome
    );
    assert!(!marker.exists(), "a dropped gate never runs the command");

    // Opened: it runs, with an empty stdin as an ungated attempt has.
    let (_kill, kill_rx) = oneshot::channel();
    let (open, opens) = gate().unwrap();
    open.open();
    let controls = Controls {
        kill: kill_rx,
        gate: Some(opens),
    };
    let finished = run(
        &task(&command),
        "r".into(),
        dir.path(),
        &s,
        None,
        controls,
        |_, _| {},
    )
    .await;
    let Outcome::Success(out) = &finished.outcome else {
        panic!("{:?}", finished.outcome)
    };
    assert_eq!(out["stdout"], "stdin: []\n");
    assert!(marker.exists());
}

#[tokio::test]
async fn a_held_attempt_killed_before_its_gate_never_runs() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let s = settings(dir.path());
    let (kill, kill_rx) = oneshot::channel();
    let (open, opens) = gate().unwrap();
    let t = task(&format!("touch {}", marker.display()));
    let base = dir.path().to_owned();
    let held = tokio::spawn(async move {
        let controls = Controls {
            kill: kill_rx,
            gate: Some(opens),
        };
        run(&t, "r".into(), &base, &s, None, controls, |_, _| {}).await
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    kill.send(()).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // The engine drops the gate of an attempt it killed, even once its start is durable.
    drop(open);
    let finished = held.await.unwrap();
    assert!(
        matches!(&finished.outcome, Outcome::Failure { error, .. } if error.contains("before it started")),
        "{:?}",
        finished.outcome
    );
    assert!(!marker.exists());
}
