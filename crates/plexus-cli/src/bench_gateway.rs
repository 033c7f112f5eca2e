//! The `gateway` scenario: what the OpenAI-compatible gateway adds to a chat call —
//! the same request sent to a scripted model server directly and through `POST
//! /v1/chat/completions` (authenticated, routed, accounted, audited), one client at a
//! time and 64 at once, over keep-alive connections.

use anyhow::{Result, bail};
use plexus_engine::Engine;
use serde_json::{Value as Json, json};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A model server that answers every chat call at once with the same short reply.
async fn scripted_model() -> Result<String> {
    let reply = json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "model": "bench-1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}
    });
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            let reply = reply.clone();
            async move { axum::Json(reply) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// `total` calls to `url` by `clients` clients at once; each call's time, sorted.
async fn calls(
    url: &str,
    key: Option<&str>,
    clients: usize,
    total: usize,
) -> Result<Vec<Duration>> {
    let body =
        json!({"model": "bench", "messages": [{"role": "user", "content": "ping"}]}).to_string();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        // The workspace's one TLS setup (ring), keep-alive, no delay.
        let http = plexus_llm::openai::http_client().map_err(|e| anyhow::anyhow!("{e}"))?;
        let (url, key, body) = (url.to_owned(), key.map(str::to_owned), body.clone());
        let n = total / clients;
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::with_capacity(n);
            for _ in 0..n {
                let mut req = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone());
                if let Some(k) = &key {
                    req = req.bearer_auth(k);
                }
                let t = Instant::now();
                let answer = req.send().await?;
                let status = answer.status();
                let _ = answer.bytes().await?;
                times.push(t.elapsed());
                if !status.is_success() {
                    bail!("the call answered {status}");
                }
            }
            Ok::<_, anyhow::Error>(times)
        }));
    }
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort();
    Ok(all)
}

pub async fn run(engine: &Engine, dir: &Path, total: usize) -> Result<Json> {
    let started = Instant::now();
    let model = scripted_model().await?;
    let provider =
        plexus_llm::openai::OpenAiCompatible::new(&format!("http://{model}/v1"), "bench-1", None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    engine.llm.set(
        std::collections::BTreeMap::from([(
            "bench".to_owned(),
            Arc::new(provider) as Arc<dyn plexus_llm::Provider>,
        )]),
        None,
    );
    let pools = std::collections::BTreeMap::from([("default".to_owned(), 2)]);
    let (addr, key) = crate::bench_http::serve_in_process(engine, dir, pools).await?;
    let direct = format!("http://{model}/v1/chat/completions");
    let gateway = format!("http://{addr}/v1/chat/completions");
    // Warm both paths (connections, caches).
    calls(&direct, None, 1, 50).await?;
    calls(&gateway, Some(&key), 1, 50).await?;
    let mut out = json!({});
    let mut lines = Vec::new();
    let mut met = true;
    for clients in [1usize, 64] {
        let n = if clients == 1 { total / 4 } else { total };
        let d = calls(&direct, None, clients, n).await?;
        let g = calls(&gateway, Some(&key), clients, n).await?;
        let (d50, d99, g50, g99) = (
            percentile(&d, 0.5),
            percentile(&d, 0.99),
            percentile(&g, 0.5),
            percentile(&g, 0.99),
        );
        if clients == 1 {
            met = g50 - d50 < 1.0;
        }
        out[format!("clients_{clients}")] = json!({
            "calls": g.len(), "direct_p50_ms": d50, "direct_p99_ms": d99,
            "gateway_p50_ms": g50, "gateway_p99_ms": g99, "overhead_p50_ms": g50 - d50,
        });
        lines.push(format!(
            "{clients} client(s): gateway p50 {g50:.3} ms, p99 {g99:.3} ms vs direct {d50:.3} / {d99:.3} ms (+{:.3} ms p50)",
            g50 - d50
        ));
    }
    out["seconds"] = json!(started.elapsed().as_secs_f64());
    out["result"] = json!(lines.join("; "));
    out["target"] = json!("gateway overhead < 1 ms at p50 (one client)");
    out["target_met"] = json!(met);
    out["baseline"] = json!("the same request to the scripted model server directly, same clients");
    out["ratio"] = json!(format!(
        "+{:.3} ms p50 with one client, +{:.3} ms with 64",
        out["clients_1"]["overhead_p50_ms"].as_f64().unwrap_or(0.0),
        out["clients_64"]["overhead_p50_ms"].as_f64().unwrap_or(0.0)
    ));
    out["where_time_goes"] = json!(
        "the gateway checks the key, parses and re-encodes the request, makes its own call to the model server, and writes the call's accounting row and audit record (each a durable commit) before it answers"
    );
    Ok(out)
}
