//! `plexus bench`: the performance targets of the durable core, each measured next to a
//! baseline taken in the same run on the same disk. Every scenario runs in its own
//! process so peak memory is its own.

use crate::output::{self, Format};
use anyhow::{Context, Result, bail};
use plexus_core::machine::{Input, RunStatus};
use plexus_engine::{Engine, EngineConfig, Submission};
use plexus_store::{SqliteOptions, SqliteStore, measure_commit_latency};
use serde_json::{Value as Json, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const SCENARIOS: [&str; 15] = [
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
    "replicas",
];

struct Sizes {
    sequential: usize,
    fanout: usize,
    throughput: usize,
    foreach: usize,
    shell: usize,
    park: usize,
    http: usize,
    clients: usize,
    /// Runs per configuration, leases renewed, runs taken over (the replicas scenario).
    replicas: (usize, usize, usize),
    agent_calls: usize,
    agent_concurrency: usize,
    agent_rounds: usize,
    intent_rounds: usize,
    gateway_calls: usize,
}

fn sizes(quick: bool) -> Sizes {
    if quick {
        Sizes {
            sequential: 40,
            fanout: 100,
            throughput: 1_000,
            foreach: 10_000,
            shell: 10,
            park: 1_000,
            http: 64,
            clients: 100,
            replicas: (100, 1_000, 50),
            agent_calls: 200,
            agent_concurrency: 100,
            agent_rounds: 2,
            intent_rounds: 3,
            gateway_calls: 256,
        }
    } else {
        Sizes {
            sequential: 40,
            fanout: 1_000,
            throughput: 10_000,
            foreach: 100_000,
            shell: 100,
            park: 100_000,
            http: 1_000,
            clients: 2_000,
            replicas: (2_000, 10_000, 200),
            agent_calls: 2_000,
            agent_concurrency: 1_000,
            agent_rounds: 5,
            intent_rounds: 30,
            gateway_calls: 4_096,
        }
    }
}

/// Runs every scenario in a child process and prints the table (or JSON).
pub fn run_all(
    quick: bool,
    only: Option<&str>,
    format: Format,
    data_dir: Option<&Path>,
) -> Result<i32> {
    let exe = std::env::current_exe()?;
    let mut results = Vec::new();
    for name in SCENARIOS.iter().filter(|n| only.is_none_or(|o| o == **n)) {
        if format == Format::Table {
            eprintln!("running {name}…");
        }
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["bench", "--scenario", name, "-o", "json"]);
        if quick {
            cmd.arg("--quick");
        }
        if let Some(d) = data_dir {
            cmd.arg("--data-dir").arg(d);
        }
        let out = cmd
            .output()
            .with_context(|| format!("cannot start the {name} scenario"))?;
        if !out.status.success() {
            bail!(
                "scenario {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        results.push(
            serde_json::from_slice::<Json>(&out.stdout)
                .with_context(|| format!("scenario {name} printed no JSON"))?,
        );
    }
    if format.is_data() {
        output::data(format, &results);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r["scenario"].as_str().unwrap_or("").to_owned(),
                r["result"].as_str().unwrap_or("").to_owned(),
                r["target"].as_str().unwrap_or("").to_owned(),
                if r["target_met"].as_bool() == Some(true) {
                    "yes"
                } else {
                    "NO"
                }
                .to_owned(),
                r["baseline"].as_str().unwrap_or("").to_owned(),
                r["ratio"].as_str().unwrap_or("").to_owned(),
                r["where_time_goes"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    output::table(
        &[
            "SCENARIO",
            "RESULT",
            "TARGET",
            "MET",
            "BASELINE (same run)",
            "VS BASELINE",
            "WHERE THE TIME GOES",
        ],
        &rows,
    );
    println!(
        "\npeers on a similar 2-core machine: Restate 1.7 — 40 sequential steps 97 ms, 1,000-step fan-out 1.06 s;"
    );
    println!("Temporal dev server — 2.05 s and 11.8 s.");
    Ok(0)
}

/// Signals the park scenario keeps in flight at once.
const SIGNALS_IN_FLIGHT: usize = 1024;

fn manifest(name: &str, steps: impl IntoIterator<Item = String>) -> String {
    let mut y = format!("version: plexus/v1\nname: {name}\nsteps:\n");
    for s in steps {
        y.push_str(&s);
    }
    y
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_owned)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

pub(crate) struct Bench {
    pub(crate) engine: Engine,
    dir: PathBuf,
}

impl Bench {
    fn new(dir: PathBuf) -> Result<Self> {
        Self::with(dir, true)
    }

    /// A bench engine whose steps are isolated (`isolate`) or not.
    fn with(dir: PathBuf, isolate: bool) -> Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let store = Arc::new(SqliteStore::open(
            dir.join("plexus.db"),
            SqliteOptions::default(),
        )?);
        let pools =
            std::collections::BTreeMap::from([("default".to_owned(), crate::config::cores())]);
        let config = EngineConfig {
            isolate_steps: isolate,
            ..EngineConfig::new(dir.clone(), pools)
        };
        let engine = Engine::start(store, config);
        Ok(Bench { engine, dir })
    }

    fn plan(&self, yaml: &str) -> Result<plexus_core::Plan> {
        plexus_core::load(yaml, "bench", &self.engine_options())
            .map_err(|d| anyhow::anyhow!("bench manifest invalid: {}", d[0]))
    }

    fn engine_options(&self) -> plexus_core::CompileOptions {
        plexus_core::CompileOptions {
            pools: std::collections::BTreeMap::from([(
                "default".to_owned(),
                crate::config::cores(),
            )]),
            default_mode: None,
            action_floors: Default::default(),
        }
    }

    async fn submit(&self, plan: plexus_core::Plan, yaml: String) -> Result<String> {
        let sub = Submission {
            plan: Arc::new(plan),
            manifest_text: yaml,
            base_dir: self.dir.clone(),
            inputs: json!({}),
            idempotency_key: None,
            workflow_version: None,
            newest_version: false,
            started_by: None,
            responsible: Vec::new(),
        };
        Ok(self.engine.submit(sub).await?)
    }

    /// Submits and waits for the end; returns the wall time from submit to durable end.
    pub(crate) async fn run(&self, yaml: String) -> Result<Duration> {
        let plan = self.plan(&yaml)?;
        let mut finished = self.engine.finished();
        let started = Instant::now();
        let id = self.submit(plan, yaml).await?;
        loop {
            let (run, status) = finished.recv().await?;
            if *run == *id {
                if status != RunStatus::Succeeded {
                    bail!("bench run {id} ended {}", status.as_str());
                }
                return Ok(started.elapsed());
            }
        }
    }

    pub(crate) fn where_time_goes(&self, wall: Duration) -> String {
        let (commits, events, micros) = self.engine.stats.snapshot();
        let mut text = format!(
            "{commits} commits, {events} events; commit time (summed, commits overlap) {:.0}% of wall time",
            100.0 * micros as f64 / wall.as_micros().max(1) as f64
        );
        let (attempts, wait, run) = self.engine.stats.attempt_means();
        if attempts > 0 {
            text.push_str(&format!(
                "; per process attempt: {:.2} ms until its start is durable, {:.2} ms from then to its result",
                wait as f64 / 1000.0,
                run as f64 / 1000.0
            ));
        }
        text
    }
}

/// CPU time used so far by this process and by its reaped children.
pub(crate) fn cpu_times() -> (Duration, Duration) {
    let get = |who| {
        // SAFETY: getrusage fills the struct it is given and reads nothing else.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut u) };
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        tv(u.ru_utime) + tv(u.ru_stime)
    };
    (get(libc::RUSAGE_SELF), get(libc::RUSAGE_CHILDREN))
}

/// CPU time used so far by the threads of this process whose name starts with `prefix`
/// (from `/proc/self/task/*/schedstat`, in nanoseconds; zero where that is not readable).
fn thread_cpu(prefix: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map(Duration::from_nanos)
        .sum()
}

/// Time per bare fork+exec+wait of `true`, `count` of them spread over `threads` threads.
fn bare_true(threads: usize, count: usize) -> Result<Duration> {
    let per_thread = count.div_ceil(threads);
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                (0..per_thread).all(|_| {
                    std::process::Command::new("true")
                        .status()
                        .is_ok_and(|s| s.success())
                })
            })
        })
        .collect();
    for h in handles {
        if !h.join().unwrap_or(false) {
            bail!("`true` could not be run");
        }
    }
    Ok(started.elapsed() / (per_thread * threads) as u32)
}

/// One shape of [`isolation`]: name, extra ms per step, isolated and unisolated ms per
/// step, extra CPU ms per step.
type Shape = (&'static str, f64, f64, f64, f64);

/// What isolating steps from the data directory costs per shell step: `n` `true` steps,
/// independent and then chained, on an engine whose steps are isolated (the default)
/// against the same on one whose steps are not, rounds interleaved, medians compared;
/// CPU per step beside. The verdict is on the dearer of the two shapes.
async fn isolation(b: &Bench, name: &str, n: usize, root: &Path) -> Result<Json> {
    let plain = Bench::with(root.join("data-unisolated"), false)?;
    let mechanism = match b.engine.isolation() {
        plexus_engine::exec::isolation::Availability::On { mechanism } => *mechanism,
        plexus_engine::exec::isolation::Availability::Off { reason } => {
            bail!("steps cannot be isolated on this machine: {reason}")
        }
    };
    let cpu = || {
        let (me, children) = cpu_times();
        me + children
    };
    let per = |d: Duration| ms(d) / n as f64;
    let mut shapes: Vec<Shape> = Vec::new();
    for chain in [false, true] {
        let steps = (0..n).map(|i| match i {
            _ if chain && i > 0 => {
                format!("  - {{id: sh{i}, run: 'true', needs: [sh{}]}}\n", i - 1)
            }
            _ => format!("  - {{id: sh{i}, run: 'true'}}\n"),
        });
        let yaml = manifest("isolation", steps);
        let (mut isolated, mut bare) = (Vec::new(), Vec::new());
        let (mut isolated_cpu, mut bare_cpu) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..SHELL_ROUNDS {
            let before = cpu();
            bare.push(plain.run(yaml.clone()).await?);
            let between = cpu();
            isolated.push(b.run(yaml.clone()).await?);
            isolated_cpu += cpu() - between;
            bare_cpu += between - before;
        }
        isolated.sort();
        bare.sort();
        let (iso, unisolated) = (isolated[SHELL_ROUNDS / 2], bare[SHELL_ROUNDS / 2]);
        let cpu_per = |d: Duration| ms(d) / (SHELL_ROUNDS * n) as f64;
        shapes.push((
            if chain { "chained" } else { "independent" },
            per(iso) - per(unisolated),
            per(iso),
            per(unisolated),
            cpu_per(isolated_cpu) - cpu_per(bare_cpu),
        ));
    }
    let worst = shapes.iter().map(|s| s.1).fold(f64::MIN, f64::max);
    let text = |f: &dyn Fn(&Shape) -> String| shapes.iter().map(f).collect::<Vec<_>>().join("; ");
    let seconds: f64 = shapes.iter().map(|s| s.2 * n as f64 / 1000.0).sum();
    Ok(json!({
        "scenario": name, "steps": n, "seconds": seconds,
        "result": text(&|s| format!("{}: {:.2} ms more per step isolated ({:.2} vs {:.2} ms/step)", s.0, s.1, s.2, s.3)),
        "target": "<= 0.3 ms per shell step", "target_met": worst <= 0.3,
        "baseline": text(&|s| format!("{} unisolated: {:.2} ms/step", s.0, s.3)),
        "ratio": text(&|s| format!("{} {:.2}x", s.0, s.2 / s.3.max(1e-9))),
        "cost_ms_per_step": worst,
        "where_time_goes": format!(
            "{mechanism} per step process (made in a vfork-style clone, torn down at exit): /tmp and the data directory covered, scratch and workdir mounted back; CPU per step more: {}; isolated shells are made for their attempt (while its start is made durable) instead of kept warm ahead of it",
            text(&|s| format!("{} {:.2} ms", s.0, s.4)),
        ),
    }))
}

/// Rounds of each shell scenario; both sides are the median (process start-up on a small
/// VM varies a lot from one moment to the next).
const SHELL_ROUNDS: usize = 5;

/// `n` shell steps running `true` against bare fork+exec of `true`. The target is the
/// issue's: the per-step time against one bare fork+exec ("a bare fork+exec of `true`"),
/// timed one at a time. Independent steps (default pool = cores) are also set against
/// bare fork+exec with the same parallelism (one thread per core), printed beside it:
/// what the engine costs when both sides have every core. Rounds are interleaved.
async fn shell(b: &Bench, name: &str, n: usize, chain: bool) -> Result<Json> {
    let parallel = if chain {
        1
    } else {
        crate::config::cores() as usize
    };
    let steps = (0..n).map(|i| match i {
        _ if chain && i > 0 => format!("  - {{id: sh{i}, run: 'true', needs: [sh{}]}}\n", i - 1),
        _ => format!("  - {{id: sh{i}, run: 'true'}}\n"),
    });
    let yaml = manifest("shell", steps);
    let (mut bares, mut serial_bares, mut walls) = (Vec::new(), Vec::new(), Vec::new());
    let (mut bare_cpu, mut engine_cpu, mut shell_cpu, mut writer_cpu) = (
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
    );
    // Linux keeps the first 15 bytes of a thread's name.
    let writer_thread = &plexus_store::WRITER_THREAD[..15];
    for _ in 0..SHELL_ROUNDS {
        let cpu_before = cpu_times();
        bares.push(bare_true(parallel, n)?);
        let cpu_between = cpu_times();
        bare_cpu += cpu_between.0 + cpu_between.1 - cpu_before.0 - cpu_before.1;
        let writer_before = thread_cpu(writer_thread);
        walls.push(b.run(yaml.clone()).await?);
        writer_cpu += thread_cpu(writer_thread).saturating_sub(writer_before);
        let cpu_after = cpu_times();
        engine_cpu += cpu_after.0 - cpu_between.0;
        shell_cpu += cpu_after.1 - cpu_between.1;
        if parallel > 1 {
            serial_bares.push(bare_true(1, n)?);
        }
    }
    // Each round's own ratio (to the target's baseline), before the medians sort the
    // rounds apart: how much the machine moved while it was measured.
    let one_at_a_time_bares = if serial_bares.is_empty() {
        &bares
    } else {
        &serial_bares
    };
    let round_ratios: Vec<f64> = (walls.iter().zip(one_at_a_time_bares))
        .map(|(w, b)| w.as_secs_f64() / n as f64 / b.as_secs_f64().max(1e-9))
        .collect();
    let spread = round_ratios
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v.get(v.len() / 2).copied()
    };
    let per = |d: Duration| ms(d) / (SHELL_ROUNDS * n) as f64;
    let (bare, wall) = (median(&mut bares), median(&mut walls));
    let (Some(bare), Some(wall)) = (bare, wall) else {
        bail!("no rounds were run");
    };
    let per_step = wall / n as u32;
    let ratio_to = |d: Duration| per_step.as_secs_f64() / d.as_secs_f64().max(1e-9);
    // A chain's bare side already runs one at a time.
    let (one_at_a_time, same_parallelism) = match median(&mut serial_bares) {
        Some(serial) => (serial, Some(bare)),
        None => (bare, None),
    };
    let ratio = ratio_to(one_at_a_time);
    let mut baseline = format!(
        "bare fork+exec of true, one at a time: {:.2} ms each",
        ms(one_at_a_time)
    );
    let mut ratio_text = format!("{ratio:.2}x");
    if let Some(p) = same_parallelism {
        baseline.push_str(&format!(" ({parallel} at a time: {:.2} ms each)", ms(p)));
        ratio_text.push_str(&format!(" ({:.2}x vs {parallel} at a time)", ratio_to(p)));
    }
    Ok(json!({
        "scenario": name, "steps": n, "seconds": wall.as_secs_f64(),
        "result": format!("{:.2} ms/step ({:.0} ms for {n})", ms(per_step), ms(wall)),
        "target": "<= 1.5x a bare fork+exec", "target_met": ratio <= 1.5,
        "baseline": baseline,
        "ratio": ratio_text,
        "ratio_vs_one_at_a_time": ratio,
        "ratio_same_parallelism": same_parallelism.map(ratio_to),
        "where_time_goes": format!(
            "{}; CPU per step: engine {:.2} ms (store writer {:.2}) + shell {:.2} ms (bare: {:.2} ms); each round's ratio {:.2}x to {:.2}x",
            b.where_time_goes(walls.iter().sum()),
            per(engine_cpu),
            per(writer_cpu),
            per(shell_cpu),
            ms(bare_cpu) / (SHELL_ROUNDS * n) as f64,
            spread.0,
            spread.1
        ),
        "round_ratios": round_ratios,
    }))
}

/// A foreach over `n` items of a list another step made, each item rendering a template:
/// against the same workflow over a tenth of the items (ten times that is linear), and
/// with a probe that asks the engine's loop for its pools every 10 ms, so the longest
/// time the loop kept other runs and the API waiting shows.
async fn foreach(b: &Bench, name: &str, n: usize) -> Result<Json> {
    let yaml = |n: usize| {
        manifest(
            "foreach",
            [
                format!("  - {{id: gen, builtin: echo, with: {{items: \"{{{{ range({n}) | list }}}}\"}}}}\n"),
                "  - {id: each, needs: [gen], foreach: \"{{ steps.gen.output.items }}\", builtin: echo, with: {item: \"{{ item }}\"}}\n".to_owned(),
            ],
        )
    };
    let tenth = b.run(yaml(n / 10)).await?;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let engine = b.engine.clone();
    let probe = tokio::spawn(async move {
        let mut longest = Duration::ZERO;
        loop {
            let asked = Instant::now();
            if engine.pool_stats().await.is_err() {
                return longest;
            }
            longest = longest.max(asked.elapsed());
            tokio::select! {
                _ = &mut stopped => return longest,
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    });
    let wall = b.run(yaml(n)).await?;
    // The probe sees the loop's answers while the run goes on; its last one may lag.
    stop.send(()).ok();
    let stall = probe.await?;
    let linear = tenth * 10;
    let target_met =
        (n < 100_000 || wall < Duration::from_secs(3)) && stall < Duration::from_millis(50);
    Ok(json!({
        "scenario": name, "items": n, "seconds": wall.as_secs_f64(), "longest_loop_wait_ms": ms(stall),
        "result": format!("{:.2} s ({:.1} µs/item); the loop answered within {:.1} ms throughout", wall.as_secs_f64(), wall.as_secs_f64() * 1e6 / n as f64, ms(stall)),
        "target": if n >= 100_000 { "< 3 s, loop never held > 50 ms" } else { "(quick size) loop never held > 50 ms" },
        "target_met": target_met,
        "baseline": format!("ten times the same over {} items: {:.2} s", n / 10, linear.as_secs_f64()),
        "ratio": format!("{:.2}x of linear", wall.as_secs_f64() / linear.as_secs_f64().max(1e-9)),
        "where_time_goes": b.where_time_goes(wall + tenth),
    }))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs one scenario in this process and prints its JSON.
pub async fn run_one(name: &str, quick: bool, data_dir: Option<&Path>) -> Result<i32> {
    let root = match data_dir {
        Some(d) => d.join(format!("bench-{}", std::process::id())),
        None => std::env::temp_dir().join(format!("plexus-bench-{}", std::process::id())),
    };
    let _ = std::fs::remove_dir_all(&root);
    let result = scenario(name, &sizes(quick), &root).await;
    let _ = std::fs::remove_dir_all(&root);
    output::json(&result?);
    Ok(0)
}

async fn scenario(name: &str, sz: &Sizes, root: &Path) -> Result<Json> {
    let fsync = measure_commit_latency(
        &{
            std::fs::create_dir_all(root)?;
            root.to_path_buf()
        },
        200,
        &SqliteOptions::default(),
    )?;
    let b = Arc::new(Bench::new(root.join("data"))?);
    let r = match name {
        "sequential-40" => {
            let n = sz.sequential;
            let steps = (0..n).map(|i| {
                let needs = if i > 0 {
                    format!(", needs: [s{}]", i - 1)
                } else {
                    String::new()
                };
                format!("  - {{id: s{i}, builtin: noop{needs}}}\n")
            });
            // One warm-up run, then the median of five.
            let yaml = manifest("sequential", steps);
            let mut times = vec![b.run(yaml.clone()).await?];
            for _ in 0..5 {
                times.push(b.run(yaml.clone()).await?);
            }
            let total: Duration = times.iter().sum();
            times[1..].sort();
            let wall = times[3];
            let floor = fsync * n as u32;
            json!({
                "scenario": name, "steps": n, "seconds": wall.as_secs_f64(),
                "result": format!("{:.1} ms ({:.2} ms/step)", ms(wall), ms(wall) / n as f64),
                "target": "< 40 ms", "target_met": ms(wall) < 40.0,
                "baseline": format!("{n} fsync'd commits: {:.1} ms", ms(floor)),
                "ratio": format!("{:.2}x", wall.as_secs_f64() / floor.as_secs_f64().max(1e-9)),
                "where_time_goes": b.where_time_goes(total),
            })
        }
        "fanout-1000" => {
            let n = sz.fanout;
            let mut steps = vec!["  - {id: root, builtin: noop}\n".to_owned()];
            steps.extend(
                (0..n).map(|i| format!("  - {{id: f{i}, needs: [root], builtin: noop}}\n")),
            );
            let all: Vec<String> = (0..n).map(|i| format!("f{i}")).collect();
            steps.push(format!(
                "  - {{id: join, needs: [{}], builtin: noop}}\n",
                all.join(", ")
            ));
            let wall = b.run(manifest("fanout", steps)).await?;
            json!({
                "scenario": name, "steps": n + 2, "seconds": wall.as_secs_f64(),
                "result": format!("{:.0} ms", ms(wall)),
                "target": if n >= 1000 { "< 1 s" } else { "(quick size)" }, "target_met": wall < Duration::from_secs(1),
                "baseline": format!("Restate 1.7: 1,060 ms; fsync'd commit here: {:.2} ms", ms(fsync)),
                "ratio": format!("{:.1}x faster than Restate", 1060.0 / ms(wall).max(1e-9)),
                "where_time_goes": b.where_time_goes(wall),
            })
        }
        "throughput-10k" => {
            let n = sz.throughput;
            let steps = (0..n).map(|i| format!("  - {{id: t{i}, builtin: noop}}\n"));
            let wall = b.run(manifest("throughput", steps)).await?;
            let rate = n as f64 / wall.as_secs_f64();
            json!({
                "scenario": name, "steps": n, "seconds": wall.as_secs_f64(), "steps_per_second": rate,
                "result": format!("{:.0} steps/s ({:.0} ms)", rate, ms(wall)),
                "target": ">= 10,000 steps/s", "target_met": rate >= 10_000.0,
                "baseline": format!("one fsync'd commit: {:.2} ms", ms(fsync)),
                "ratio": format!("{:.0} steps per fsync'd commit time", rate * fsync.as_secs_f64()),
                "where_time_goes": b.where_time_goes(wall),
            })
        }
        "foreach-100k" => foreach(&b, name, sz.foreach).await?,
        "shell-100" => shell(&b, name, sz.shell, false).await?,
        "shell-chain-100" => shell(&b, name, sz.shell, true).await?,
        "isolation-100" => isolation(&b, name, sz.shell, root).await?,
        "park-100k" => {
            let n = sz.park;
            let steps = (0..n).map(|i| format!("  - {{id: w{i}, wait: {{signal: go}}}}\n"));
            let yaml = manifest("park", steps);
            let parse_started = Instant::now();
            let plan = b.plan(&yaml)?;
            let parse = parse_started.elapsed();
            let mut finished = b.engine.finished();
            let started = Instant::now();
            let id = b.submit(plan, yaml).await?;
            // Parked once the run_started and every step_waiting event are durable.
            while b.engine.stats.snapshot().1 < n as u64 + 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let parked = started.elapsed();
            let rss_parked = peak_rss_mb();
            let signal_started = Instant::now();
            // Each signal is answered once durable, so they are sent as many clients
            // would, a thousand at a time: group commit makes them durable together.
            let mut sending = tokio::task::JoinSet::new();
            for i in 0..n {
                if sending.len() >= SIGNALS_IN_FLIGHT {
                    sending.join_next().await.expect("not empty")??;
                }
                let (engine, id) = (b.engine.clone(), id.clone());
                sending.spawn(async move {
                    let signal = Input::Signal {
                        step_id: format!("w{i}"),
                        data: json!(i),
                    };
                    engine.input(&id, signal).await
                });
            }
            while let Some(sent) = sending.join_next().await {
                sent??;
            }
            loop {
                let (run, status) = finished.recv().await?;
                if *run == *id {
                    if status != RunStatus::Succeeded {
                        bail!("park run ended {}", status.as_str());
                    }
                    break;
                }
            }
            let resumed = signal_started.elapsed();
            let rss = peak_rss_mb();
            json!({
                "scenario": name, "steps": n, "seconds": (parked + resumed).as_secs_f64(), "peak_rss_mb": rss,
                "result": format!("peak RSS {rss:.0} MB; parked in {:.2} s, all {n} resumed in {:.2} s", parked.as_secs_f64(), resumed.as_secs_f64()),
                "target": "< 300 MB, all resume", "target_met": rss < 300.0,
                "baseline": format!("parsing + validating the manifest: {:.0} ms; RSS once parked {rss_parked:.0} MB", ms(parse)),
                "ratio": format!("{:.0} bytes/parked step", rss * 1024.0 * 1024.0 / n as f64),
                "where_time_goes": b.where_time_goes(parked + resumed),
            })
        }
        "http-1000" => {
            let pools =
                std::collections::BTreeMap::from([("default".to_owned(), crate::config::cores())]);
            let mut r = crate::bench_http::run(&b.engine, &b.dir, pools, sz.http).await?;
            let wall = Duration::from_secs_f64(r["seconds"].as_f64().unwrap_or(0.0));
            r["scenario"] = json!(name);
            r["baseline"] = json!(format!("one fsync'd commit: {:.2} ms", ms(fsync)));
            r["ratio"] = json!(format!(
                "{:.1} runs per fsync'd commit time",
                r["completed_per_second"].as_f64().unwrap_or(0.0) * fsync.as_secs_f64()
            ));
            r["where_time_goes"] = json!(b.where_time_goes(wall));
            r
        }
        "http-clients" => {
            let mut r = crate::bench_clients::run(&b, root, sz.clients).await?;
            r["scenario"] = json!(name);
            r["baseline"] = json!(format!(
                "the same runs submitted in-process: {:.0}/s; one fsync'd commit: {:.2} ms",
                r["in_process"]["workflows_per_second"]
                    .as_f64()
                    .unwrap_or(0.0),
                ms(fsync)
            ));
            r["ratio"] = json!(format!(
                "long poll at {:.2}x the in-process rate",
                r["long_poll"]["workflows_per_second"]
                    .as_f64()
                    .unwrap_or(0.0)
                    / r["in_process"]["workflows_per_second"]
                        .as_f64()
                        .unwrap_or(1.0)
                        .max(1e-9)
            ));
            r
        }
        "replicas" => {
            let (runs, leases, taken) = sz.replicas;
            let mut r = crate::bench_replicas::run(root, runs, leases, taken).await?;
            r["scenario"] = json!(name);
            r
        }
        "agent-roundtrip" => {
            let mut r = crate::bench_agents::roundtrip(&b, sz.agent_calls).await?;
            r["scenario"] = json!(name);
            r
        }
        "agent-throughput" => {
            let mut r =
                crate::bench_agents::throughput(&b, sz.agent_concurrency, sz.agent_rounds).await?;
            r["scenario"] = json!(name);
            r
        }
        "gateway" => {
            let mut r = crate::bench_gateway::run(&b.engine, &b.dir, sz.gateway_calls).await?;
            r["scenario"] = json!(name);
            r
        }
        "intents" => {
            let mut r = crate::bench_intents::run(1_000, sz.intent_rounds)?;
            r["scenario"] = json!(name);
            r
        }
        other => bail!(
            "unknown scenario `{other}`; scenarios: {}",
            SCENARIOS.join(", ")
        ),
    };
    b.engine.shutdown().await;
    Ok(r)
}
