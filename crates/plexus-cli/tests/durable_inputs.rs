//! An acknowledged control input is durable: `plexus serve` is killed with SIGKILL the
//! moment each approval or signal is answered, restarted, and the input must be in the
//! run's history — with an answer of `200 applied`, already at the restart, before
//! anything else happens. The order of the gates is drawn from a seed
//! (`PLEXUS_TEST_SEED`, printed, so a failure can be replayed).

mod common;
use common::server::*;
use common::*;
use serde_json::{Value, json};
use std::process::Child;
use std::time::{Duration, Instant};

const RUNS: usize = 4;
const APPROVALS: usize = 4;
const SIGNALS: usize = 4;

fn flow() -> String {
    let mut flow = String::from("version: plexus/v1\nname: gates\nsteps:\n");
    for i in 1..=APPROVALS {
        flow.push_str(&format!(
            "- id: a{i}\n  approval: {{message: \"go {i}?\"}}\n"
        ));
    }
    for i in 1..=SIGNALS {
        flow.push_str(&format!("- id: s{i}\n  wait: {{signal: s{i}}}\n"));
    }
    flow
}

/// xorshift64*: enough to shuffle reproducibly.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn events(addr: &str, run: &str) -> Vec<Value> {
    let (status, v) = http(addr, "GET", &format!("/api/v1/runs/{run}/events"), None);
    assert_eq!(status, 200, "{v}");
    v["events"].as_array().unwrap().clone()
}

/// The input's mark in the history: the approval, or the signalled step's success.
fn decided(events: &[Value], step: &str) -> usize {
    let wanted = if step.starts_with('a') {
        "step_approved"
    } else {
        "step_succeeded"
    };
    events
        .iter()
        .filter(|e| e["type"] == wanted && e["step_id"] == step)
        .count()
}

/// Starts the server and waits until it has taken over `want` unfinished runs (it resumes
/// them after it starts listening), so inputs reach the engine rather than the command table.
fn restart(p: &Plexus, want: usize) -> (Child, String) {
    let (server, addr) = start_server(p);
    let log = p.dir.path().join("serve.log");
    let resumed_before = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("resumed an interrupted run")
        .count();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.matches("resumed an interrupted run").count() >= resumed_before + want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not resume the runs"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    (server, addr)
}

#[test]
fn acknowledged_approvals_and_signals_survive_kill_9_right_after_the_answer() {
    let seed: u64 = std::env::var("PLEXUS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
        | 1;
    eprintln!("PLEXUS_TEST_SEED={seed}");
    let mut rng = Rng(seed);

    let p = Plexus::new();
    let (mut server, mut addr) = start_server(&p);
    let (status, v) = http_text(&addr, "POST", "/api/v1/workflows", &flow());
    assert_eq!(status, 201, "{v}");
    let runs: Vec<String> = (0..RUNS).map(|_| start_gated_run(&addr)).collect();

    let mut gates: Vec<(usize, String)> = (0..RUNS)
        .flat_map(|r| {
            (1..=APPROVALS)
                .map(move |i| (r, format!("a{i}")))
                .chain((1..=SIGNALS).map(move |i| (r, format!("s{i}"))))
        })
        .collect();
    let (mut applied, mut finished) = (0, 0);
    while !gates.is_empty() {
        let (r, step) = gates.swap_remove((rng.next() % gates.len() as u64) as usize);
        let run = &runs[r];
        let (action, body) = if step.starts_with('a') {
            ("approve", json!({"comment": "ok"}))
        } else {
            ("signal", json!({"data": {"from": "test"}}))
        };
        let path = format!("/api/v1/runs/{run}/steps/{step}/{action}");
        let (status, answer) = http(&addr, "POST", &path, Some(&body));
        server.kill().unwrap(); // SIGKILL, the moment the answer is read
        server.wait().unwrap();
        assert!(
            status == 200 || status == 202,
            "{action} {run}/{step}: {status} {answer}"
        );
        if gates.iter().all(|(other, _)| *other != r) {
            finished += 1;
        }
        (server, addr) = restart(&p, RUNS - finished);
        if status == 200 {
            applied += 1;
            // Applied means durable: in the history at once, before the restarted engine
            // did anything for it.
            let n = decided(&events(&addr, run), &step);
            assert_eq!(
                n, 1,
                "seed {seed}: {action} of {run}/{step} was answered `applied` and then lost"
            );
        } else {
            // Recorded as a command: the owner applies it once it polls.
            let deadline = Instant::now() + Duration::from_secs(10);
            while decided(&events(&addr, run), &step) == 0 {
                assert!(
                    Instant::now() < deadline,
                    "seed {seed}: recorded {action} of {run}/{step} was never applied"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    eprintln!(
        "{applied} of {} inputs answered `applied`",
        RUNS * (APPROVALS + SIGNALS)
    );
    assert!(
        applied * 2 >= RUNS * (APPROVALS + SIGNALS),
        "only {applied} inputs reached the engine directly: the test did not test it"
    );
    // Every run ends with each gate decided exactly once.
    for run in &runs {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, v) = http(&addr, "GET", &format!("/api/v1/runs/{run}"), None);
            if v["state"] == "succeeded" {
                break;
            }
            assert!(Instant::now() < deadline, "run {run} did not finish: {v}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let history = events(&addr, run);
        for step in (1..=APPROVALS)
            .map(|i| format!("a{i}"))
            .chain((1..=SIGNALS).map(|i| format!("s{i}")))
        {
            assert_eq!(decided(&history, &step), 1, "run {run}: {step}");
        }
    }

    // Run-level inputs and a rejection, each answered and then killed the same way.
    let run = start_gated_run(&addr);
    let steps = [
        ("pause", None, "run_paused"),
        ("resume", None, "run_resumed"),
        ("reject", Some("a1"), "step_skipped"),
        ("cancel", None, "run_cancelled"),
    ];
    for (action, step, mark) in steps {
        let path = match step {
            Some(step) => format!("/api/v1/runs/{run}/steps/{step}/{action}"),
            None => format!("/api/v1/runs/{run}/{action}"),
        };
        let (status, answer) = http(&addr, "POST", &path, Some(&json!({})));
        server.kill().unwrap();
        server.wait().unwrap();
        assert_eq!(status, 200, "{action}: {answer}");
        (server, addr) = restart(&p, usize::from(action != "cancel"));
        let found = events(&addr, &run)
            .iter()
            .filter(|e| e["type"] == mark)
            .count();
        assert_eq!(
            found, 1,
            "seed {seed}: {action} was answered `applied` and then lost"
        );
    }
    server.kill().unwrap();
    server.wait().unwrap();
}

/// Starts a run of `gates` and waits until every one of its gates is open.
fn start_gated_run(addr: &str) -> String {
    let (status, run) = http(
        addr,
        "POST",
        "/api/v1/runs",
        Some(&json!({"workflow": "gates"})),
    );
    assert_eq!(status, 201, "{run}");
    let run = run["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    while gates_opened(&events(addr, &run)) < APPROVALS + SIGNALS {
        assert!(Instant::now() < deadline, "run {run}: gates did not open");
        std::thread::sleep(Duration::from_millis(20));
    }
    run
}

fn gates_opened(events: &[Value]) -> usize {
    events
        .iter()
        .filter(|e| e["type"] == "step_awaiting_approval" || e["type"] == "step_waiting")
        .count()
}
