//! Runs an agent as a process: listens, says its port on stdout, registers with the
//! engine and keeps registered (heartbeats, re-registration after an engine restart),
//! and deregisters when it is asked to stop (SIGTERM, SIGINT).

use crate::agent::Agent;
use crate::engine::Engine;
use crate::rpc::{JsonService, PluginServiceName};
use std::sync::Arc;
use std::time::Duration;

/// The tenant every single-tenant engine uses (slug `default`).
pub const DEFAULT_TENANT_SLUG: &str = "default";

/// The tenant id of a slug, as the public SDKs compute it: UUIDv5 of `tenant:<slug>`.
pub fn tenant_id(slug: &str) -> String {
    let namespace = uuid::Uuid::from_u128(0xf9f3a4d4_2c64_5b9e_9e25_8a8b6f6f6f6f);
    let name = format!("tenant:{}", slug.trim().to_lowercase());
    uuid::Uuid::new_v5(&namespace, name.as_bytes()).to_string()
}

/// Why an agent could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the agent is not valid: {}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("bad engine address: {0}")]
    Engine(String),
    #[error("serving failed: {0}")]
    Transport(String),
}

/// Where and how to serve, from the same environment variables as the public SDKs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `MIRASTACK_PLUGIN_ADDR`, default `127.0.0.1:0` (any free port).
    pub listen: String,
    /// `MIRASTACK_ENGINE_ADDR`: without it, the agent serves but does not register.
    pub engine: Option<String>,
    /// `MIRASTACK_PLUGIN_ADVERTISE_ADDR`: the address the engine dials; default the
    /// listening address (loopback when listening on every interface).
    pub advertise: Option<String>,
    /// `MIRASTACK_PLUGIN_TENANT_ID`, or derived from `MIRASTACK_PLUGIN_TENANT_SLUG`,
    /// default the `default` tenant.
    pub tenant_id: String,
    /// `PLEXUS_API_KEY`: a key with the `plugin` role, when the engine asks for one.
    pub api_key: Option<String>,
    /// `MIRASTACK_HEARTBEAT_INTERVAL_SECONDS`, default 30 s (the engine may set another).
    pub heartbeat: Duration,
    /// Fixed by the environment: the engine's suggestion is then ignored.
    pub heartbeat_fixed: bool,
    /// Say `MIRASTACK_PLUGIN_PORT=<port>` on stdout (for an engine that started this
    /// process); off for an agent served inside another program.
    pub announce_port: bool,
}

impl Settings {
    pub fn from_env() -> Settings {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let heartbeat = var("MIRASTACK_HEARTBEAT_INTERVAL_SECONDS").and_then(|v| v.parse().ok());
        Settings {
            listen: var("MIRASTACK_PLUGIN_ADDR").unwrap_or_else(|| "127.0.0.1:0".into()),
            engine: var("MIRASTACK_ENGINE_ADDR"),
            advertise: var("MIRASTACK_PLUGIN_ADVERTISE_ADDR"),
            tenant_id: var("MIRASTACK_PLUGIN_TENANT_ID").unwrap_or_else(|| {
                tenant_id(
                    &var("MIRASTACK_PLUGIN_TENANT_SLUG").unwrap_or(DEFAULT_TENANT_SLUG.into()),
                )
            }),
            api_key: var("PLEXUS_API_KEY"),
            heartbeat: Duration::from_secs(heartbeat.unwrap_or(30)),
            heartbeat_fixed: heartbeat.is_some(),
            announce_port: true,
        }
    }
}

/// Serves `agent` with settings from the environment until SIGTERM or SIGINT.
pub async fn serve(agent: Agent) -> Result<(), ServeError> {
    serve_with(agent, Settings::from_env(), shutdown_signal()).await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Serves `agent` until `stop` completes, then deregisters.
pub async fn serve_with(
    mut agent: Agent,
    settings: Settings,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let problems = agent.problems();
    if !problems.is_empty() {
        return Err(ServeError::Invalid(problems));
    }
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: settings.listen.clone(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: settings.listen.clone(),
        source,
    })?;
    // What the engine that started this process reads to find it.
    if settings.announce_port {
        println!("MIRASTACK_PLUGIN_PORT={}", local.port());
    }
    let engine = match &settings.engine {
        Some(addr) => Some(
            Engine::new(
                addr,
                &agent.name,
                &agent.instance_id,
                &settings.tenant_id,
                settings.api_key.as_deref(),
            )
            .map_err(|e| ServeError::Engine(e.to_string()))?,
        ),
        None => None,
    };
    agent.engine = engine.clone();
    let advertise = settings.advertise.clone().unwrap_or_else(|| {
        if local.ip().is_unspecified() {
            format!("127.0.0.1:{}", local.port())
        } else {
            local.to_string()
        }
    });
    tracing::info!(agent = %agent.name, version = %agent.version, addr = %local, "agent serving");
    let version = agent.version.clone();
    let service = JsonService::<Agent, PluginServiceName>::new(Arc::new(agent));
    let (stopped_tx, stopped_rx) = tokio::sync::watch::channel(false);
    let registration = engine.clone().map(|engine| {
        let settings = settings.clone();
        let mut stopped = stopped_rx.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = keep_registered(&engine, &version, &advertise, &settings) => {}
                _ = stopped.changed() => {}
            }
        })
    });
    let incoming = tokio_stream_listener(listener);
    let mut server_stop = stopped_rx;
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = server_stop.changed().await;
        });
    let server = tokio::spawn(server);
    stop.await;
    let _ = stopped_tx.send(true);
    if let Some(task) = registration {
        let _ = task.await;
    }
    if let Some(engine) = &engine {
        match engine.deregister().await {
            Ok(()) => tracing::info!("deregistered from the engine"),
            Err(e) => tracing::warn!(error = %e, "deregistration failed"),
        }
    }
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => Err(ServeError::Transport(e.to_string())),
        _ => Ok(()),
    }
}

fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener)
}

/// Registers (retrying 2 s doubling to 30 s, as the SDKs do), then beats; registers
/// again whenever the engine says it does not know this instance.
async fn keep_registered(engine: &Engine, version: &str, advertise: &str, settings: &Settings) {
    let mut interval = settings.heartbeat;
    loop {
        let mut backoff = Duration::from_secs(2);
        loop {
            match engine.register(version, advertise).await {
                Ok(id) => {
                    tracing::info!(plugin_id = %id, "registered with the engine");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "registration failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        loop {
            tokio::time::sleep(interval).await;
            match engine.heartbeat().await {
                Ok(beat) => {
                    if let Some(i) = beat.interval
                        && !settings.heartbeat_fixed
                    {
                        interval = i;
                    }
                    if beat.re_register {
                        tracing::info!("the engine asks to register again");
                        break;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_tenant_id_is_the_sdks_one() {
        assert_eq!(tenant_id("default"), "b81b7c16-bfb1-5486-87b5-dd509512be63");
        assert_eq!(tenant_id("  Default "), tenant_id("default"));
    }
}
