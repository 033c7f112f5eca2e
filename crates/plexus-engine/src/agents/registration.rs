//! Registration: dial the plugin back, read what it offers (Info, then GetSchema when it
//! answers), check it as the SDKs check themselves, take it in.

use super::{ActionSpec, Agents, Instance, Source};
use plexus_agent::Permission as WirePermission;
use plexus_agent::params::Params;
use plexus_agent::rpc::{Peer, PluginServiceName, ServiceName};
use plexus_agent::wire::{self, Style};
use plexus_core::manifest::Permission;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The plugins' own deadline for a registration is 10 s; the call-back must fit in it.
const INFO_DEADLINE: Duration = Duration::from_secs(5);
const SCHEMA_DEADLINE: Duration = Duration::from_secs(3);

/// Why a plugin was not taken in.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegisterError {
    #[error("{0}")]
    Request(String),
    #[error("cannot read the plugin's Info at {addr}: {error}")]
    Unreachable { addr: String, error: String },
    #[error("the plugin is not valid: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

fn permission(value: i32, action: &str, name: &str) -> Permission {
    if value == wire::permission::UNSPECIFIED {
        tracing::warn!(
            agent = name,
            action,
            "action declares no permission: taken as MODIFY"
        );
    }
    match WirePermission::from_wire(value) {
        WirePermission::Read => Permission::Read,
        WirePermission::Modify => Permission::Modify,
        WirePermission::Admin => Permission::Admin,
    }
}

/// The problems the SDKs' own start-up checks would find.
fn problems(info: &wire::InfoResponse) -> Vec<String> {
    let mut out = Vec::new();
    if info.name.trim().is_empty() {
        out.push("the name is empty".to_owned());
    }
    if info.version.trim().is_empty() {
        out.push("the version is empty".to_owned());
    }
    if info.description.trim().is_empty() {
        out.push("the description is empty".to_owned());
    }
    if info.devops_stages.is_empty() {
        out.push("no DevOps stage is declared".to_owned());
    }
    if info.actions.is_empty() {
        out.push("no action is declared".to_owned());
    }
    let mut seen = std::collections::HashSet::new();
    for (i, a) in info.actions.iter().enumerate() {
        if a.id.is_empty() {
            out.push(format!("action {i} has no id"));
            continue;
        }
        if !seen.insert(a.id.as_str()) {
            out.push(format!("action `{}` is declared twice", a.id));
        }
        if a.description.trim().is_empty() {
            out.push(format!("action `{}` has no description", a.id));
        }
        if a.stages.is_empty() {
            out.push(format!("action `{}` declares no DevOps stage", a.id));
        }
    }
    for (i, c) in info.config_schema.iter().enumerate() {
        if c.key.is_empty() {
            out.push(format!("config parameter {i} has no key"));
        } else if c.description.trim().is_empty() {
            out.push(format!("config parameter `{}` has no description", c.key));
        }
    }
    out
}

/// The actions, from GetSchema's when it sent any, else from Info's.
fn actions(
    name: &str,
    info: &wire::InfoResponse,
    schema: Option<&wire::GetSchemaResponse>,
) -> Result<BTreeMap<String, ActionSpec>, Vec<String>> {
    let defs = match schema {
        Some(s) if !s.actions.is_empty() => &s.actions,
        _ => &info.actions,
    };
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    for def in defs {
        let params = def
            .input_params
            .to_json()
            .and_then(Params::from_declared)
            .map_err(|e| format!("action `{}`: input_params: {e}", def.id));
        let params = match params {
            Ok(p) => p,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let validator = match jsonschema::validator_for(&params.schema) {
            Ok(v) => v,
            Err(e) => {
                errors.push(format!(
                    "action `{}`: its parameter schema is not valid: {e}",
                    def.id
                ));
                continue;
            }
        };
        let output_schema = match def.output_params.to_json() {
            Ok(Some(v)) => Some(v),
            _ => None,
        };
        out.insert(
            def.id.clone(),
            ActionSpec {
                id: def.id.clone(),
                description: def.description.clone(),
                permission: permission(def.permission, &def.id, name),
                params,
                validator: Arc::new(validator),
                output_schema,
                intents: def.intents.clone(),
            },
        );
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

impl Agents {
    /// Handles RegisterPlugin: reads the plugin at `req.grpc_addr` and takes it in;
    /// answers the plugin id.
    pub async fn register(
        &self,
        req: &wire::RegisterPluginRequest,
        style: Style,
        caller: Option<std::net::IpAddr>,
    ) -> Result<String, RegisterError> {
        if req.name.trim().is_empty() {
            return Err(RegisterError::Request("`name` is empty".into()));
        }
        if req.grpc_addr.trim().is_empty() {
            return Err(RegisterError::Request(
                "`grpc_addr` is empty: the engine must be able to call the plugin".into(),
            ));
        }
        let instance_id = if req.instance_id.is_empty() {
            // Without an id, an instance is its address.
            req.grpc_addr.clone()
        } else {
            req.instance_id.clone()
        };
        let read = self
            .read(
                &req.name,
                &req.grpc_addr,
                &instance_id,
                style,
                Source::Registered,
            )
            .await;
        let instance = match read {
            Err(RegisterError::Unreachable { addr, error }) => {
                // The SDKs advertise `hostname:port` by default; where the hostname does
                // not resolve, the address the plugin called from, at that port, does.
                let port = req
                    .grpc_addr
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse().ok());
                let (Some(ip), Some(port)) = (caller, port) else {
                    return Err(RegisterError::Unreachable { addr, error });
                };
                let fallback = std::net::SocketAddr::new(ip, port).to_string();
                tracing::info!(agent = %req.name, advertised = %addr, %error, %fallback, "dialling the caller's address instead");
                self.read(
                    &req.name,
                    &fallback,
                    &instance_id,
                    style,
                    Source::Registered,
                )
                .await
                .map_err(|_| RegisterError::Unreachable { addr, error })?
            }
            other => other?,
        };
        self.insert(instance);
        Ok(plugin_id(&req.name))
    }

    /// Dials a plugin at `addr` whatever its name (from its Info) and takes it in.
    pub async fn dial_any(&self, addr: &str) -> Result<(), RegisterError> {
        let peer = Peer::lazy(PluginServiceName::NAME, addr)
            .map_err(|e| RegisterError::Request(e.to_string()))?;
        let info = peer
            .call("Info", serde_json::json!({}), INFO_DEADLINE)
            .await
            .map_err(|e| RegisterError::Unreachable {
                addr: addr.to_owned(),
                error: e.to_string(),
            })?;
        let name = info["name"].as_str().unwrap_or_default().to_owned();
        if name.is_empty() {
            return Err(RegisterError::Invalid(vec!["the name is empty".into()]));
        }
        self.dial(&name, addr).await
    }

    /// Dials a statically configured plugin (`plugins.external`) and takes it in.
    pub async fn dial(&self, name: &str, addr: &str) -> Result<(), RegisterError> {
        let instance = self
            .read(name, addr, addr, Style::Go, Source::Static)
            .await?;
        if self
            .list()
            .iter()
            .any(|i| i.name == name && i.source == Source::Registered)
        {
            // It registered itself meanwhile: that wins.
            return Ok(());
        }
        self.insert(instance);
        Ok(())
    }

    async fn read(
        &self,
        name: &str,
        addr: &str,
        instance_id: &str,
        style: Style,
        source: Source,
    ) -> Result<Instance, RegisterError> {
        let peer = Peer::lazy(PluginServiceName::NAME, addr)
            .map_err(|e| RegisterError::Request(e.to_string()))?;
        let info = peer
            .call("Info", serde_json::json!({}), INFO_DEADLINE)
            .await
            .map_err(|e| RegisterError::Unreachable {
                addr: addr.to_owned(),
                error: e.to_string(),
            })?;
        let info: wire::InfoResponse =
            wire::decode(info).map_err(|e| RegisterError::Unreachable {
                addr: addr.to_owned(),
                error: e,
            })?;
        // The published Python SDK cannot answer GetSchema: Info alone must do.
        let schema = match peer
            .call("GetSchema", serde_json::json!({}), SCHEMA_DEADLINE)
            .await
        {
            Ok(v) => wire::decode::<wire::GetSchemaResponse>(v).ok(),
            Err(e) => {
                tracing::debug!(agent = name, error = %e, "GetSchema failed: using Info's actions");
                None
            }
        };
        let mut errors = problems(&info);
        if !info.name.is_empty() && info.name != name {
            errors.push(format!(
                "it registers as `{name}` but its Info says `{}`",
                info.name
            ));
        }
        let actions = match actions(name, &info, schema.as_ref()) {
            Ok(a) => a,
            Err(e) => {
                errors.extend(e);
                BTreeMap::new()
            }
        };
        if !errors.is_empty() {
            return Err(RegisterError::Invalid(errors));
        }
        Ok(Instance {
            name: name.to_owned(),
            instance_id: instance_id.to_owned(),
            addr: addr.to_owned(),
            version: info.version.clone(),
            description: info.description.clone(),
            style,
            source,
            actions,
            info,
            registered_at: crate::now_ms(),
            healthy: true,
            health_message: String::new(),
            last_seen: Instant::now(),
            link: super::Link::Plugin(peer),
        })
    }
}

/// A stable id per plugin name.
fn plugin_id(name: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("plexus-plugin:{name}").as_bytes(),
    )
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info(v: serde_json::Value) -> wire::InfoResponse {
        wire::decode(v).unwrap()
    }

    #[test]
    fn a_plugin_is_checked_as_the_sdks_check_themselves() {
        let bad = info(json!({
            "name": "x", "version": "", "description": " ",
            "actions": [{"id": "a", "description": "", "stages": [7]}, {"id": "a", "description": "d", "stages": []}],
            "config_schema": [{"key": "url"}]
        }));
        let p = problems(&bad);
        for needle in [
            "version is empty",
            "description is empty",
            "no DevOps stage",
            "`a` has no description",
            "`a` is declared twice",
            "`a` declares no DevOps stage",
            "`url` has no description",
        ] {
            assert!(p.iter().any(|m| m.contains(needle)), "{needle} in {p:?}");
        }
        let good = info(json!({
            "name": "x", "version": "1", "description": "d", "devops_stages": [8],
            "actions": [{"id": "a", "description": "d", "stages": [8], "permission": 1}]
        }));
        assert!(problems(&good).is_empty());
    }

    #[test]
    fn actions_come_from_get_schema_when_it_answers_and_permissions_default_to_modify() {
        let i = info(json!({
            "name": "x", "actions": [{"id": "from_info", "permission": 0}]
        }));
        let from_info = actions("x", &i, None).unwrap();
        assert_eq!(from_info["from_info"].permission, Permission::Modify);
        let list = json!([{"Name": "query", "Type": "string", "Required": true}]);
        let schema: wire::GetSchemaResponse = wire::decode(json!({
            "actions": [{"id": "q", "permission": 1,
                "input_params": wire::Blob::json(&list, Style::Go).0}]
        }))
        .unwrap();
        let a = actions("x", &i, Some(&schema)).unwrap();
        assert_eq!(a.keys().collect::<Vec<_>>(), ["q"]);
        assert_eq!(a["q"].permission, Permission::Read);
        assert_eq!(a["q"].check(&json!({})).len(), 1, "query is required");
        assert!(a["q"].check(&json!({"query": "up"})).is_empty());
    }
}
