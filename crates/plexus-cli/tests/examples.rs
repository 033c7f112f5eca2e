//! Every example in `examples/` runs through the real binary and ends as documented.

mod common;
use common::*;
use std::time::Duration;

fn example(name: &str) -> String {
    examples().join(name).to_string_lossy().into_owned()
}

fn run_example(p: &Plexus, name: &str, extra: &[&str]) -> (i32, serde_json::Value) {
    let out = p.run(&[&["run", &example(name), "-o", "json"], extra].concat());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{name}: not JSON ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

#[test]
fn hello() {
    let p = Plexus::new();
    let (code, v) = run_example(&p, "hello.yaml", &["--input", "who=tests"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["status"], "succeeded");
    assert!(
        v["outputs"]["message"]
            .as_str()
            .unwrap()
            .starts_with("hello, tests (python 3."),
        "{v}"
    );
}

#[test]
fn fan_out_fan_in() {
    let p = Plexus::new();
    let (code, v) = run_example(&p, "fan-out-fan-in.yaml", &[]);
    assert_eq!(code, 0);
    assert_eq!(v["outputs"]["total"], 15);
}

#[test]
fn retry_with_a_flaky_command() {
    let p = Plexus::new();
    let (code, v) = run_example(&p, "retry-flaky.yaml", &[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["outputs"]["attempts"], "attempt 3");
    let events = p.events(v["id"].as_str().unwrap());
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "step_failed")
        .collect();
    assert_eq!(failed.len(), 2);
    assert!(failed.iter().all(|e| e["retry_at"].is_u64()));
    // Exponential backoff: the second wait is longer than the first.
    let wait =
        |e: &serde_json::Value| e["retry_at"].as_u64().unwrap() - e["time"].as_u64().unwrap();
    assert!(
        wait(failed[1]) > wait(failed[0]),
        "{} then {}",
        wait(failed[0]),
        wait(failed[1])
    );
}

#[test]
fn foreach_fans_out_over_a_list() {
    let p = Plexus::new();
    let (code, v) = run_example(&p, "foreach.yaml", &["-i", "prefix=db"]);
    assert_eq!(code, 0);
    assert_eq!(v["outputs"]["checked"], 5);
    let check = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step_id"] == "check")
        .unwrap();
    assert_eq!(check["output"][4]["stdout"], "db-5 ok\n");
}

#[test]
fn failure_with_all_done_cleanup() {
    let p = Plexus::new();
    let (code, v) = run_example(&p, "cleanup-on-failure.yaml", &[]);
    assert_eq!(code, 1, "a failed run exits 1");
    assert_eq!(v["status"], "failed");
    let status = |id: &str| {
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step_id"] == id)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(status("deploy"), "failed");
    assert_eq!(status("smoke-test"), "skipped");
    assert_eq!(status("cleanup"), "succeeded");
}

#[test]
fn sub_workflow_per_item() {
    let p = Plexus::new();
    let (code, v) = run_example(&p, "sub-workflow.yaml", &[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        v["outputs"]["said"],
        serde_json::json!(["hello, ada", "hello, grace"])
    );
    let all = p.json(&["runs", "list"]);
    let children: Vec<_> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["workflow"] == "greet")
        .collect();
    assert_eq!(children.len(), 2);
    assert!(children.iter().all(|c| c["parent"]["run_id"] == v["id"]));
}

#[test]
fn approval_gate_waits_for_plexus_approve() {
    let p = Plexus::new();
    let (mut child, run) = p.spawn(&["run", &example("approval-gate.yaml")]);
    p.wait_until("restart awaiting approval", Duration::from_secs(20), || {
        p.step_status(&run, "restart") == "awaiting_approval"
    });
    // Nothing ran yet: the gated step is still waiting.
    assert_eq!(p.step_status(&run, "announce"), "pending");
    let out = p.run(&["approve", &run, "restart", "--comment", "go"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    p.wait_until(
        "announce awaiting approval",
        Duration::from_secs(20),
        || p.step_status(&run, "announce") == "awaiting_approval",
    );
    let out = p.run(&["reject", &run, "announce"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), 0);
    let v = p.run_json(&run);
    assert_eq!(v["status"], "succeeded");
    assert_eq!(p.step_status(&run, "restart"), "succeeded");
    assert_eq!(p.step_status(&run, "announce"), "skipped");
    let approved = p
        .events(&run)
        .into_iter()
        .find(|e| e["type"] == "step_approved")
        .unwrap();
    assert_eq!(approved["comment"], "go");
    // Approving a step that is not waiting is refused with a clear message.
    let out = p.run(&["approve", &run, "restart"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already succeeded"));
}

#[test]
fn timer_then_signal() {
    let p = Plexus::new();
    let (mut child, run) = p.spawn(&["run", &example("timer-signal.yaml")]);
    // The signal is refused while the timer still runs...
    p.wait_until("cool-down waiting", Duration::from_secs(20), || {
        p.step_status(&run, "cool-down") == "waiting"
    });
    let early = p.run(&["signal", &run, "go-ahead"]);
    assert!(!early.status.success());
    // ...and accepted once the step waits for it.
    p.wait_until("go-ahead waiting", Duration::from_secs(20), || {
        p.step_status(&run, "go-ahead") == "waiting"
    });
    let out = p.run(&[
        "signal",
        &run,
        "go-ahead",
        "--data",
        r#"{"ticket": "OPS-7"}"#,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), 0);
    let v = p.run_json(&run);
    assert_eq!(v["outputs"]["ticket"], "OPS-7");
    let act = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step_id"] == "act")
        .unwrap();
    assert_eq!(act["output"]["stdout"], "acting on OPS-7\n");
}

/// `command` on a pseudo-terminal (util-linux `script`), with `keys` typed at the given
/// moments; everything the terminal showed, escape sequences included.
fn on_a_terminal(p: &Plexus, command: &str, keys: &[(u64, &[u8])]) -> (String, Option<i32>) {
    let mut child = std::process::Command::new("script")
        .env("PLEXUS_DATA_DIR", p.data_dir())
        .env("XDG_CONFIG_HOME", p.dir.path().join("config"))
        .current_dir(p.dir.path())
        .args(["-qfec", command, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("`script` (util-linux) runs the command on a pseudo-terminal");
    let mut stdin = child.stdin.take().unwrap();
    for (after_ms, bytes) in keys {
        std::thread::sleep(Duration::from_millis(*after_ms));
        use std::io::Write;
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }
    // The terminal stays open until the command ends (`script` ends at EOF on its input),
    // or for 30 s at most.
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(30));
        drop(stdin);
    });
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code(),
    )
}

/// On a terminal, `plexus run` asks `approve? [y/N]` for each gated step, one at a
/// time; while a prompt is open the progress line is not drawn over it.
#[test]
fn approval_prompt_on_a_terminal() {
    let p = Plexus::new();
    let command = format!(
        "{} run {}",
        env!("CARGO_BIN_EXE_plexus"),
        example("approval-gate.yaml")
    );
    // The first answer comes after a dozen redraw ticks would have passed.
    let (text, code) = on_a_terminal(&p, &command, &[(1500, b"y\n"), (800, b"n\n")]);
    assert!(text.contains("approve? [y/N]"), "{text}");
    assert!(text.contains("restart approved by local"), "{text}");
    assert!(
        text.contains("announce skipped: rejected by local"),
        "{text}"
    );
    assert_eq!(code, Some(0), "{text}");
    let prompt = text.find("approve? [y/N]").unwrap();
    let answered = text.find("restart approved").unwrap();
    let between = &text[prompt..answered];
    assert!(
        !between.contains("steps done"),
        "the progress line was drawn over the open prompt: {between:?}"
    );
}

/// Ctrl-C at a prompt leaves the run waiting for its decision (it is not cancelled) and
/// says how to decide later and go on; doing so finishes the run.
#[test]
fn ctrl_c_at_a_prompt_leaves_the_run_waiting() {
    let p = Plexus::new();
    let command = format!(
        "{} run {}",
        env!("CARGO_BIN_EXE_plexus"),
        example("approval-gate.yaml")
    );
    let (text, code) = on_a_terminal(&p, &command, &[(1500, b"\x03")]);
    assert_eq!(code, Some(130), "{text}");
    let run = p.json(&["runs", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        text.contains(&format!("plexus approve {run} restart")),
        "{text}"
    );
    assert!(text.contains(&format!("plexus resume {run}")), "{text}");
    assert_eq!(p.step_status(&run, "restart"), "awaiting_approval");
    assert!(p.run(&["approve", &run, "restart"]).status.success());
    let (mut resumed, _) = p.spawn(&["resume", &run]);
    p.wait_until("the next gate", Duration::from_secs(20), || {
        p.step_status(&run, "announce") == "awaiting_approval"
    });
    assert!(p.run(&["approve", &run, "announce"]).status.success());
    assert_eq!(wait_exit(&mut resumed, Duration::from_secs(20)), 0);
}

/// The progress line names what a step does: a step waiting for a signal is shown as
/// waiting for it, never as running.
#[test]
fn the_progress_line_names_waiting_steps_truthfully() {
    let p = Plexus::new();
    let flow = p.dir.path().join("hold.yaml");
    std::fs::write(
        &flow,
        "version: plexus/v1\nname: hold\nsteps:\n- {id: hold, wait: {signal: go}}\n- {id: spin, run: 'sleep 1'}\n",
    )
    .unwrap();
    let command = format!("{} run {}", env!("CARGO_BIN_EXE_plexus"), flow.display());
    // Once the run waits, another process signals it.
    let signal = {
        let data = p.data_dir();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            let runs = std::process::Command::new(env!("CARGO_BIN_EXE_plexus"))
                .env("PLEXUS_DATA_DIR", &data)
                .args(["runs", "list", "-o", "json"])
                .output()
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&runs.stdout).unwrap();
            let run = v[0]["id"].as_str().unwrap().to_owned();
            std::process::Command::new(env!("CARGO_BIN_EXE_plexus"))
                .env("PLEXUS_DATA_DIR", &data)
                .args(["signal", &run, "hold"])
                .output()
                .unwrap()
        })
    };
    let (text, code) = on_a_terminal(&p, &command, &[]);
    assert!(signal.join().unwrap().status.success());
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("waiting for signal go: hold"), "{text}");
    assert!(text.contains("running: spin"), "{text}");
    assert!(
        !text.contains("running: hold") && !text.contains("hold, spin"),
        "{text}"
    );
}

/// On a terminal the help is in color; with `NO_COLOR` set, nothing is (no-color.org).
#[test]
fn no_color_is_respected() {
    let p = Plexus::new();
    let bin = env!("CARGO_BIN_EXE_plexus");
    let (colored, _) = on_a_terminal(&p, &format!("{bin} run --help"), &[]);
    assert!(colored.contains("\x1b["), "{colored:?}");
    let (plain, code) = on_a_terminal(&p, &format!("env NO_COLOR=1 {bin} run --help"), &[]);
    assert_eq!(code, Some(0));
    assert!(
        plain.contains("Global options") && !plain.contains("\x1b["),
        "{plain:?}"
    );
}

/// Two gates open at once are asked one at a time, in the order they came: the second
/// prompt appears only after the first is answered.
#[test]
fn gates_open_at_once_are_asked_one_at_a_time() {
    let p = Plexus::new();
    let flow = p.dir.path().join("two.yaml");
    std::fs::write(
        &flow,
        "version: plexus/v1\nname: two\nsteps:\n- {id: first, permission: modify, run: 'echo one'}\n- {id: second, permission: modify, run: 'echo two'}\n",
    )
    .unwrap();
    let command = format!("{} run {}", env!("CARGO_BIN_EXE_plexus"), flow.display());
    let (text, code) = on_a_terminal(&p, &command, &[(1200, b"y\n"), (1200, b"y\n")]);
    assert_eq!(code, Some(0), "{text}");
    let prompts: Vec<usize> = text
        .match_indices("approve? [y/N]")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(prompts.len(), 2, "{text}");
    // The second prompt came after the first was answered (the terminal echoes the `y`).
    let between = &text[prompts[0]..prompts[1]];
    assert!(between.starts_with("approve? [y/N] y"), "{between:?}");
    assert!(
        text.contains("first approved by local") && text.contains("second approved by local"),
        "{text}"
    );
}
