//! The `http-1000` scenario: runs of 5 noop steps submitted over HTTP on loopback by
//! concurrent clients to a server in this process; submit rate, completion rate and
//! submit-to-finish latency.

use anyhow::{Result, bail};
use plexus_engine::Engine;
use serde_json::{Value as Json, json};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

const CLIENTS: usize = 32;

async fn post(addr: &str, key: &str, path: &str, body: &str) -> Result<(u16, Json)> {
    let mut client = crate::http_client::Client::new(addr)?;
    client.credential = Some(crate::login::Credential::ApiKey(key.to_owned()));
    client.request("POST", path, Some(body)).await
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The HTTP API on a loopback port of this process, over `engine`; its address and an
/// admin API key.
pub async fn serve_in_process(
    engine: &Engine,
    dir: &Path,
    pools: std::collections::BTreeMap<String, u32>,
) -> Result<(String, String)> {
    let state: plexus_server::AppState = plexus_server::Services {
        engine: engine.clone(),
        store: engine.store().clone(),
        compile: plexus_core::CompileOptions {
            pools,
            default_mode: None,
            action_floors: Default::default(),
        },
        config: Arc::new(plexus_server::ServerConfig {
            base_dir: dir.to_path_buf(),
            ..Default::default()
        }),
        auth: Arc::new(plexus_server::auth::Auth::open(&dir.join("keys"))?),
        plans: Default::default(),
        newest_workflows: Default::default(),
        intents: Default::default(),
    }
    .into();
    // Every request authenticates with an API key, as scripts do.
    let key = plexus_server::auth::bootstrap::bootstrap(&**engine.store())
        .await?
        .map(|k| k.secret)
        .unwrap_or_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(async move { axum::serve(listener, plexus_server::app(state)).await });
    Ok((addr, key))
}

pub async fn run(
    engine: &Engine,
    dir: &Path,
    pools: std::collections::BTreeMap<String, u32>,
    n: usize,
) -> Result<Json> {
    let (addr, key) = serve_in_process(engine, dir, pools).await?;
    let mut manifest = String::from("version: plexus/v1\nname: five\nsteps:\n");
    for i in 0..5 {
        let needs = if i > 0 {
            format!(", needs: [s{}]", i - 1)
        } else {
            String::new()
        };
        manifest.push_str(&format!("  - {{id: s{i}, builtin: noop{needs}}}\n"));
    }
    let (status, _) = post(&addr, &key, "/api/v1/workflows", &manifest).await?;
    if status != 201 {
        bail!("applying the bench workflow answered {status}");
    }

    // Finish times, recorded as the engine reports them.
    let finished_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut ends = engine.finished();
    let recorder = {
        let finished_at = finished_at.clone();
        tokio::spawn(async move {
            while let Ok((run, _)) = ends.recv().await {
                finished_at
                    .lock()
                    .await
                    .insert(run.to_string(), Instant::now());
            }
        })
    };

    let body = json!({"workflow": "five"}).to_string();
    let started = Instant::now();
    let per_client = n.div_ceil(CLIENTS);
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (addr, body, key) = (addr.clone(), body.clone(), key.clone());
        clients.push(tokio::spawn(async move {
            let mut submitted = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let t = Instant::now();
                let (status, run) = post(&addr, &key, "/api/v1/runs", &body).await?;
                if status != 201 {
                    bail!("submit answered {status}: {run}");
                }
                submitted.push((run["id"].as_str().unwrap_or_default().to_owned(), t));
            }
            Ok::<_, anyhow::Error>(submitted)
        }));
    }
    let mut submitted = Vec::new();
    for c in clients {
        submitted.extend(c.await??);
    }
    let submit_time = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = finished_at.lock().await;
        if submitted.iter().all(|(id, _)| done.contains_key(id)) {
            break;
        }
        drop(done);
        if Instant::now() > deadline {
            bail!("not every run finished within two minutes");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all_done = started.elapsed();
    recorder.abort();
    let done = finished_at.lock().await;
    let mut latencies: Vec<Duration> = submitted
        .iter()
        .map(|(id, t)| done[id].duration_since(*t))
        .collect();
    latencies.sort();
    let total = submitted.len();
    let submit_rate = total as f64 / submit_time.as_secs_f64();
    let complete_rate = total as f64 / all_done.as_secs_f64();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    Ok(json!({
        "runs": total, "clients": CLIENTS, "seconds": all_done.as_secs_f64(),
        "submit_per_second": submit_rate, "completed_per_second": complete_rate,
        "p50_ms": p50.as_secs_f64() * 1000.0, "p99_ms": p99.as_secs_f64() * 1000.0,
        "result": format!(
            "{submit_rate:.0} submits/s, {complete_rate:.0} runs/s done; submit-to-finish p50 {:.0} ms, p99 {:.0} ms",
            p50.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0
        ),
        "target": ">= 1,000 submits/s, p99 < 250 ms",
        "target_met": submit_rate >= 1000.0 && p99 < Duration::from_millis(250),
    }))
}
