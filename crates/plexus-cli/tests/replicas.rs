//! Several `plexus serve` replicas on one PostgreSQL database, as black boxes: any replica
//! serves any request — a run started on one is approved through another, and followed
//! over the other's WebSocket with every event in order — and when a replica is killed,
//! another takes its runs over and finishes them.

mod common;
use common::replicas::*;
use common::server::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Applies [`slow_flow`] and starts a run of it on `addr`; returns once its step `wait`
/// runs, as `watch` sees it.
fn start_slow_run(addr: &str, watch: &str, marks: &std::path::Path, secs: u32) -> String {
    let (status, _) = http_text(addr, "POST", "/api/v1/workflows", &slow_flow(marks, secs));
    assert!(status < 300);
    let (_, run) = http(
        addr,
        "POST",
        "/api/v1/runs",
        Some(&json!({"workflow": "slow"})),
    );
    let id = run["id"].as_str().unwrap().to_owned();
    wait_for("step `wait` to run", Duration::from_secs(20), || {
        step_status(&run_state(watch, &id), "wait") == "running"
    });
    id
}

/// Steps `one`, `wait` (sleeping `secs`) and `two`; `one` and `two` leave a line in
/// `marks` each time they run.
fn slow_flow(marks: &std::path::Path, secs: u32) -> String {
    format!(
        "version: plexus/v1\nname: slow\nsteps:\n- {{id: one, run: 'echo one >> {m}'}}\n- {{id: wait, needs: [one], run: 'sleep {secs}'}}\n- {{id: two, needs: [wait], run: 'echo two >> {m}'}}\n",
        m = marks.display()
    )
}

/// Follows a run over one replica's WebSocket until `finished`; returns the sequence
/// numbers it saw.
fn follow(addr: String, run: String) -> std::thread::JoinHandle<Vec<u64>> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let url = format!("ws://{addr}/ws?run={run}&access_token={}", admin_key(&addr));
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.expect("ws");
            let mut seen = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let msg = tokio::time::timeout_at(deadline, ws.next())
                    .await
                    .expect("the run finished within a minute");
                let Some(Ok(Message::Text(text))) = msg else {
                    panic!("the stream ended before `finished`: {msg:?}");
                };
                let v: Value = serde_json::from_str(&text).unwrap();
                match v["type"].as_str() {
                    Some("event") => seen.push(v["event"]["seq"].as_u64().unwrap()),
                    Some("finished") => return seen,
                    _ => {}
                }
            }
        })
    })
}

#[test]
fn replicas_share_every_run_and_take_over_a_dead_ones() {
    let url = fresh_database();
    let (pa, pb) = (replica_dir(), replica_dir());
    let (mut a, addr_a) = start_replica(&pa, &url, None);
    let (mut b, addr_b) = start_replica(&pb, &url, Some(&pa));
    wait_for(
        "both replicas to be listed",
        Duration::from_secs(20),
        || {
            let (_, v) = http(&addr_b, "GET", "/api/v1/replicas", None);
            v["replicas"]
                .as_array()
                .is_some_and(|r| r.len() == 2 && r.iter().all(|r| r["alive"] == true))
        },
    );

    // A run started on A, gated by an approval given through B, followed on B.
    let flow = "version: plexus/v1\nname: gated\nsteps:\n- {id: gate, approval: {message: ok?}}\n- {id: after, needs: [gate], run: echo done}\n";
    let (status, _) = http_text(&addr_a, "POST", "/api/v1/workflows", flow);
    assert!(status < 300, "applied: {status}");
    let (status, run) = http(
        &addr_a,
        "POST",
        "/api/v1/runs",
        Some(&json!({"workflow": "gated"})),
    );
    assert!(status < 300, "{status} {run}");
    let id = run["id"].as_str().unwrap().to_owned();
    let watcher = follow(addr_b.clone(), id.clone());
    wait_for(
        "the gate to wait, as B sees it",
        Duration::from_secs(20),
        || step_status(&run_state(&addr_b, &id), "gate") == "awaiting_approval",
    );
    let (status, v) = http(
        &addr_b,
        "POST",
        &format!("/api/v1/runs/{id}/steps/gate/approve"),
        Some(&json!({"comment": "from the other replica"})),
    );
    assert_eq!(
        (status, v["outcome"].as_str()),
        (202, Some("recorded")),
        "{v}"
    );
    wait_for("the run to succeed on A", Duration::from_secs(20), || {
        run_state(&addr_a, &id)["state"] == "succeeded"
    });
    let seen = watcher.join().expect("B's follower saw the run end");
    let all: Vec<u64> = (1..=seen.len() as u64).collect();
    assert_eq!(
        seen, all,
        "every event once, in order, on the replica that does not drive it"
    );

    // The same event posted to both replicas at once starts one run; an event without
    // a dedupe key starts one run wherever it is posted.
    let on_event =
        "version: plexus/v1\nname: on-deploy\non: [deploy.done]\nsteps: [{id: a, builtin: noop}]\n";
    let (status, _) = http_text(&addr_b, "POST", "/api/v1/workflows", on_event);
    assert!(status < 300, "applied: {status}");
    let keys = ["d-1", "d-2", "d-3", "d-4", "d-5"];
    let posts: Vec<_> = keys
        .iter()
        .flat_map(|key| [addr_a.clone(), addr_b.clone()].map(|addr| (addr, key.to_string())))
        .map(|(addr, key)| {
            std::thread::spawn(move || {
                let event = json!({"type": "deploy.done", "dedupe_key": key});
                http(&addr, "POST", "/api/v1/events", Some(&event))
            })
        })
        .collect();
    let mut started = 0;
    for post in posts {
        let (status, v) = post.join().unwrap();
        assert!(status == 202 || status == 200, "{status} {v}");
        if v["duplicate"] == false {
            started += v["runs"].as_array().unwrap().len();
        }
    }
    let (status, v) = http(
        &addr_b,
        "POST",
        "/api/v1/events",
        Some(&json!({"type": "deploy.done"})),
    );
    assert_eq!(
        (status, v["runs"].as_array().map(Vec::len)),
        (202, Some(1)),
        "{v}"
    );
    let (_, listed) = http(
        &addr_a,
        "GET",
        "/api/v1/runs?workflow=on-deploy&limit=100",
        None,
    );
    let runs = listed["runs"].as_array().expect("a list of runs");
    assert_eq!(
        (started, runs.len()),
        (keys.len(), keys.len() + 1),
        "one run per event, whichever replica each post reached: {listed}"
    );

    // A replica is killed in the middle of a run: the other takes it over and ends it.
    let marks = pa.dir.path().join("marks.log");
    let slow = start_slow_run(&addr_a, &addr_b, &marks, 2);
    let killed = Instant::now();
    // SAFETY: killing the child this test started.
    unsafe { libc::kill(a.id() as i32, libc::SIGKILL) };
    let _ = a.wait();
    wait_for("B to finish A's run", Duration::from_secs(30), || {
        run_state(&addr_b, &slow)["state"] == "succeeded"
    });
    let took = killed.elapsed();
    // Takeover within two lease durations, plus the step itself.
    assert!(took < Duration::from_secs(2 * 3 + 2 + 3), "took {took:?}");
    let log = std::fs::read_to_string(&marks).unwrap();
    assert_eq!(log, "one\ntwo\n", "no completed step ran twice");
    let (_, v) = http(&addr_b, "GET", "/api/v1/replicas", None);
    let replicas = v["replicas"].as_array().unwrap();
    let me = v["self"].as_str().unwrap();
    assert!(
        replicas
            .iter()
            .any(|r| r["id"] != me && r["alive"] == false),
        "the killed replica shows as silent: {v}"
    );
    let out = pb.run(&["replica", "list", "--database-url", &url]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("alive") && table.contains("silent"),
        "{table}"
    );
    stop(&mut b);
}

/// A replica paused (SIGSTOP) past its lease loses its run to another replica, which
/// finishes it; when it is resumed (SIGCONT) it can write nothing more to that run — its
/// commits name a fencing token the run has moved past — and it says so on /healthz.
#[test]
fn a_paused_replica_past_its_lease_writes_nothing_after_the_takeover() {
    let url = fresh_database();
    let (pa, pb) = (replica_dir(), replica_dir());
    let (mut a, addr_a) = start_replica(&pa, &url, None);
    let (mut b, addr_b) = start_replica(&pb, &url, Some(&pa));
    let marks = pa.dir.path().join("marks.log");
    let id = start_slow_run(&addr_a, &addr_b, &marks, 1);
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(a.id() as i32, libc::SIGSTOP) };
    wait_for(
        "B to take the run over and finish it",
        Duration::from_secs(30),
        || run_state(&addr_b, &id)["state"] == "succeeded",
    );
    let events_after_b = http(&addr_b, "GET", &format!("/api/v1/runs/{id}/events"), None).1;
    // SAFETY: as above.
    unsafe { libc::kill(a.id() as i32, libc::SIGCONT) };
    // A wakes up with step `wait` done in its memory, and tries to write it: refused,
    // it stops and says why. (Paused in the middle of a commit instead, its session was
    // ended by PostgreSQL: it suspends and takes up what is still its own, nothing.)
    let resumed = Instant::now();
    wait_for("A to find it lost the run", Duration::from_secs(20), || {
        let (status, v) = http(&addr_a, "GET", "/healthz", None);
        (status == 503 && v.to_string().contains("taken over"))
            || v["engine"]["state"] == "suspended"
            || (status == 200 && resumed.elapsed() > Duration::from_secs(5))
    });
    std::thread::sleep(Duration::from_millis(500));
    let events_now = http(&addr_b, "GET", &format!("/api/v1/runs/{id}/events"), None).1;
    assert_eq!(
        events_now, events_after_b,
        "nothing was written after the takeover"
    );
    let log = std::fs::read_to_string(&marks).unwrap();
    assert_eq!(log, "one\ntwo\n", "step two ran once, on B");
    let succeeded = events_now["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "step_succeeded" && e["step_id"] == "wait")
        .count();
    assert_eq!(succeeded, 1, "`wait` succeeded once: {events_now}");
    // SAFETY: as above.
    unsafe { libc::kill(a.id() as i32, libc::SIGKILL) };
    let _ = a.wait();
    stop(&mut b);
}

/// A PostgreSQL server of the test's own (it is stopped and started again).
struct OwnPostgres {
    dir: tempfile::TempDir,
}

impl OwnPostgres {
    fn script() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres")
    }

    fn start(&self) -> String {
        let out = std::process::Command::new(Self::script())
            .args(["start", self.dir.path().to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn stop(&self) {
        let out = std::process::Command::new(Self::script())
            .args(["stop", self.dir.path().to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A replica whose database goes away stops taking work and keeps nothing half-done
/// (`/healthz` says why); when the database is back it takes its runs up again from
/// their last durable step and finishes them, and serves as before.
#[test]
fn a_replica_that_loses_its_database_recovers_when_it_returns() {
    let pg = OwnPostgres {
        dir: tempfile::tempdir().unwrap(),
    };
    let url = pg.start();
    let p = replica_dir();
    let (mut server, addr) = start_replica(&p, &url, None);
    let marks = p.dir.path().join("marks.log");
    let id = start_slow_run(&addr, &addr, &marks, 2);
    pg.stop();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, health) = http(&addr, "GET", "/healthz", None);
        if status == 503 && health["engine"]["state"] == "suspended" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz never said the store is away; last: {health}\n{}",
            std::fs::read_to_string(p.dir.path().join("serve.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, _) = http(
        &addr,
        "POST",
        "/api/v1/runs",
        Some(&json!({"workflow": "slow"})),
    );
    assert!(status >= 500, "no work is taken meanwhile: {status}");
    assert_eq!(pg.start(), url, "the database comes back where it was");
    wait_for("/healthz to be well again", Duration::from_secs(30), || {
        http(&addr, "GET", "/healthz", None).0 == 200
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while run_state(&addr, &id)["state"] != "succeeded" {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(p.dir.path().join("serve.log")).unwrap_or_default();
            panic!("the run did not finish: {}\n{log}", run_state(&addr, &id));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(&marks).unwrap();
    assert_eq!(log, "one\ntwo\n", "nothing durable ran again");
    let (status, _) = http(
        &addr,
        "POST",
        "/api/v1/runs",
        Some(&json!({"workflow": "slow"})),
    );
    assert!(status < 300, "it takes work again: {status}");
    stop(&mut server);
}
