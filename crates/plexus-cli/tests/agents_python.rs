//! An agent written with the published Python SDK from PyPI (`mirastack-agents-sdk`
//! 1.11.0, unmodified, in a venv) against a real `plexus serve`: what works as it is, and
//! the whole path once the SDK's two defects are mended inside the agent
//! (`tests/agents_python/hosts_agent.py` says how).

mod common;
use common::agents::*;
use common::server::*;
use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SDK: &str = "mirastack-agents-sdk==1.11.0";

/// A venv with the Python SDK.
fn sdk_python() -> PathBuf {
    venv_python("mirastack_sdk", SDK)
}

fn agent_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/agents_python/hosts_agent.py")
}

fn start_python_agent(grpc: &str, mend: bool, restarts: &Path) -> Child {
    let mut cmd = Command::new(sdk_python());
    cmd.arg(agent_script())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MIRASTACK_ENGINE_ADDR", grpc)
        .env("MIRASTACK_PLUGIN_TENANT_SLUG", "default")
        .env("MIRASTACK_PLUGIN_ADDR", "127.0.0.1:0")
        .env("MIRASTACK_PLUGIN_HEARTBEAT_INTERVAL", "1")
        .env("RESTARTS_FILE", restarts)
        .env("MEND_SDK", if mend { "1" } else { "0" })
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl only marks the child to die with the test's thread.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("python starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("MIRASTACK_PLUGIN_PORT="), "{line}");
    child
}

fn hosts(p: &Plexus, addr: &str) -> Option<Value> {
    cli_json(p, addr, &["agent", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "hosts")
        .cloned()
}

fn server(p: &Plexus) -> (Child, String, String) {
    std::fs::write(
        p.dir.path().join("plexus.toml"),
        "[plugins]\nhealth_check_interval = \"1s\"\nregistration_grace = \"0s\"\n",
    )
    .unwrap();
    let (server, addr) = start_server(p);
    let grpc = grpc_addr(&addr);
    (server, addr, grpc)
}

/// The unmodified SDK: registration (from Info alone: its GetSchema cannot answer),
/// heartbeats, health and deregistration work; its Execute fails inside the SDK, and
/// the step fails at once with the SDK's own message — it never hangs.
#[test]
fn the_published_python_sdk_registers_and_fails_its_calls_promptly() {
    let p = Plexus::new();
    let (mut server, addr, grpc) = server(&p);
    let mut agent = start_python_agent(&grpc, false, &p.dir.path().join("restarts"));
    wait_for("the Python agent to register", || {
        hosts(&p, &addr).is_some_and(|h| h["health"] == "healthy")
    });
    let h = hosts(&p, &addr).unwrap();
    assert_eq!(h["version"], "1.0.0");
    assert_eq!(h["permission"], "modify");
    let actions: Vec<(&str, &str)> = h["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["id"].as_str().unwrap(), a["permission"].as_str().unwrap()))
        .collect();
    assert_eq!(actions, [("lookup", "read"), ("restart", "modify")]);
    // Heartbeats keep it seen and healthy.
    std::thread::sleep(Duration::from_secs(4));
    let got = cli_json(&p, &addr, &["agent", "get", "hosts"]);
    assert_eq!(got["health"], "healthy", "{got}");
    assert!(
        got["instances"][0]["seconds_since_seen"].as_u64().unwrap() <= 2,
        "{got}"
    );

    let started = Instant::now();
    let out = cli(&p, &addr)
        .args([
            "action",
            "invoke",
            "hosts",
            "lookup",
            "-p",
            "host=web1",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(10));
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = run["steps"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("'ExecuteRequest' object has no attribute 'get'"),
        "the SDK's own message: {error}"
    );

    // SIGTERM: the SDK deregisters before it exits.
    // SAFETY: signalling the agent this test started.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    wait_exit(&mut agent, Duration::from_secs(15));
    assert!(hosts(&p, &addr).is_none(), "deregistered");
    stop(&mut server);
}

/// With the SDK's two defects mended inside the agent, the Python wire shapes (plain
/// `application/grpc`, bytes as raw JSON text) work both ways: a workflow calls both
/// actions with parameters, the MODIFY one waits for approval and runs once, and the
/// agent's RequestApproval, LogEvent and GetConfig callbacks work.
#[test]
fn a_python_agent_with_the_sdk_mended_runs_the_whole_path() {
    let p = Plexus::new();
    let (mut server, addr, grpc) = server(&p);
    let restarts = p.dir.path().join("restarts");
    let mut agent = start_python_agent(&grpc, true, &restarts);
    wait_for("the Python agent to register", || {
        hosts(&p, &addr).is_some()
    });
    let out = cli(&p, &addr)
        .args(["agent", "config-set", "hosts", "region", "eu-west-1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let flow = p.dir.path().join("hosts.yaml");
    std::fs::write(
        &flow,
        r#"version: plexus/v1
name: restart-host
inputs:
  host: {type: string}
steps:
  - id: lookup
    agent: hosts
    action: lookup
    with: {host: "{{ inputs.host }}"}
  - id: restart
    agent: hosts
    action: restart
    needs: [lookup]
    with: {host: "{{ inputs.host }}"}
"#,
    )
    .unwrap();
    let runner = cli(&p, &addr)
        .args([
            "run",
            flow.to_str().unwrap(),
            "-i",
            "host=web1",
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The step's gate (its action is MODIFY), then the agent's own request.
    approve_when_asked(&p, &addr, Some("restart"), Some("agent"));
    assert!(!restarts.exists(), "nothing happens before the approval");
    approve_when_asked(&p, &addr, Some("restart"), Some("agent_request"));
    let run = finish_run(runner, 0);
    let output = |id: &str| {
        run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .unwrap()["output"]
            .clone()
    };
    assert_eq!(
        output("lookup"),
        json!({"host": "web1", "rack": "r7", "mode": 1})
    );
    assert_eq!(
        output("restart"),
        json!({"host": "web1", "restarted": true, "region": "eu-west-1"}),
        "GetConfig reached the agent"
    );
    assert_eq!(
        std::fs::read_to_string(&restarts).unwrap(),
        "web1\n",
        "restarted once"
    );
    let (_, audit) = http(&addr, "GET", "/api/v1/audit?limit=1000", None);
    let text = audit.to_string();
    for action in [
        "agent.event.host_restarted",
        "agent.approval_requested",
        "agent.approval_approved",
    ] {
        assert!(text.contains(&format!("\"{action}\"")), "{action}: {text}");
    }
    assert!(
        text.contains("\\\"host\\\":\\\"web1\\\""),
        "LogEvent's fields: {text}"
    );
    let _ = agent.kill();
    let _ = agent.wait();
    stop(&mut server);
}
