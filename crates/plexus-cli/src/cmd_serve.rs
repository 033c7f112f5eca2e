//! `plexus serve`: the engine behind the HTTP API, resuming interrupted runs at start.

use crate::config::Settings;
use anyhow::{Context, Result};
use plexus_engine::Engine;
use plexus_server::{AppState, ServerConfig};
use plexus_store::{RunFilter, Store};
use std::sync::Arc;

/// The operator's preset bootstrap key: `--bootstrap-key-file`, else
/// `PLEXUS_BOOTSTRAP_API_KEY`; checked before anything starts.
fn preset_bootstrap_key(file: Option<&std::path::Path>) -> Result<Option<String>> {
    let key = match file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the bootstrap key file {}", f.display()))?
                .trim()
                .to_owned(),
        ),
        None => std::env::var("PLEXUS_BOOTSTRAP_API_KEY")
            .ok()
            .filter(|k| !k.is_empty()),
    };
    if let Some(k) = &key {
        plexus_server::auth::bootstrap::check_preset(k)
            .map_err(|e| anyhow::anyhow!("the preset bootstrap key: {e}"))?;
    }
    Ok(key)
}

pub async fn serve(
    settings: &Settings,
    wait_for_lock: bool,
    bootstrap_key_file: Option<&std::path::Path>,
) -> Result<i32> {
    let preset = preset_bootstrap_key(bootstrap_key_file)?;
    let (listen_addr, body_limit, grace) = (
        settings.listen_addr.as_str(),
        settings.body_limit,
        settings.shutdown_grace,
    );
    let store = settings.open_store().await?;
    // Before the engine starts: one server per data directory.
    let _lock =
        crate::serve_lock::ServeLock::acquire(&settings.data_dir, wait_for_lock, listen_addr)
            .await?;
    let mut engine_config = crate::cmd_run::engine_config(settings);
    engine_config.agents.health_check_interval = settings.health_check_interval;
    engine_config.agents.registration_grace = settings.registration_grace;
    let engine = Engine::start(store.clone(), engine_config);
    let listener = tokio::net::TcpListener::bind(listen_addr)
        .await
        .with_context(|| {
            format!("cannot listen on {listen_addr} (set --listen-addr or PLEXUS_LISTEN_ADDR)")
        })?;
    let addr = listener.local_addr()?;
    // Checked before anything else starts: a bad certificate stops start-up, named.
    let tls = match &settings.tls {
        Some((cert, key)) => Some(
            plexus_server::tls::server_config(cert, key)
                .map_err(|e| anyhow::anyhow!("tls_cert/tls_key: {e}"))?,
        ),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let grpc_listener = tokio::net::TcpListener::bind(&settings.grpc_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (set --grpc-addr or PLEXUS_GRPC_ADDR)",
                settings.grpc_addr
            )
        })?;
    let grpc_addr = grpc_listener.local_addr()?;
    let key_dir = settings.keys_dir.clone();
    let auth = plexus_server::auth::Auth::open(&key_dir)
        .with_context(|| format!("the server's keys in {}", key_dir.display()))?;
    match plexus_server::auth::bootstrap::bootstrap_with(&*store, preset.as_deref()).await? {
        Some(key) if preset.is_some() => eprintln!(
            "plexus serve: created the admin with the preset bootstrap API key (api_key_id={}); create real admins, then revoke it",
            key.key_id
        ),
        Some(key) => {
            // The only time this secret is ever shown: as a plain line for people and
            // scripts, and in the JSON log.
            let line = format!(
                "bootstrap admin API key (shown once; create real admins, then revoke it): api_key_id={}  api_secret={}",
                key.key_id, key.secret
            );
            eprintln!("{line}");
            tracing::warn!("{line}");
        }
        None => {}
    }
    let shutdown = shutdown_signal()?;
    eprintln!(
        "plexus serve: listening on {scheme}://{addr} (gRPC on {grpc_addr}, data dir {}, store {})",
        settings.data_dir.display(),
        settings.store_location()?.shown()
    );
    take_over_runs(&engine, &*store).await?;
    let state: AppState = plexus_server::Services {
        engine: engine.clone(),
        store: store.clone(),
        compile: plexus_core::CompileOptions {
            pools: settings.pools.clone(),
            default_mode: None,
            action_floors: Default::default(),
        },
        config: Arc::new(ServerConfig {
            body_limit,
            base_dir: std::env::current_dir()?,
            artifact_root: settings.data_dir.join("artifacts"),
            allowed_origins: settings.allowed_origins.clone(),
        }),
        auth: Arc::new(auth),
        plans: Default::default(),
        newest_workflows: Default::default(),
        intents: Default::default(),
    }
    .into();
    plexus_server::settings::apply_to_engine(&state)
        .await
        .map_err(|e| anyhow::anyhow!("reading the settings: {}", e.message))?;
    match state.engine.isolation() {
        plexus_engine::exec::isolation::Availability::On { mechanism } => {
            tracing::info!(
                mechanism,
                "isolation: on — steps cannot reach the data directory"
            )
        }
        plexus_engine::exec::isolation::Availability::Off { reason } => eprintln!(
            "plexus serve: isolation: off ({reason}); steps can reach the data directory. Set steps.require_isolation to refuse to run them."
        ),
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let scheduler = tokio::spawn(plexus_server::schedules::run_scheduler(
        state.clone(),
        stopped.clone(),
    ));
    let adopter = tokio::spawn(adopt_orphans(
        engine.clone(),
        store.clone(),
        stopped.clone(),
    ));
    let refusals = tokio::spawn(plexus_server::auth::run_refusal_flusher(
        state.clone(),
        stopped.clone(),
    ));
    // Where other replicas and people reach this one (a wildcard address by host name).
    let advertised = if addr.ip().is_unspecified() {
        format!("{scheme}://{}:{}", plexus_engine::hostname(), addr.port())
    } else {
        format!("{scheme}://{addr}")
    };
    let (beat_stop, beat_stopped) = tokio::sync::watch::channel(false);
    let beat = tokio::spawn(plexus_server::replicas::heartbeat(
        state.clone(),
        plexus_server::replicas::this_replica(&state, &advertised),
        beat_stopped,
    ));
    let (jobs, health) = plexus_server::grpc::services(state.clone());
    let mut grpc_stop = stopped;
    let grpc_services = tonic::transport::Server::builder()
        .add_service(jobs)
        .add_service(plexus_server::plugins::service(state.clone()))
        .add_service(health);
    engine.agents.spawn_health_checks();
    // Co-located plugins reach the engine on loopback when it listens everywhere.
    let engine_addr = if grpc_addr.ip().is_unspecified() {
        std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), grpc_addr.port())
    } else {
        grpc_addr
    };
    let supervisor = plexus_engine::agents::colocated::Supervisor::new(
        engine.agents.clone(),
        engine_addr.to_string(),
    );
    let mcp = plexus_server::settings::start_mcp(&state)
        .await
        .map_err(|e| anyhow::anyhow!("reading the MCP servers: {}", e.message))?;
    if mcp > 0 {
        tracing::info!(servers = mcp, "MCP servers started");
    }
    if let Some(dir) = &settings.plugins.dir {
        let n = supervisor
            .start_dir(dir)
            .with_context(|| format!("reading plugins.dir {}", dir.display()))?;
        tracing::info!(plugins = n, dir = %dir.display(), "co-located plugins started");
    }
    for p in &settings.plugins.external {
        let (agents, name, addr) = (engine.agents.clone(), p.name.clone(), p.addr.clone());
        tokio::spawn(async move { dial_external(agents, name, addr).await });
    }
    let grpc_stopped = async move {
        let _ = grpc_stop.changed().await;
    };
    // The gRPC port speaks TLS (HTTP/2) with the same certificate as the HTTP API.
    let grpc = match &settings.tls {
        Some((cert, key)) => {
            let config = plexus_server::tls::grpc_config(cert, key)
                .map_err(|e| anyhow::anyhow!("tls_cert/tls_key: {e}"))?;
            let incoming = plexus_server::tls::grpc_incoming(grpc_listener, config);
            tokio::spawn(grpc_services.serve_with_incoming_shutdown(incoming, grpc_stopped))
        }
        None => {
            use tokio_stream::StreamExt;
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_listener)
                .map(|tcp| tcp.inspect(plexus_server::tls::no_delay));
            tokio::spawn(grpc_services.serve_with_incoming_shutdown(incoming, grpc_stopped))
        }
    };
    let app =
        plexus_server::app(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    match tls {
        Some(config) => {
            use axum::serve::ListenerExt;
            // `tap_io` gives the TLS listener axum's connect-info (the client address).
            let listener = plexus_server::tls::TlsListener::new(listener, config)?.tap_io(|_| {});
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await?
        }
        None => {
            use axum::serve::ListenerExt;
            let listener = listener.tap_io(|tcp| plexus_server::tls::no_delay(tcp));
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await?
        }
    }
    let _ = stop.send(true);
    let _ = scheduler.await;
    let _ = adopter.await;
    let _ = refusals.await;
    if let Ok(Err(e)) = grpc.await {
        tracing::warn!(error = %e, "the gRPC server stopped with an error");
    }
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "stopping: running steps may finish within the grace period"
    );
    engine.drain(grace).await;
    // Its runs are handed back: it leaves the list of replicas.
    let _ = beat_stop.send(true);
    let _ = beat.await;
    // After the drain: steps still calling them had the grace period to finish.
    supervisor.shutdown().await;
    engine.mcp.shutdown();
    tracing::info!("stopped; unfinished runs continue at the next start");
    Ok(0)
}

/// How often a server looks for runs whose owner died (a `plexus run` killed, a replica
/// whose lease ran out) to take them over; a replica that hands its runs back on
/// shutdown wakes the others at once.
const ADOPT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs claimed at a time, and claims per look: replicas looking at the same moment
/// share what needs an owner instead of one taking everything.
const CLAIM_BATCH: usize = 64;
const CLAIMS_PER_LOOK: usize = 8;

/// Takes over, every [`ADOPT_EVERY`] or when a replica hands runs back, the runs that no
/// live process drives: a run never waits for the next restart of anything.
async fn adopt_orphans(
    engine: Engine,
    store: Arc<dyn Store>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = store.orphans_may_be_waiting(ADOPT_EVERY) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = take_over_runs(&engine, &*store).await {
            tracing::warn!(error = %e, "looking for runs to take over failed");
        }
    }
}

/// Claims the runs nobody drives (no owner, or a lease that ran out) and continues them;
/// then the runs of processes on this host that died, seen at once rather than when
/// their leases run out.
async fn take_over_runs(engine: &Engine, store: &dyn Store) -> Result<()> {
    let (lease, _) = engine.lease_timing();
    for _ in 0..CLAIMS_PER_LOOK {
        let now = plexus_engine::now_ms();
        let claimed = store
            .claim_orphans(
                engine.owner(),
                now + lease.as_millis() as u64,
                now,
                CLAIM_BATCH,
            )
            .await?;
        let full = claimed.len() == CLAIM_BATCH;
        for (row, fence) in claimed {
            let (id, workflow) = (row.id.clone(), row.workflow.clone());
            match engine.take_over(row, fence).await {
                Ok(_) => tracing::info!(run = %id, %workflow, "took over a run nobody drove"),
                Err(e) => tracing::warn!(run = %id, error = %e, "could not take over run"),
            }
        }
        if !full {
            break;
        }
    }
    let here = format!("plexus/{}/", plexus_engine::hostname());
    let local = store
        .list_runs(RunFilter {
            active: true,
            limit: 100_000,
            not_owned_by: Some(engine.owner().to_owned()),
            owner_prefix: Some(here),
            ..Default::default()
        })
        .await?;
    for row in local
        .iter()
        .filter(|r| r.parent.is_none() && !crate::cmd_runs::is_driven(r))
    {
        match engine.resume(&row.id).await {
            Ok(_) => {
                tracing::info!(run = %row.id, workflow = %row.workflow, "resumed an interrupted run")
            }
            Err(e) => tracing::warn!(run = %row.id, error = %e, "could not resume run"),
        }
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not
/// when the future is first polled: called before the server says it is listening, a
/// SIGTERM sent as soon as it answers stops it gracefully instead of killing it.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

/// Dials a plugin listed under `plugins.external` until it answers (it may start after
/// the engine), unless it registers itself first.
async fn dial_external(agents: plexus_engine::agents::Agents, name: String, addr: String) {
    let mut wait = std::time::Duration::from_secs(1);
    loop {
        if agents.knows(&name) {
            return;
        }
        match agents.dial(&name, &addr).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(agent = %name, %addr, error = %e, retry_in = ?wait, "external plugin not reachable");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(30));
            }
        }
    }
}
