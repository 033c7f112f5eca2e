//! A full disk stops the run with a clear message and loses nothing: once there is room
//! again, `plexus resume` finishes it with no step completed twice. Uses a small tmpfs
//! (needs root, as CI has; set PLEXUS_SKIP_DISK_FULL=1 to skip on a machine without).

mod common;
use common::server::*;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A tmpfs of `size` on `data`, or `None` when the test is skipped.
fn small_disk(data: &std::path::Path, size: &str) -> Option<Mount> {
    if std::env::var_os("PLEXUS_SKIP_DISK_FULL").is_some() {
        eprintln!("skipped by PLEXUS_SKIP_DISK_FULL");
        return None;
    }
    std::fs::create_dir_all(data).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(data)
        .status()
        .map(|s| s.success());
    assert_eq!(
        ok.ok(),
        Some(true),
        "mounting a tmpfs needs root (set PLEXUS_SKIP_DISK_FULL=1 to skip this test)"
    );
    Some(Mount(data.to_owned()))
}

/// Ten steps one after another, each printing 300 KB (kept as its output).
fn big_flow() -> String {
    let mut y = String::from("version: plexus/v1\nname: big\nsteps:\n");
    for i in 0..10 {
        let needs = if i > 0 {
            format!("\n    needs: [s{}]", i - 1)
        } else {
            String::new()
        };
        y.push_str(&format!(
            "  - id: s{i}{needs}\n    run: head -c 300000 /dev/zero | tr '\\0' y\n"
        ));
    }
    y
}

/// `plexus serve` on a disk that fills up: its engine stops driving runs, `/healthz` says
/// so (and keeps saying so, even once there is room again, until the server is
/// restarted), and after a restart with room the run finishes with every step once.
#[test]
fn a_server_whose_disk_fills_reports_its_engine_stopped_until_restarted() {
    let p = Plexus::new();
    let data = p.data_dir();
    let Some(_mount) = small_disk(&data, "4m") else {
        return;
    };
    let (mut server, addr) = start_server(&p);
    let (status, v) = http_text(&addr, "POST", "/api/v1/workflows", &big_flow());
    assert_eq!(status, 201, "{v}");
    let (status, run) = http(
        &addr,
        "POST",
        "/api/v1/runs",
        Some(&serde_json::json!({"workflow": "big"})),
    );
    assert_eq!(status, 201, "{run}");
    let run = run["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    let health = loop {
        let (status, health) = http(&addr, "GET", "/healthz", None);
        if status == 503 && health["engine"]["state"] == "stopped" {
            break health;
        }
        assert!(
            Instant::now() < deadline,
            "the engine never stopped: {health}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let reason = health["engine"]["reason"].as_str().unwrap();
    assert!(reason.contains("out of space"), "{health}");
    // Room again: the engine that stopped stays stopped, and says so.
    let remount = Command::new("mount")
        .args(["-o", "remount,size=30m"])
        .arg(&data)
        .status()
        .unwrap();
    assert!(remount.success());
    let (status, health) = http(&addr, "GET", "/healthz", None);
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["engine"]["state"], "stopped", "{health}");
    server.kill().unwrap();
    server.wait().unwrap();

    // Restarted, it resumes the run and finishes it, each step once.
    let (mut server, addr) = start_server(&p);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = http(&addr, "GET", &format!("/api/v1/runs/{run}"), None);
        if v["state"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "the run did not finish: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, events) = http(&addr, "GET", &format!("/api/v1/runs/{run}/events"), None);
    for i in 0..10 {
        let done = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "step_succeeded" && e["step_id"] == format!("s{i}").as_str())
            .count();
        assert_eq!(done, 1, "s{i} succeeded {done} times");
    }
    let (status, health) = http(&addr, "GET", "/healthz", None);
    assert_eq!(status, 200, "{health}");
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn a_full_disk_stops_cleanly_and_the_run_resumes_after() {
    let p = Plexus::new();
    let data = p.data_dir();
    let Some(_mount) = small_disk(&data, "1500k") else {
        return;
    };
    let flow = p.dir.path().join("big.yaml");
    std::fs::write(&flow, big_flow()).unwrap();

    let out = p.run(&["run", flow.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the database is full or the disk is out of space"),
        "{err}"
    );
    assert!(
        err.contains("plexus resume"),
        "the message says how to continue: {err}"
    );

    let remount = Command::new("mount")
        .args(["-o", "remount,size=30m"])
        .arg(&data)
        .status()
        .unwrap();
    assert!(remount.success());
    let run = p.json(&["runs", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = p.run(&["resume", &run]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = p.events(&run);
    for i in 0..10 {
        let done = events
            .iter()
            .filter(|e| e["type"] == "step_succeeded" && e["step_id"] == format!("s{i}").as_str())
            .count();
        assert_eq!(done, 1, "s{i} succeeded {done} times");
    }
}
