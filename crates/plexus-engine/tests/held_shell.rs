//! Shell attempts are started ahead of their durable start and held at a gate: the
//! command runs only when the gate opens, never if it is dropped (the engine went away
//! or gave the attempt up), and it sees the same environment, directory and stdin as an
//! ungated attempt (`sh -c`), whether its shell was started for it or ahead of it.

use plexus_core::machine::{Outcome, Task, Unit, Work};
use plexus_engine::exec::held::{WarmShells, gate};
use plexus_engine::exec::process::{Controls, Finished, ProcessSettings, run};
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
        isolate: true,
        permission: plexus_core::manifest::Permission::Read,
    }
}

fn settings(dir: &Path) -> ProcessSettings {
    ProcessSettings {
        scratch: std::sync::Arc::new(ScratchPool::new(&dir.join("work"))),
        artifact_root: dir.join("artifacts"),
        output_cap: 1 << 20,
        python: "python3".into(),
        warm: std::sync::Arc::new(WarmShells::new(1)),
        // These tests are about held shells kept warm, which isolated steps do not use.
        isolation: std::sync::Arc::new(plexus_engine::exec::isolation::Isolation::disabled(
            "held shells kept warm",
        )),
        require_isolation: std::sync::Arc::default(),
        warm_isolated: std::sync::Arc::new(plexus_engine::exec::held::WarmIsolated::new(1)),
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
    let (open, opens) = gate();
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
    assert!(finished.recorded);
    assert!(
        matches!(&finished.outcome, Outcome::Failure { error, .. } if error.contains("before it started")),
        "{:?}",
        finished.outcome
    );
    assert!(!marker.exists(), "a dropped gate never runs the command");

    // Opened: it runs, with an empty stdin as an ungated attempt has.
    let (_kill, kill_rx) = oneshot::channel();
    let (open, opens) = gate();
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
    let (open, opens) = gate();
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

/// Runs `t` held, its gate opened at once, or ungated when `held` is false.
async fn run_now(t: &Task, base: &Path, s: &ProcessSettings, held: bool) -> Finished {
    let (_kill, kill_rx) = oneshot::channel();
    let gate = held.then(|| {
        let (open, opens) = gate();
        open.open(); // before the attempt has its shell: the script goes in when it does
        opens
    });
    let controls = Controls {
        kill: kill_rx,
        gate,
    };
    run(t, "r".into(), base, s, None, controls, |_, _| {}).await
}

fn stdout(f: &Finished) -> String {
    match &f.outcome {
        Outcome::Success(out) => out["stdout"].as_str().unwrap().to_owned(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_held_shell_sees_what_an_ungated_one_sees() {
    let dir = tempfile::tempdir().unwrap();
    // A directory name that needs quoting.
    std::fs::create_dir(dir.path().join("it's a $dir")).unwrap();
    let s = settings(dir.path());
    // Everything a command can observe of how it was started, but the scratch paths
    // (each attempt has its own).
    let mut t = task(
        "env | grep -v '^PLEXUS_OUTPUT=\\|^PLEXUS_ARTIFACTS=' | sort; pwd; echo \"$0 $# [${OLDPWD-unset}]\";\n\
         read x || echo 'stdin empty'; echo \"$PLEXUS_OUTPUT\" | grep -c 'work/'",
    );
    t.workdir = Some("it's a $dir".into());
    t.env
        .insert("QUOTED".into(), "it's a \"test\" $HOME `x` \\".into());
    t.env.insert("PATH".into(), "/usr/bin:/bin".into());
    let ungated = stdout(&run_now(&t, dir.path(), &s, false).await);
    assert!(
        ungated.contains("QUOTED=it's a \"test\" $HOME `x` \\\n"),
        "{ungated}"
    );
    assert!(ungated.contains("[unset]\nstdin empty\n1\n"), "{ungated}");
    // Started for the attempt (nothing idle yet), then one started ahead of it.
    for round in 0..3 {
        let held = stdout(&run_now(&t, dir.path(), &s, true).await);
        assert_eq!(held, ungated, "round {round}");
    }
}

#[tokio::test]
async fn held_shells_report_what_sh_c_reports() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    for (command, error) in [
        ("echo out; echo err >&2; exit 3", "exit code 3: err"),
        (
            "true\nno-such-command-here",
            "exit code 127: /bin/sh: 2: no-such-command-here: not found",
        ),
        // (The line of a syntax error at the end of the script may differ.)
        ("echo 'unterminated", "exit code 2: /bin/sh: "),
        ("kill -9 $$", "killed by signal 9"),
    ] {
        for held in [false, true] {
            let f = run_now(&task(command), dir.path(), &s, held).await;
            let Outcome::Failure { error: got, .. } = &f.outcome else {
                panic!("{command}: {:?}", f.outcome)
            };
            assert!(got.starts_with(error), "{command} (held: {held}): {got}");
        }
    }
    // A command ending in a comment or a line continuation still ends.
    for command in ["echo a # done", "echo a \\"] {
        let f = run_now(&task(command), dir.path(), &s, true).await;
        assert_eq!(stdout(&f), "a\n", "{command}");
    }
}

#[tokio::test]
async fn a_held_shell_gets_a_script_larger_than_its_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    // ~300 KiB of script: more than a pipe holds, written while the shell reads it.
    let mut command = String::from("n=0\n");
    for _ in 0..20_000 {
        command.push_str("n=$((n+1))\n");
    }
    command.push_str("echo $n");
    let f = run_now(&task(&command), dir.path(), &s, true).await;
    assert_eq!(stdout(&f), "20000\n");
}

#[tokio::test]
async fn a_held_shell_in_a_missing_directory_fails_as_sh_c_does() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    let mut t = task("echo ran");
    t.workdir = Some("missing".into());
    for held in [false, true] {
        let f = run_now(&t, dir.path(), &s, held).await;
        let Outcome::Failure { error, .. } = &f.outcome else {
            panic!("{:?}", f.outcome)
        };
        assert!(
            error.starts_with("cannot start the command in ") && error.contains("No such file"),
            "held: {held}: {error}"
        );
    }
}

#[tokio::test]
async fn a_shell_that_died_while_waiting_is_not_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path());
    s.warm.refill();
    let first = s.warm.take().unwrap();
    // Killed from outside while idle: the next attempt gets a live shell instead.
    s.warm.refill();
    let pgid = {
        let idle = s.warm.take().unwrap();
        let pgid = idle.pgid;
        drop(idle); // kill_on_drop
        pgid
    };
    assert!(pgid > 0 && first.pgid != pgid);
    let f = run_now(&task("echo $$"), dir.path(), &s, true).await;
    assert_ne!(stdout(&f).trim(), pgid.to_string());
}
