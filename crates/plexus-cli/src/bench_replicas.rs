//! The `replicas` scenario: `plexus serve` on PostgreSQL with 1, 2 and 3 replicas against
//! one replica on SQLite (the baseline), measured from outside the same way: 50 clients
//! over HTTP, spread over the replicas, each starting one-step runs and waiting for each
//! (long poll). Then what keeping replicas costs and gives: renewing the leases of
//! 10,000 active runs, and how long a paused replica's runs take to be taken over.
//!
//! It needs a PostgreSQL server where it may create databases:
//! `PLEXUS_BENCH_DATABASE_URL=postgres://... plexus bench --scenario replicas`
//! (`scripts/bench-replicas` starts one and runs it).

use crate::bench_clients::{CLIENTS, ONE_STEP, Server, bench_key, by_long_poll, timed};
use anyhow::{Context, Result, bail};
use serde_json::{Value as Json, json};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the bench makes its databases.
pub const DATABASE_VAR: &str = "PLEXUS_BENCH_DATABASE_URL";

/// Leases of the bench's replicas: short, so that the takeover is measured in seconds.
const LEASE: &str = "4s";
const RENEW: &str = "1s";

async fn fresh_database(server: &str, name: &str) -> Result<String> {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(server)
        .await
        .with_context(|| format!("cannot reach {}", plexus_store::redacted_url(server)))?;
    let db = format!("plexus_bench_{name}_{}", uuid::Uuid::now_v7().simple());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut conn)
        .await?;
    Ok(plexus_store::test_postgres::with_database(server, &db))
}

/// `n` replicas on `database` (or one on SQLite), the first started alone (it makes the
/// admin and the keys), every one with the same keys.
async fn replicas(root: &Path, database: Option<&str>, n: usize) -> Result<Vec<Server>> {
    let key = bench_key();
    let keys = root.join("keys");
    let config = format!("[leases]\nduration = \"{LEASE}\"\nrenew_every = \"{RENEW}\"\n");
    let mut started = Vec::new();
    for i in 0..n {
        let dir = root.join(format!("replica-{i}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("plexus.toml"), &config)?;
        let env = [("PLEXUS_KEYS_DIR", keys.display().to_string())];
        started.push(Server::start_with(&dir, database, &key, &env).await?);
    }
    Ok(started)
}

/// 50 clients spread over `servers`, `runs` one-step runs in all.
async fn submit(servers: &[Server], runs: usize) -> Result<Json> {
    let admin = servers[0].client()?;
    let (status, answer) = admin
        .request("POST", "/api/v1/workflows", Some(ONE_STEP))
        .await?;
    if status != 201 && status != 200 {
        bail!("applying the bench workflow answered {status}: {answer}");
    }
    let clients: Vec<Arc<crate::http_client::Client>> = (0..CLIENTS)
        .map(|i| servers[i % servers.len()].client().map(Arc::new))
        .collect::<Result<_>>()?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let pick = || {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(clients[i % clients.len()].clone())
    };
    // A warm-up round opens the connections and fills the plan caches.
    timed(CLIENTS, pick, by_long_poll).await?;
    let (latencies, wall) = timed(runs, pick, by_long_poll).await?;
    let mut phase = crate::bench_clients::Phase {
        wall,
        latencies,
        server_cpu: Duration::ZERO,
        disk: None,
    };
    let mut r = phase.json();
    if let Some(o) = r.as_object_mut() {
        o.remove("server_cpu_ms_per_workflow");
    }
    Ok(r)
}

/// The mean time of renewing the leases of `n` active runs of one owner.
async fn renewal(store: &dyn plexus_store::Store, n: usize) -> Result<f64> {
    let now = plexus_engine::now_ms();
    for i in 0..n {
        store
            .create_run(plexus_store::NewRun {
                id: format!("00000000-0000-0000-0000-{i:012}"),
                workflow: "lease".into(),
                manifest: ONE_STEP.into(),
                base_dir: None,
                inputs: json!({}),
                step_ids: vec!["a".into()],
                parent: None,
                owner: Some("bench-owner".into()),
                lease_until: Some(now + 60_000),
                created_at: now,
                idempotency_key: None,
                workflow_version: None,
                newest_version: false,
                started_by: None,
                mode: None,
                plan: None,
                responsible: Vec::new(),
            })
            .await?;
    }
    let rounds = 20;
    let t = Instant::now();
    for r in 0..rounds {
        store.renew_leases("bench-owner", now + 120_000 + r).await?;
    }
    Ok(t.elapsed().as_secs_f64() * 1000.0 / rounds as f64)
}

/// Runs parked on one replica (a long timer), that replica paused: how long until the
/// other replica drives all of them.
async fn takeover(root: &Path, database: &str, runs: usize) -> Result<Json> {
    let servers = replicas(root, Some(database), 2).await?;
    let parked = "version: plexus/v1\nname: parked\nsteps:\n  - {id: a, wait: {timer: 1h}}\n";
    let first = servers[0].client()?;
    let (status, answer) = first
        .request("POST", "/api/v1/workflows", Some(parked))
        .await?;
    if status != 201 && status != 200 {
        bail!("applying the parked workflow answered {status}: {answer}");
    }
    let body = json!({"workflow": "parked"}).to_string();
    for _ in 0..runs {
        let (status, answer) = first.request("POST", "/api/v1/runs", Some(&body)).await?;
        if status != 201 {
            bail!("starting a parked run answered {status}: {answer}");
        }
    }
    let second = servers[1].client()?;
    let drives = |v: &Json, me: &str| {
        v["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["id"] == me)
            .and_then(|r| r["runs"].as_u64())
            .unwrap_or(0)
    };
    // SAFETY: pausing the child this bench started.
    unsafe { libc::kill(servers[0].child.id() as i32, libc::SIGSTOP) };
    let paused = Instant::now();
    let taken = loop {
        let (_, v) = second.request("GET", "/api/v1/replicas", None).await?;
        let me = v["self"].as_str().unwrap_or_default().to_owned();
        if drives(&v, &me) as usize >= runs {
            break paused.elapsed();
        }
        if paused.elapsed() > Duration::from_secs(120) {
            bail!("the runs were not taken over within 2 minutes: {v}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // SAFETY: as above.
    unsafe { libc::kill(servers[0].child.id() as i32, libc::SIGCONT) };
    let lease = plexus_core::duration::parse_duration(LEASE)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .as_secs_f64();
    Ok(json!({
        "runs": runs,
        "lease_s": lease,
        "takeover_s": taken.as_secs_f64(),
        "in_lease_durations": taken.as_secs_f64() / lease,
    }))
}

pub async fn run(root: &Path, runs: usize, leases: usize, taken: usize) -> Result<Json> {
    let Some(server) = std::env::var(DATABASE_VAR).ok().filter(|v| !v.is_empty()) else {
        let why = format!(
            "skipped: needs a PostgreSQL server where it may create databases ({DATABASE_VAR}=postgres://...; scripts/bench-replicas starts one)"
        );
        return Ok(json!({"skipped": why, "result": why, "baseline": why, "seconds": 0.0}));
    };
    let started = Instant::now();
    let sqlite = {
        let servers = replicas(&root.join("sqlite"), None, 1).await?;
        submit(&servers, runs).await?
    };
    let mut on_pg = Vec::new();
    for n in 1..=3 {
        let db = fresh_database(&server, &format!("r{n}")).await?;
        let servers = replicas(&root.join(format!("pg-{n}")), Some(&db), n).await?;
        let mut r = submit(&servers, runs).await?;
        r["replicas"] = json!(n);
        on_pg.push(r);
    }
    let renew_pg = {
        let db = fresh_database(&server, "leases").await?;
        let store = plexus_store::PgStore::open(&db, Default::default()).await?;
        renewal(&store, leases).await?
    };
    let renew_sqlite = {
        let store = plexus_store::SqliteStore::open(
            root.join("leases.db"),
            plexus_store::SqliteOptions::default(),
        )?;
        renewal(&store, leases).await?
    };
    let takeover = {
        let db = fresh_database(&server, "takeover").await?;
        takeover(&root.join("takeover"), &db, taken).await?
    };
    let rate = |r: &Json| r["workflows_per_second"].as_f64().unwrap_or(0.0);
    let base = rate(&sqlite).max(1e-9);
    let one = rate(&on_pg[0]);
    let within = takeover["in_lease_durations"].as_f64().unwrap_or(f64::MAX);
    Ok(json!({
        "seconds": started.elapsed().as_secs_f64(),
        "runs_per_configuration": runs,
        "sqlite_1": sqlite,
        "postgres": on_pg,
        "lease_renewal_ms": {"runs": leases, "postgres": renew_pg, "sqlite": renew_sqlite},
        "takeover": takeover,
        "baseline": format!("1 replica on SQLite: {base:.0} workflows/s (the same clients, the same machine)"),
        "ratio": format!(
            "PostgreSQL 1/2/3 replicas at {:.2}/{:.2}/{:.2}x SQLite's rate",
            one / base,
            rate(&on_pg[1]) / base,
            rate(&on_pg[2]) / base
        ),
        "result": format!(
            "PostgreSQL {:.0}/{:.0}/{:.0} workflows/s with 1/2/3 replicas (p99 {:.1}/{:.1}/{:.1} ms), SQLite {base:.0}/s; renewing {leases} leases {renew_pg:.1} ms; takeover of {taken} runs {:.1} s ({within:.2} lease durations)",
            one,
            rate(&on_pg[1]),
            rate(&on_pg[2]),
            on_pg[0]["p99_ms"].as_f64().unwrap_or(0.0),
            on_pg[1]["p99_ms"].as_f64().unwrap_or(0.0),
            on_pg[2]["p99_ms"].as_f64().unwrap_or(0.0),
            takeover["takeover_s"].as_f64().unwrap_or(0.0),
        ),
        "target": "1 replica on PostgreSQL within 2x of SQLite's rate; takeover within 2 lease durations",
        "target_met": one * 2.0 >= base && within <= 2.0,
    }))
}
