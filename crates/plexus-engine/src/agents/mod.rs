//! The agents this engine knows: plugins that registered (or were configured) and the
//! actions they offer. Registration dials the plugin back for its Info and GetSchema;
//! heartbeats and health checks decide which instances get work.
//!
//! Instances are keyed by name and instance id. A registration under a name at an
//! address already registered replaces the instance there (a plugin restarted on the
//! same port); instances of one name at different addresses share the work, in turn. A
//! statically configured address (`plugins.external`) gives way to any instance that
//! registers itself under the same name.

mod approvals;
mod call;
pub mod check;
pub mod colocated;
pub mod mcp;
mod offers;
pub mod provider;
mod registration;

use plexus_agent::params::Params;
use plexus_agent::rpc::{CallError, Peer};
use plexus_agent::wire::{self, Style};
use plexus_core::manifest::Permission;
use serde::Serialize;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

pub use approvals::{AgentApproval, Approvals, Decision};
pub use call::ActionCall;
pub use registration::RegisterError;

/// How the engine treats plugins (`plugins.*` settings).
#[derive(Debug, Clone)]
pub struct AgentsConfig {
    /// How often every instance is asked whether it is healthy (`plugins.health_check_interval`).
    pub health_check_interval: Duration,
    /// The heartbeat interval told to plugins; an instance silent for three of them gets
    /// no work until it beats again.
    pub heartbeat_interval: Duration,
    /// Deadline of an action that sets no `timeout` (agents' backends are slow).
    pub default_deadline: Duration,
    /// For this long after the engine starts, a step whose agent is not registered (or
    /// not healthy) waits for it instead of failing: plugins register again after an
    /// engine restart only at their next heartbeat. Zero where nothing registers
    /// (`plexus run`).
    pub registration_grace: Duration,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        AgentsConfig {
            health_check_interval: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(30),
            default_deadline: Duration::from_secs(120),
            registration_grace: Duration::ZERO,
        }
    }
}

/// How an instance became known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// It called RegisterPlugin.
    Registered,
    /// Listed under `plugins.external` and dialled at start.
    Static,
    /// An MCP server (`plexus agent add-mcp`).
    Mcp,
}

/// How the engine reaches an instance.
#[derive(Clone)]
pub(crate) enum Link {
    /// The agent plugin protocol.
    Plugin(Peer),
    /// An MCP session.
    Mcp(rmcp::service::Peer<rmcp::service::RoleClient>),
}

/// One action, as the engine checks and calls it.
#[derive(Clone)]
pub struct ActionSpec {
    pub id: String,
    pub description: String,
    pub permission: Permission,
    pub params: Params,
    /// The parameters' schema, compiled.
    pub(crate) validator: Arc<jsonschema::Validator>,
    pub output_schema: Option<Json>,
    pub intents: Vec<wire::IntentPattern>,
}

impl std::fmt::Debug for ActionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionSpec")
            .field("id", &self.id)
            .field("permission", &self.permission)
            .finish()
    }
}

impl ActionSpec {
    /// Every way `params` breaks the action's schema, each naming the field.
    pub fn check(&self, params: &Json) -> Vec<String> {
        self.validator
            .iter_errors(params)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("{}: {e}", at.trim_start_matches('/').replace('/', "."))
                }
            })
            .collect()
    }
}

/// One running copy of a plugin.
#[derive(Clone)]
pub struct Instance {
    pub name: String,
    pub instance_id: String,
    pub addr: String,
    pub version: String,
    pub description: String,
    /// How the plugin writes bytes (from how it registered).
    pub style: Style,
    pub source: Source,
    pub actions: BTreeMap<String, ActionSpec>,
    /// What Info said, for the API.
    pub info: wire::InfoResponse,
    pub registered_at: u64,
    pub healthy: bool,
    pub health_message: String,
    pub(crate) last_seen: Instant,
    pub(crate) link: Link,
}

impl Instance {
    /// The highest permission among its actions.
    pub fn permission(&self) -> Permission {
        self.actions
            .values()
            .map(|a| a.permission)
            .max()
            .unwrap_or(Permission::Read)
    }
}

/// What the API shows of a plugin instance.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    pub name: String,
    /// `agent`, or `provider` for a model provider plugin (its actions are no tools).
    pub kind: &'static str,
    pub version: String,
    pub description: String,
    pub instance_id: String,
    pub addr: String,
    pub source: Source,
    pub permission: Permission,
    /// `healthy`, `unhealthy` (its health check says so or it cannot be reached) or
    /// `silent` (no heartbeat for three intervals).
    pub health: &'static str,
    pub health_message: String,
    pub registered_at: u64,
    pub seconds_since_seen: u64,
    pub actions: Vec<ActionView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActionView {
    pub id: String,
    pub description: String,
    pub permission: Permission,
    pub params_schema: Json,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Json>,
}

/// A change others may want to see (the WebSocket feed, metrics).
#[derive(Debug, Clone, Serialize)]
pub struct AgentChange {
    /// `registered`, `deregistered`, `healthy`, `unhealthy`, `silent`.
    pub kind: &'static str,
    pub name: String,
    pub instance_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// The agents this engine knows; cheap to clone.
#[derive(Clone)]
pub struct Agents {
    started: Instant,
    inner: Arc<Mutex<Registry>>,
    changes: broadcast::Sender<AgentChange>,
    pub config: Arc<AgentsConfig>,
    /// Approvals agents ask for while they run, and the calls they belong to.
    pub approvals: Arc<Approvals>,
}

#[derive(Default)]
struct Registry {
    instances: Vec<Instance>,
    /// Names seen since the engine started (a step does not wait for these to come back:
    /// they left or were removed on purpose).
    seen: std::collections::BTreeSet<String>,
    /// Turn counter per plugin name, to share work between its instances.
    turns: BTreeMap<String, usize>,
}

/// Why no instance can take an action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    #[error("no agent `{0}` is registered with this engine")]
    Unknown(String),
    #[error("agent `{name}` has no action `{action}` (it offers: {offered})")]
    NoAction {
        name: String,
        action: String,
        offered: String,
    },
    #[error("agent `{name}` is registered but no instance is healthy ({why})")]
    Unhealthy { name: String, why: String },
}

impl Agents {
    pub fn new(config: AgentsConfig) -> Agents {
        Agents {
            started: Instant::now(),
            inner: Arc::default(),
            changes: broadcast::channel(1024).0,
            config: Arc::new(config),
            approvals: Arc::default(),
        }
    }

    /// Changes as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<AgentChange> {
        self.changes.subscribe()
    }

    fn announce(&self, kind: &'static str, name: &str, instance_id: &str, message: &str) {
        metrics::counter!("plexus_agent_changes_total", "kind" => kind).increment(1);
        tracing::info!(kind, agent = name, instance = instance_id, message, "agent");
        let _ = self.changes.send(AgentChange {
            kind,
            name: name.to_owned(),
            instance_id: instance_id.to_owned(),
            message: message.to_owned(),
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn silent(&self, i: &Instance) -> bool {
        i.source == Source::Registered && i.last_seen.elapsed() > self.config.heartbeat_interval * 3
    }

    /// Takes an instance in (registration or a static plugin answering).
    pub(crate) fn insert(&self, instance: Instance) {
        let (name, id) = (instance.name.clone(), instance.instance_id.clone());
        {
            let mut reg = self.lock();
            reg.instances.retain(|i| {
                let same = i.name == instance.name
                    && (i.instance_id == instance.instance_id
                        || i.addr == instance.addr
                        || (instance.source == Source::Registered && i.source == Source::Static));
                !same
            });
            reg.seen.insert(instance.name.clone());
            reg.instances.push(instance);
        }
        self.update_gauge();
        self.announce("registered", &name, &id, "");
        self.spawn_predecessor_check(&name, &id);
    }

    /// A plugin that registers again after a restart comes back with a new instance id
    /// and often a new port: the instance it replaces is dead but still listed. Each
    /// other instance of the name is asked at once whether it is there; one that cannot
    /// be reached is forgotten, so work does not go to it. Live ones keep sharing the work.
    fn spawn_predecessor_check(&self, name: &str, newcomer: &str) {
        let others: Vec<(String, Peer)> = self
            .lock()
            .instances
            .iter()
            .filter(|i| i.name == name && i.instance_id != newcomer)
            .filter_map(|i| match &i.link {
                Link::Plugin(peer) => Some((i.instance_id.clone(), peer.clone())),
                Link::Mcp(_) => None,
            })
            .collect();
        if others.is_empty() {
            return;
        }
        let agents = self.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            for (id, peer) in others {
                let answer = peer
                    .call("HealthCheck", serde_json::json!({}), Duration::from_secs(3))
                    .await;
                if let Err(e) = answer
                    && unreachable(&e)
                {
                    tracing::info!(agent = %name, instance = %id, error = %e, "an earlier instance is gone");
                    agents.deregister(&name, &id);
                }
            }
        });
    }

    /// Forgets an instance; whether it was known.
    pub fn deregister(&self, name: &str, instance_id: &str) -> bool {
        let removed = {
            let mut reg = self.lock();
            let before = reg.instances.len();
            reg.instances.retain(|i| {
                !(i.name == name && (instance_id.is_empty() || i.instance_id == instance_id))
            });
            before != reg.instances.len()
        };
        if removed {
            self.update_gauge();
            self.announce("deregistered", name, instance_id, "");
        }
        removed
    }

    /// Removes every instance of `name`; how many there were.
    pub fn remove(&self, name: &str) -> usize {
        let n = {
            let mut reg = self.lock();
            let before = reg.instances.len();
            reg.instances.retain(|i| i.name != name);
            before - reg.instances.len()
        };
        if n > 0 {
            self.update_gauge();
            self.announce("deregistered", name, "", "removed");
        }
        n
    }

    /// Records a heartbeat; `false` when the instance is unknown (it must register again).
    pub fn heartbeat(&self, name: &str, instance_id: &str) -> bool {
        let mut woke = false;
        let known = {
            let mut reg = self.lock();
            let silent_after = self.config.heartbeat_interval * 3;
            match reg
                .instances
                .iter_mut()
                .find(|i| i.name == name && i.instance_id == instance_id)
            {
                Some(i) => {
                    woke = i.last_seen.elapsed() > silent_after;
                    i.last_seen = Instant::now();
                    true
                }
                None => false,
            }
        };
        if woke {
            self.announce("healthy", name, instance_id, "heartbeats again");
        }
        known
    }

    fn update_gauge(&self) {
        let n = self.lock().instances.len();
        metrics::gauge!("plexus_agent_instances").set(n as f64);
    }

    /// The instance to call for `name`/`action`, in turn among the healthy ones.
    pub fn pick(&self, name: &str, action: &str) -> Result<(Instance, ActionSpec), Unavailable> {
        let mut reg = self.lock();
        let of_name: Vec<usize> = (0..reg.instances.len())
            .filter(|&i| reg.instances[i].name == name)
            .collect();
        if of_name.is_empty() {
            return Err(Unavailable::Unknown(name.to_owned()));
        }
        let with_action: Vec<usize> = of_name
            .iter()
            .copied()
            .filter(|&i| reg.instances[i].actions.contains_key(action))
            .collect();
        if with_action.is_empty() {
            let offered: Vec<String> = reg.instances[of_name[0]].actions.keys().cloned().collect();
            return Err(Unavailable::NoAction {
                name: name.to_owned(),
                action: action.to_owned(),
                offered: if offered.is_empty() {
                    "nothing".into()
                } else {
                    offered.join(", ")
                },
            });
        }
        let ready: Vec<usize> = with_action
            .iter()
            .copied()
            .filter(|&i| reg.instances[i].healthy && !self.silent(&reg.instances[i]))
            .collect();
        if ready.is_empty() {
            let i = &reg.instances[with_action[0]];
            let why = if self.silent(i) {
                format!("no heartbeat for {}s", i.last_seen.elapsed().as_secs())
            } else if i.health_message.is_empty() {
                "its health check fails".to_owned()
            } else {
                i.health_message.clone()
            };
            return Err(Unavailable::Unhealthy {
                name: name.to_owned(),
                why,
            });
        }
        let turn = reg.turns.entry(name.to_owned()).or_default();
        let chosen = ready[*turn % ready.len()];
        *turn = turn.wrapping_add(1);
        let instance = reg.instances[chosen].clone();
        let spec = instance.actions[action].clone();
        Ok((instance, spec))
    }

    /// [`Agents::pick`], waiting while the engine is young for the agent to register or
    /// become healthy (see [`AgentsConfig::registration_grace`]).
    pub async fn pick_patiently(
        &self,
        name: &str,
        action: &str,
    ) -> Result<(Instance, ActionSpec), Unavailable> {
        let until = self.started + self.config.registration_grace;
        let mut changes = self.subscribe();
        loop {
            // Only an agent not seen since the engine started is waited for: one that
            // deregistered or is unhealthy is known to be unavailable.
            let error = match self.pick(name, action) {
                Ok(found) => return Ok(found),
                Err(e @ Unavailable::Unknown(_)) if !self.lock().seen.contains(name) => e,
                Err(e) => return Err(e),
            };
            let now = Instant::now();
            if now >= until {
                return Err(error);
            }
            let wait = (until - now).min(Duration::from_secs(1));
            let _ = tokio::time::timeout(wait, changes.recv()).await;
        }
    }

    /// Waits, while the engine is young, for an agent not seen yet to register (see
    /// [`AgentsConfig::registration_grace`]); whether it is known.
    pub async fn knows_patiently(&self, name: &str) -> bool {
        let until = self.started + self.config.registration_grace;
        let mut changes = self.subscribe();
        loop {
            if self.knows(name) {
                return true;
            }
            let now = Instant::now();
            if now >= until || self.lock().seen.contains(name) {
                return false;
            }
            let wait = (until - now).min(Duration::from_secs(1));
            let _ = tokio::time::timeout(wait, changes.recv()).await;
        }
    }

    /// The permission each action declares, by `agent/action` (for
    /// [`plexus_core::CompileOptions::action_floors`]); the highest when instances differ.
    pub fn floors(&self, wanted: &[(String, String)]) -> BTreeMap<String, Permission> {
        let reg = self.lock();
        let mut out = BTreeMap::new();
        for (agent, action) in wanted {
            for i in reg.instances.iter().filter(|i| &i.name == agent) {
                if let Some(a) = i.actions.get(action) {
                    let e = out
                        .entry(plexus_core::plan::action_key(agent, action))
                        .or_insert(a.permission);
                    *e = (*e).max(a.permission);
                }
            }
        }
        out
    }

    /// An action as it is known now, from any instance.
    pub fn action(&self, name: &str, action: &str) -> Option<ActionSpec> {
        let reg = self.lock();
        reg.instances
            .iter()
            .filter(|i| i.name == name)
            .find_map(|i| i.actions.get(action).cloned())
    }

    /// The highest permission the actions of `name` declare, if it is known.
    pub fn permission_of(&self, name: &str) -> Option<Permission> {
        let reg = self.lock();
        reg.instances
            .iter()
            .filter(|i| i.name == name)
            .map(Instance::permission)
            .max()
    }

    /// Whether an instance listens on this port (of a plugin this engine started).
    pub fn has_port(&self, port: u16) -> bool {
        let suffix = format!(":{port}");
        self.lock()
            .instances
            .iter()
            .any(|i| i.addr.ends_with(&suffix))
    }

    /// Forgets the instances listening on this port (their process ended).
    pub fn forget_port(&self, port: u16) {
        let suffix = format!(":{port}");
        let gone: Vec<(String, String)> = self
            .lock()
            .instances
            .iter()
            .filter(|i| i.addr.ends_with(&suffix))
            .map(|i| (i.name.clone(), i.instance_id.clone()))
            .collect();
        for (name, id) in gone {
            self.deregister(&name, &id);
        }
    }

    /// Whether a plugin of this name is known.
    pub fn knows(&self, name: &str) -> bool {
        self.lock().instances.iter().any(|i| i.name == name)
    }

    /// Every instance, ordered by name.
    pub fn list(&self) -> Vec<InstanceView> {
        let reg = self.lock();
        let mut out: Vec<InstanceView> = reg.instances.iter().map(|i| self.view(i)).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.instance_id.cmp(&b.instance_id)));
        out
    }

    fn view(&self, i: &Instance) -> InstanceView {
        InstanceView {
            name: i.name.clone(),
            kind: if i.info.plugin_type == plexus_agent::wire::plugin_type::PROVIDER {
                "provider"
            } else {
                "agent"
            },
            version: i.version.clone(),
            description: i.description.clone(),
            instance_id: i.instance_id.clone(),
            addr: i.addr.clone(),
            source: i.source,
            permission: i.permission(),
            health: if self.silent(i) {
                "silent"
            } else if i.healthy {
                "healthy"
            } else {
                "unhealthy"
            },
            health_message: i.health_message.clone(),
            registered_at: i.registered_at,
            seconds_since_seen: i.last_seen.elapsed().as_secs(),
            actions: i
                .actions
                .values()
                .map(|a| ActionView {
                    id: a.id.clone(),
                    description: a.description.clone(),
                    permission: a.permission,
                    params_schema: a.params.schema.clone(),
                    output_schema: a.output_schema.clone(),
                })
                .collect(),
        }
    }

    /// Marks an instance after a failed or successful contact.
    pub(crate) fn set_health(&self, name: &str, instance_id: &str, healthy: bool, message: &str) {
        let changed = {
            let mut reg = self.lock();
            match reg
                .instances
                .iter_mut()
                .find(|i| i.name == name && i.instance_id == instance_id)
            {
                Some(i) => {
                    let changed = i.healthy != healthy;
                    i.healthy = healthy;
                    i.health_message = message.to_owned();
                    changed
                }
                None => false,
            }
        };
        if changed {
            let kind = if healthy { "healthy" } else { "unhealthy" };
            self.announce(kind, name, instance_id, message);
        }
    }

    /// Asks every instance whether it is healthy, once.
    pub async fn check_health(&self) {
        let instances: Vec<Instance> = self.lock().instances.clone();
        let checks = instances.into_iter().map(|i| async move {
            let verdict = match &i.link {
                Link::Plugin(peer) => peer
                    .call(
                        "HealthCheck",
                        serde_json::json!({}),
                        Duration::from_secs(10),
                    )
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(wire::decode::<wire::HealthCheckResponse>),
                // An MCP server that lists its tools is healthy.
                Link::Mcp(peer) => {
                    match tokio::time::timeout(Duration::from_secs(10), peer.list_tools(None)).await
                    {
                        Ok(Ok(_)) => Ok(wire::HealthCheckResponse {
                            healthy: true,
                            ..Default::default()
                        }),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("no answer to tools/list in 10s".to_owned()),
                    }
                }
            };
            (i, verdict)
        });
        for (i, verdict) in futures_join(checks).await {
            match verdict {
                Ok(h) => {
                    let message = if h.healthy { String::new() } else { h.message };
                    self.set_health(&i.name, &i.instance_id, h.healthy, &message)
                }
                Err(e) => self.set_health(&i.name, &i.instance_id, false, &e),
            }
        }
    }

    /// Checks health every `health_check_interval` until the engine stops.
    pub fn spawn_health_checks(&self) {
        let agents = self.clone();
        let period = self.config.health_check_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                agents.check_health().await;
            }
        });
    }

    /// Pushes a configuration to every instance of `name` (ConfigUpdated); how many
    /// acknowledged it.
    pub async fn push_config(
        &self,
        name: &str,
        config: BTreeMap<String, String>,
        version: i64,
    ) -> usize {
        let peers: Vec<Peer> = self
            .lock()
            .instances
            .iter()
            .filter(|i| i.name == name)
            .filter_map(|i| match &i.link {
                Link::Plugin(peer) => Some(peer.clone()),
                Link::Mcp(_) => None,
            })
            .collect();
        let body = wire::encode(&wire::ConfigUpdatedRequest { config, version });
        let mut acknowledged = 0;
        for peer in peers {
            match peer
                .call("ConfigUpdated", body.clone(), Duration::from_secs(10))
                .await
            {
                Ok(answer) => {
                    if wire::decode::<wire::ConfigUpdatedResponse>(answer)
                        .is_ok_and(|a| a.acknowledged)
                    {
                        acknowledged += 1;
                    }
                }
                Err(e) => tracing::warn!(agent = name, error = %e, "config push failed"),
            }
        }
        acknowledged
    }
}

/// Runs futures concurrently and collects their outputs in order.
async fn futures_join<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// Whether a failed call means the instance cannot be reached at all.
pub(crate) fn unreachable(e: &CallError) -> bool {
    matches!(e.code(), Some(tonic_code) if tonic_code == plexus_agent::rpc::Code::Unavailable)
}

#[cfg(test)]
mod tests;
