//! `plexus provider ...`: the LLM providers a server's `llm` steps call (settings
//! `providers.<name>`, the API key apart in `providers.<name>.api_key`, sealed).

use crate::http_client::{Client, segment};
use crate::output::{self, Format};
use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::{Value as Json, json};

#[derive(Subcommand)]
pub enum ProviderCommand {
    /// Every provider: name, kind, model, base URL, whether it has a key, the default
    List,
    /// Add (or change) a provider
    Add {
        name: String,
        /// openai: any OpenAI-compatible API (OpenAI, Ollama's /v1, vLLM, llama.cpp, LM
        /// Studio, OpenRouter); anthropic: the Anthropic Messages API; plugin: a provider
        /// plugin registered with the server (--plugin NAME)
        #[arg(long, default_value = "openai")]
        kind: String,
        /// The API's base URL, e.g. https://api.openai.com/v1 or http://127.0.0.1:11434/v1
        #[arg(long, value_name = "URL", required_unless_present = "plugin")]
        base_url: Option<String>,
        /// The provider plugin (with --kind plugin)
        #[arg(long, value_name = "NAME")]
        plugin: Option<String>,
        /// The model steps use unless they name one
        #[arg(long)]
        model: String,
        /// Read the API key from standard input (it is sealed in the store and never shown)
        #[arg(long)]
        api_key_stdin: bool,
        /// Make it the default provider (`llm.default_provider`)
        #[arg(long)]
        default: bool,
    },
    /// Remove a provider and its key
    Remove { name: String },
    /// Ask a provider for a one-word answer, as a one-step run (exit 0 when it answers)
    Test { name: String },
    /// Tokens and cost of model calls (steps, agentic loops, the gateway), summed
    ///
    /// Costs come from the price table, the setting `llm.prices` (USD per million
    /// tokens by model), as it was when each call was made.
    Usage {
        /// What to sum by: user, key, run, provider or model
        #[arg(long, default_value = "user")]
        by: String,
        /// Only calls at or after this time (RFC 3339, e.g. 2026-11-01)
        #[arg(long, value_name = "DATE")]
        since: Option<String>,
    },
}

async fn put(c: &Client, key: &str, value: Json) -> Result<Json> {
    c.call(
        "PUT",
        &format!("/api/v1/settings/{}", segment(key)),
        Some(&json!({"value": value}).to_string()),
    )
    .await
}

pub async fn provider(c: &Client, cmd: ProviderCommand, format: Format) -> Result<i32> {
    match cmd {
        ProviderCommand::Usage { by, since } => {
            let mut path = format!("/api/v1/llm/usage?by={}", segment(&by));
            if let Some(s) = since {
                let ms = crate::cmd_admin::parse_since(&s)?;
                path.push_str(&format!("&since={ms}"));
            }
            let answer = c.call("GET", &path, None).await?;
            if format.is_data() {
                output::data(format, &answer["usage"]);
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = answer["usage"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|u| {
                    vec![
                        u["group"].as_str().unwrap_or("-").to_owned(),
                        u["calls"].to_string(),
                        u["prompt_tokens"].to_string(),
                        u["completion_tokens"].to_string(),
                        format!("{:.4}", u["cost_usd"].as_f64().unwrap_or(0.0)),
                    ]
                })
                .collect();
            output::table(
                &[
                    &by.to_uppercase(),
                    "CALLS",
                    "PROMPT",
                    "COMPLETION",
                    "COST (USD)",
                ],
                &rows,
            );
            Ok(0)
        }
        ProviderCommand::List => {
            let all = c.call("GET", "/api/v1/settings", None).await?;
            let settings = all["settings"].as_array().cloned().unwrap_or_default();
            let default = settings
                .iter()
                .find(|s| s["key"] == "llm.default_provider")
                .and_then(|s| s["value"].as_str().map(str::to_owned));
            // Health as the engine sees it (the settings say what is configured).
            let live = c.call("GET", "/api/v1/providers", None).await?;
            let health = |name: &str| {
                live["providers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p["name"] == name)
                    .and_then(|p| p["health"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "not loaded".to_owned())
            };
            let mut rows = Vec::new();
            let mut data = Vec::new();
            for s in &settings {
                let key = s["key"].as_str().unwrap_or("");
                let Some(name) = key.strip_prefix("providers.").filter(|n| !n.contains('.')) else {
                    continue;
                };
                let v = &s["value"];
                if v.get("kind").is_none() {
                    continue;
                }
                let has_key = settings
                    .iter()
                    .any(|k| k["key"] == format!("providers.{name}.api_key").as_str());
                // The engine's default: the named one, or the only one there is.
                let is_default = live["providers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["name"] == name && p["default"] == true)
                    || default.as_deref() == Some(name);
                let mut shown = json!({"name": name, "kind": v["kind"], "model": v["model"], "base_url": v["base_url"], "api_key": has_key, "default": is_default, "health": health(name)});
                if !v["plugin"].is_null() {
                    shown["plugin"] = v["plugin"].clone();
                }
                data.push(shown);
                rows.push(vec![
                    name.to_owned(),
                    v["kind"].as_str().unwrap_or("").to_owned(),
                    v["model"].as_str().unwrap_or("").to_owned(),
                    v["base_url"]
                        .as_str()
                        .map(str::to_owned)
                        .or_else(|| v["plugin"].as_str().map(|p| format!("plugin {p}")))
                        .unwrap_or_default(),
                    if has_key { "set" } else { "-" }.to_owned(),
                    if is_default { "yes" } else { "" }.to_owned(),
                    health(name),
                ]);
            }
            if format.is_data() {
                output::data(format, &data);
            } else if rows.is_empty() {
                output::remark(
                    "no provider: plexus provider add NAME --base-url URL --model MODEL",
                );
            } else {
                output::table(
                    &["NAME", "KIND", "MODEL", "BASE URL", "KEY", "DEFAULT"],
                    &rows,
                );
            }
            Ok(0)
        }
        ProviderCommand::Add {
            name,
            kind,
            base_url,
            plugin,
            model,
            api_key_stdin,
            default,
        } => {
            let kind = if plugin.is_some() && kind == "openai" {
                "plugin".to_owned()
            } else {
                kind
            };
            if name.contains('.') || name.is_empty() {
                bail!("a provider's name has no dots");
            }
            if api_key_stdin {
                let mut key = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut key)?;
                let key = key.trim();
                if key.is_empty() {
                    bail!("--api-key-stdin read nothing");
                }
                put(c, &format!("providers.{name}.api_key"), json!(key)).await?;
            }
            put(
                c,
                &format!("providers.{name}"),
                match &plugin {
                    Some(p) => json!({"kind": kind, "plugin": p, "model": model}),
                    None => json!({"kind": kind, "base_url": base_url, "model": model}),
                },
            )
            .await?;
            if default {
                put(c, "llm.default_provider", json!(name)).await?;
            }
            output::remark(&format!("provider {name} ({kind}, {model}) is set"));
            Ok(0)
        }
        ProviderCommand::Test { name } => {
            let manifest = json!({
                "version": "plexus/v1",
                "name": format!("test-provider-{name}"),
                "steps": [{"id": "ask", "llm": {"prompt": "Reply with the single word OK.", "provider": name, "max_tokens": 5}}],
            })
            .to_string();
            crate::remote::run_text(c, &manifest, "provider test", Default::default(), format).await
        }
        ProviderCommand::Remove { name } => {
            let gone = c
                .request(
                    "DELETE",
                    &format!("/api/v1/settings/{}", segment(&format!("providers.{name}"))),
                    None,
                )
                .await?;
            let _ = c
                .request(
                    "DELETE",
                    &format!(
                        "/api/v1/settings/{}",
                        segment(&format!("providers.{name}.api_key"))
                    ),
                    None,
                )
                .await?;
            if gone.0 == 404 {
                bail!("no provider `{name}`");
            }
            output::remark(&format!("provider {name} removed"));
            Ok(0)
        }
    }
}
