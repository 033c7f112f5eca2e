//! Pools, configuration, log following, sub-workflows across a crash, and the benchmark
//! command, through the real binary.

mod common;
use common::*;
use std::time::Duration;

fn write(p: &Plexus, name: &str, text: &str) -> std::path::PathBuf {
    let path = p.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Steps in a pool of one slot never overlap; `pool_slots` above the capacity is refused.
#[test]
fn a_pool_of_one_runs_its_steps_one_at_a_time() {
    let p = Plexus::new();
    let log = p.dir.path().join("spans.log");
    let mut y = String::from("version: plexus/v1\nname: pooled\nsteps:\n");
    for i in 0..4 {
        y.push_str(&format!(
            "- id: s{i}\n  pool: solo\n  run: |\n    echo \"start $(date +%s%N)\" >> {l}\n    sleep 0.1\n    echo \"end $(date +%s%N)\" >> {l}\n",
            l = log.display()
        ));
    }
    let flow = write(&p, "pooled.yaml", &y);
    let unknown = p.run(&["run", flow.to_str().unwrap()]);
    assert_eq!(
        unknown.status.code(),
        Some(2),
        "pool `solo` is not configured yet"
    );
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("--pool solo=N"));
    let out = p.run(&["run", flow.to_str().unwrap(), "--pool", "solo=1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 8);
    for pair in lines.chunks(2) {
        assert!(
            pair[0].starts_with("start") && pair[1].starts_with("end"),
            "steps overlapped: {lines:?}"
        );
    }
    let greedy = write(
        &p,
        "greedy.yaml",
        "version: plexus/v1\nname: g\nsteps:\n- {id: a, run: 'true', pool: solo, pool_slots: 2}\n",
    );
    let out = p.run(&["validate", greedy.to_str().unwrap(), "--pool", "solo=1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("pool_slots 2 is more than pool `solo` has (1)")
    );
}

#[test]
fn plexus_toml_sets_pools_and_the_data_dir() {
    let p = Plexus::new();
    let data = p.dir.path().join("from-toml");
    write(
        &p,
        "plexus.toml",
        &format!(
            "data_dir = {:?}\n[pools]\ngpu = 2\n",
            data.to_str().unwrap()
        ),
    );
    let flow = write(
        &p,
        "gpu.yaml",
        "version: plexus/v1\nname: gpu\nsteps:\n- {id: a, run: 'true', pool: gpu, pool_slots: 2}\n",
    );
    let out = p
        .cmd()
        .env_remove("PLEXUS_DATA_DIR")
        .args(["run", flow.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        data.join("plexus.db").exists(),
        "the store went to the data_dir of plexus.toml"
    );
    write(&p, "plexus.toml", "pools = 3\n");
    let bad = p.run(&["validate", flow.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("plexus.toml is not a valid plexus.toml")
    );
}

#[test]
fn follow_logs_streams_step_output() {
    let p = Plexus::new();
    let flow = write(
        &p,
        "logs.yaml",
        "version: plexus/v1\nname: logs\nsteps:\n- id: talk\n  run: |\n    echo first line\n    echo problem >&2\n",
    );
    let out = p.run(&["run", flow.to_str().unwrap(), "--follow-logs"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("talk | first line"), "{err}");
    assert!(err.contains("talk ! problem"), "{err}");
}

/// The parent is killed while its sub-workflow waits; after `resume` the child is taken
/// over, not started again, and its end reaches the parent.
#[test]
fn a_sub_workflow_survives_a_crash_of_its_parent() {
    let p = Plexus::new();
    write(
        &p,
        "child.yaml",
        "version: plexus/v1\nname: child\nsteps:\n- {id: hold, wait: {signal: go}}\noutputs: {got: '{{ steps.hold.output }}'}\n",
    );
    let parent = write(
        &p,
        "parent.yaml",
        "version: plexus/v1\nname: parent\nsteps:\n- {id: call, workflow: child.yaml}\n- {id: after, needs: [call], builtin: echo, with: {got: '{{ steps.call.output.got }}'}}\n",
    );
    let (mut child, run) = p.spawn(&["run", parent.to_str().unwrap()]);
    let child_run = || {
        let runs = p.json(&["runs", "list", "--workflow", "child"]);
        runs.as_array()
            .unwrap()
            .first()
            .map(|r| r["id"].as_str().unwrap().to_owned())
    };
    p.wait_until("the child run to wait", Duration::from_secs(20), || {
        child_run().is_some_and(|c| p.step_status(&c, "hold") == "waiting")
    });
    let child_id = child_run().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let (mut resumed, _) = p.spawn(&["resume", &run]);
    // The resumed engine drives the child too, so a signal to it is applied at once.
    p.wait_until(
        "the child to be driven again",
        Duration::from_secs(20),
        || {
            p.json(&["runs", "list", "--interrupted"])
                .as_array()
                .unwrap()
                .is_empty()
        },
    );
    let out = p.run(&["signal", &child_id, "hold", "--data", "42"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(wait_exit(&mut resumed, Duration::from_secs(20)), 0);
    let v = p.run_json(&run);
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["steps"][1]["output"]["got"], 42);
    let children = p.json(&["runs", "list", "--workflow", "child"]);
    assert_eq!(
        children.as_array().unwrap().len(),
        1,
        "the child was re-attached, not started twice"
    );
}

/// A sub-workflow step's `timeout` ends the attempt and cancels the child run; a pool the
/// step names limits how many of its children run at once.
#[test]
fn sub_workflows_honour_timeout_and_pool() {
    let p = Plexus::new();
    write(
        &p,
        "stuck.yaml",
        "version: plexus/v1\nname: stuck\nsteps:\n- {id: hold, wait: {signal: go}}\n",
    );
    let parent = write(
        &p,
        "impatient.yaml",
        "version: plexus/v1\nname: impatient\nsteps:\n- {id: call, workflow: stuck.yaml, timeout: 1s}\n",
    );
    let run = p.run_file(&parent, &[], 1);
    let error = run["steps"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("timed out after 1s"), "{run}");
    let children = p.json(&["runs", "list", "--workflow", "stuck"]);
    assert_eq!(children[0]["status"], "cancelled", "{children}");

    let log = p.dir.path().join("children.log");
    write(
        &p,
        "slow.yaml",
        &format!(
            "version: plexus/v1\nname: slow\nsteps:\n- id: work\n  run: |\n    echo \"start\" >> {l}\n    sleep 0.2\n    echo \"end\" >> {l}\n",
            l = log.display()
        ),
    );
    let mut y = String::from("version: plexus/v1\nname: fan\nsteps:\n");
    for i in 0..3 {
        y.push_str(&format!(
            "- {{id: c{i}, workflow: slow.yaml, pool: solo}}\n"
        ));
    }
    let fan = write(&p, "fan.yaml", &y);
    let out = p.run(&["run", fan.to_str().unwrap(), "--pool", "solo=1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        lines,
        ["start", "end", "start", "end", "start", "end"],
        "children overlapped"
    );
}

/// The attack as found: `workflow: /etc/shadow` put lines of that file into a run error
/// every operator reads. Sub-workflows must be in the manifest's directory tree (also
/// through `..` and symbolic links), and a file that is not a manifest is never echoed.
#[test]
fn sub_workflow_paths_are_confined_and_never_echoed() {
    let p = Plexus::new();
    let tree = p.dir.path().join("flows");
    std::fs::create_dir_all(&tree).unwrap();
    let outside = p.dir.path().join("outside.yaml");
    std::fs::write(
        &outside,
        "version: plexus/v1\nname: out\nsteps:\n- {id: a, builtin: noop}\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(&outside, tree.join("link.yaml")).unwrap();
    std::fs::write(
        tree.join("notes.txt"),
        "db_password: hunter2-confidential\n",
    )
    .unwrap();
    for (target, expected) in [
        ("/etc/passwd", "outside the workflow's directory"),
        ("../outside.yaml", "outside the workflow's directory"),
        ("link.yaml", "outside the workflow's directory"),
        ("notes.txt", "is not a valid manifest"),
    ] {
        let flow = tree.join("parent.yaml");
        std::fs::write(
            &flow,
            format!(
                "version: plexus/v1\nname: parent\nsteps:\n- {{id: call, workflow: '{target}'}}\n"
            ),
        )
        .unwrap();
        let run = p.run_file(&flow, &[], 1);
        let error = run["steps"][0]["error"].as_str().unwrap_or_default();
        assert!(error.contains(expected), "{target}: {error}");
        let all = run.to_string();
        assert!(!all.contains("root:x:0"), "{target}: {all}");
        assert!(!all.contains("hunter2"), "{target}: {all}");
    }
}

#[test]
fn bench_quick_reports_every_scenario() {
    let p = Plexus::new();
    // The replicas scenario makes its databases on the tests' PostgreSQL.
    let out = p
        .cmd()
        .args(["bench", "--quick", "-o", "json"])
        .env(
            "PLEXUS_BENCH_DATABASE_URL",
            plexus_store::test_postgres::server_url(),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "sequential-40",
            "fanout-1000",
            "throughput-10k",
            "foreach-100k",
            "shell-100",
            "shell-chain-100",
            "isolation-100",
            "park-100k",
            "http-1000",
            "http-clients",
            "agent-roundtrip",
            "agent-throughput",
            "intents",
            "gateway",
            "replicas"
        ]
    );
    // Agents: the engine's call beside a bare call to the same plugin.
    let (roundtrip, throughput) = (&v[10], &v[11]);
    assert!(
        roundtrip["direct_p50_ms"].as_f64().unwrap() > 0.0,
        "{roundtrip}"
    );
    assert!(
        roundtrip["engine_p99_ms"].as_f64().unwrap()
            >= roundtrip["engine_p50_ms"].as_f64().unwrap()
    );
    assert!(
        throughput["engine_calls_per_second"].as_f64().unwrap() > 0.0,
        "{throughput}"
    );
    assert!(
        throughput["run_steps_per_second"].as_f64().unwrap() > 0.0,
        "{throughput}"
    );
    // Intents: the phrasings answered; the gateway beside direct calls.
    let (intents, gateway) = (&v[12], &v[13]);
    assert!(intents["questions"].as_u64().unwrap() >= 30, "{intents}");
    assert!(
        intents["top1_accuracy"].as_f64().unwrap() > 0.0,
        "{intents}"
    );
    assert!(
        gateway["clients_64"]["gateway_p50_ms"].as_f64().unwrap() > 0.0,
        "{gateway}"
    );
    // Replicas: SQLite's rate beside 1, 2 and 3 replicas on PostgreSQL, leases, takeover.
    let replicas = &v[14];
    assert!(
        replicas["sqlite_1"]["workflows_per_second"]
            .as_f64()
            .unwrap()
            > 0.0,
        "{replicas}"
    );
    assert_eq!(
        replicas["postgres"].as_array().unwrap().len(),
        3,
        "{replicas}"
    );
    assert!(
        replicas["takeover"]["takeover_s"].as_f64().unwrap() > 0.0,
        "{replicas}"
    );
    for s in v.as_array().unwrap() {
        assert!(s["seconds"].as_f64().unwrap() > 0.0, "{s}");
        assert!(!s["baseline"].as_str().unwrap().is_empty());
    }
    // Shell steps are set against bare fork+exec one at a time (the target), and
    // independent ones also against bare fork+exec with the same parallelism.
    let (shell, chain) = (&v[4], &v[5]);
    for s in [shell, chain] {
        let ratio = s["ratio_vs_one_at_a_time"].as_f64().unwrap();
        assert!(ratio > 0.0, "{s}");
        assert_eq!(s["target_met"], ratio <= 1.5, "{s}");
    }
    assert!(shell["ratio_same_parallelism"].as_f64().unwrap() > 0.0);
    assert!(chain["ratio_same_parallelism"].is_null());
    assert!(
        shell["where_time_goes"]
            .as_str()
            .unwrap()
            .contains("store writer")
    );
    // The foreach is set against a tenth of its items ten times, and watched for stalls.
    let foreach = &v[3];
    assert!(
        foreach["ratio"].as_str().unwrap().ends_with("of linear"),
        "{foreach}"
    );
    assert!(
        foreach["longest_loop_wait_ms"].as_f64().unwrap() >= 0.0,
        "{foreach}"
    );
    // What clients feel: a real server process, both ways of waiting, the in-process
    // baseline and the server's CPU beside them.
    let clients = &v[9];
    for way in ["long_poll", "websocket", "in_process"] {
        assert!(
            clients[way]["workflows_per_second"].as_f64().unwrap() > 0.0,
            "{clients}"
        );
    }
    assert!(
        clients["long_poll"]["server_cpu_ms_per_workflow"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(
        clients["w3"]["engine_ms"].as_f64().unwrap() > 0.0,
        "{clients}"
    );
    // What the long-poll phase wrote and committed: every run reaches the disk, in
    // fewer commits than runs' events would take one by one.
    let lp = &clients["long_poll"];
    assert!(lp["disk_bytes_per_workflow"].as_u64().unwrap() > 0, "{lp}");
    assert!(lp["commits_per_second"].as_f64().unwrap() > 0.0, "{lp}");
    assert_eq!(clients["w1"]["samples"], 15, "{clients}");
}

#[test]
fn resume_refuses_a_run_another_live_process_drives() {
    let p = Plexus::new();
    let flow = write(
        &p,
        "hold.yaml",
        "version: plexus/v1\nname: hold\nsteps:\n- {id: hold, wait: {signal: go}}\n",
    );
    let (mut child, run) = p.spawn(&["run", flow.to_str().unwrap()]);
    p.wait_until("hold waiting", Duration::from_secs(20), || {
        p.step_status(&run, "hold") == "waiting"
    });
    let out = p.run(&["resume", &run]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is being driven by another process"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let signal = p.run(&["signal", &run, "hold", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&signal.stdout).unwrap();
    assert_eq!(v["outcome"], "applied");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), 0);
    let finished = p.run(&["resume", &run]);
    assert!(String::from_utf8_lossy(&finished.stderr).contains("is already succeeded"));
}

/// A run is pinned to the plan it started with: resumed after `kill -9` by an engine whose
/// pools no longer include the one the run was compiled against (a stricter configuration
/// would refuse the file today), it still continues and finishes.
#[test]
fn a_resumed_run_keeps_the_plan_it_started_with() {
    let p = Plexus::new();
    let flow = write(
        &p,
        "pinned.yaml",
        "version: plexus/v1\nname: pinned\nsteps:\n- {id: a, run: 'echo gpu', pool: gpu}\n- {id: b, needs: [a], wait: {signal: go}}\n- {id: c, needs: [b], run: 'echo done', pool: gpu}\n",
    );
    let (mut child, run) = p.spawn(&["run", flow.to_str().unwrap(), "--pool", "gpu=2"]);
    p.wait_until("b waits for its signal", Duration::from_secs(20), || {
        p.step_status(&run, "b") == "waiting"
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Today's configuration has no `gpu` pool: the file itself no longer validates...
    let now = p.run(&["validate", flow.to_str().unwrap()]);
    assert_eq!(now.status.code(), Some(2));
    // ...but the run resumes on the plan it started with.
    let out = p.run(&["signal", &run, "b"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = p.run(&["resume", &run]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(p.run_json(&run)["status"], "succeeded");
}

/// `plexus runs watch` follows a run another local process drives: its progress, then the
/// run when it ends, with `plexus run`'s exit status; SIGINT detaches and the run goes on.
#[test]
fn runs_watch_follows_a_local_run_and_detaches_without_touching_it() {
    let p = Plexus::new();
    let flow = write(
        &p,
        "hold.yaml",
        "version: plexus/v1\nname: hold\nsteps:\n- {id: hold, wait: {signal: go}}\n- {id: after, needs: [hold], builtin: noop}\n",
    );
    let (mut driver, run) = p.spawn(&["run", flow.to_str().unwrap()]);
    p.wait_until("hold waiting", Duration::from_secs(20), || {
        p.step_status(&run, "hold") == "waiting"
    });

    // A watcher interrupted with SIGINT detaches; the run is still waiting.
    let watcher = p
        .cmd()
        .args(["runs", "watch", &run])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill with a pid this test started.
    unsafe { libc::kill(watcher.id() as i32, libc::SIGINT) };
    let out = watcher.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("detached"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(p.step_status(&run, "hold"), "waiting");

    // A watcher that stays sees the run to its end.
    let watcher = p
        .cmd()
        .args(["runs", "watch", &run, "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(p.run(&["signal", &run, "hold"]).status.success());
    let out = watcher.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["status"], "succeeded", "{shown}");
    assert_eq!(wait_exit(&mut driver, Duration::from_secs(20)), 0);
}
