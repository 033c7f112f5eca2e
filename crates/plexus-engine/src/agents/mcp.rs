//! MCP servers as agents: each tool is an action with the tool's input schema, READ when
//! the server annotates it read-only and MODIFY when not, unless the configuration says
//! otherwise. A server is a command spoken to over stdio (started, watched and started
//! again like a co-located plugin) or a streamable-HTTP URL (connected, and connected
//! again when the connection ends).

use super::{ActionSpec, Agents, Instance, Link, Source};
use plexus_agent::params::Params;
use plexus_core::manifest::Permission;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult, Tool};
use rmcp::service::{Peer, RoleClient, RunningService};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How to reach an MCP server (the setting `mcp.<name>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    /// The command and its arguments (stdio).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// A streamable-HTTP endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Variables the command gets besides PATH, HOME and LANG.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// A permission per tool, over what the server's annotations say.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub permissions: BTreeMap<String, Permission>,
}

impl McpConfig {
    pub fn check(&self) -> Result<(), String> {
        match (self.command.is_empty(), &self.url) {
            (false, None) => Ok(()),
            (true, Some(u)) if u.starts_with("http://") || u.starts_with("https://") => Ok(()),
            (true, Some(u)) => Err(format!("`{u}` is not an http:// or https:// URL")),
            (false, Some(_)) => Err("give a command or a URL, not both".into()),
            (true, None) => Err("give the server's command, or its URL".into()),
        }
    }

    fn describe(&self) -> String {
        match &self.url {
            Some(u) => u.clone(),
            None => format!("stdio: {}", self.command.join(" ")),
        }
    }
}

/// A tool as an action.
fn action(tool: &Tool, config: &McpConfig) -> Result<ActionSpec, String> {
    let schema = Json::Object((*tool.input_schema).clone());
    let validator = jsonschema::validator_for(&schema)
        .map_err(|e| format!("tool `{}`: its input schema is not valid: {e}", tool.name))?;
    let read_only = tool
        .annotations
        .as_ref()
        .and_then(|a| a.read_only_hint)
        .unwrap_or(false);
    let permission = config
        .permissions
        .get(tool.name.as_ref())
        .copied()
        .unwrap_or(if read_only {
            Permission::Read
        } else {
            Permission::Modify
        });
    Ok(ActionSpec {
        id: tool.name.to_string(),
        description: tool.description.as_deref().unwrap_or_default().to_owned(),
        permission,
        params: Params {
            schema,
            strings: false,
        },
        validator: Arc::new(validator),
        output_schema: tool
            .output_schema
            .as_ref()
            .map(|s| Json::Object((**s).clone())),
        intents: Vec::new(),
    })
}

/// A tool's answer as a step's output: its structured content, else its text (parsed
/// when it is JSON, else `{"text": ...}`); an error result is a failure.
pub(crate) fn output_of(result: CallToolResult) -> Result<Json, String> {
    let text: Vec<String> = result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect();
    let text = text.join("\n");
    if result.is_error == Some(true) {
        return Err(if text.is_empty() {
            "the tool reported an error".into()
        } else {
            text
        });
    }
    if let Some(s) = result.structured_content {
        return Ok(s);
    }
    Ok(serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({ "text": text })))
}

/// Calls a tool within `deadline`.
pub(crate) async fn call_tool(
    peer: &Peer<RoleClient>,
    tool: &str,
    params: Map<String, Json>,
    deadline: Duration,
) -> Result<Json, String> {
    let call = peer.call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(params));
    match tokio::time::timeout(deadline, call).await {
        Err(_) => Err(format!(
            "timed out after {}",
            plexus_core::duration::format_duration(deadline)
        )),
        Ok(Err(e)) => Err(format!("the MCP server failed the call: {e}")),
        Ok(Ok(result)) => output_of(result),
    }
}

type Client = RunningService<RoleClient, ()>;

async fn connect(name: &str, config: &McpConfig) -> Result<Client, String> {
    if let Some(url) = &config.url {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config()?)
            .build()
            .map_err(|e| e.to_string())?;
        let transport = rmcp::transport::StreamableHttpClientTransport::with_client(
            http,
            rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
                url.clone(),
            ),
        );
        return ().serve(transport).await.map_err(|e| format!("cannot reach {url}: {e}"));
    }
    let (program, args) = config.command.split_first().ok_or("no command")?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(
            ["PATH", "HOME", "LANG", "TMPDIR"]
                .iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))),
        )
        .envs(&config.env)
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; the server dies with the engine.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let (transport, stderr) = rmcp::transport::TokioChildProcess::builder(cmd)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start `{program}`: {e}"))?;
    if let Some(stderr) = stderr {
        let name = name.to_owned();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(mcp = %name, "{line}");
            }
        });
    }
    ().serve(transport)
        .await
        .map_err(|e| format!("`{program}` did not start an MCP session: {e}"))
}

fn tls_config() -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// The instance of a connected server, with its tools as actions.
async fn instance(name: &str, config: &McpConfig, client: &Client) -> Result<Instance, String> {
    let tools = client
        .list_all_tools()
        .await
        .map_err(|e| format!("listing its tools: {e}"))?;
    let mut actions = BTreeMap::new();
    for tool in &tools {
        let spec = action(tool, config)?;
        actions.insert(spec.id.clone(), spec);
    }
    let server = client.peer_info();
    let version = server
        .as_ref()
        .and_then(|s| s.server_info.as_ref().map(|i| i.version.clone()))
        .unwrap_or_default();
    let description = server
        .and_then(|s| s.instructions.clone())
        .unwrap_or_else(|| format!("MCP server ({})", config.describe()));
    Ok(Instance {
        name: name.to_owned(),
        instance_id: "mcp".to_owned(),
        addr: config.describe(),
        version,
        description,
        style: plexus_agent::wire::Style::Go,
        source: Source::Mcp,
        actions,
        info: Default::default(),
        registered_at: crate::now_ms(),
        healthy: true,
        health_message: String::new(),
        last_seen: Instant::now(),
        link: Link::Mcp(client.peer().clone()),
    })
}

/// A server being run: its configuration, and the switch that stops it.
type Running = (McpConfig, watch::Sender<bool>);

/// The MCP servers the engine runs as agents.
#[derive(Clone)]
pub struct McpAgents {
    agents: Agents,
    running: Arc<Mutex<HashMap<String, Running>>>,
}

impl McpAgents {
    pub fn new(agents: Agents) -> McpAgents {
        McpAgents {
            agents,
            running: Arc::default(),
        }
    }

    /// Runs `name` with `config` (again, if it changed), or stops it (`None`).
    pub fn apply(&self, name: &str, config: Option<McpConfig>) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((old, _)) = running.get(name)
            && Some(old) == config.as_ref()
        {
            return;
        }
        if let Some((_, stop)) = running.remove(name) {
            let _ = stop.send(true);
        }
        let Some(config) = config else {
            self.agents.remove(name);
            return;
        };
        let (stop, stopped) = watch::channel(false);
        running.insert(name.to_owned(), (config.clone(), stop));
        let me = self.clone();
        let name = name.to_owned();
        tokio::spawn(async move { me.keep_running(name, config, stopped).await });
    }

    /// Stops every server.
    pub fn shutdown(&self) {
        let running: Vec<_> = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (name, (_, stop)) in running {
            let _ = stop.send(true);
            self.agents.remove(&name);
        }
    }

    async fn keep_running(&self, name: String, config: McpConfig, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let started = Instant::now();
            let attempt = async {
                let client = connect(&name, &config).await?;
                let instance = instance(&name, &config, &client).await?;
                Ok::<_, String>((client, instance))
            };
            let ended = tokio::select! {
                _ = stop.changed() => return,
                connected = attempt => match connected {
                    Ok((client, instance)) => {
                        tracing::info!(mcp = %name, tools = instance.actions.len(), "MCP server connected");
                        self.agents.insert(instance);
                        let token = client.cancellation_token();
                        let waiting = client.waiting();
                        tokio::pin!(waiting);
                        tokio::select! {
                            _ = stop.changed() => {
                                tracing::info!(mcp = %name, "stopping the MCP server");
                                // Ends the session; the server process goes with it.
                                token.cancel();
                                let _ = tokio::time::timeout(Duration::from_secs(5), waiting).await;
                                return;
                            }
                            reason = &mut waiting => format!("the session ended ({reason:?})"),
                        }
                    }
                    Err(e) => e,
                },
            };
            self.agents.deregister(&name, "mcp");
            if started.elapsed() > Duration::from_secs(60) {
                backoff = Duration::from_secs(1);
            }
            tracing::warn!(mcp = %name, reason = %ended, retry_in = ?backoff, "MCP server not available");
            metrics::counter!("plexus_agent_restarts_total").increment(1);
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(60));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::{ContentBlock as Content, ToolAnnotations};
    use serde_json::json;

    fn tool(name: &str, read_only: Option<bool>) -> Tool {
        let schema =
            json!({"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]});
        let mut t = Tool::new(
            name.to_owned(),
            "a tool",
            Arc::new(schema.as_object().unwrap().clone()),
        );
        if let Some(r) = read_only {
            t.annotations = Some(ToolAnnotations::new().read_only(r));
        }
        t
    }

    #[test]
    fn tools_are_read_when_annotated_read_only_modify_otherwise_unless_configured() {
        let mut config = McpConfig {
            command: vec!["x".into()],
            url: None,
            env: BTreeMap::new(),
            permissions: BTreeMap::new(),
        };
        assert_eq!(
            action(&tool("a", Some(true)), &config).unwrap().permission,
            Permission::Read
        );
        assert_eq!(
            action(&tool("b", None), &config).unwrap().permission,
            Permission::Modify
        );
        assert_eq!(
            action(&tool("c", Some(false)), &config).unwrap().permission,
            Permission::Modify
        );
        config.permissions.insert("a".into(), Permission::Admin);
        let a = action(&tool("a", Some(true)), &config).unwrap();
        assert_eq!(a.permission, Permission::Admin);
        assert_eq!(a.check(&json!({})), ["\"tz\" is a required property"]);
        assert!(!a.params.strings, "tools take typed values");
    }

    #[test]
    fn a_tools_answer_becomes_the_output() {
        let r = CallToolResult::success(vec![Content::text("{\"datetime\": \"2026\"}")]);
        assert_eq!(output_of(r).unwrap(), json!({"datetime": "2026"}));
        let r = CallToolResult::success(vec![Content::text("plain")]);
        assert_eq!(output_of(r).unwrap(), json!({"text": "plain"}));
        let r = CallToolResult::error(vec![Content::text("no such zone")]);
        assert_eq!(output_of(r).unwrap_err(), "no such zone");
    }

    #[test]
    fn a_server_is_a_command_or_a_url() {
        let c = |command: Vec<&str>, url: Option<&str>| McpConfig {
            command: command.into_iter().map(str::to_owned).collect(),
            url: url.map(str::to_owned),
            env: BTreeMap::new(),
            permissions: BTreeMap::new(),
        };
        assert!(c(vec!["uvx", "mcp-server-time"], None).check().is_ok());
        assert!(c(vec![], Some("http://127.0.0.1:8000/mcp")).check().is_ok());
        assert!(c(vec![], Some("ftp://x")).check().is_err());
        assert!(c(vec!["a"], Some("http://x")).check().is_err());
        assert!(c(vec![], None).check().is_err());
    }
}
