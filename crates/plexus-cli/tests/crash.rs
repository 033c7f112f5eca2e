//! Durability: `kill -9` the real binary at random points of a 20-step run, resume, and
//! check that nothing is lost and nothing completes twice.

mod common;
use common::*;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A small xorshift generator seeded from the clock; the seed is printed so a failing
/// sequence of kill points can be replayed with PLEXUS_CRASH_SEED.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn workflow(side_effects: &std::path::Path) -> String {
    let mut y = String::from("version: plexus/v1\nname: crash-test\nsteps:\n");
    for i in 1..=20 {
        y.push_str(&format!("  - id: s{i:02}\n"));
        if i > 1 {
            y.push_str(&format!("    needs: [s{:02}]\n", i - 1));
        }
        y.push_str(&format!(
            "    run: |\n      echo \"s{i:02} $PLEXUS_ATTEMPT\" >> {}\n      sleep 0.12\n",
            side_effects.display()
        ));
    }
    y
}

#[test]
fn kill_9_at_random_points_then_resume() {
    let p = Plexus::new();
    let effects = p.dir.path().join("effects.log");
    let flow = p.dir.path().join("crash.yaml");
    std::fs::write(&flow, workflow(&effects)).unwrap();
    let seed = std::env::var("PLEXUS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("PLEXUS_CRASH_SEED={seed}");
    let mut rng = Rng(seed);

    let (mut child, run) = p.spawn(&["run", flow.to_str().unwrap()]);
    let mut kills = 0;
    loop {
        let delay = 150 + rng.next() % 600;
        std::thread::sleep(Duration::from_millis(delay));
        if child.try_wait().unwrap().is_some() {
            break; // finished before this kill point
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        if kills == 4 {
            break;
        }
        let listed = p.json(&["runs", "list", "--interrupted"]);
        assert!(
            listed
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["id"] == run.as_str()),
            "killed run is listed as interrupted"
        );
        (child, _) = p.spawn(&["resume", &run]);
    }
    if child.try_wait().unwrap().is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let status = p.run_json(&run)["status"].as_str().unwrap().to_owned();
    if status != "succeeded" {
        let out = p.run(&["resume", &run]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "final resume: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        kills >= 2,
        "the run should have been killed several times (seed {seed})"
    );

    let v = p.run_json(&run);
    assert_eq!(v["status"], "succeeded", "seed {seed}");

    // The killed engines left scratch pools; the next engine to start removes them, and
    // its own when it exits.
    let noop = p.dir.path().join("noop.yaml");
    std::fs::write(
        &noop,
        "version: plexus/v1\nname: noop\nsteps:\n- {id: a, run: 'true'}\n",
    )
    .unwrap();
    assert!(p.run(&["run", noop.to_str().unwrap()]).status.success());
    let left: Vec<_> = std::fs::read_dir(p.data_dir().join("work"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "scratch left behind: {left:?}");
    let log = std::fs::read_to_string(&effects).unwrap();
    for i in 1..=20 {
        assert!(
            log.lines().any(|l| l.starts_with(&format!("s{i:02} "))),
            "side effect of s{i:02} missing (seed {seed})\n{log}"
        );
    }
    let events = p.events(&run);
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "event sequence has gaps or repeats"
    );
    let mut succeeded: HashMap<String, usize> = HashMap::new();
    for e in events.iter().filter(|e| e["type"] == "step_succeeded") {
        *succeeded
            .entry(e["step_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(succeeded.len(), 20);
    assert!(
        succeeded.values().all(|&n| n == 1),
        "a step succeeded twice: {succeeded:?} (seed {seed})"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "run_succeeded")
            .count(),
        1
    );
    let interrupted: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "step_interrupted")
        .collect();
    assert!(
        !interrupted.is_empty(),
        "with 120ms steps some kill lands mid-attempt (seed {seed})"
    );
    for i in interrupted {
        let next = i["attempt"].as_u64().unwrap() + 1;
        assert!(
            events.iter().any(|e| e["type"] == "step_started"
                && e["step_id"] == i["step_id"]
                && e["attempt"] == next),
            "interrupted {} was not retried as attempt {next}",
            i["step_id"]
        );
    }
}
