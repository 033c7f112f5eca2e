//! `/api/v1/settings`: runtime settings kept in the store. A secret value (a provider's
//! API key...) is sealed before it is stored and never comes back out of the API, the
//! logs or the audit log: responses say only that it is set.

use crate::auth::{Caller, audit};
use crate::body;
use crate::error::{ApiError, ApiResult};
use crate::{AppState, now_ms};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use plexus_store::auth::Setting;
use serde::Deserialize;
use serde_json::{Value as Json_, json};

/// Settings with a fixed meaning, and what their value must be.
const KNOWN: &[(&str, &str)] = &[
    (
        "execution_mode",
        "manual | guided | autonomous: the mode of workflows that do not set one",
    ),
    (
        "approvals.forbid_self_approval",
        "true | false: nobody approves a step of a run they started",
    ),
    (
        "steps.require_isolation",
        "true | false: refuse to start steps where they cannot be isolated from the data directory",
    ),
    (
        "llm.default_provider",
        "the name of the LLM provider `llm` steps use when they name none",
    ),
    (
        "budgets.agentic_max_iterations",
        "a positive integer (default 10): model calls an agentic loop or an `llm` step with tools may make",
    ),
    (
        "budgets.agentic_max_tool_calls",
        "a positive integer (default 15): tool calls an agentic loop may make, refused ones included",
    ),
    (
        "budgets.agentic_max_tokens",
        "a positive integer (default 50000): tokens an agentic loop may use over all its model calls",
    ),
    (
        "budgets.gateway_max_tokens_per_day",
        "a positive integer (no limit when unset): tokens each user may use per day (UTC) through the gateway and their runs' llm steps",
    ),
    (
        "llm.audit_prompts",
        "true | false (default false): the gateway's audit records hold what was asked",
    ),
    (
        "llm.prices",
        "{\"MODEL or PROVIDER/MODEL\": {\"prompt\": USD, \"completion\": USD}} per million tokens: what model calls cost",
    ),
    (
        "intents.embeddings",
        "the name of a provider whose embeddings `plexus ask` uses besides the words (unset: words only)",
    ),
    (
        "intents.min_score",
        "a number from 0 to 1 (default 0.6): the score from which `plexus ask` runs the best match",
    ),
    (
        "plugins.allow_loopback_unauthenticated",
        "true | false (default true): agent plugins on this machine may register without a key",
    ),
];
/// The name a key is stored under: the seed engine's CLI wrote the fixed settings with
/// dashes (`execution-mode`), which name the same settings as underscores. Other keys
/// (under open namespaces, named by their users) keep their own spelling.
fn canonical(key: String) -> String {
    let underscored = key.replace('-', "_");
    if KNOWN.iter().any(|(k, _)| *k == underscored) {
        underscored
    } else {
        key
    }
}

/// Namespaces open to any key below them.
const OPEN: &[&str] = &["budgets.", "providers.", "plugin.", "mcp."];

use plexus_core::secrets::names_secret;

/// Whether a value must be sealed: its own name, or the name of any key at any depth
/// inside it, names a secret (and holds more than a number or a flag).
fn looks_secret(key: &str, value: &Json_) -> bool {
    fn holds_secret(name: &str, value: &Json_) -> bool {
        let named = names_secret(name) && !matches!(value, Json_::Number(_) | Json_::Bool(_));
        named
            || match value {
                Json_::Object(map) => map.iter().any(|(k, v)| holds_secret(k, v)),
                Json_::Array(items) => items.iter().any(|v| holds_secret("", v)),
                _ => false,
            }
    }
    let last = key.rsplit('.').next().unwrap_or(key);
    holds_secret(last, value)
}

fn check(key: &str, value: &Json_) -> ApiResult<()> {
    let bad = |m: String| Err(ApiError::bad_request(m));
    match key {
        "execution_mode" => match value.as_str() {
            Some("manual" | "guided" | "autonomous") => Ok(()),
            _ => bad("execution_mode is one of manual, guided, autonomous".into()),
        },
        "approvals.forbid_self_approval" => match value {
            Json_::Bool(_) => Ok(()),
            _ => bad("approvals.forbid_self_approval is true or false".into()),
        },
        "steps.require_isolation"
        | "plugins.allow_loopback_unauthenticated"
        | "llm.audit_prompts" => match value {
            Json_::Bool(_) => Ok(()),
            _ => bad(format!("{key} is true or false")),
        },
        k if k.starts_with("plugin.") && k.matches('.').count() < 2 => bad(format!(
            "`{k}` names no key: plugin settings are plugin.<agent>.<key>"
        )),
        k if k.starts_with("mcp.") => mcp_config(k, value).map(|_| ()),
        "budgets.agentic_max_iterations"
        | "budgets.agentic_max_tool_calls"
        | "budgets.agentic_max_tokens"
        | "budgets.gateway_max_tokens_per_day" => match value.as_u64() {
            Some(n) if n > 0 => Ok(()),
            _ => bad(format!("{key} is a positive integer")),
        },
        "llm.prices" => serde_json::from_value::<plexus_llm::Prices>(value.clone())
            .map(|_| ())
            .map_err(|e| {
                ApiError::bad_request(format!(
                    "llm.prices maps models to {{prompt, completion}} prices per million tokens: {e}"
                ))
            }),
        "intents.min_score" => match value.as_f64() {
            Some(n) if (0.0..=1.0).contains(&n) => Ok(()),
            _ => bad("intents.min_score is a number from 0 to 1".into()),
        },
        "intents.embeddings" => match value {
            Json_::String(_) => Ok(()),
            _ => bad("intents.embeddings is the name of a provider".into()),
        },
        "llm.default_provider" => match value {
            Json_::String(_) => Ok(()),
            _ => bad("llm.default_provider is the name of a provider".into()),
        },
        k if is_provider(k, value) => provider_config(k, value).map(|_| ()),
        k if OPEN.iter().any(|p| k.starts_with(p) && k.len() > p.len()) => Ok(()),
        k => {
            let known: Vec<&str> = KNOWN.iter().map(|(k, _)| *k).collect();
            bad(format!(
                "unknown setting `{k}`; settings are {} and keys under {}",
                known.join(", "),
                OPEN.join(", ")
            ))
        }
    }
}

fn shown(s: &Setting) -> Json_ {
    let value = if s.secret {
        json!({"set": true})
    } else {
        serde_json::from_str(&s.value).unwrap_or(Json_::Null)
    };
    json!({"key": s.key, "value": value, "secret": s.secret, "updated_at": s.updated_at, "updated_by": s.updated_by})
}

pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Json_>> {
    let all = state.store.settings().await?;
    let known: Vec<Json_> = KNOWN
        .iter()
        .map(|(k, about)| json!({"key": k, "about": about}))
        .collect();
    Ok(Json(json!({
        "settings": all.iter().map(shown).collect::<Vec<_>>(),
        "known": known,
        "open_namespaces": OPEN,
    })))
}

pub async fn get(State(state): State<AppState>, Path(key): Path<String>) -> ApiResult<Json<Json_>> {
    let key = canonical(key);
    let all = state.store.settings().await?;
    let s = all
        .iter()
        .find(|s| s.key == key)
        .ok_or_else(|| ApiError::not_found(format!("setting `{key}` is not set")))?;
    Ok(Json(shown(s)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Put {
    value: Json_,
    #[serde(default)]
    secret: bool,
}

pub async fn put(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
    body: Body,
) -> ApiResult<Json<Json_>> {
    let key = canonical(key);
    let bytes = body::read(body, body::SMALL).await?;
    let req: Put = body::json(&bytes)?;
    check(&key, &req.value)?;
    let secret = req.secret || looks_secret(&key, &req.value);
    let text = req.value.to_string();
    let digest = crate::auth::credentials::sha256_hex(&text);
    let stored = if secret {
        state.auth.sealer.seal(&key, &text)
    } else {
        text
    };
    let setting = Setting {
        key: key.clone(),
        value: stored,
        secret,
        updated_at: now_ms(),
        updated_by: caller.actor(),
    };
    state.store.put_setting(setting.clone()).await?;
    forget_cached(&state);
    apply_to_engine(&state).await?;
    push_plugin_config(&state, &key);
    apply_mcp(&state, &key).await?;
    // The audit record names the setting and a digest of its value, never the value:
    // whether a value is secret is a guess from its names, and a guess must not leak.
    let details = json!({
        "secret": secret,
        "sha256": digest,
    });
    audit(
        state.store.as_ref(),
        &caller.actor(),
        "setting.changed",
        &format!("setting:{key}"),
        details,
    )
    .await;
    Ok(Json(shown(&setting)))
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
) -> ApiResult<Json<Json_>> {
    let key = canonical(key);
    if !state.store.delete_setting(&key).await? {
        return Err(ApiError::not_found(format!("setting `{key}` is not set")));
    }
    forget_cached(&state);
    apply_to_engine(&state).await?;
    push_plugin_config(&state, &key);
    apply_mcp(&state, &key).await?;
    audit(
        state.store.as_ref(),
        &caller.actor(),
        "setting.deleted",
        &format!("setting:{key}"),
        json!({}),
    )
    .await;
    Ok(Json(json!({"key": key, "deleted": true})))
}

/// Settings as stored, through the short-lived cache.
async fn cached(state: &AppState) -> ApiResult<Vec<Setting>> {
    if let Ok(cache) = state.auth.settings_cache.lock()
        && let Some((at, all)) = cache.as_ref()
        && at.elapsed() < crate::auth::SETTINGS_TTL
    {
        return Ok(all.clone());
    }
    let all = state.store.settings().await?;
    if let Ok(mut cache) = state.auth.settings_cache.lock() {
        *cache = Some((std::time::Instant::now(), all.clone()));
    }
    Ok(all)
}

/// Hands the settings the engine acts on to it (at start, and when one changes here).
pub async fn apply_to_engine(state: &AppState) -> ApiResult<()> {
    let required = value(state, "steps.require_isolation").await? == Some(json!(true));
    state.engine.set_require_isolation(required);
    apply_providers(state).await
}

/// `providers.<name>` holding `{kind, ...}` configures an LLM provider; other keys under
/// `providers.` are free (for plugins and future runtimes).
fn is_provider(key: &str, value: &Json_) -> bool {
    key.strip_prefix("providers.")
        .is_some_and(|n| !n.contains('.'))
        && value.get("kind").is_some()
}

fn provider_config(key: &str, value: &Json_) -> ApiResult<plexus_llm::ProviderConfig> {
    let config: plexus_llm::ProviderConfig = serde_json::from_value(value.clone())
        .map_err(|e| ApiError::bad_request(format!("`{key}`: {e}")))?;
    if config.kind == "plugin" {
        if config.plugin.as_deref().is_none_or(str::is_empty) {
            return Err(ApiError::bad_request(format!(
                "`{key}`: a provider of kind plugin names its plugin (`plugin`)"
            )));
        }
        return Ok(config);
    }
    config
        .build()
        .map_err(|e| ApiError::bad_request(format!("`{key}`: {e}")))?;
    Ok(config)
}

/// The provider a configuration describes; provider plugins are reached through the
/// engine's agents.
fn build_provider(
    state: &AppState,
    config: &plexus_llm::ProviderConfig,
) -> Result<std::sync::Arc<dyn plexus_llm::Provider>, String> {
    match (config.kind.as_str(), &config.plugin) {
        ("plugin", Some(plugin)) => Ok(std::sync::Arc::new(
            plexus_engine::agents::provider::PluginProvider::new(
                state.engine.agents.clone(),
                plugin,
                &config.model,
            ),
        )),
        _ => config.build().map_err(|e| e.to_string()),
    }
}

/// Hands the LLM providers the settings describe to the engine.
async fn apply_providers(state: &AppState) -> ApiResult<()> {
    let keys: Vec<String> = cached(state)
        .await?
        .into_iter()
        .map(|s| s.key)
        .filter(|k| k.starts_with("providers."))
        .collect();
    let mut providers = std::collections::BTreeMap::new();
    for key in keys {
        let Some(value) = value(state, &key).await? else {
            continue;
        };
        if !is_provider(&key, &value) {
            continue;
        }
        // The API key is a setting of its own (`providers.<name>.api_key`, sealed), so
        // that the rest of the configuration can be shown.
        let mut value = value;
        if value.get("api_key").is_none()
            && let Some(k) = crate::settings::value(state, &format!("{key}.api_key")).await?
        {
            value["api_key"] = k;
        }
        match provider_config(&key, &value)
            .and_then(|c| build_provider(state, &c).map_err(ApiError::bad_request))
        {
            Ok(p) => {
                providers.insert(key["providers.".len()..].to_owned(), p);
            }
            Err(e) => tracing::warn!(setting = %key, error = %e.message, "LLM provider not usable"),
        }
    }
    let default = value(state, "llm.default_provider")
        .await?
        .and_then(|v| v.as_str().map(str::to_owned));
    state.engine.llm.set(providers, default);
    let n = |v: Option<Json_>| v.and_then(|v| v.as_u64());
    let defaults = plexus_llm::Budget::default();
    let budget = plexus_llm::Budget {
        max_iterations: n(value(state, "budgets.agentic_max_iterations").await?)
            .map_or(defaults.max_iterations, |v| v as u32),
        max_tool_calls: n(value(state, "budgets.agentic_max_tool_calls").await?)
            .map_or(defaults.max_tool_calls, |v| v as u32),
        max_tokens: n(value(state, "budgets.agentic_max_tokens").await?)
            .unwrap_or(defaults.max_tokens),
    };
    state.engine.llm.set_budget(budget);
    let prices = value(state, "llm.prices")
        .await?
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    state.engine.llm.set_prices(prices);
    Ok(())
}

/// `mcp.<name>`: an MCP server run as the agent `name`.
fn mcp_config(
    key: &str,
    value: &Json_,
) -> ApiResult<(String, plexus_engine::agents::mcp::McpConfig)> {
    let name = key.strip_prefix("mcp.").unwrap_or_default();
    if name.is_empty() || name.contains('.') {
        return Err(ApiError::bad_request(format!(
            "`{key}`: MCP servers are set as mcp.<agent name> (no dots in the name)"
        )));
    }
    let config: plexus_engine::agents::mcp::McpConfig = serde_json::from_value(value.clone())
        .map_err(|e| ApiError::bad_request(format!("`{key}`: {e}")))?;
    config
        .check()
        .map_err(|e| ApiError::bad_request(format!("`{key}`: {e}")))?;
    Ok((name.to_owned(), config))
}

/// Starts (or stops) the MCP server a changed `mcp.<name>` setting describes.
async fn apply_mcp(state: &AppState, key: &str) -> ApiResult<()> {
    let Some(name) = key.strip_prefix("mcp.") else {
        return Ok(());
    };
    match value(state, key).await? {
        Some(v) => {
            let (name, config) = mcp_config(key, &v)?;
            state.engine.mcp.apply(&name, Some(config));
        }
        None => state.engine.mcp.apply(name, None),
    }
    Ok(())
}

/// Starts every MCP server the settings describe (at start-up).
pub async fn start_mcp(state: &AppState) -> ApiResult<usize> {
    let keys: Vec<String> = state
        .store
        .settings()
        .await?
        .into_iter()
        .filter(|s| s.key.starts_with("mcp."))
        .map(|s| s.key)
        .collect();
    for key in &keys {
        if let Err(e) = apply_mcp(state, key).await {
            tracing::warn!(setting = %key, error = %e.message, "MCP server not started");
        }
    }
    Ok(keys.len())
}

/// After a change to `plugin.<name>.<key>`: the agent's instances get their whole
/// configuration again (ConfigUpdated), in the background.
fn push_plugin_config(state: &AppState, key: &str) {
    let Some(name) = key
        .strip_prefix("plugin.")
        .and_then(|rest| rest.split_once('.'))
        .map(|(name, _)| name.to_owned())
    else {
        return;
    };
    let state = state.clone();
    tokio::spawn(async move {
        match crate::plugins::config_of(&state, &name).await {
            Ok((config, version)) => {
                let n = state
                    .engine
                    .agents
                    .push_config(&name, config, version)
                    .await;
                tracing::info!(agent = %name, acknowledged = n, "configuration pushed");
            }
            Err(e) => {
                tracing::warn!(agent = %name, error = %e, "cannot read the configuration to push")
            }
        }
    });
}

fn forget_cached(state: &AppState) {
    if let Ok(mut cache) = state.auth.settings_cache.lock() {
        *cache = None;
    }
}

/// A setting's value for the server's own use (secrets opened); `None` when unset.
pub async fn value(state: &AppState, key: &str) -> ApiResult<Option<Json_>> {
    let all = cached(state).await?;
    let Some(s) = all.into_iter().find(|s| s.key == key) else {
        return Ok(None);
    };
    let text = if s.secret {
        state.auth.sealer.open(key, &s.value).ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("setting `{key}` cannot be opened with this server's secrets key"),
            )
        })?
    } else {
        s.value
    };
    Ok(serde_json::from_str(&text).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_found_by_the_names_at_any_depth() {
        let secret = |k: &str, v: Json_| looks_secret(k, &v);
        assert!(secret("providers.openai.api_key", json!("sk-1")));
        assert!(secret(
            "providers.db",
            json!({"host": "h", "password": "p"})
        ));
        assert!(secret("providers.db", json!({"conn": {"authToken": "t"}})));
        assert!(secret("providers.db", json!([{"clientSecret": "s"}])));
        assert!(secret("providers.x", json!({"credentials": {"user": "u"}})));
        assert!(!secret("budgets.agentic_max_tokens", json!(50000)));
        assert!(!secret(
            "providers.openai",
            json!({"base_url": "http://h", "model": "m"})
        ));
        assert!(!secret("execution_mode", json!("guided")));
        assert!(!secret(
            "providers.x",
            json!({"monkey": "banana", "keyboard": "us"})
        ));
    }
}
