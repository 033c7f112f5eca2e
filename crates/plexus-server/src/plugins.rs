//! `mirastack.plugin.v1.EngineService` on the gRPC port: what agent plugins call —
//! registration, heartbeats, their configuration and cache, audit events, approvals.
//!
//! Who may call it: a caller presenting a key of a user with the `plugin` role (or an
//! admin), or — when `plugins.allow_loopback_unauthenticated` is on, the default, so
//! that agents built with the public SDKs (which cannot send a key) work out of the box
//! on one machine — any caller on a loopback address.

mod cache;

use crate::AppState;
use crate::auth::{Access, Role, audit, authenticate};
use plexus_agent::rpc::{Call, EngineServiceName, Handler, JsonService};
use plexus_agent::wire::{self, Blob};
use serde_json::{Value as Json, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use tonic::Status;

pub use cache::PluginCache;

/// Every EngineService method and who may call it (all the same rule; listed so that the
/// role tests enumerate them).
pub const METHODS: &[&str] = &[
    "RegisterPlugin",
    "DeregisterPlugin",
    "Heartbeat",
    "GetConfig",
    "CacheGet",
    "CacheGetBatch",
    "CacheSet",
    "PublishResult",
    "RequestApproval",
    "LogEvent",
    "CallPlugin",
    "ListKPIs",
    "GetKPI",
];

/// The setting that lets loopback callers in without a key.
pub const ALLOW_LOOPBACK: &str = "plugins.allow_loopback_unauthenticated";

pub struct EngineService {
    state: AppState,
    cache: PluginCache,
}

/// The service, ready for a tonic router.
pub fn service(state: AppState) -> JsonService<EngineService, EngineServiceName> {
    JsonService::new(Arc::new(EngineService {
        state,
        cache: PluginCache::new(256 * 1024 * 1024),
    }))
}

/// Who is calling, as audit records name them.
struct Plugin {
    actor: String,
    /// The plugin a `plugin`-role key acts for: the one named like its user. Such a
    /// caller cannot speak for another plugin (its configuration, its cache).
    bound: Option<String>,
}

fn bad(e: String) -> Status {
    Status::invalid_argument(e)
}

impl EngineService {
    async fn authorize(&self, call: &Call) -> Result<Plugin, Status> {
        let named = call
            .header("x-plugin-name")
            .map(str::to_owned)
            .unwrap_or_else(|| body_name(&call.body));
        if let Some(token) = call
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            let caller = authenticate(&self.state, token.trim())
                .await
                .map_err(|r| Status::unauthenticated(r.0))?;
            if !Access::Plugin.allows(Some(caller.role)) {
                self.refuse(&caller.actor(), &call.method, caller.role)
                    .await;
                return Err(Status::permission_denied(format!(
                    "the plugin service needs {}; you have the {} role",
                    Access::Plugin.describe(),
                    caller.role.as_str()
                )));
            }
            return Ok(Plugin {
                actor: format!("{}(plugin:{named})", caller.actor()),
                bound: (caller.role == Role::Plugin).then(|| caller.username.clone()),
            });
        }
        let loopback = call.remote.is_some_and(|a| a.ip().is_loopback());
        let allowed = crate::settings::value(&self.state, ALLOW_LOOPBACK)
            .await
            .map_err(|e| Status::unavailable(e.message))?
            .is_none_or(|v| v != json!(false));
        if loopback && allowed {
            return Ok(Plugin {
                actor: format!("plugin:{named}"),
                bound: None,
            });
        }
        Err(Status::unauthenticated(if loopback {
            format!(
                "send `authorization: Bearer <key of a user with the plugin role>` ({ALLOW_LOOPBACK} is off)"
            )
        } else {
            "send `authorization: Bearer <key of a user with the plugin role>`: only loopback callers may register without one".to_owned()
        }))
    }

    async fn refuse(&self, actor: &str, method: &str, role: Role) {
        audit(
            self.state.store.as_ref(),
            actor,
            "permission.denied",
            &format!("grpc EngineService/{method}"),
            json!({"role": role.as_str(), "needs": Access::Plugin.describe()}),
        )
        .await;
    }

    async fn register(&self, call: Call, who: &Plugin) -> Result<Json, Status> {
        let req: wire::RegisterPluginRequest = wire::decode(call.body).map_err(bad)?;
        let agents = &self.state.engine.agents;
        let caller = call.remote.map(|a| a.ip());
        let answer = match agents.register(&req, call.style, caller).await {
            Ok(plugin_id) => {
                audit(
                    self.state.store.as_ref(),
                    &who.actor,
                    "agent.registered",
                    &format!("agent:{}", req.name),
                    json!({"version": req.version, "addr": req.grpc_addr, "instance_id": req.instance_id}),
                )
                .await;
                wire::RegisterPluginResponse {
                    success: true,
                    plugin_id,
                    error: String::new(),
                }
            }
            Err(e) => {
                tracing::warn!(agent = %req.name, addr = %req.grpc_addr, error = %e, "registration refused");
                audit(
                    self.state.store.as_ref(),
                    &who.actor,
                    "agent.registration_refused",
                    &format!("agent:{}", req.name),
                    json!({"error": e.to_string(), "addr": req.grpc_addr}),
                )
                .await;
                wire::RegisterPluginResponse {
                    success: false,
                    plugin_id: String::new(),
                    error: e.to_string(),
                }
            }
        };
        Ok(wire::encode(&answer))
    }

    /// Asks a person to decide (`plexus approve RUN STEP`), blocking until they do or the
    /// wait ends: engineers decide MODIFY, admins ADMIN; READ needs no approval and is
    /// refused.
    async fn request_approval(
        &self,
        call: Call,
        who: &Plugin,
        plugin: &str,
    ) -> Result<Json, Status> {
        let req: wire::RequestApprovalRequest = wire::decode(call.body).map_err(bad)?;
        let answer = |approved: bool, timed_out: bool, reviewer: String, comment: String| {
            Ok(wire::encode(&wire::RequestApprovalResponse {
                approved,
                timed_out,
                reviewer,
                comment,
            }))
        };
        let permission = match req.required_permission {
            wire::permission::READ => {
                return answer(
                    false,
                    false,
                    String::new(),
                    "READ needs no approval: ask for MODIFY or ADMIN".into(),
                );
            }
            wire::permission::ADMIN => plexus_core::manifest::Permission::Admin,
            _ => plexus_core::manifest::Permission::Modify,
        };
        if req.execution_id.is_empty() {
            return Err(bad(
                "`execution_id` is empty: name the run the approval is for".into(),
            ));
        }
        let approvals = self.state.engine.agents.approvals.clone();
        // A caller that does not name itself (the Python SDK) is the agent the run calls.
        let plugin = match approvals.agent_in_run(&req.execution_id) {
            Some(agent) if plugin == "unknown" => agent,
            _ => plugin.to_owned(),
        };
        let plugin = plugin.as_str();
        let context = req
            .context_json
            .to_json()
            .ok()
            .flatten()
            .unwrap_or(Json::Null);
        let mut context = json!({"context": context});
        if let Some(b) = &req.blast_radius {
            context["blast_radius"] = serde_json::to_value(b).unwrap_or(Json::Null);
        }
        // The SDKs send no timeout: wait as long as a step's approval waits by default,
        // within the deadline of the call that asks.
        let wait = match req.timeout_seconds {
            t if t > 0 => std::time::Duration::from_secs(t as u64),
            _ => std::time::Duration::from_secs(3600),
        };
        audit(
            self.state.store.as_ref(),
            &who.actor,
            "agent.approval_requested",
            &format!("run:{}", req.execution_id),
            json!({"agent": plugin, "description": req.description, "permission": permission}),
        )
        .await;
        let asked = approvals.request(
            &req.execution_id,
            plugin,
            &req.description,
            permission,
            context,
            wait,
            crate::now_ms(),
        );
        let store = self.state.store.clone();
        let actor = who.actor.clone();
        let (view, decision) = asked.await;
        let target = format!("run:{}/{}", view.run_id, view.step_id);
        match decision {
            Some(d) => answer(d.approved, false, d.by, d.comment),
            None => {
                audit(
                    store.as_ref(),
                    &actor,
                    "agent.approval_timed_out",
                    &target,
                    json!({"agent": plugin, "description": view.description}),
                )
                .await;
                answer(false, true, String::new(), "nobody decided in time".into())
            }
        }
    }

    /// One plugin calling another's action: within its tenant, no further than its own
    /// permission reaches, and with a person's approval (in the name of the step the
    /// caller runs) when the action is MODIFY or ADMIN.
    async fn call_plugin(&self, call: Call, who: &Plugin, plugin: &str) -> Result<Json, Status> {
        use plexus_core::manifest::Permission;
        let style = call.style;
        let req: wire::CallPluginRequest = wire::decode(call.body).map_err(bad)?;
        let tenant = plexus_agent::tenant_id(plexus_agent::DEFAULT_TENANT_SLUG);
        if !req.tenant_id.is_empty() && req.tenant_id != tenant {
            return Err(Status::permission_denied(
                "cross-tenant calls are refused: this engine serves the default tenant",
            ));
        }
        let failed = |error: String| {
            Ok(wire::encode(&wire::CallPluginResponse {
                success: false,
                error,
                ..Default::default()
            }))
        };
        let caller = if req.caller_plugin.is_empty() {
            plugin.to_owned()
        } else {
            req.caller_plugin.clone()
        };
        let mut params = match req.params_json.to_json().map_err(bad)? {
            Some(Json::Object(m)) => m,
            None => Default::default(),
            Some(other) => return Err(bad(format!("params_json must be an object, not {other}"))),
        };
        // The SDKs name the action among the parameters.
        let named = params.remove("action");
        let action = if req.action_id.is_empty() {
            named
                .and_then(|a| a.as_str().map(str::to_owned))
                .unwrap_or_default()
        } else {
            req.action_id.clone()
        };
        if action.is_empty() {
            return Err(bad(
                "name the action in `action_id` or params[\"action\"]".into()
            ));
        }
        let agents = &self.state.engine.agents;
        let Some(reach) = agents.permission_of(&caller) else {
            return Err(Status::permission_denied(format!(
                "`{caller}` is not a registered plugin: only registered plugins call others"
            )));
        };
        let (instance, spec) = match agents.pick(&req.target_plugin, &action) {
            Ok(found) => found,
            Err(e) => return failed(e.to_string()),
        };
        if spec.permission > reach {
            let message = format!(
                "`{caller}` declares at most {} actions and cannot call `{}/{action}`, which is {}",
                plexus_core::machine::permission_name(reach),
                req.target_plugin,
                plexus_core::machine::permission_name(spec.permission)
            );
            self.refuse_call(&who.actor, &message).await;
            return Err(Status::permission_denied(message));
        }
        let in_step = agents.approvals.call_of_agent(&caller);
        let timeout = match req.timeout_seconds {
            t if t > 0 => std::time::Duration::from_secs(t as u64),
            _ => agents.config.default_deadline,
        };
        if spec.permission >= Permission::Modify {
            let Some((run, _)) = &in_step else {
                return Err(Status::failed_precondition(format!(
                    "`{}/{action}` is {} and needs an approval, which belongs to a step: call it while `{caller}` runs one",
                    req.target_plugin,
                    plexus_core::machine::permission_name(spec.permission)
                )));
            };
            let description = format!("`{caller}` calls `{}/{action}`", req.target_plugin);
            audit(
                self.state.store.as_ref(),
                &who.actor,
                "agent.approval_requested",
                &format!("run:{run}"),
                json!({"agent": caller, "description": description, "permission": spec.permission}),
            )
            .await;
            let (_, decision) = agents
                .approvals
                .request(
                    run,
                    &caller,
                    &description,
                    spec.permission,
                    json!({"target": req.target_plugin, "action": action, "params": params}),
                    std::time::Duration::from_secs(3600),
                    crate::now_ms(),
                )
                .await;
            match decision {
                Some(d) if d.approved => {}
                Some(d) => return failed(format!("{} rejected the call: {}", d.by, d.comment)),
                None => return failed("nobody decided in time".into()),
            }
        }
        let (execution_id, step_id) = in_step.unwrap_or_default();
        let outcome = agents
            .execute(
                &instance,
                &spec,
                plexus_engine::agents::ActionCall {
                    execution_id,
                    step_id,
                    params,
                    mode: wire::mode::GUIDED,
                    context: BTreeMap::from([("caller_plugin".to_owned(), caller.clone())]),
                    time_range: req.time_range.clone(),
                    tenant_id: tenant,
                    deadline: timeout,
                },
            )
            .await;
        Ok(wire::encode(&match outcome {
            plexus_core::machine::Outcome::Success(result) => wire::CallPluginResponse {
                success: true,
                result_json: Blob::json(&result, style),
                ..Default::default()
            },
            plexus_core::machine::Outcome::Failure { error, output } => wire::CallPluginResponse {
                success: false,
                error,
                result_json: if output.is_null() {
                    Blob::default()
                } else {
                    Blob::json(&output, style)
                },
                ..Default::default()
            },
        }))
    }

    async fn refuse_call(&self, actor: &str, message: &str) {
        audit(
            self.state.store.as_ref(),
            actor,
            "permission.denied",
            "grpc EngineService",
            json!({"reason": message}),
        )
        .await;
    }

    async fn log_event(&self, call: Call, who: &Plugin) -> Result<Json, Status> {
        let req: wire::LogEventRequest = wire::decode(call.body).map_err(bad)?;
        let data = req
            .data_json
            .to_json()
            .unwrap_or_else(|_| Some(Json::String(req.data_json.0.clone())))
            .unwrap_or(Json::Null);
        let event = if req.event_type.trim().is_empty() {
            "event".to_owned()
        } else {
            req.event_type.clone()
        };
        let name = if req.plugin_name.is_empty() {
            body_name(&Json::Null)
        } else {
            req.plugin_name.clone()
        };
        let entry = plexus_core::audit::AuditEntry {
            time: crate::now_ms(),
            actor: who.actor.clone(),
            domain: plexus_core::audit::Domain::Workflow,
            action: format!("agent.event.{}", sanitize(&event)),
            target: format!("agent:{name}"),
            details: json!({"severity": req.severity, "event": event, "data": data}).to_string(),
        };
        self.state
            .store
            .append_audit(entry)
            .await
            .map_err(|e| Status::unavailable(format!("the audit log cannot be written: {e}")))?;
        Ok(wire::encode(&wire::Acknowledged { acknowledged: true }))
    }
}

/// A plugin's settings (`plugin.<name>.<key>`) with secrets opened — for the plugin
/// alone — and values as text; the version is the time of the newest change.
pub async fn config_of(
    state: &AppState,
    name: &str,
) -> Result<(BTreeMap<String, String>, i64), Status> {
    let prefix = format!("plugin.{name}.");
    let all = state
        .store
        .settings()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut config = BTreeMap::new();
    let mut version = 0;
    for s in all.iter().filter(|s| s.key.starts_with(&prefix)) {
        let value = crate::settings::value(state, &s.key)
            .await
            .map_err(|e| Status::internal(e.message))?
            .unwrap_or(Json::Null);
        let text = match value {
            Json::String(s) => s,
            other => other.to_string(),
        };
        config.insert(s.key[prefix.len()..].to_owned(), text);
        version = version.max(s.updated_at as i64);
    }
    Ok((config, version))
}

/// An audit action is a dotted name: keep what an agent sends readable and bounded.
fn sanitize(event: &str) -> String {
    event
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The plugin a request names in its body (the Python SDK sends no metadata).
fn body_name(body: &Json) -> String {
    ["name", "plugin_name", "caller_plugin"]
        .iter()
        .find_map(|k| body.get(k).and_then(Json::as_str).filter(|s| !s.is_empty()))
        .unwrap_or("unknown")
        .to_owned()
}

impl Handler for EngineService {
    async fn call(&self, call: Call) -> Result<Json, Status> {
        if !METHODS.contains(&call.method.as_str()) {
            return Err(Status::unimplemented(format!(
                "EngineService has no method `{}`",
                call.method
            )));
        }
        let who = self.authorize(&call).await?;
        let style = call.style;
        let tenant = |t: &str| {
            if t.is_empty() {
                plexus_agent::tenant_id(plexus_agent::DEFAULT_TENANT_SLUG)
            } else {
                t.to_owned()
            }
        };
        let plugin = match &who.bound {
            Some(own) => {
                let named = ["name", "plugin_name", "caller_plugin"]
                    .iter()
                    .filter_map(|k| call.body.get(k).and_then(Json::as_str))
                    .chain(call.header("x-plugin-name"))
                    .find(|n| !n.is_empty() && n != own);
                if let Some(other) = named {
                    let message = format!(
                        "this key acts for the plugin `{own}` (its user's name), not `{other}`"
                    );
                    self.refuse_call(&who.actor, &message).await;
                    return Err(Status::permission_denied(message));
                }
                own.clone()
            }
            None => call
                .header("x-plugin-name")
                .map(str::to_owned)
                .unwrap_or_else(|| body_name(&call.body)),
        };
        match call.method.as_str() {
            "RegisterPlugin" => self.register(call, &who).await,
            "DeregisterPlugin" => {
                let req: wire::DeregisterPluginRequest = wire::decode(call.body).map_err(bad)?;
                if self
                    .state
                    .engine
                    .agents
                    .deregister(&req.name, &req.instance_id)
                {
                    audit(
                        self.state.store.as_ref(),
                        &who.actor,
                        "agent.deregistered",
                        &format!("agent:{}", req.name),
                        json!({"instance_id": req.instance_id}),
                    )
                    .await;
                }
                Ok(wire::encode(&wire::Acknowledged { acknowledged: true }))
            }
            "Heartbeat" => {
                let req: wire::HeartbeatRequest = wire::decode(call.body).map_err(bad)?;
                let agents = &self.state.engine.agents;
                let known = agents.heartbeat(&req.name, &req.instance_id);
                // An unknown instance gets OK and a request to register (the SDKs only
                // log errors, so NOT_FOUND would leave it unregistered for good).
                Ok(wire::encode(&wire::HeartbeatResponse {
                    acknowledged: true,
                    re_register_required: !known,
                    heartbeat_interval_seconds: agents.config.heartbeat_interval.as_secs() as i32,
                }))
            }
            "GetConfig" => {
                let req: wire::GetConfigRequest = wire::decode(call.body).map_err(bad)?;
                let name = if req.plugin_name.is_empty() {
                    plugin
                } else {
                    req.plugin_name
                };
                let (config, version) = config_of(&self.state, &name).await?;
                Ok(wire::encode(&wire::GetConfigResponse {
                    config_json: serde_json::to_string(&config).unwrap_or_default(),
                    config,
                    version,
                }))
            }
            "CacheGet" => {
                let req: wire::CacheGetRequest = wire::decode(call.body).map_err(bad)?;
                let value = self.cache.get(&tenant(&req.tenant_id), &plugin, &req.key);
                Ok(wire::encode(&wire::CacheGetResponse {
                    found: value.is_some(),
                    value: value.map(|v| Blob::encode(&v, style)).unwrap_or_default(),
                }))
            }
            "CacheGetBatch" => {
                let req: wire::CacheGetBatchRequest = wire::decode(call.body).map_err(bad)?;
                let t = tenant(&req.tenant_id);
                let entries = req
                    .keys
                    .into_iter()
                    .map(|key| {
                        let value = self.cache.get(&t, &plugin, &key);
                        wire::CacheEntry {
                            key,
                            found: value.is_some(),
                            value: value.map(|v| Blob::encode(&v, style)).unwrap_or_default(),
                        }
                    })
                    .collect();
                Ok(wire::encode(&wire::CacheGetBatchResponse { entries }))
            }
            "CacheSet" => {
                let req: wire::CacheSetRequest = wire::decode(call.body).map_err(bad)?;
                let ttl = (req.ttl_seconds > 0)
                    .then(|| std::time::Duration::from_secs(req.ttl_seconds as u64));
                let stored = self.cache.set(
                    &tenant(&req.tenant_id),
                    &plugin,
                    &req.key,
                    req.value.bytes(style),
                    ttl,
                );
                Ok(wire::encode(&wire::CacheSetResponse { success: stored }))
            }
            "PublishResult" => {
                let req: wire::PublishResultRequest = wire::decode(call.body).map_err(bad)?;
                tracing::info!(
                    agent = %plugin, execution = %req.execution_id, success = req.success,
                    "agent published a result"
                );
                Ok(wire::encode(&wire::Acknowledged { acknowledged: true }))
            }
            "LogEvent" => self.log_event(call, &who).await,
            "RequestApproval" => self.request_approval(call, &who, &plugin).await,
            "CallPlugin" => self.call_plugin(call, &who, &plugin).await,
            "ListKPIs" => Ok(json!({"kpis": []})),
            "GetKPI" => Ok(json!({})),
            other => Err(Status::unimplemented(format!(
                "EngineService has no method `{other}`"
            ))),
        }
    }
}
