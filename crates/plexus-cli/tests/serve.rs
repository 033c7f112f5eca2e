//! `plexus serve` as a black box: HTTP over loopback, `kill -9` in the middle of several
//! runs, restart, and every run finishes with no step lost or completed twice; WebSocket
//! subscribers that reconnect from their last sequence see every event once.

mod common;
use common::server::*;
use common::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Follows one run over `/ws` from the start, reconnecting after a lost connection to the
/// next server address it is given, from the last sequence it saw. Returns the sequence
/// numbers of the events it received, in order, once the run has finished, and how many
/// connections that took.
fn ws_subscriber(
    run: String,
    addrs: mpsc::Receiver<String>,
    connected: mpsc::Sender<()>,
) -> std::thread::JoinHandle<(Vec<u64>, usize)> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut seen: Vec<u64> = Vec::new();
            let mut connections = 0;
            let mut addr = addrs.recv().expect("a first address");
            loop {
                let after = seen.last().copied().unwrap_or(0);
                let key = admin_key(&addr);
                let url = format!("ws://{addr}/ws?run={run}&after={after}&access_token={key}");
                if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await {
                    connections += 1;
                    connected.send(()).ok();
                    while let Some(Ok(msg)) = ws.next().await {
                        let Message::Text(text) = msg else { continue };
                        let v: Value = serde_json::from_str(&text).unwrap();
                        match v["type"].as_str() {
                            Some("event") => seen.push(v["event"]["seq"].as_u64().unwrap()),
                            Some("finished") => return (seen, connections),
                            _ => {}
                        }
                    }
                }
                // The server went away: wait for the next one (the test sends its address).
                addr = match addrs.try_recv() {
                    Ok(next) => next,
                    Err(mpsc::TryRecvError::Empty) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        addr
                    }
                    Err(mpsc::TryRecvError::Disconnected) => return (seen, connections),
                };
            }
        })
    })
}

#[test]
fn kill_9_during_several_runs_then_restart() {
    let p = Plexus::new();
    let effects = p.dir.path().join("effects.log");
    let (mut server, addr) = start_server(&p);
    let mut flow = String::from("version: plexus/v1\nname: chain\nsteps:\n");
    for i in 1..=5 {
        let needs = if i > 1 {
            format!("\n  needs: [s{}]", i - 1)
        } else {
            String::new()
        };
        flow.push_str(&format!(
            "- id: s{i}{needs}\n  run: |\n    echo \"$PLEXUS_RUN_ID $PLEXUS_STEP_ID\" >> {}\n    sleep 0.1\n",
            effects.display()
        ));
    }
    let (status, applied) = http_text(&addr, "POST", "/api/v1/workflows", &flow);
    assert_eq!(status, 201, "{applied}");

    let ids: Vec<String> = (0..4)
        .map(|_| {
            let (status, run) = http(
                &addr,
                "POST",
                "/api/v1/runs",
                Some(&json!({"workflow": "chain"})),
            );
            assert_eq!(status, 201, "{run}");
            run["id"].as_str().unwrap().to_owned()
        })
        .collect();
    let (connected_tx, connected) = mpsc::channel();
    let subscribers: Vec<_> = ids
        .iter()
        .map(|id| {
            let (tx, rx) = mpsc::channel();
            tx.send(addr.clone()).unwrap();
            (tx, ws_subscriber(id.clone(), rx, connected_tx.clone()))
        })
        .collect();
    // Every subscriber is connected before the crash.
    for _ in &ids {
        connected
            .recv_timeout(Duration::from_secs(10))
            .expect("a subscriber connects");
    }
    // In the middle of the runs: some steps have had their effect, not all.
    wait_for("a few steps to run", || {
        std::fs::read_to_string(&effects).is_ok_and(|l| l.lines().count() >= 2)
    });
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();

    let (mut server, addr) = start_server(&p);
    for (tx, _) in &subscribers {
        tx.send(addr.clone()).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &ids {
        loop {
            let (_, run) = http(&addr, "GET", &format!("/api/v1/runs/{id}"), None);
            if run["state"] == "succeeded" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "run {id} did not finish after the restart: {run}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let (_, events) = http(&addr, "GET", &format!("/api/v1/runs/{id}/events"), None);
        let events = events["events"].as_array().unwrap();
        for i in 1..=5 {
            let done = events
                .iter()
                .filter(|e| {
                    e["type"] == "step_succeeded" && e["step_id"] == format!("s{i}").as_str()
                })
                .count();
            assert_eq!(done, 1, "run {id}: s{i} succeeded {done} times");
        }
    }
    // Each subscriber saw every event of its run exactly once, in order, across the crash.
    for (id, (tx, sub)) in ids.iter().zip(subscribers) {
        drop(tx);
        let (seen, connections) = sub.join().unwrap();
        assert!(
            connections >= 2,
            "run {id}: the crash did not cut the subscriber off"
        );
        let (_, events) = http(&addr, "GET", &format!("/api/v1/runs/{id}/events"), None);
        let all: Vec<u64> = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seen, all, "run {id}: the WebSocket subscriber's events");
    }
    let log = std::fs::read_to_string(&effects).unwrap();
    for id in &ids {
        for i in 1..=5 {
            assert!(
                log.contains(&format!("{id} s{i}")),
                "side effect of {id}/s{i} missing"
            );
        }
    }
    // SIGTERM stops the server cleanly.
    stop(&mut server);
}

fn step_state(addr: &str, run: &str, step: &str) -> String {
    let (_, v) = http(addr, "GET", &format!("/api/v1/runs/{run}"), None);
    v["steps"].as_array().map_or(String::new(), |steps| {
        steps
            .iter()
            .find(|s| s["id"] == step)
            .map_or(String::new(), |s| {
                s["state"].as_str().unwrap_or("").to_owned()
            })
    })
}

fn started_attempts(addr: &str, run: &str, step: &str) -> Vec<u64> {
    let (_, events) = http(addr, "GET", &format!("/api/v1/runs/{run}/events"), None);
    events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "step_started" && e["step_id"] == step)
        .map(|e| e["attempt"].as_u64().unwrap())
        .collect()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM lets a running step finish within the grace period; what does not finish in
/// time is killed and runs again as a new attempt after the restart.
#[test]
fn sigterm_drains_running_steps_within_the_grace_period() {
    let p = Plexus::new();
    let flow = "version: plexus/v1\nname: drain\nsteps:\n- id: slow\n  run: |\n    if [ \"$PLEXUS_ATTEMPT\" = 1 ]; then sleep $NAP; fi\n    echo done\n  env: {NAP: '{{ inputs.nap }}'}\n- {id: next, needs: [slow], run: echo next}\ninputs: {nap: {type: string}}\n";
    for (grace, nap, attempts) in [("30s", "0.7", vec![1]), ("100ms", "20", vec![1, 2])] {
        let (mut server, addr) = start_server_with(&p, &["--shutdown-grace", grace]);
        let (status, applied) = http_text(&addr, "POST", "/api/v1/workflows", flow);
        assert!(status == 201 || status == 200, "{applied}");
        let (_, run) = http(
            &addr,
            "POST",
            "/api/v1/runs",
            Some(&json!({"workflow": "drain", "inputs": {"nap": nap}})),
        );
        let id = run["id"].as_str().unwrap().to_owned();
        wait_for("slow to run", || {
            step_state(&addr, &id, "slow") == "running"
        });
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: signalling the child we started.
        unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
        assert_eq!(
            wait_exit(&mut server, Duration::from_secs(20)),
            0,
            "grace {grace}"
        );
        let (mut server, addr) = start_server(&p);
        wait_for("the run to finish after the restart", || {
            http(&addr, "GET", &format!("/api/v1/runs/{id}"), None).1["state"] == "succeeded"
        });
        assert_eq!(
            started_attempts(&addr, &id, "slow"),
            attempts,
            "grace {grace}, step sleeping {nap}s"
        );
        stop(&mut server);
    }
}

/// The CLI as a client: `plexus init` saves the server; run, inspect, approve and
/// manage workflows through it.
#[test]
fn the_cli_drives_a_server() {
    let p = Plexus::new();
    let (mut server, addr) = start_server(&p);
    let url = format!("http://{addr}");
    let out = p.run(&["init", "--server", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Sign in with the bootstrap key: the session goes to the context file.
    let out = p.run(&["login", "--api-key", &admin_key(&addr)]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("as admin (admin)"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let context = p.dir.path().join("config/plexus/context.toml");
    let saved = std::fs::read_to_string(&context).unwrap();
    assert!(saved.contains("refresh_token"));
    // An access token about to expire is refreshed before the next command, and the new
    // tokens are saved.
    let expired = saved
        .lines()
        .map(|l| {
            if l.starts_with("expires_at") {
                "expires_at = 0"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&context, expired).unwrap();
    assert!(p.run(&["runs", "list"]).status.success());
    let refreshed = std::fs::read_to_string(&context).unwrap();
    assert!(!refreshed.contains("expires_at = 0"), "{refreshed}");
    assert_ne!(refreshed, saved);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&context).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let hello = examples().join("hello.yaml");
    let out = p.run(&[
        "run",
        hello.to_str().unwrap(),
        "-i",
        "who=server",
        "-o",
        "json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["state"], "succeeded");
    assert_eq!(
        run["outputs"]["message"]
            .as_str()
            .unwrap()
            .split(" (")
            .next(),
        Some("hello, server")
    );
    let id = run["id"].as_str().unwrap().to_owned();
    let listed = p.json(&["runs", "list"]);
    assert_eq!(listed[0]["id"], id.as_str());
    // The server logs JSON lines that carry the run's id.
    wait_for("the run's log lines", || {
        let log = std::fs::read_to_string(p.dir.path().join("serve.log")).unwrap_or_default();
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|l| l["fields"]["run"] == id.as_str() && l["fields"]["event"] == "run_succeeded")
    });
    let events = p.json(&["runs", "events", &id]);
    assert_eq!(events[0]["type"], "run_started");

    let gate = examples().join("approval-gate.yaml");
    let out = p.run(&["workflow", "apply", gate.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("approval-gate applied as version 1"));
    assert_eq!(p.json(&["workflow", "list"])[0]["name"], "approval-gate");
    let (_, started) = http(
        &addr,
        "POST",
        "/api/v1/runs",
        Some(&json!({"workflow": "approval-gate"})),
    );
    let gated = started["id"].as_str().unwrap().to_owned();
    wait_for("restart awaiting approval", || {
        step_state(&addr, &gated, "restart") == "awaiting_approval"
    });
    let out = p.run(&["approve", &gated, "restart", "-o", "json"]);
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["outcome"], "applied");
    let out = p.run(&["runs", "cancel", &gated]);
    assert!(out.status.success());

    let out = p.run(&["event", "emit", "nobody.listens", "--payload", "{\"a\": 1}"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("kept as a dead letter"));
    let bad = p.run(&[
        "workflow",
        "apply",
        examples().join("../README.md").to_str().unwrap(),
    ]);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "an invalid manifest is refused with its problems"
    );
    // `--server local` reads the store directly (here the server's own data dir): the
    // local listing has the `interrupted` field the API does not.
    let local = p.json(&["runs", "list", "--server", "local"]);
    assert!(local[0].get("interrupted").is_some(), "{local}");
    assert!(listed[0].get("interrupted").is_none());
    // What only exists on one side says where it does, instead of doing something else.
    let out = p.run(&["runs", "list", "--interrupted"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--server local"));
    let out = p.run(&["resume", &id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("resumes its interrupted runs itself"));
    let out = p.run(&["workflow", "list", "--server", "local"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("talks to a server"));
    let out = p.run(&["user", "list", "--server", "local"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("manages a server's users"));
    let dead = p.run(&["runs", "list", "--server", "http://127.0.0.1:9"]);
    assert!(String::from_utf8_lossy(&dead.stderr).contains("cannot reach the server"));

    // Schedules from the CLI; the server fires them by itself.
    let out = p.run(&[
        "schedule",
        "create",
        "approval-gate",
        "* * * * * *",
        "--name",
        "every-second",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("a scheduled run", || {
        let (_, runs) = http(&addr, "GET", "/api/v1/runs?workflow=approval-gate", None);
        runs["runs"].as_array().map_or(0, Vec::len) >= 2
    });
    assert!(
        p.run(&["schedule", "pause", "every-second"])
            .status
            .success()
    );
    assert_eq!(p.json(&["schedule", "list"])[0]["paused"], true);
    assert!(
        p.run(&["schedule", "delete", "every-second"])
            .status
            .success()
    );
    assert!(p.json(&["schedule", "list"]).as_array().unwrap().is_empty());

    stop(&mut server);
}

/// Users, keys, settings and the audit log from the CLI, against a real server.
#[test]
fn governance_from_the_cli() {
    let p = Plexus::new();
    let (mut server, addr) = start_server(&p);
    let url = format!("http://{addr}");
    let admin = admin_key(&addr);
    let as_key = |key: &str, args: &[&str]| {
        p.cmd()
            .args(["--server", &url])
            .args(args)
            .env("PLEXUS_API_KEY", key)
            .output()
            .unwrap()
    };
    let ok = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // A user with a password read from stdin, then a key for them.
    let mut create = p
        .cmd()
        .args([
            "--server", &url, "user", "create", "olga", "--role", "operator",
        ])
        .args(["--password-stdin"])
        .env("PLEXUS_API_KEY", &admin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    create
        .stdin
        .take()
        .unwrap()
        .write_all(b"olga's long password\n")
        .unwrap();
    let out = create.wait_with_output().unwrap();
    assert!(ok(&out).contains("olga: operator, active"));
    let users: Value =
        serde_json::from_str(&ok(&as_key(&admin, &["user", "list", "-o", "json"]))).unwrap();
    assert_eq!(users["users"].as_array().unwrap().len(), 2);
    let key: Value = serde_json::from_str(&ok(&as_key(
        &admin,
        &[
            "api-key", "create", "olga-ci", "--user", "olga", "-o", "json",
        ],
    )))
    .unwrap();
    let olga = key["secret"].as_str().unwrap().to_owned();

    // The seed engine's habits: a user made from an email signs in with it, and
    // settings keys take the dashed spelling.
    let with_stdin = |args: &[&str], env: Option<&str>, input: &[u8]| {
        let mut cmd = p.cmd();
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(key) = env {
            cmd.env("PLEXUS_API_KEY", key);
        }
        let mut child = cmd.spawn().unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = with_stdin(
        &[
            "--server",
            &url,
            "user",
            "create",
            "--email",
            "alice@example.com",
            "--role",
            "engineer",
            "--password-stdin",
        ],
        Some(&admin),
        b"alice's long password\n",
    );
    assert!(ok(&out).contains("alice@example.com: engineer, active"));
    let out = with_stdin(
        &[
            "login",
            "--url",
            &url,
            "-u",
            "Alice@Example.com",
            "--password-stdin",
        ],
        None,
        b"alice's long password\n",
    );
    assert!(ok(&out).contains("(engineer)"), "{}", ok(&out));
    ok(&as_key(
        &admin,
        &["settings", "set", "execution-mode", "guided"],
    ));
    let got = ok(&as_key(
        &admin,
        &["settings", "get", "execution_mode", "-o", "json"],
    ));
    assert!(got.contains("guided"), "{got}");
    ok(&as_key(&admin, &["settings", "unset", "execution-mode"]));

    // The operator reads but cannot change; the refusal says why.
    ok(&as_key(&olga, &["runs", "list"]));
    let hello = examples().join("hello.yaml");
    let denied = as_key(&olga, &["workflow", "apply", hello.to_str().unwrap()]);
    assert!(!denied.status.success());
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(
        err.contains("403") && err.contains("engineer role"),
        "{err}"
    );
    let denied = as_key(&olga, &["user", "list"]);
    assert!(String::from_utf8_lossy(&denied.stderr).contains("admin role"));

    // Settings: a secret is sealed and never printed again.
    let out = ok(&as_key(
        &admin,
        &["settings", "set", "providers.openai.api_key", "sk-cli-777"],
    ));
    assert!(
        out.contains("(secret, set)") && !out.contains("sk-cli-777"),
        "{out}"
    );
    ok(&as_key(
        &admin,
        &["settings", "set", "execution_mode", "guided"],
    ));
    let listed = ok(&as_key(&admin, &["settings", "list", "-o", "json"]));
    assert!(
        !listed.contains("sk-cli-777") && listed.contains("guided"),
        "{listed}"
    );
    let bad = as_key(&admin, &["settings", "set", "execution_mode", "reckless"]);
    assert!(!bad.status.success());

    // The audit log: intact, and it has what just happened.
    assert!(ok(&as_key(&olga, &["audit", "verify"])).contains("audit chain intact"));
    // The seed engine's form, flags together.
    let recent: Value = serde_json::from_str(&ok(&as_key(
        &olga,
        &[
            "audit",
            "list",
            "--last",
            "50",
            "--since",
            "2026-01-01",
            "--domain",
            "security",
            "-o",
            "json",
        ],
    )))
    .unwrap();
    let actions: Vec<&str> = recent["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for a in [
        "user.created",
        "api_key.created",
        "permission.denied",
        "setting.changed",
    ] {
        assert!(actions.contains(&a), "{a} missing: {actions:?}");
    }
    let export = as_key(&olga, &["audit", "export"]);
    assert!(!export.status.success(), "only admins export");
    let lines = ok(&as_key(&admin, &["audit", "export"]));
    assert!(lines.lines().count() >= actions.len());
    assert!(!lines.contains("sk-cli-777"));
    let log = std::fs::read_to_string(p.dir.path().join("serve.log")).unwrap_or_default();
    assert!(!log.contains("sk-cli-777"), "a secret reached the log");
    assert!(!log.contains(&olga), "an API key reached the log");

    // `plexus init --api-key` saves the credential with the server (0600), checked first.
    let bad = p.run(&["init", "--server", &url, "--api-key", "plx_0_nope"]);
    assert!(!bad.status.success(), "a refused key is not saved");
    let saved = p.run(&["init", "--server", &url, "--api-key", &olga]);
    assert!(ok(&saved).contains("as olga (operator)"));
    ok(&p.run(&["runs", "list"]));

    // Revoking the key stops it at once.
    let keys: Value = serde_json::from_str(&ok(&as_key(
        &admin,
        &["api-key", "list", "--all", "-o", "json"],
    )))
    .unwrap();
    let olga_key = keys["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "olga-ci")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(&as_key(&admin, &["api-key", "revoke", &olga_key]));
    assert!(!as_key(&olga, &["runs", "list"]).status.success());

    // Stopped, the data directory is verified offline.
    let (_, session) = http(
        &addr,
        "POST",
        "/api/v1/auth/login",
        Some(&json!({"api_key": admin})),
    );
    let old_token = session["access_token"].as_str().unwrap().to_owned();
    stop(&mut server);
    let offline = p.run(&["--server", "local", "audit", "verify"]);
    assert!(ok(&offline).contains("audit chain intact"));

    // Key rotation: the restarted server issues with the new key, and a token of the
    // old one still works.
    let rotated = ok(&p.run(&["token-keys", "rotate"]));
    assert!(rotated.contains("new token key"), "{rotated}");
    let (mut server, addr) = start_server(&p);
    let listed = p
        .cmd()
        .args(["--server", &format!("http://{addr}"), "runs", "list"])
        .env("PLEXUS_API_KEY", &old_token)
        .output()
        .unwrap();
    ok(&listed);
    let (_, fresh) = http(
        &addr,
        "POST",
        "/api/v1/auth/login",
        Some(&json!({"api_key": admin})),
    );
    let fresh = fresh["access_token"].as_str().unwrap();
    let footer = |t: &str| t.rsplit('.').next().unwrap().to_owned();
    assert_ne!(
        footer(fresh),
        footer(&old_token),
        "a new key id in the footer"
    );
    stop(&mut server);
}

/// `plexus serve --tls-cert --tls-key` serves HTTPS (and the WebSocket over it); the CLI
/// talks to it with `https://` URLs, trusting a private certificate through
/// PLEXUS_CA_CERT, and refuses a certificate it cannot verify.
#[test]
fn https_end_to_end() {
    let p = Plexus::new();
    // A private CA and a server certificate it signed, as a company would have.
    let d = p.dir.path();
    let (cert, key, ca) = (d.join("cert.pem"), d.join("key.pem"), d.join("ca.pem"));
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    for args in [
        vec!["req", "-x509"]
            .into_iter()
            .chain(ec)
            .chain([
                "-days",
                "2",
                "-subj",
                "/CN=test-ca",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ])
            .collect::<Vec<_>>(),
        vec!["req"]
            .into_iter()
            .chain(ec)
            .chain([
                "-subj",
                "/CN=localhost",
                "-keyout",
                "key.pem",
                "-out",
                "leaf.csr",
            ])
            .collect(),
        vec![
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "cert.pem",
        ],
    ] {
        let made = std::process::Command::new("openssl")
            .args(&args)
            .current_dir(d)
            .output()
            .expect("openssl makes the test certificates");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
    }

    // A certificate without its key stops start-up with a message that names it.
    let half = serve_command(&p)
        .arg("--tls-cert")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(!half.status.success());
    assert!(String::from_utf8_lossy(&half.stderr).contains("tls_key"));

    let (mut server, addr) = start_server_with(
        &p,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let url = format!("https://{addr}");
    let cli = |args: &[&str], trust: bool| {
        let mut c = p.cmd();
        c.args(["--server", &url]).args(args);
        if trust {
            c.env("PLEXUS_CA_CERT", &ca);
        }
        c.output().unwrap()
    };
    let untrusted = cli(&["login", "--api-key", &admin_key(&addr)], false);
    assert!(!untrusted.status.success());
    assert!(
        String::from_utf8_lossy(&untrusted.stderr).contains("PLEXUS_CA_CERT"),
        "{}",
        String::from_utf8_lossy(&untrusted.stderr)
    );
    let login = cli(&["login", "--api-key", &admin_key(&addr)], true);
    assert!(
        login.status.success(),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );
    assert!(String::from_utf8_lossy(&login.stdout).contains(&format!("logged in to {url}")));
    // A run followed live over wss://.
    let hello = examples().join("hello.yaml");
    let out = cli(
        &[
            "run",
            hello.to_str().unwrap(),
            "-i",
            "who=tls",
            "-o",
            "json",
        ],
        true,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["state"], "succeeded");
    // gRPC on its port over TLS too (HTTP/2), with the same certificate and credential.
    let grpc = GRPC.lock().unwrap()[&addr].clone();
    let runs = grpc_list_over_tls(&grpc, &ca, &admin_key(&addr));
    assert!(runs >= 1, "the run above is listed over gRPC");
    // Plain HTTP to the TLS port gets no answer.
    let mut plain = TcpStream::connect(&addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = write!(plain, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut answer = String::new();
    let _ = plain.read_to_string(&mut answer);
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    stop(&mut server);
}

/// Lists runs through the JobService over TLS, trusting `ca`; returns how many.
fn grpc_list_over_tls(addr: &str, ca: &std::path::Path, key: &str) -> usize {
    use plexus_server::grpc::pb;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let addr = addr.to_owned();
        let channel = tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_| {
                let (connector, addr) = (connector.clone(), addr.clone());
                async move {
                    let tcp = tokio::net::TcpStream::connect(addr).await?;
                    let name = ServerName::try_from("localhost").unwrap();
                    let tls = connector.connect(name, tcp).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
                }
            }))
            .await
            .expect("a TLS gRPC channel");
        let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {key}").parse().unwrap();
        let mut client = pb::job_service_client::JobServiceClient::with_interceptor(
            channel,
            move |mut req: tonic::Request<()>| {
                req.metadata_mut().insert("authorization", bearer.clone());
                Ok(req)
            },
        );
        client
            .list(pb::ListRequest {
                limit: 10,
                ..Default::default()
            })
            .await
            .expect("List over TLS")
            .into_inner()
            .runs
            .len()
    })
}
