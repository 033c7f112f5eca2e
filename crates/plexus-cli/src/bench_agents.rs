//! `plexus bench --scenario agent-roundtrip | agent-throughput`: a Rust agent with a no-op
//! action, served on loopback by the SDK in this process, called through the engine and
//! — the baseline, in the same run — directly over gRPC.
//!
//! agent-roundtrip: one call at a time, p50/p99 of the engine's call (`Agents::execute`:
//! parameters checked, the call tracked, Execute, the answer read) against a bare Execute
//! to the same plugin; and, for scale, a whole one-step agent run made durable.
//! agent-throughput: 1,000 calls at once against the one plugin, through the engine and
//! directly; and 1,000 agent steps of one durable run (a foreach).

use crate::bench::Bench;
use anyhow::{Context, Result, bail};
use plexus_agent::rpc::{Peer, PluginServiceName, ServiceName};
use plexus_agent::{Action, Agent, Permission, Request, Stage};
use plexus_engine::agents::{ActionCall, ActionSpec, Agents, Instance};
use serde_json::{Value as Json, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Nothing {
    #[allow(dead_code)]
    n: Option<u64>,
}

/// Serves the no-op agent on loopback; its address.
async fn serve_noop() -> Result<String> {
    let agent = Agent::new("bench", "1.0.0", "Does nothing, fast")
        .stage(Stage::Operate)
        .action(Action::new(
            "noop",
            "Answers at once",
            Permission::Read,
            |_r: Request, _p: Nothing| async move { Ok(json!({"ok": true})) },
        ));
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    drop(listener);
    let settings = plexus_agent::Settings {
        listen: addr.clone(),
        engine: None,
        advertise: None,
        tenant_id: plexus_agent::tenant_id("default"),
        api_key: None,
        heartbeat: Duration::from_secs(30),
        heartbeat_fixed: true,
        announce_port: false,
    };
    tokio::spawn(async move {
        let _ = plexus_agent::serve_with(agent, settings, std::future::pending()).await;
    });
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            return Ok(addr);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the bench agent did not start")
}

async fn registered(agents: &Agents) -> Result<(String, Instance, ActionSpec)> {
    let addr = serve_noop().await?;
    agents
        .dial_any(&addr)
        .await
        .map_err(|e| anyhow::anyhow!("taking the bench agent in: {e}"))?;
    let (instance, spec) = agents.pick("bench", "noop")?;
    Ok((addr, instance, spec))
}

fn call(params: serde_json::Map<String, Json>) -> ActionCall {
    ActionCall {
        execution_id: "bench".into(),
        step_id: "noop".into(),
        params,
        mode: plexus_agent::wire::mode::GUIDED,
        context: BTreeMap::new(),
        time_range: None,
        tenant_id: plexus_agent::tenant_id("default"),
        deadline: Duration::from_secs(30),
    }
}

fn direct_request() -> Json {
    json!({"execution_id": "bench", "step_id": "noop", "action_id": "noop",
           "params_json": plexus_agent::wire::Blob::json(&json!({"n": 1, "action": "noop"}), plexus_agent::wire::Style::Go).0,
           "execution_mode": 2, "mode": 2, "tenant_id": plexus_agent::tenant_id("default")})
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// One call at a time: the engine's path against a bare Execute.
pub async fn roundtrip(b: &Bench, n: usize) -> Result<Json> {
    let agents = b.engine.agents.clone();
    let (addr, instance, spec) = registered(&agents).await?;
    let direct = Peer::lazy(PluginServiceName::NAME, &addr)?;
    let params: serde_json::Map<String, Json> =
        json!({"n": 1}).as_object().cloned().unwrap_or_default();
    let started = Instant::now();
    // Warm both connections.
    for _ in 0..50 {
        direct
            .call("Execute", direct_request(), Duration::from_secs(5))
            .await?;
        agents.execute(&instance, &spec, call(params.clone())).await;
    }
    let (mut engine_t, mut direct_t) = (Vec::with_capacity(n), Vec::with_capacity(n));
    // Alternated, so that drift in the machine's speed falls on both alike.
    for _ in 0..n {
        let t = Instant::now();
        direct
            .call("Execute", direct_request(), Duration::from_secs(5))
            .await?;
        direct_t.push(t.elapsed());
        let t = Instant::now();
        let outcome = agents.execute(&instance, &spec, call(params.clone())).await;
        engine_t.push(t.elapsed());
        if !matches!(outcome, plexus_core::machine::Outcome::Success(_)) {
            bail!("the bench call failed: {outcome:?}");
        }
    }
    engine_t.sort();
    direct_t.sort();
    let (e50, e99) = (percentile(&engine_t, 0.5), percentile(&engine_t, 0.99));
    let (d50, d99) = (percentile(&direct_t, 0.5), percentile(&direct_t, 0.99));
    // For scale: a one-step agent run, durable from start to end.
    let yaml = "version: plexus/v1\nname: agent-one\nsteps:\n- {id: call, agent: bench, action: noop, with: {n: 1}}\n".to_owned();
    let mut runs = Vec::new();
    for _ in 0..(n / 20).max(10) {
        runs.push(b.run(yaml.clone()).await.context("a one-step agent run")?);
    }
    runs.sort();
    let overhead = e50 - d50;
    Ok(json!({
        "seconds": started.elapsed().as_secs_f64(),
        "calls": n,
        "engine_p50_ms": e50, "engine_p99_ms": e99,
        "direct_p50_ms": d50, "direct_p99_ms": d99,
        "overhead_p50_ms": overhead,
        "one_step_run_p50_ms": percentile(&runs, 0.5),
        "result": format!("engine call p50 {e50:.3} ms, p99 {e99:.3} ms; a one-step agent run {:.2} ms", percentile(&runs, 0.5)),
        "target": "engine overhead < 1 ms per call at p50",
        "target_met": overhead < 1.0,
        "baseline": format!("direct Execute to the same plugin: p50 {d50:.3} ms, p99 {d99:.3} ms"),
        "ratio": format!("+{:.3} ms at p50 ({:.2}x)", overhead, e50 / d50.max(1e-9)),
        "where_time_goes": "the engine's call adds the parameter check (JSON Schema), the call's entry in the approvals book, and JSON encoding of the request and decoding of the answer",
    }))
}

/// `concurrency` calls at once, `total` in all; calls per second.
async fn burst<F, Fut>(total: usize, concurrency: usize, f: F) -> Result<f64>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let started = Instant::now();
    let mut done = 0;
    while done < total {
        let n = concurrency.min(total - done);
        let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(f())).collect();
        for t in tasks {
            t.await??;
        }
        done += n;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// 1,000 calls at once against one plugin.
pub async fn throughput(b: &Bench, concurrency: usize, rounds: usize) -> Result<Json> {
    let agents = b.engine.agents.clone();
    let (addr, instance, spec) = registered(&agents).await?;
    let direct = Peer::lazy(PluginServiceName::NAME, &addr)?;
    let params: serde_json::Map<String, Json> =
        json!({"n": 1}).as_object().cloned().unwrap_or_default();
    let total = concurrency * rounds;
    let started = Instant::now();
    let direct_rate = burst(total, concurrency, || {
        let d = direct.clone();
        async move {
            d.call("Execute", direct_request(), Duration::from_secs(30))
                .await?;
            Ok(())
        }
    })
    .await?;
    let engine_rate = burst(total, concurrency, || {
        let (a, i, s, p) = (
            agents.clone(),
            instance.clone(),
            spec.clone(),
            params.clone(),
        );
        async move {
            match a.execute(&i, &s, call(p)).await {
                plexus_core::machine::Outcome::Success(_) => Ok(()),
                other => bail!("{other:?}"),
            }
        }
    })
    .await?;
    // 1,000 agent steps of one durable run.
    let yaml = format!(
        "version: plexus/v1\nname: agent-many\nsteps:\n- id: items\n  builtin: echo\n  with: {{items: {}}}\n- id: call\n  needs: [items]\n  foreach: \"{{{{ steps.items.output.items }}}}\"\n  agent: bench\n  action: noop\n  with: {{n: \"{{{{ item }}}}\"}}\n",
        serde_json::to_string(&(0..concurrency).collect::<Vec<_>>())?
    );
    let wall = b.run(yaml).await.context("a run of agent steps")?;
    let steps_rate = concurrency as f64 / wall.as_secs_f64();
    Ok(json!({
        "seconds": started.elapsed().as_secs_f64(),
        "concurrency": concurrency, "calls": total,
        "engine_calls_per_second": engine_rate,
        "direct_calls_per_second": direct_rate,
        "run_steps_per_second": steps_rate,
        "result": format!("{engine_rate:.0} calls/s through the engine; {steps_rate:.0} agent steps/s in one durable run"),
        "target": ">= 5,000 actions/s with a Rust plugin",
        "target_met": engine_rate >= 5000.0,
        "baseline": format!("direct Execute, {concurrency} at once: {direct_rate:.0} calls/s"),
        "ratio": format!("{:.2}x the direct rate", engine_rate / direct_rate.max(1e-9)),
        "where_time_goes": format!("engine and plugin share this machine's cores (the plugin serves in this process); a durable run adds a commit per wave of steps ({})", b.where_time_goes(wall)),
    }))
}
