//! Execution behaviour of shell steps through the real binary: process groups, timeouts,
//! cancellation, environment, output capture, artifacts.

mod common;
use common::*;
use std::time::Duration;

fn write(p: &Plexus, name: &str, text: &str) -> String {
    let path = p.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// Whether the process exists and is not a zombie waiting to be reaped.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

/// Waits until the step has written the pid of its background process, then reads it.
fn wait_for_pid(p: &Plexus, path: &std::path::Path) -> i32 {
    p.wait_until(
        "the step's background process",
        Duration::from_secs(20),
        || std::fs::read_to_string(path).is_ok_and(|s| s.ends_with('\n')),
    );
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn ctrl_c_cancels_the_run_and_kills_the_process_group() {
    let p = Plexus::new();
    let pidfile = p.dir.path().join("sleep.pid");
    let flow = write(
        &p,
        "long.yaml",
        &format!(
            "version: plexus/v1\nname: long\nsteps:\n- id: sleepy\n  run: |\n    sleep 60 &\n    echo $! > {}\n    wait\n- id: after\n  needs: [sleepy]\n  run: echo after\n",
            pidfile.display()
        ),
    );
    let (mut child, run) = p.spawn(&["run", &flow]);
    let sleeper = wait_for_pid(&p, &pidfile);
    assert!(alive(sleeper));
    // SAFETY: sending SIGINT to the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), 130);
    let v = p.run_json(&run);
    assert_eq!(v["status"], "cancelled");
    assert_eq!(p.step_status(&run, "sleepy"), "cancelled");
    assert_eq!(p.step_status(&run, "after"), "cancelled");
    p.wait_until(
        "the background sleep to die with its group",
        Duration::from_secs(5),
        || !alive(sleeper),
    );
}

#[test]
fn timeout_kills_the_whole_group_and_fails_the_step() {
    let p = Plexus::new();
    let pidfile = p.dir.path().join("t.pid");
    let flow = write(
        &p,
        "timeout.yaml",
        &format!(
            "version: plexus/v1\nname: t\nsteps:\n- id: slow\n  timeout: 500ms\n  run: |\n    sleep 60 &\n    echo $! > {}\n    wait\n",
            pidfile.display()
        ),
    );
    let out = p.run(&["run", &flow, "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 500ms"),
        "{v}"
    );
    let sleeper = wait_for_pid(&p, &pidfile);
    p.wait_until(
        "the timed-out group to be gone",
        Duration::from_secs(5),
        || !alive(sleeper),
    );
}

#[test]
fn runs_cancel_from_another_process() {
    let p = Plexus::new();
    let flow = write(
        &p,
        "wait.yaml",
        "version: plexus/v1\nname: w\nsteps:\n- id: hold\n  wait: {signal: never}\n",
    );
    let (mut child, run) = p.spawn(&["run", &flow]);
    p.wait_until("hold waiting", Duration::from_secs(20), || {
        p.step_status(&run, "hold") == "waiting"
    });
    let out = p.run(&["runs", "cancel", &run]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), 130);
    assert_eq!(p.run_json(&run)["status"], "cancelled");
    let again = p.run(&["runs", "cancel", &run]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already cancelled"));
}

#[test]
fn an_interrupted_run_can_be_cancelled_without_resuming_it() {
    let p = Plexus::new();
    let flow = write(
        &p,
        "wait.yaml",
        "version: plexus/v1\nname: w\nsteps:\n- id: hold\n  wait: {signal: never}\n",
    );
    let (mut child, run) = p.spawn(&["run", &flow]);
    p.wait_until("hold waiting", Duration::from_secs(20), || {
        p.step_status(&run, "hold") == "waiting"
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let out = p.run(&["runs", "cancel", &run]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(p.run_json(&run)["status"], "cancelled");
}

#[test]
fn subprocesses_get_a_clean_environment_plus_what_the_step_names() {
    let p = Plexus::new();
    let flow = write(
        &p,
        "env.yaml",
        "version: plexus/v1\nname: env\ninputs: {region: {type: string, default: eu}}\nsteps:\n- id: show\n  env: {REGION: '{{ inputs.region }}'}\n  run: echo \"${SECRET_TOKEN:-absent} $REGION $PLEXUS_STEP_ID\"\n",
    );
    let out = p
        .cmd()
        .args(["run", &flow, "-o", "json"])
        .env("SECRET_TOKEN", "hunter2")
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["steps"][0]["output"]["stdout"], "absent eu show\n");
}

#[test]
fn output_is_capped_json_output_and_artifacts_are_stored() {
    let p = Plexus::new();
    let flow = write(
        &p,
        "out.yaml",
        "version: plexus/v1\nname: out\nsteps:\n- id: big\n  run: head -c 3000000 /dev/zero | tr '\\0' x\n- id: structured\n  python: |\n    import json, os\n    json.dump({\"answer\": 42}, open(os.environ['PLEXUS_OUTPUT'], 'w'))\n    open(os.path.join(os.environ['PLEXUS_ARTIFACTS'], 'report.txt'), 'w').write('the report')\n- id: broken\n  run: echo 'not json' > \"$PLEXUS_OUTPUT\"\n  on_failure: continue\n",
    );
    let out = p.run(&["run", &flow, "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stdout = v["steps"][0]["output"]["stdout"].as_str().unwrap();
    assert!(stdout.len() < 1_100_000, "stdout kept: {}", stdout.len());
    assert!(stdout.ends_with("[plexus: output truncated, 1048576 of 3000000 bytes kept]"));
    assert_eq!(v["steps"][1]["output"], serde_json::json!({"answer": 42}));
    assert!(
        v["steps"][2]["error"]
            .as_str()
            .unwrap()
            .contains("PLEXUS_OUTPUT does not hold valid JSON")
    );
    let artifact = &v["artifacts"][0];
    assert_eq!(artifact["name"], "report.txt");
    // sha256("the report")
    let sha = artifact["sha256"].as_str().unwrap();
    assert_eq!(
        sha,
        "14e4cce86788499d03144f70ab24ca83d1abe97d55153c71ee1df55c5296c1f9"
    );
    let stored = p.data_dir().join("artifacts").join(&sha[..2]).join(sha);
    assert_eq!(std::fs::read_to_string(stored).unwrap(), "the report");
}

#[test]
fn bad_inputs_and_invalid_manifests_exit_2() {
    let p = Plexus::new();
    let flow = write(
        &p,
        "in.yaml",
        "version: plexus/v1\nname: in\ninputs: {n: {type: integer, required: true}}\nsteps:\n- {id: a, run: 'echo {{ inputs.n }}'}\n",
    );
    let missing = p.run(&["run", &flow]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("missing required input `n`"));
    let wrong = p.run(&["run", &flow, "-i", "n=abc"]);
    assert_eq!(wrong.status.code(), Some(2));
    let typo = p.run(&["run", &flow, "-i", "n=1", "-i", "m=2"]);
    assert!(String::from_utf8_lossy(&typo.stderr).contains("unknown input `m`"));
    let ok = p.run(&["run", &flow, "-i", "n=7", "-o", "json"]);
    assert_eq!(ok.status.code(), Some(0));
    let bad = write(
        &p,
        "bad.yaml",
        "version: plexus/v1\nname: bad\nsteps: [{id: a}]\n",
    );
    assert_eq!(p.run(&["run", &bad]).status.code(), Some(2));
}

/// `kill -9` leaves the attempt's process group running; `plexus resume` stops it before
/// it starts the new attempt, so the two never race.
#[test]
fn resume_kills_what_the_dead_engine_left_running() {
    let p = Plexus::new();
    let pidfile = p.dir.path().join("first.pid");
    let flow = write(
        &p,
        "leftover.yaml",
        &format!(
            "version: plexus/v1\nname: leftover\nsteps:\n- id: work\n  run: |\n    if [ \"$PLEXUS_ATTEMPT\" = 1 ]; then sleep 60 & echo $! > {}; wait; fi\n    echo attempt $PLEXUS_ATTEMPT\n",
            pidfile.display()
        ),
    );
    let (mut child, run) = p.spawn(&["run", &flow]);
    let sleeper = wait_for_pid(&p, &pidfile);
    // The group is recorded with the next commit (50 ms after the start at the latest):
    // wait until the store has it.
    let db = p.data_dir().join("plexus.db");
    p.wait_until(
        "the step's process group is recorded",
        Duration::from_secs(10),
        || {
            rusqlite::Connection::open(&db)
                .and_then(|c| {
                    c.query_row("SELECT COUNT(*) FROM attempt_records", [], |r| {
                        r.get::<_, i64>(0)
                    })
                })
                .is_ok_and(|n| n > 0)
        },
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        alive(sleeper),
        "kill -9 of the engine does not reach the step's group"
    );
    let out = p.run(&["resume", &run, "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["steps"][0]["output"]["stdout"], "attempt 2\n");
    p.wait_until("the leftover to be gone", Duration::from_secs(5), || {
        !alive(sleeper)
    });
}

/// A local run needs no login (the local user acts as admin of the local store), is
/// audited as that user, and the chain is checked offline: an edited row is named.
#[test]
fn local_runs_are_audited_and_the_chain_is_verified_offline() {
    let p = Plexus::new();
    let hello = examples().join("hello.yaml");
    let out = p.run(&["run", hello.to_str().unwrap(), "-i", "who=audit"]);
    assert!(out.status.success());
    let listed = p.json(&["audit", "list"]);
    let records = listed["records"].as_array().unwrap();
    let actor = match std::env::var("USER").or_else(|_| std::env::var("LOGNAME")) {
        Ok(u) => format!("local:{u}"),
        Err(_) => "local".into(),
    };
    assert!(
        records
            .iter()
            .any(|r| r["action"] == "run.started" && r["actor"] == actor.as_str()),
        "{listed}"
    );
    assert!(records.iter().any(|r| r["action"] == "run.succeeded"));
    let out = p.run(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("intact"));

    let db = rusqlite::Connection::open(p.data_dir().join("plexus.db")).unwrap();
    db.execute(
        "UPDATE audit SET target = 'run:someone-else' WHERE seq = 1",
        [],
    )
    .unwrap();
    let out = p.run(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("BROKEN at record 1"), "{text}");
    let out = p.run(&["audit", "verify", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["ok"].clone(), v["seq"].clone()),
        (serde_json::json!(false), serde_json::json!(1))
    );
}

/// The attacks as found: three nested `range(9999)` loops in a `builtin: echo` blocked the
/// engine for good, and a string doubled in a loop grew it to 10 GB; the resumed run did
/// both again. Now each step fails with a clear error (the doubling in the template
/// sandbox, whose memory the kernel caps), the run ends, and the steps beside them run.
#[test]
fn a_runaway_template_fails_its_step_and_nothing_else() {
    let p = Plexus::new();
    let flow = write(
        &p,
        "runaway.yaml",
        "version: plexus/v1\nname: runaway\nsteps:\n- {id: spin, builtin: echo, with: {x: '{% for a in range(9999) %}{% for b in range(9999) %}{% for c in range(9999) %}x{% endfor %}{% endfor %}{% endfor %}'}}\n- {id: big, builtin: echo, with: {x: '{% for a in range(5000) %}{{ \"y\" * 1000 }}{% endfor %}'}}\n- {id: fine, builtin: echo, with: {x: '{{ run.workflow }}'}}\n- {id: grow, builtin: echo, with: {x: '{% set ns = namespace(s=\"x\") %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}'}}\n- {id: product, builtin: echo, with: {x: \"{{ ('x' * 99999999) ~ ('x' * 99999999) ~ ('x' * 99999999) }}\"}}\n- {id: looped, builtin: echo, with: {x: '{% for h in [1, 2, 3] %}{{ h * 2 }} {% endfor %}'}}\n",
    );
    let started = std::time::Instant::now();
    let run = p.run_file(std::path::Path::new(&flow), &[], 1);
    let step = |id: &str| {
        run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step_id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(step("spin")["status"], "failed");
    assert!(
        step("spin")["error"]
            .as_str()
            .unwrap()
            .contains("ran too long"),
        "{run}"
    );
    assert!(
        step("big")["error"]
            .as_str()
            .unwrap()
            .contains("KiB of text"),
        "{run}"
    );
    assert_eq!(step("fine")["status"], "succeeded");
    assert_eq!(step("fine")["output"]["x"], "runaway");
    for id in ["grow", "product"] {
        let error = step(id)["error"].as_str().unwrap_or_default().to_owned();
        assert_eq!(step(id)["status"], "failed", "{run}");
        assert!(
            error.contains("MiB of memory") || error.contains("ran longer than"),
            "{id}: {error}"
        );
    }
    // A loop within the limits renders in the sandbox, and the sandbox, killed twice
    // above, came back for it.
    assert_eq!(step("looped")["status"], "succeeded", "{run}");
    assert_eq!(step("looped")["output"]["x"], "2 4 6 ");
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

/// A chain of 100,000 `~` in one expression overflowed minijinja's compiler stack, which
/// aborts the process (`plexus validate`, a server taking the workflow). It is refused
/// with a clear error before anything compiles it.
#[test]
fn an_expression_too_long_to_compile_is_a_validation_error() {
    let p = Plexus::new();
    let chain = " ~ run.id".repeat(100_000);
    let flow = write(
        &p,
        "chain.yaml",
        &format!(
            "version: plexus/v1\nname: chain\nsteps:\n- {{id: a, builtin: echo, with: {{x: '{{{{ run.id{chain} }}}}'}}}}\n"
        ),
    );
    let out = p.run(&["validate", &flow]);
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("too long to compile safely"), "{text}");
}
