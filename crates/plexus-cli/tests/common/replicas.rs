//! Replicas of `plexus serve` on one PostgreSQL database, for the replica and chaos tests.

use super::Plexus;
use super::server::*;
use serde_json::Value;
use std::time::{Duration, Instant};

pub fn fresh_database() -> String {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(plexus_store::test_postgres::fresh_database())
}

/// A replica's data directory, with short leases so that takeovers happen within a test.
pub fn replica_dir() -> Plexus {
    let p = Plexus::new();
    std::fs::write(
        p.dir.path().join("plexus.toml"),
        "[leases]\nduration = \"3s\"\nrenew_every = \"1s\"\n",
    )
    .unwrap();
    p
}

/// Starts a replica on `url`; the first one bootstraps the admin, the others use its key.
pub fn start_replica(
    p: &Plexus,
    url: &str,
    first: Option<&Plexus>,
) -> (std::process::Child, String) {
    if let Some(first) = first {
        std::fs::copy(
            first.dir.path().join("admin.key"),
            p.dir.path().join("admin.key"),
        )
        .unwrap();
    }
    start_server_with(p, &["--database-url", url])
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

pub fn run_state(addr: &str, id: &str) -> Value {
    http(addr, "GET", &format!("/api/v1/runs/{id}"), None).1
}

pub fn step_status(run: &Value, step: &str) -> String {
    run["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["id"] == step || s["step_id"] == step)
        .and_then(|s| s["status"].as_str().or(s["state"].as_str()))
        .unwrap_or_default()
        .to_owned()
}
