//! `plexus agent ...` and `plexus action invoke`: the agents a server knows, their
//! configuration, and their actions run by hand.

use crate::http_client::{Client, segment};
use crate::output::{self, Format};
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::{Map, Value as Json, json};

#[derive(Subcommand)]
pub enum AgentCommand {
    /// Every agent: name, version, highest permission, health, instances
    List,
    /// One agent: its instances and its actions with their parameters
    Get { name: String },
    /// Ask every instance of an agent for its health now
    Health { name: String },
    /// The agent's configuration (settings `plugin.NAME.KEY`; secrets show as set)
    Config { name: String },
    /// Set one configuration key; the agent's instances get the change at once
    ///
    /// A key whose name says secret (token, password, api_key...) — or any key with
    /// --secret — is sealed in the store and only the agent can read it back.
    #[command(name = "config-set")]
    ConfigSet {
        name: String,
        key: String,
        /// The value (omit it with --value-stdin)
        value: Option<String>,
        /// Read the value from standard input (keeps it out of the shell history)
        #[arg(long)]
        value_stdin: bool,
        /// Seal the value even if its name does not say secret
        #[arg(long)]
        secret: bool,
    },
    /// Forget every instance of an agent (a running plugin registers again at its next
    /// heartbeat: stop the plugin to be rid of it; an MCP server is stopped and its
    /// configuration removed)
    Remove { name: String },
    /// Run an MCP server as an agent: its tools become actions
    ///
    /// Give the command after `--` (stdio: the server starts it, restarts it when it dies
    /// and stops it with itself) or `--url` (streamable HTTP). A tool is READ when the
    /// server annotates it read-only and MODIFY otherwise; `--permission TOOL=LEVEL`
    /// (read, modify, admin) says otherwise. Stored in the setting `mcp.NAME`.
    #[command(name = "add-mcp")]
    AddMcp {
        name: String,
        /// A streamable-HTTP MCP endpoint instead of a command
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// A tool's permission, over the server's annotation; repeatable
        #[arg(long = "permission", value_name = "TOOL=LEVEL")]
        permissions: Vec<String>,
        /// A variable for the command (it gets only PATH, HOME and LANG besides); repeatable
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// The command and its arguments
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum ActionCommand {
    /// Run an agent's action now, as a one-step run: MODIFY and ADMIN actions wait for
    /// approval exactly as in a workflow, and everything is audited
    ///
    /// Parameters: `--param key=value` gives a string, `--param key:=JSON` a typed value
    /// (a number, true, a list...), `--params '{...}'` all of them at once.
    Invoke {
        agent: String,
        action: String,
        /// A parameter: key=value (text) or key:=JSON (typed); repeatable
        #[arg(long = "param", short = 'p', value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// All parameters as one JSON object (--param entries are added to it)
        #[arg(long, value_name = "JSON")]
        params_json: Option<String>,
    },
}

/// `key=value` (text) or `key:=JSON` (typed) into `params`.
fn add_param(params: &mut Map<String, Json>, given: &str) -> Result<()> {
    if let Some((key, json_text)) = given.split_once(":=")
        && !key.contains('=')
    {
        let value = serde_json::from_str(json_text)
            .with_context(|| format!("--param {given}: the value after := is not JSON"))?;
        params.insert(key.to_owned(), value);
        return Ok(());
    }
    let Some((key, value)) = given.split_once('=') else {
        bail!("--param {given}: write key=value (text) or key:=JSON (a typed value)");
    };
    if key.is_empty() {
        bail!("--param {given}: the key is empty");
    }
    params.insert(key.to_owned(), Json::String(value.to_owned()));
    Ok(())
}

pub async fn action(c: &Client, cmd: ActionCommand, format: Format) -> Result<i32> {
    let ActionCommand::Invoke {
        agent,
        action,
        params,
        params_json,
    } = cmd;
    let mut all = match params_json {
        Some(text) => match serde_json::from_str(&text).context("--params-json is not JSON")? {
            Json::Object(m) => m,
            _ => bail!("--params-json must be a JSON object"),
        },
        None => Map::new(),
    };
    for p in &params {
        add_param(&mut all, p)?;
    }
    let path = format!(
        "/api/v1/agents/{}/actions/{}",
        segment(&agent),
        segment(&action)
    );
    let (status, answer) = c
        .request("POST", &path, Some(&json!({"params": all}).to_string()))
        .await?;
    if status == 400
        && let Some(problems) = answer["details"].as_array()
    {
        eprintln!("error: the parameters do not fit `{agent}/{action}`:");
        for p in problems {
            eprintln!("  {}", p.as_str().unwrap_or(""));
        }
        eprintln!("`plexus agent get {agent}` shows its parameters");
        return Ok(2);
    }
    if !(200..300).contains(&status) {
        bail!(
            "the server answered {status}: {}",
            answer["message"].as_str().unwrap_or("")
        );
    }
    let id = answer["id"].as_str().context("the server sent no run id")?;
    output::remark(&format!("run {id} invokes {agent}/{action}"));
    crate::remote::follow(c, id, format).await
}

pub async fn agent(c: &Client, cmd: AgentCommand, format: Format) -> Result<i32> {
    match cmd {
        AgentCommand::List => {
            let list = c.call("GET", "/api/v1/agents", None).await?;
            if format.is_data() {
                output::data(format, &list["agents"]);
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = list["agents"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    vec![
                        text(&a["name"]),
                        text(&a["version"]),
                        text(&a["permission"]).to_uppercase(),
                        text(&a["health"]),
                        a["instances"].as_array().map_or(0, Vec::len).to_string(),
                        a["actions"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|x| text(&x["id"]))
                            .collect::<Vec<_>>()
                            .join(", "),
                    ]
                })
                .collect();
            if rows.is_empty() {
                output::remark(
                    "no agent is registered; agents register themselves on the server's gRPC address (see docs/agents.md)",
                );
                return Ok(0);
            }
            output::table(
                &[
                    "NAME",
                    "VERSION",
                    "PERMISSION",
                    "HEALTH",
                    "INSTANCES",
                    "ACTIONS",
                ],
                &rows,
            );
            Ok(0)
        }
        AgentCommand::Get { name } => {
            let a = c
                .call("GET", &format!("/api/v1/agents/{}", segment(&name)), None)
                .await?;
            show(&a, format);
            Ok(0)
        }
        AgentCommand::Health { name } => {
            let a = c
                .call(
                    "GET",
                    &format!("/api/v1/agents/{}/health", segment(&name)),
                    None,
                )
                .await?;
            if format.is_data() {
                output::data(format, &a);
            } else {
                let rows: Vec<Vec<String>> = a["instances"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|i| {
                        vec![
                            text(&i["instance_id"]),
                            text(&i["addr"]),
                            text(&i["health"]),
                            text(&i["health_message"]),
                        ]
                    })
                    .collect();
                output::table(&["INSTANCE", "ADDRESS", "HEALTH", "MESSAGE"], &rows);
            }
            Ok(i32::from(a["health"] != "healthy"))
        }
        AgentCommand::Config { name } => {
            let all = c.call("GET", "/api/v1/settings", None).await?;
            let prefix = format!("plugin.{name}.");
            let mine: Vec<&Json> = all["settings"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|s| s["key"].as_str().is_some_and(|k| k.starts_with(&prefix)))
                .collect();
            if format.is_data() {
                let map: Map<String, Json> = mine
                    .iter()
                    .map(|s| {
                        let key = text(&s["key"])[prefix.len()..].to_owned();
                        (key, s["value"].clone())
                    })
                    .collect();
                output::data(format, &map);
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = mine
                .iter()
                .map(|s| {
                    let value = if s["secret"] == true {
                        "(secret, set)".to_owned()
                    } else {
                        text(&s["value"])
                    };
                    vec![text(&s["key"])[prefix.len()..].to_owned(), value]
                })
                .collect();
            if rows.is_empty() {
                output::remark(&format!(
                    "`{name}` has no configuration; set some with plexus agent config-set {name} KEY VALUE"
                ));
                return Ok(0);
            }
            output::table(&["KEY", "VALUE"], &rows);
            Ok(0)
        }
        AgentCommand::ConfigSet {
            name,
            key,
            value,
            value_stdin,
            secret,
        } => {
            let value = match (value, value_stdin) {
                (Some(v), false) => v,
                (None, true) => {
                    let mut v = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut v)?;
                    v.trim_end_matches(['\n', '\r']).to_owned()
                }
                (Some(_), true) => bail!("give the value or --value-stdin, not both"),
                (None, false) => bail!("give a value, or --value-stdin to read it"),
            };
            let setting = format!("plugin.{name}.{key}");
            let answer = c
                .call(
                    "PUT",
                    &format!("/api/v1/settings/{}", segment(&setting)),
                    Some(&json!({"value": value, "secret": secret}).to_string()),
                )
                .await?;
            if format.is_data() {
                output::data(format, &answer);
            } else if answer["secret"] == true {
                println!("{setting} is set (sealed: only the agent reads it)");
            } else {
                println!("{setting} = {}", answer["value"]);
            }
            Ok(0)
        }
        AgentCommand::AddMcp {
            name,
            url,
            permissions,
            env,
            command,
        } => add_mcp(c, &name, url, &permissions, &env, command, format).await,
        AgentCommand::Remove { name } => {
            let answer = c
                .call(
                    "DELETE",
                    &format!("/api/v1/agents/{}", segment(&name)),
                    None,
                )
                .await?;
            if format.is_data() {
                output::data(format, &answer);
            } else {
                println!(
                    "forgot {} instance(s) of {name}; a plugin still running registers again",
                    answer["removed_instances"]
                );
            }
            Ok(0)
        }
    }
}

fn pairs(given: &[String], what: &str) -> Result<Map<String, Json>> {
    given
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), Json::String(v.to_owned()))),
            _ => bail!("{what} `{p}`: write KEY=VALUE"),
        })
        .collect()
}

async fn add_mcp(
    c: &Client,
    name: &str,
    url: Option<String>,
    permissions: &[String],
    env: &[String],
    command: Vec<String>,
    format: Format,
) -> Result<i32> {
    if command.is_empty() == url.is_none() {
        bail!(
            "give the server's command after `--` (plexus agent add-mcp {name} -- COMMAND ARGS...) or --url URL, one of them"
        );
    }
    let mut config = json!({"command": command, "env": pairs(env, "--env")?, "permissions": pairs(permissions, "--permission")?});
    if let Some(u) = url {
        config["url"] = Json::String(u);
    }
    let setting = format!("mcp.{name}");
    c.call(
        "PUT",
        &format!("/api/v1/settings/{}", segment(&setting)),
        Some(&json!({"value": config}).to_string()),
    )
    .await?;
    // It starts in the background: show its tools once it is up.
    let path = format!("/api/v1/agents/{}", segment(name));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (status, agent) = c.request("GET", &path, None).await?;
        if status == 200 {
            show(&agent, format);
            return Ok(0);
        }
        if std::time::Instant::now() > deadline {
            eprintln!(
                "`{name}` is configured ({setting}) but its server has not answered yet; `plexus agent get {name}` shows it once it does, and the server's log says why not"
            );
            return Ok(1);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn text(v: &Json) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

/// One agent, for a person or a script.
fn show(a: &Json, format: Format) {
    if format.is_data() {
        output::data(format, a);
        return;
    }
    println!(
        "{} {}  {}  {}",
        text(&a["name"]),
        text(&a["version"]),
        text(&a["permission"]).to_uppercase(),
        text(&a["health"])
    );
    if let Some(d) = a["description"].as_str().filter(|d| !d.is_empty()) {
        println!("{d}");
    }
    println!();
    let rows: Vec<Vec<String>> = a["actions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| {
            let schema = &x["params_schema"];
            let required: Vec<&str> = schema["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Json::as_str)
                .collect();
            let params: Vec<String> = schema["properties"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| {
                    if required.contains(&k.as_str()) {
                        k.clone()
                    } else {
                        format!("[{k}]")
                    }
                })
                .collect();
            vec![
                text(&x["id"]),
                text(&x["permission"]).to_uppercase(),
                params.join(" "),
                text(&x["description"]),
            ]
        })
        .collect();
    output::table(
        &["ACTION", "PERMISSION", "PARAMETERS", "DESCRIPTION"],
        &rows,
    );
    println!();
    let rows: Vec<Vec<String>> = a["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            vec![
                text(&i["instance_id"]),
                text(&i["addr"]),
                text(&i["source"]),
                text(&i["health"]),
                format!("{}s ago", i["seconds_since_seen"]),
            ]
        })
        .collect();
    output::table(&["INSTANCE", "ADDRESS", "SOURCE", "HEALTH", "SEEN"], &rows);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_text_unless_written_as_json() {
        let mut p = Map::new();
        add_param(&mut p, "query=up{job=\"x\"}").unwrap();
        add_param(&mut p, "limit:=10").unwrap();
        add_param(&mut p, "labels:={\"a\": [1, 2]}").unwrap();
        add_param(&mut p, "empty=").unwrap();
        assert_eq!(
            Json::Object(p),
            json!({"query": "up{job=\"x\"}", "limit": 10, "labels": {"a": [1, 2]}, "empty": ""})
        );
        let mut p = Map::new();
        assert!(add_param(&mut p, "novalue").is_err());
        assert!(add_param(&mut p, "n:=not json").is_err());
        assert!(add_param(&mut p, "=x").is_err());
    }
}
