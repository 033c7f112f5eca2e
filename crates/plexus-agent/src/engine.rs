//! The engine as an agent calls it back (`EngineService`): registration, heartbeats,
//! configuration, cache, approvals, audit events.

use crate::agent::Permission;
use crate::rpc::{CallError, EngineServiceName, Peer, ServiceName};
use crate::wire::{self, Blob, Style};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::time::Duration;

/// Deadline of one registration attempt, as the public SDKs use.
pub const REGISTER_DEADLINE: Duration = Duration::from_secs(10);

/// A connection to the engine, for one agent instance; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    peer: Peer,
    name: String,
    instance_id: String,
    tenant_id: String,
}

/// What the engine answered a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    pub re_register: bool,
    pub interval: Option<Duration>,
}

impl Engine {
    /// The engine at `addr`, for the agent `name`; `api_key` is sent as a bearer token
    /// when given (needed unless the engine lets loopback plugins in unauthenticated).
    pub fn new(
        addr: &str,
        name: &str,
        instance_id: &str,
        tenant_id: &str,
        api_key: Option<&str>,
    ) -> Result<Engine, CallError> {
        let mut peer =
            Peer::lazy(EngineServiceName::NAME, addr)?.with_header("x-plugin-name", name);
        if let Some(key) = api_key {
            peer = peer.with_header("authorization", format!("Bearer {key}"));
        }
        Ok(Engine {
            peer,
            name: name.to_owned(),
            instance_id: instance_id.to_owned(),
            tenant_id: tenant_id.to_owned(),
        })
    }

    pub fn tenant_id(&self) -> &str {
        &self.tenant_id
    }

    async fn call<T: serde::de::DeserializeOwned + Default>(
        &self,
        method: &str,
        body: Json,
        deadline: Duration,
    ) -> Result<T, CallError> {
        let answer = self.peer.call(method, body, deadline).await?;
        wire::decode(answer).map_err(|e| CallError::Status(tonic::Status::internal(e)))
    }

    /// Registers this instance, to be reached at `grpc_addr`; the engine calls back
    /// Info and GetSchema before it answers.
    pub async fn register(&self, version: &str, grpc_addr: &str) -> Result<String, CallError> {
        let answer: wire::RegisterPluginResponse = self
            .call(
                "RegisterPlugin",
                wire::encode(&wire::RegisterPluginRequest {
                    name: self.name.clone(),
                    version: version.to_owned(),
                    grpc_addr: grpc_addr.to_owned(),
                    plugin_type: wire::plugin_type::AGENT,
                    instance_id: self.instance_id.clone(),
                    tenant_id: self.tenant_id.clone(),
                }),
                REGISTER_DEADLINE,
            )
            .await?;
        if answer.success {
            Ok(answer.plugin_id)
        } else {
            Err(CallError::Status(tonic::Status::failed_precondition(
                answer.error,
            )))
        }
    }

    pub async fn heartbeat(&self) -> Result<Beat, CallError> {
        let answer: wire::HeartbeatResponse = self
            .call(
                "Heartbeat",
                wire::encode(&wire::HeartbeatRequest {
                    name: self.name.clone(),
                    instance_id: self.instance_id.clone(),
                }),
                Duration::from_secs(10),
            )
            .await?;
        Ok(Beat {
            re_register: answer.re_register_required,
            interval: (answer.heartbeat_interval_seconds > 0)
                .then(|| Duration::from_secs(answer.heartbeat_interval_seconds as u64)),
        })
    }

    pub async fn deregister(&self) -> Result<(), CallError> {
        let _: wire::Acknowledged = self
            .call(
                "DeregisterPlugin",
                wire::encode(&wire::DeregisterPluginRequest {
                    name: self.name.clone(),
                    instance_id: self.instance_id.clone(),
                }),
                Duration::from_secs(5),
            )
            .await?;
        Ok(())
    }

    /// The agent's configuration (`plexus agent config-set NAME KEY VALUE`).
    pub async fn config(&self) -> Result<BTreeMap<String, String>, CallError> {
        let answer: wire::GetConfigResponse = self
            .call(
                "GetConfig",
                wire::encode(&wire::GetConfigRequest {
                    plugin_name: self.name.clone(),
                    tenant_id: self.tenant_id.clone(),
                }),
                Duration::from_secs(10),
            )
            .await?;
        Ok(answer.config)
    }

    pub async fn cache_get(&self, key: &str) -> Result<Option<Vec<u8>>, CallError> {
        let answer: wire::CacheGetResponse = self
            .call(
                "CacheGet",
                wire::encode(&wire::CacheGetRequest {
                    key: key.to_owned(),
                    tenant_id: self.tenant_id.clone(),
                }),
                Duration::from_secs(10),
            )
            .await?;
        Ok(answer.found.then(|| answer.value.bytes(Style::Go)))
    }

    /// Keeps `value` under `key` for `ttl` (none: until evicted).
    pub async fn cache_set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), CallError> {
        let _: wire::CacheSetResponse = self
            .call(
                "CacheSet",
                wire::encode(&wire::CacheSetRequest {
                    key: key.to_owned(),
                    value: Blob::encode(value, Style::Go),
                    ttl_seconds: ttl.map_or(0, |t| t.as_secs().max(1) as i64),
                    tenant_id: self.tenant_id.clone(),
                }),
                Duration::from_secs(10),
            )
            .await?;
        Ok(())
    }

    /// Asks a person to approve something the action is about to do; blocks until they
    /// decide (or the engine's wait runs out: then `false`).
    pub async fn request_approval(
        &self,
        execution_id: &str,
        description: &str,
        permission: Permission,
        context: &Json,
        wait: Duration,
    ) -> Result<bool, CallError> {
        let answer: wire::RequestApprovalResponse = self
            .call(
                "RequestApproval",
                wire::encode(&wire::RequestApprovalRequest {
                    execution_id: execution_id.to_owned(),
                    description: description.to_owned(),
                    required_permission: permission.wire(),
                    context_json: Blob::json(context, Style::Go),
                    timeout_seconds: wait.as_secs() as i32,
                    tenant_id: self.tenant_id.clone(),
                    ..Default::default()
                }),
                wait + Duration::from_secs(5),
            )
            .await?;
        Ok(answer.approved)
    }

    /// Calls an action of another agent through the engine (which checks this agent may,
    /// and asks a person first when the action is MODIFY or ADMIN). `Ok(Err(message))`
    /// when the action ran and failed.
    pub async fn call_plugin(
        &self,
        target: &str,
        action: &str,
        params: &Json,
        timeout: Duration,
    ) -> Result<Result<Json, String>, CallError> {
        let answer: wire::CallPluginResponse = self
            .call(
                "CallPlugin",
                wire::encode(&wire::CallPluginRequest {
                    caller_plugin: self.name.clone(),
                    target_plugin: target.to_owned(),
                    action_id: action.to_owned(),
                    params_json: Blob::json(params, Style::Go),
                    timeout_seconds: timeout.as_secs() as i32,
                    tenant_id: self.tenant_id.clone(),
                    ..Default::default()
                }),
                timeout + Duration::from_secs(5),
            )
            .await?;
        if !answer.success {
            return Ok(Err(answer.error));
        }
        Ok(Ok(answer
            .result_json
            .to_json()
            .map_err(|e| CallError::Status(tonic::Status::internal(e)))?
            .unwrap_or(Json::Null)))
    }

    /// Writes an event into the engine's audit log.
    pub async fn log_event(
        &self,
        event: &str,
        severity: &str,
        data: &Json,
    ) -> Result<(), CallError> {
        let _: wire::Acknowledged = self
            .call(
                "LogEvent",
                wire::encode(&wire::LogEventRequest {
                    plugin_name: self.name.clone(),
                    event_type: event.to_owned(),
                    data_json: Blob::json(data, Style::Go),
                    severity: severity.to_owned(),
                    tenant_id: self.tenant_id.clone(),
                }),
                Duration::from_secs(10),
            )
            .await?;
        Ok(())
    }
}
