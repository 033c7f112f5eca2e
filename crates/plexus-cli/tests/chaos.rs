//! Chaos, black box: three `plexus serve` replicas on one PostgreSQL database run a mix of
//! workflows — chains, fan-outs, retries, timers, approvals, signals, a schedule — while
//! replicas are killed (`kill -9`) and paused past their leases (SIGSTOP, then SIGCONT)
//! at moments a seeded generator picks. The test plays the supervisor: a replica that
//! died or stopped is started again. Afterwards every run has ended successfully, every
//! run's events are whole (sequence 1..n, no gap), no step succeeded twice, no schedule
//! tick started two runs, and the audit chain verifies.
//!
//! Short here (`PLEXUS_CHAOS_RUNS`, default 60; `PLEXUS_CHAOS_SEED`, default 17); longer
//! by `scripts/chaos` (300 runs).

mod common;
use common::replicas::*;
use common::server::*;
use common::*;
use serde_json::{Value, json};
use std::process::Child;
use std::time::{Duration, Instant};

/// A small seeded generator (xorshift64*): the same seed, the same chaos.
struct Chance(u64);

impl Chance {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const WORKFLOWS: &[(&str, &str)] = &[
    (
        "chain",
        "version: plexus/v1\nname: chain\nsteps:\n- {id: a, run: 'echo a'}\n- {id: b, needs: [a], run: 'sleep 0.3'}\n- {id: c, needs: [b], run: 'echo c'}\n",
    ),
    (
        "fanout",
        "version: plexus/v1\nname: fanout\nsteps:\n- {id: p1, run: 'sleep 0.2'}\n- {id: p2, run: 'sleep 0.2'}\n- {id: p3, run: 'echo 3'}\n- {id: p4, builtin: noop}\n- {id: join, needs: [p1, p2, p3, p4], run: 'echo joined'}\n",
    ),
    (
        "retry",
        "version: plexus/v1\nname: retry\nsteps:\n- id: flaky\n  run: '[ \"$PLEXUS_ATTEMPT\" -ge 2 ] || exit 1'\n  retry: {max_attempts: 5, backoff: 100ms}\n- {id: after, needs: [flaky], run: 'echo ok'}\n",
    ),
    (
        "timer",
        "version: plexus/v1\nname: timer\nsteps:\n- {id: nap, wait: {timer: 2s}}\n- {id: after, needs: [nap], run: 'echo woke'}\n",
    ),
    (
        "approval",
        "version: plexus/v1\nname: approval\nsteps:\n- {id: gate, approval: {message: go?}}\n- {id: after, needs: [gate], run: 'echo approved'}\n",
    ),
    (
        "signal",
        "version: plexus/v1\nname: signal\nsteps:\n- {id: sig, wait: {signal: go}}\n- {id: after, needs: [sig], run: 'echo signalled'}\n",
    ),
];

/// A workflow fired by a schedule every minute, to count its ticks.
const TICK: &str =
    "version: plexus/v1\nname: tick\nschedule: '* * * * *'\nsteps:\n- {id: a, builtin: noop}\n";

struct Replica {
    dir: Plexus,
    child: Option<Child>,
    addr: String,
}

impl Replica {
    fn start(&mut self, url: &str) {
        let (child, addr) = start_server_with(&self.dir, &["--database-url", url]);
        self.child = Some(child);
        self.addr = addr;
    }

    fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: signalling a child this test started.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// Whether it answers `/healthz` with 200 (a stopped engine answers 503).
    fn healthy(&self) -> bool {
        self.child.is_some()
            && ask(&self.addr, "GET", "/healthz", None).is_some_and(|(s, _)| s == 200)
    }
}

/// A request to a replica that may be dead or paused: `None` instead of a panic.
fn ask(addr: &str, method: &str, path: &str, body: Option<&Value>) -> Option<(u16, Value)> {
    try_http(addr, method, path, body, Duration::from_secs(3)).ok()
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn three_replicas_survive_kills_and_pauses() {
    let seed = env_or("PLEXUS_CHAOS_SEED", 17);
    let runs = env_or("PLEXUS_CHAOS_RUNS", 60) as usize;
    let mut chance = Chance(seed.max(1));
    let url = fresh_database();
    let first = replica_dir();
    let (child, addr) = start_replica(&first, &url, None);
    let mut replicas = vec![Replica {
        dir: first,
        child: Some(child),
        addr,
    }];
    for _ in 0..2 {
        let dir = replica_dir();
        let (child, addr) = start_replica(&dir, &url, Some(&replicas[0].dir));
        replicas.push(Replica {
            dir,
            child: Some(child),
            addr,
        });
    }
    for (_, flow) in WORKFLOWS.iter().chain([&("tick", TICK)]) {
        let (status, v) = http_text(&replicas[0].addr, "POST", "/api/v1/workflows", flow);
        assert!(status < 300, "{status} {v}");
    }

    // Runs started on replicas in turn, while the chaos goes on.
    let mut ids: Vec<(String, &str)> = Vec::new();
    let started = Instant::now();
    let mut next_chaos = Instant::now() + Duration::from_millis(500 + chance.below(1500));
    let mut paused: Option<(usize, Instant)> = None;
    let mut down: Option<(usize, Instant)> = None;
    let mut events = Vec::new();
    let deadline = started + Duration::from_secs(240);
    loop {
        assert!(
            Instant::now() < deadline,
            "the chaos did not settle: {events:?}"
        );
        // Start the next run on some live replica.
        if ids.len() < runs {
            let (name, _) = WORKFLOWS[ids.len() % WORKFLOWS.len()];
            let live: Vec<usize> = (0..3).filter(|&i| replicas[i].healthy()).collect();
            if let Some(&i) = live.get(chance.below(live.len() as u64) as usize) {
                let started = ask(
                    &replicas[i].addr,
                    "POST",
                    "/api/v1/runs",
                    Some(&json!({"workflow": name})),
                );
                if let Some((201, run)) = started {
                    ids.push((run["id"].as_str().unwrap().to_owned(), name));
                }
            }
        }
        // Answer whatever waits for a person or a signal, through any live replica.
        if let Some(r) = replicas.iter().find(|r| r.healthy()) {
            let inbox = ask(&r.addr, "GET", "/api/v1/approvals", None)
                .map(|(_, v)| v)
                .unwrap_or_default();
            for a in inbox["approvals"].as_array().into_iter().flatten() {
                let path = format!(
                    "/api/v1/runs/{}/steps/{}/approve",
                    a["run_id"].as_str().unwrap(),
                    a["step_id"].as_str().unwrap()
                );
                ask(&r.addr, "POST", &path, Some(&json!({})));
            }
            for (id, _) in ids.iter().filter(|(_, w)| *w == "signal") {
                let run = ask(&r.addr, "GET", &format!("/api/v1/runs/{id}"), None);
                if run.is_some_and(|(_, run)| step_status(&run, "sig") == "waiting") {
                    let path = format!("/api/v1/runs/{id}/steps/sig/signal");
                    ask(&r.addr, "POST", &path, Some(&json!({"data": 1})));
                }
            }
        }
        // The chaos, while runs are still being started.
        let now = Instant::now();
        if let Some((i, since)) = paused
            && now >= since
        {
            replicas[i].signal(libc::SIGCONT);
            events.push(format!(
                "{:.1}s: SIGCONT replica {i}",
                started.elapsed().as_secs_f64()
            ));
            paused = None;
        }
        if let Some((i, since)) = down
            && now >= since
        {
            replicas[i].start(&url);
            events.push(format!(
                "{:.1}s: restarted replica {i}",
                started.elapsed().as_secs_f64()
            ));
            down = None;
        }
        if ids.len() < runs && now >= next_chaos && paused.is_none() && down.is_none() {
            let i = chance.below(3) as usize;
            if chance.below(2) == 0 {
                replicas[i].kill();
                down = Some((i, now + Duration::from_millis(500 + chance.below(2000))));
                events.push(format!(
                    "{:.1}s: kill -9 replica {i}",
                    started.elapsed().as_secs_f64()
                ));
            } else {
                replicas[i].signal(libc::SIGSTOP);
                // Past its 3 s lease, so its runs are taken over.
                paused = Some((i, now + Duration::from_millis(3_500 + chance.below(2500))));
                events.push(format!(
                    "{:.1}s: SIGSTOP replica {i}",
                    started.elapsed().as_secs_f64()
                ));
            }
            next_chaos = now + Duration::from_millis(1_500 + chance.below(3000));
        }
        // The supervisor: a replica that stopped (its runs were taken while it was
        // paused) is started again.
        for (i, r) in replicas.iter_mut().enumerate() {
            let resting = paused.is_some_and(|p| p.0 == i) || down.is_some_and(|d| d.0 == i);
            if !resting && r.child.is_some() {
                let answer = ask(&r.addr, "GET", "/healthz", None);
                if let Some((503, health)) = answer
                    && health["engine"]["state"] == "stopped"
                {
                    r.kill();
                    r.start(&url);
                    events.push(format!(
                        "{:.1}s: replica {i} stopped ({}), restarted",
                        started.elapsed().as_secs_f64(),
                        health["engine"]["reason"]
                    ));
                }
            }
        }
        // Done when every run was started and has ended.
        if ids.len() == runs && paused.is_none() && down.is_none() {
            let r = replicas.iter().find(|r| r.healthy());
            let ended = r.is_some_and(|r| {
                ids.iter().all(|(id, _)| {
                    let state = ask(&r.addr, "GET", &format!("/api/v1/runs/{id}"), None)
                        .map(|(_, run)| run["state"].clone())
                        .unwrap_or_default();
                    state == "succeeded" || state == "failed" || state == "cancelled"
                })
            });
            if ended {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!events.is_empty(), "some chaos happened");

    // Every run succeeded, with whole histories and each step succeeding once.
    let addr = replicas.iter().find(|r| r.healthy()).unwrap().addr.clone();
    for (id, name) in &ids {
        let run = run_state(&addr, id);
        assert_eq!(
            run["state"], "succeeded",
            "{name} {id}: {run}\nchaos: {events:?}"
        );
        let (_, ev) = http(
            &addr,
            "GET",
            &format!("/api/v1/runs/{id}/events?limit=10000"),
            None,
        );
        let list = ev["events"].as_array().unwrap();
        let seqs: Vec<u64> = list.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        let whole: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, whole, "{name} {id}: the history has a gap");
        let mut succeeded = std::collections::BTreeMap::new();
        for e in list.iter().filter(|e| e["type"] == "step_succeeded") {
            *succeeded
                .entry(e["step_id"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
        for step in run["steps"].as_array().unwrap() {
            let step_id = step["id"].as_str().or(step["step_id"].as_str()).unwrap();
            assert_eq!(
                succeeded.get(step_id).copied().unwrap_or(0),
                1,
                "{name} {id}: step {step_id} succeeded once\nchaos: {events:?}"
            );
        }
    }
    // Each schedule tick started one run at most (and the schedule's runs ended well).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let twice: Vec<(String, i64)> = rt.block_on(async {
        use sqlx::Connection as _;
        let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query_as(
            "SELECT idempotency_key, COUNT(*) FROM runs WHERE workflow = 'tick' \
             GROUP BY idempotency_key HAVING COUNT(*) > 1",
        )
        .fetch_all(&mut db)
        .await
        .unwrap()
    });
    assert!(twice.is_empty(), "ticks that fired twice: {twice:?}");
    let (_, verify) = http(&addr, "GET", "/api/v1/audit/verify", None);
    assert_eq!(verify["ok"], true, "the audit chain verifies: {verify}");
    eprintln!("chaos (seed {seed}, {runs} runs): {events:?}");
    for r in &mut replicas {
        if let Some(c) = &mut r.child {
            stop(c);
        }
    }
}
