//! Agents against a real `plexus serve`: the example agent written with the Rust SDK
//! (a real process, registering itself over gRPC) called from workflows and by hand,
//! its approval, configuration and cache, an engine restart, deregistration.

mod common;
use common::agents::*;
use common::server::*;
use common::*;
use serde_json::{Value, json};

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A GET's body as text, as the admin.
fn raw_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        admin_key(addr)
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    raw
}

/// The `agent` messages of the server's WebSocket feed (followers of everything).
fn agent_feed(addr: &str) -> std::sync::mpsc::Receiver<Value> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let (tx, rx) = std::sync::mpsc::channel();
    let url = format!("ws://{addr}/ws?access_token={}", admin_key(addr));
    let (ready_tx, ready) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
            ready_tx.send(()).unwrap();
            while let Some(Ok(msg)) = ws.next().await {
                let Message::Text(text) = msg else { continue };
                let v: Value = serde_json::from_str(&text).unwrap();
                if v["type"] == "agent" && tx.send(v["change"].clone()).is_err() {
                    return;
                }
            }
        })
    });
    ready.recv_timeout(Duration::from_secs(10)).unwrap();
    rx
}

/// The example agent registers itself; a workflow calls its READ actions with checked
/// parameters (results become outputs, the engine's cache and the agent's configuration
/// work through callbacks), its MODIFY action waits for approval even though the step
/// does not say so, and runs once after `plexus approve`.
#[test]
fn an_agent_written_with_the_rust_sdk_runs_in_workflows() {
    let p = Plexus::new();
    write_plugins_toml(&p, "0s", "");
    let (mut server, addr) = start_server(&p);
    let feed = agent_feed(&addr);
    let mut agent = start_ops_agent(&grpc_addr(&addr));
    wait_for("the agent to register", || {
        agent_health(&p, &addr, "ops").as_deref() == Some("healthy")
    });
    let change = feed
        .recv_timeout(Duration::from_secs(10))
        .expect("the WebSocket feed tells of the registration");
    assert_eq!(change["kind"], "registered", "{change}");
    assert_eq!(change["name"], "ops", "{change}");
    let (_, health) = http(&addr, "GET", "/healthz", None);
    assert_eq!(health["plugins"][0]["name"], "ops", "{health}");
    assert_eq!(health["plugins"][0]["health"], "healthy", "{health}");
    let listed = cli_json(&p, &addr, &["agent", "get", "ops"]);
    assert_eq!(listed["version"], "0.1.0");
    assert_eq!(listed["permission"], "modify", "{listed}");
    let actions: Vec<&str> = listed["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["inspect", "remember", "wait", "write_note"]);
    let table = cli(&p, &addr).args(["agent", "list"]).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()[..4]
                == ["ops", "0.1.0", "MODIFY", "healthy"]),
        "{table}"
    );

    // Checked against what the server knows: unknown agents and actions, parameters
    // that do not fit, each at its line and column; offline, a warning says why not.
    let checked = p.dir.path().join("checked.yaml");
    std::fs::write(
        &checked,
        "version: plexus/v1\nname: checked\nsteps:\n- id: a\n  agent: opz\n  action: inspect\n- id: b\n  agent: ops\n  action: inspekt\n- id: c\n  agent: ops\n  action: inspect\n  with: {path: 5}\n",
    )
    .unwrap();
    let out = cli(&p, &addr)
        .args(["validate", checked.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for line in [
        ":5:10: error[unknown-agent] in step `a`: no agent `opz` is registered",
        "hint: did you mean `ops`?",
        ":9:11: error[unknown-action] in step `b`: agent `ops` has no action `inspekt`",
        ":13:9: error[bad-params] in step `c`: the parameters do not fit `ops/inspect`: path: 5 is not of type \"string\"",
    ] {
        assert!(err.contains(line), "{line} in {err}");
    }
    let offline = p
        .cmd()
        .args(["validate", checked.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(offline.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&offline.stderr).contains("warning[agent-unchecked]"),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );
    // `plan` gates a MODIFY action even where the step does not say so.
    let gated = p.dir.path().join("gated.yaml");
    std::fs::write(
        &gated,
        "version: plexus/v1\nname: gated\nsteps:\n- id: w\n  agent: ops\n  action: write_note\n  with: {path: n, text: t}\n",
    )
    .unwrap();
    let plan = cli_json(&p, &addr, &["plan", gated.to_str().unwrap()]);
    assert_eq!(plan["layers"][0][0]["approval"], "modify", "{plan}");

    let root = p.dir.path().join("root");
    std::fs::create_dir_all(root.join("reports")).unwrap();
    std::fs::write(root.join("reports/a.txt"), "12345").unwrap();
    std::fs::write(root.join("reports/b.txt"), "678").unwrap();
    let out = cli(&p, &addr)
        .args(["agent", "config-set", "ops", "root", root.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        cli_json(&p, &addr, &["agent", "config", "ops"]),
        json!({"root": root.to_str().unwrap()})
    );

    let runner = spawn_run(
        &p,
        &addr,
        "ops",
        r#"version: plexus/v1
name: ops-report
steps:
  - id: look
    agent: ops
    action: inspect
    with: {path: reports}
  - id: keep
    agent: ops
    action: remember
    needs: [look]
    with: {key: last-count, value: "{{ steps.look.output.files }} files"}
  - id: note
    agent: ops
    action: write_note
    needs: [look]
    with:
      path: summary.txt
      text: "{{ steps.look.output.bytes }} bytes in {{ steps.look.output.files }} files"
"#,
    );
    let mut pending = Value::Null;
    wait_for("the MODIFY action to ask for approval", || {
        pending = cli_json(&p, &addr, &["approval", "list"])["approvals"].clone();
        pending.as_array().is_some_and(|a| !a.is_empty())
    });
    let ask = &pending[0];
    assert_eq!(ask["step_id"], "note", "{ask}");
    assert_eq!(ask["permission"], "modify", "{ask}");
    assert!(
        !root.join("summary.txt").exists(),
        "nothing is written before the approval"
    );
    let run_id = ask["run_id"].as_str().unwrap().to_owned();
    let out = cli(&p, &addr)
        .args(["approve", &run_id, "note"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = finish_run(runner, 0);
    assert_eq!(
        step(&run, "look")["output"],
        json!({"files": 2, "bytes": 8})
    );
    assert_eq!(
        step(&run, "keep")["output"],
        json!({"key": "last-count", "value": "2 files"}),
        "the engine's cache kept the value"
    );
    assert_eq!(
        step(&run, "note")["output"],
        json!({"path": "summary.txt", "bytes": 18})
    );
    assert_eq!(
        std::fs::read_to_string(root.join("summary.txt")).unwrap(),
        "8 bytes in 2 files"
    );
    let attempts = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["attempt"].as_u64().unwrap())
        .max();
    assert_eq!(attempts, Some(1), "every action ran once: {run}");

    // Parameters are checked before the call: the error names the field.
    let out = cli(&p, &addr)
        .args(["action", "invoke", "ops", "inspect", "-p", "pathh=reports"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"path\" is a required property"), "{err}");
    let bad = p.dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "version: plexus/v1\nname: bad\nsteps:\n- id: look\n  agent: ops\n  action: inspect\n  with: {path: 7}\n",
    )
    .unwrap();
    let out = cli(&p, &addr)
        .args(["run", bad.to_str().unwrap(), "-o", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = step(&run, "look")["error"].as_str().unwrap().to_owned();
    assert!(
        error
            .contains("the parameters do not fit `ops/inspect`: path: 7 is not of type \"string\""),
        "{error}"
    );

    // By hand: the same path as a step, with the action's output.
    let run = cli_json(
        &p,
        &addr,
        &["action", "invoke", "ops", "inspect", "-p", "path=reports"],
    );
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(step(&run, "invoke")["output"]["files"], 2);

    // Metrics count the calls.
    let metrics = raw_get(&addr, "/metrics");
    assert!(
        metrics.contains("plexus_agent_calls_total{agent=\"ops\",outcome=\"success\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("plexus_agent_instances 1"), "{metrics}");

    // The audit log names the registration.
    let (_, audit) = http(
        &addr,
        "GET",
        "/api/v1/audit?domain=security&limit=1000",
        None,
    );
    assert!(
        audit.to_string().contains("\"agent.registered\""),
        "{audit}"
    );

    // SIGTERM: the agent deregisters and exits; a step calling it fails at once.
    // SAFETY: signalling the agent this test started.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    assert_eq!(wait_exit(&mut agent, Duration::from_secs(10)), 0);
    assert_eq!(agent_health(&p, &addr, "ops"), None, "deregistered");
    let started = Instant::now();
    let out = cli(&p, &addr)
        .args(["action", "invoke", "ops", "inspect", "-p", "path=reports"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "fails promptly, took {:?}",
        started.elapsed()
    );
    stop(&mut server);
}

/// After an engine restart the agent is unknown: its next heartbeat is told to register
/// again, and it does, without being restarted itself.
#[test]
fn an_agent_registers_again_after_the_engine_restarts() {
    let p = Plexus::new();
    write_plugins_toml(&p, "0s", "");
    let grpc = free_addr();
    let (mut server, addr) = start_server_on(&p, &grpc);
    let mut agent = start_ops_agent(&grpc);
    wait_for("the agent to register", || {
        agent_health(&p, &addr, "ops").is_some()
    });
    stop(&mut server);
    let (mut server, addr) = start_server_on(&p, &grpc);
    assert_eq!(
        agent_health(&p, &addr, "ops"),
        None,
        "a new engine knows no one"
    );
    wait_for("the agent to register again", || {
        agent_health(&p, &addr, "ops").as_deref() == Some("healthy")
    });
    let run = cli_json(
        &p,
        &addr,
        &[
            "action", "invoke", "ops", "remember", "-p", "key=k", "-p", "value=v",
        ],
    );
    assert_eq!(
        step(&run, "invoke")["output"],
        json!({"key": "k", "value": "v"})
    );
    let _ = agent.kill();
    let _ = agent.wait();
    stop(&mut server);
}

/// The children of `pid` named `comm`.
fn children_named(pid: u32, comm: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some((head, tail)) = stat.rsplit_once(") ") else {
            continue;
        };
        let name = head.split_once(" (").map_or("", |(_, n)| n);
        let ppid: u32 = tail
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if ppid == pid && name == comm {
            out.push(entry.file_name().to_string_lossy().parse().unwrap());
        }
    }
    out
}

/// A plugin under `plugins.dir` is started by the server with the SDKs' environment,
/// registers itself, is started again when it dies, and is stopped with the server.
#[test]
fn a_co_located_plugin_is_started_restarted_and_stopped_by_the_server() {
    let p = Plexus::new();
    let dir = p.dir.path().join("plugins/ops");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(example("ops_agent"), dir.join("ops")).unwrap();
    write_plugins_toml(&p, "30s", "dir = \"plugins\"\n");
    let (mut server, addr) = start_server(&p);
    wait_for("the co-located agent to register", || {
        agent_health(&p, &addr, "ops").as_deref() == Some("healthy")
    });
    let invoke = |value: &str| {
        cli_json(
            &p,
            &addr,
            &[
                "action",
                "invoke",
                "ops",
                "remember",
                "-p",
                "key=k",
                "-p",
                &format!("value={value}"),
            ],
        )
    };
    assert_eq!(invoke("one")["state"], "succeeded");
    let first = children_named(server.id(), "ops");
    assert_eq!(first.len(), 1, "one plugin process, the server's child");

    // kill -9: it is forgotten, started again, registers again; work goes on.
    // SAFETY: signalling the plugin process the server started for this test.
    unsafe { libc::kill(first[0] as i32, libc::SIGKILL) };
    wait_for("a new plugin process", || {
        let now = children_named(server.id(), "ops");
        now.len() == 1 && now != first
    });
    wait_for("it to register again", || {
        agent_health(&p, &addr, "ops").as_deref() == Some("healthy")
    });
    let run = invoke("two");
    assert_eq!(step(&run, "invoke")["output"]["value"], "two");
    let agents = cli_json(&p, &addr, &["agent", "list"]);
    assert_eq!(
        agents[0]["instances"].as_array().unwrap().len(),
        1,
        "the dead instance is gone: {agents}"
    );

    // A plugin that dies in the middle of a call fails the attempt; the retry goes to
    // the plugin started again.
    let runner = spawn_run(
        &p,
        &addr,
        "slow",
        "version: plexus/v1\nname: slow\nsteps:\n- id: wait\n  agent: ops\n  action: wait\n  with: {seconds: 1}\n  retry: {max_attempts: 2, backoff: 3s}\n",
    );
    std::thread::sleep(Duration::from_millis(500));
    let dying = children_named(server.id(), "ops");
    // SAFETY: signalling the plugin process the server started for this test.
    unsafe { libc::kill(dying[0] as i32, libc::SIGKILL) };
    let run = finish_run(runner, 0);
    assert_eq!(step(&run, "wait")["attempt"], 2, "{run}");
    assert_eq!(step(&run, "wait")["output"], json!({"waited": 1}));

    let last = children_named(server.id(), "ops")[0];
    stop(&mut server);
    assert!(
        !std::path::Path::new(&format!("/proc/{last}")).exists()
            || std::fs::read_to_string(format!("/proc/{last}/stat"))
                .is_ok_and(|s| s.contains(") Z ")),
        "the plugin stopped with the server"
    );
}

/// A plugin killed without deregistering and started again (a new instance id, a new
/// port) replaces its dead predecessor at once: no call goes to the dead one.
#[test]
fn a_restarted_plugin_replaces_its_dead_predecessor() {
    let p = Plexus::new();
    write_plugins_toml(&p, "0s", "");
    let (mut server, addr) = start_server(&p);
    let grpc = grpc_addr(&addr);
    let mut first = start_ops_agent(&grpc);
    wait_for("the first instance", || {
        agent_health(&p, &addr, "ops").is_some()
    });
    let before = cli_json(&p, &addr, &["agent", "get", "ops"]);
    let first_id = before["instances"][0]["instance_id"].clone();
    first.kill().unwrap();
    first.wait().unwrap();
    let mut second = start_ops_agent(&grpc);
    wait_for("only the second instance", || {
        let a = cli_json(&p, &addr, &["agent", "get", "ops"]);
        let instances = a["instances"].as_array().unwrap();
        instances.len() == 1 && instances[0]["instance_id"] != first_id
    });
    for i in 0..4 {
        let out = cli(&p, &addr)
            .args(["action", "invoke", "ops", "remember", "-p", "key=k"])
            .args(["-p", &format!("value={i}"), "-o", "json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "call {i} went to a live instance: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let _ = second.kill();
    let _ = second.wait();
    stop(&mut server);
}

/// A plugin listed under `[[plugins.external]]` (here one that does not register
/// itself) is dialled at start and called like any other.
#[test]
fn a_static_external_plugin_is_dialled_at_start() {
    let p = Plexus::new();
    let plugin_addr = free_addr();
    let mut cmd = Command::new(example("ops_agent"));
    cmd.env_clear()
        .env("MIRASTACK_PLUGIN_ADDR", &plugin_addr)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut plugin = cmd.spawn().unwrap();
    write_plugins_toml(
        &p,
        "30s",
        &format!("\n[[plugins.external]]\nname = \"ops\"\naddr = \"{plugin_addr}\"\n"),
    );
    let (mut server, addr) = start_server(&p);
    wait_for("the external plugin", || {
        agent_health(&p, &addr, "ops").as_deref() == Some("healthy")
    });
    let got = cli_json(&p, &addr, &["agent", "get", "ops"]);
    assert_eq!(got["instances"][0]["source"], "static", "{got}");
    assert_eq!(got["instances"][0]["addr"], plugin_addr.as_str());
    let run = cli_json(
        &p,
        &addr,
        &["action", "invoke", "ops", "wait", "-p", "seconds:=0"],
    );
    assert_eq!(step(&run, "invoke")["output"], json!({"waited": 0}));
    stop(&mut server);
    let _ = plugin.kill();
    let _ = plugin.wait();
}
