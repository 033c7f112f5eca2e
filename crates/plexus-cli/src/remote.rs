//! The CLI as a client of `plexus serve`: the same commands, against a server's API.
//! The server comes from `--server`, `PLEXUS_SERVER`, or the context `plexus init` wrote.

use crate::http_client::{Client, segment};
use crate::output::{self, Format, millis, one_line};
use crate::progress::Progress;
use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use serde_json::{Value as Json, json};
use std::path::{Path, PathBuf};

pub fn context_file() -> Option<PathBuf> {
    crate::config::config_dir().map(|d| d.join("context.toml"))
}

/// The server to talk to, if any: the flag (or `PLEXUS_SERVER`), else the saved context;
/// with the credential for it (`PLEXUS_API_KEY`, or the context's session).
pub fn server(flag: Option<&str>) -> Result<Option<Client>> {
    if flag == Some("local") {
        return Ok(None); // `--server local`: the local store, whatever the context says
    }
    let path = context_file();
    let ctx = match &path {
        Some(p) => crate::login::read_context(p)?,
        None => None,
    };
    let url = match flag.filter(|u| !u.is_empty()) {
        Some(url) => url.to_owned(),
        None => match ctx
            .as_ref()
            .and_then(|c| c.get("server"))
            .and_then(|v| v.as_str())
        {
            Some(url) => url.to_owned(),
            None => return Ok(None),
        },
    };
    let mut client = Client::new(&url)?;
    client.credential =
        crate::login::credential_for(&client.addr, path.as_deref().zip(ctx.as_ref()));
    Ok(Some(client))
}

/// Saves the server in the user's config directory (mode 0600) after checking it answers.
/// Credentials saved for another server are dropped.
pub async fn init(url: &str, api_key: Option<&str>) -> Result<i32> {
    let client = Client::new(url)?;
    let health = client.call("GET", "/healthz", None).await?;
    let who = match api_key {
        Some(key) => {
            let mut keyed = client.clone();
            keyed.credential = Some(crate::login::Credential::ApiKey(key.to_owned()));
            let me = keyed
                .call("GET", "/api/v1/auth/me", None)
                .await
                .context("the server refused the API key")?;
            Some(format!(
                "{} ({})",
                me["username"].as_str().unwrap_or("?"),
                me["role"].as_str().unwrap_or("?")
            ))
        }
        None => None,
    };
    let path = context_file().context("no config directory: set XDG_CONFIG_HOME or HOME")?;
    let mut ctx = toml::Table::new();
    ctx.insert("server".into(), client.base_url().into());
    if let Some(old) = crate::login::read_context(&path)?
        && old.get("server") == ctx.get("server")
    {
        ctx = old;
    }
    if let Some(key) = api_key {
        for k in ["access_token", "refresh_token", "expires_at"] {
            ctx.remove(k);
        }
        ctx.insert("api_key".into(), key.into());
    }
    crate::login::write_context(&path, &ctx)?;
    let status = health["status"].as_str().unwrap_or("?");
    match who {
        Some(who) => println!(
            "context saved to {}: server {} ({status}), as {who} with an API key",
            path.display(),
            client.base_url(),
        ),
        None => println!(
            "context saved to {}: server {} ({status}); sign in with `plexus login --username NAME`",
            path.display(),
            client.base_url(),
        ),
    }
    Ok(0)
}

fn print_run(run: &Json, format: Format) {
    if format.is_data() {
        return output::data(format, run);
    }
    let took = match (run["created_at"].as_u64(), run["finished_at"].as_u64()) {
        (Some(a), Some(b)) => format!(" in {}", millis(b.saturating_sub(a))),
        _ => String::new(),
    };
    println!(
        "run {}  {}{took}  (workflow {})",
        run["id"].as_str().unwrap_or(""),
        run["state"].as_str().unwrap_or(""),
        run["workflow"].as_str().unwrap_or("")
    );
    if let Some(e) = run["error"].as_str() {
        println!("error: {e}");
    }
    let rows: Vec<Vec<String>> =
        run["steps"]
            .as_array()
            .map(|steps| {
                steps
                    .iter()
                    .map(|s| {
                        let detail = s["error"].as_str().map(|e| one_line(e, 80)).unwrap_or_else(
                            || match &s["output"] {
                                Json::Null => String::new(),
                                Json::Object(o) if o.contains_key("stdout") => {
                                    one_line(o["stdout"].as_str().unwrap_or(""), 80)
                                }
                                other => one_line(&other.to_string(), 80),
                            },
                        );
                        vec![
                            s["id"].as_str().unwrap_or("").to_owned(),
                            s["state"].as_str().unwrap_or("").to_owned(),
                            s["attempt"].to_string(),
                            detail,
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default();
    println!();
    output::table(&["STEP", "STATE", "ATTEMPT", "DETAIL"], &rows);
    if let Some(steps) = run["steps"].as_array() {
        output::tool_calls(
            steps
                .iter()
                .map(|s| (s["id"].as_str().unwrap_or(""), &s["output"])),
        );
    }
    if !run["outputs"].is_null() && run["outputs"] != json!({}) {
        println!(
            "\noutputs: {}",
            serde_json::to_string_pretty(&run["outputs"]).unwrap_or_default()
        );
    }
}

pub async fn runs_list(
    c: &Client,
    workflow: Option<&str>,
    state: Option<&str>,
    limit: usize,
    format: Format,
) -> Result<i32> {
    let mut path = format!("/api/v1/runs?limit={limit}");
    if let Some(w) = workflow {
        path.push_str(&format!("&workflow={}", segment(w)));
    }
    if let Some(s) = state {
        path.push_str(&format!("&state={}", segment(s)));
    }
    let page = c.call("GET", &path, None).await?;
    if format.is_data() {
        output::data(format, &page["runs"]);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = page["runs"]
        .as_array()
        .map(|runs| {
            runs.iter()
                .map(|r| {
                    let started = r["created_at"]
                        .as_u64()
                        .map(output::ago)
                        .unwrap_or_default();
                    vec![
                        r["id"].as_str().unwrap_or("").to_owned(),
                        r["workflow"].as_str().unwrap_or("").to_owned(),
                        r["state"].as_str().unwrap_or("").to_owned(),
                        started,
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    output::table(&["RUN", "WORKFLOW", "STATE", "STARTED"], &rows);
    Ok(0)
}

pub async fn runs_show(c: &Client, id: &str, format: Format) -> Result<i32> {
    let run = c
        .call("GET", &format!("/api/v1/runs/{}", segment(id)), None)
        .await?;
    print_run(&run, format);
    Ok(0)
}

pub async fn runs_events(c: &Client, id: &str, after: u64, format: Format) -> Result<i32> {
    let page = c
        .call(
            "GET",
            &format!(
                "/api/v1/runs/{}/events?after={after}&limit=10000",
                segment(id)
            ),
            None,
        )
        .await?;
    if format.is_data() {
        output::data(format, &page["events"]);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = page["events"]
        .as_array()
        .map(|evs| {
            evs.iter()
                .map(|e| {
                    let s = |k: &str| {
                        e[k].as_str().map(str::to_owned).unwrap_or_else(|| {
                            if e[k].is_null() {
                                String::new()
                            } else {
                                e[k].to_string()
                            }
                        })
                    };
                    vec![s("seq"), s("type"), s("step_id"), s("attempt")]
                })
                .collect()
        })
        .unwrap_or_default();
    output::table(&["SEQ", "TYPE", "STEP", "ATTEMPT"], &rows);
    Ok(0)
}

/// Cancel a run, or approve/reject/signal one of its steps.
pub async fn control(
    c: &Client,
    id: &str,
    path_tail: &str,
    body: Json,
    format: Format,
) -> Result<i32> {
    let answer = c
        .call(
            "POST",
            &format!("/api/v1/runs/{}/{path_tail}", segment(id)),
            Some(&body.to_string()),
        )
        .await?;
    match format {
        Format::Json | Format::Yaml => output::data(format, &answer),
        Format::Table => println!(
            "{} {}",
            answer["action"].as_str().unwrap_or(path_tail),
            answer["outcome"].as_str().unwrap_or("done")
        ),
    }
    Ok(0)
}

/// Starts a run of a manifest file on the server and follows it to its end.
pub async fn run(
    c: &Client,
    file: &Path,
    inputs: serde_json::Map<String, Json>,
    format: Format,
) -> Result<i32> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    run_text(c, &text, &file.display().to_string(), inputs, format).await
}

/// Starts a run of manifest text on the server (`label` names it in problems) and
/// follows it to its end.
pub async fn run_text(
    c: &Client,
    text: &str,
    label: &str,
    inputs: serde_json::Map<String, Json>,
    format: Format,
) -> Result<i32> {
    // A script (`-o json|yaml`) shows no progress, so it only needs the end: the start
    // itself waits for it (one request for a quick run) and long polls follow if the
    // run takes longer. A person gets the live feed over the WebSocket.
    let long_poll = format.is_data();
    let path = if long_poll {
        format!("/api/v1/runs?wait={LONG_POLL}")
    } else {
        "/api/v1/runs".to_owned()
    };
    let (status, answer) = c
        .request(
            "POST",
            &path,
            Some(&json!({"manifest": text, "inputs": inputs}).to_string()),
        )
        .await?;
    if status == 400 {
        if let Some(problems) = answer["details"].as_array() {
            for p in problems {
                eprintln!(
                    "{label}:{}:{}: error[{}]: {}",
                    p["line"],
                    p["column"],
                    p["code"].as_str().unwrap_or(""),
                    p["message"].as_str().unwrap_or("")
                );
            }
            return Ok(2);
        }
        bail!(
            "the server refused the run: {}",
            answer["message"].as_str().unwrap_or("")
        );
    }
    if !(200..300).contains(&status) {
        bail!(
            "the server answered {status}: {}",
            answer["message"].as_str().unwrap_or("")
        );
    }
    let id = answer["id"]
        .as_str()
        .context("the server sent no run id")?
        .to_owned();
    if long_poll {
        return poll_to_end(c, &id, status, answer, format).await;
    }
    crate::output::remark(&format!(
        "run {id} started on {}: workflow {}",
        c.base_url(),
        answer["workflow"].as_str().unwrap_or("")
    ));
    watch(c, &id, format).await
}

/// Follows a run the server just started to its end: long polls for a script (`-o
/// json|yaml`), the live feed for a person.
pub async fn follow(c: &Client, id: &str, format: Format) -> Result<i32> {
    if format.is_data() {
        return poll_to_end(c, id, 202, Json::Null, format).await;
    }
    watch(c, id, format).await
}

/// The run once it has ended (long polls).
pub async fn wait_for_end(c: &Client, id: &str) -> Result<Json> {
    loop {
        let path = format!("/api/v1/runs/{}?wait={LONG_POLL}&view=full", segment(id));
        let (status, run) = c.request("GET", &path, None).await?;
        match status {
            200 => return Ok(run),
            202 => continue,
            _ => bail!(
                "the server answered {status}: {}",
                run["message"].as_str().unwrap_or("")
            ),
        }
    }
}

/// Long polls until the run ended (`status` and `run`: the answer so far).
async fn poll_to_end(
    c: &Client,
    id: &str,
    mut status: u16,
    mut run: Json,
    format: Format,
) -> Result<i32> {
    while status != 200 {
        let path = format!("/api/v1/runs/{}?wait={LONG_POLL}", segment(id));
        (status, run) = c.request("GET", &path, None).await?;
        if !(200..300).contains(&status) {
            bail!(
                "the server answered {status}: {}",
                run["message"].as_str().unwrap_or("")
            );
        }
    }
    print_run(&run, format);
    Ok(exit_code(&run))
}

/// Follows a run over the WebSocket until it ends; exit status as `plexus run`.
pub async fn watch(c: &Client, id: &str, format: Format) -> Result<i32> {
    let run = c
        .call("GET", &format!("/api/v1/runs/{}", segment(id)), None)
        .await?;
    let id = run["id"].as_str().unwrap_or(id).to_owned();
    let total = run["steps"].as_array().map_or(0, Vec::len);
    let mut progress = Progress::new(total, 0);
    let url = c.ws_url(&format!(
        "/ws?run={}&after=0&heartbeat_ms=5000",
        segment(&id)
    ));
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)?;
    if let Some(cred) = &c.credential {
        let value = format!("Bearer {}", cred.bearer(c).await?);
        request
            .headers_mut()
            .insert("authorization", value.parse()?);
    }
    // Over the client's own connection, so wss:// uses the same TLS settings as HTTPS.
    let stream = c.connect().await?;
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .context("cannot open the server's WebSocket")?;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                    use plexus_core::machine::{Event, EventKind};
                    let m: Json = serde_json::from_str(&t).unwrap_or(Json::Null);
                    let event = (m["type"] == "event").then(|| serde_json::from_value::<Event>(m["event"].clone()).ok()).flatten();
                    if let Some(e) = event {
                        progress.on_event(&e);
                        if matches!(e.kind, EventKind::RunSucceeded { .. } | EventKind::RunFailed { .. } | EventKind::RunCancelled { .. }) {
                            break;
                        }
                    }
                }
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => {
                    progress.finish();
                    bail!("the server closed the feed: {}", frame.map(|f| f.reason.to_string()).unwrap_or_default());
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => {
                    progress.finish();
                    bail!("lost the connection to the server; `plexus runs watch {id}` picks up again");
                }
            },
            _ = tick.tick() => progress.redraw(),
        }
    }
    progress.finish();
    let run = c
        .call("GET", &format!("/api/v1/runs/{}", segment(&id)), None)
        .await?;
    print_run(&run, format);
    Ok(exit_code(&run))
}

/// How long one long poll of `plexus run --server -o json` waits (under the client's
/// read timeout).
const LONG_POLL: &str = "60s";

/// `plexus run`'s exit status for an ended run.
pub fn exit_code(run: &Json) -> i32 {
    match run["state"].as_str() {
        Some("succeeded") => 0,
        Some("cancelled") => 130,
        _ => 1,
    }
}

pub async fn workflow_apply(c: &Client, file: &Path, format: Format) -> Result<i32> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let (status, answer) = c.request("POST", "/api/v1/workflows", Some(&text)).await?;
    if status == 400 && answer["code"] == "invalid_manifest" {
        for p in answer["details"].as_array().into_iter().flatten() {
            eprintln!(
                "{}:{}:{}: error[{}]: {}",
                file.display(),
                p["line"],
                p["column"],
                p["code"].as_str().unwrap_or(""),
                p["message"].as_str().unwrap_or("")
            );
        }
        return Ok(2);
    }
    if !(200..300).contains(&status) {
        bail!(
            "the server answered {status}: {}",
            answer["message"].as_str().unwrap_or("")
        );
    }
    match format {
        Format::Json | Format::Yaml => output::data(format, &answer),
        Format::Table => {
            let what = if answer["created"] == true {
                "applied as"
            } else {
                "unchanged at"
            };
            println!(
                "workflow {} {what} version {}",
                answer["name"].as_str().unwrap_or(""),
                answer["version"]
            );
        }
    }
    Ok(0)
}

pub async fn workflow_list(c: &Client, format: Format) -> Result<i32> {
    let list = c.call("GET", "/api/v1/workflows", None).await?;
    if format.is_data() {
        output::data(format, &list["workflows"]);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = list["workflows"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .map(|w| {
                    vec![
                        w["name"].as_str().unwrap_or("").to_owned(),
                        w["version"].to_string(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    output::table(&["WORKFLOW", "VERSION"], &rows);
    Ok(0)
}

pub async fn workflow_get(
    c: &Client,
    name: &str,
    version: Option<u32>,
    format: Format,
) -> Result<i32> {
    let q = version.map(|v| format!("?version={v}")).unwrap_or_default();
    let w = c
        .call(
            "GET",
            &format!("/api/v1/workflows/{}{q}", segment(name)),
            None,
        )
        .await?;
    match format {
        Format::Json | Format::Yaml => output::data(format, &w),
        Format::Table => print!("{}", w["manifest"].as_str().unwrap_or("")),
    }
    Ok(0)
}

pub async fn workflow_delete(c: &Client, name: &str) -> Result<i32> {
    c.call(
        "DELETE",
        &format!("/api/v1/workflows/{}", segment(name)),
        None,
    )
    .await?;
    println!("workflow {name} deleted");
    Ok(0)
}

pub async fn event_emit(
    c: &Client,
    event_type: &str,
    payload: Json,
    dedupe_key: Option<&str>,
    format: Format,
) -> Result<i32> {
    let body = json!({"type": event_type, "payload": payload, "dedupe_key": dedupe_key});
    let answer = c
        .call("POST", "/api/v1/events", Some(&body.to_string()))
        .await?;
    match format {
        Format::Json | Format::Yaml => output::data(format, &answer),
        Format::Table => {
            let runs = answer["runs"].as_array().map_or(0, Vec::len);
            println!(
                "event {} started {runs} run(s){}",
                answer["id"].as_str().unwrap_or(""),
                if answer["dead_letter"].is_null() {
                    ""
                } else {
                    "; kept as a dead letter"
                }
            );
        }
    }
    Ok(0)
}

pub async fn schedule_list(c: &Client, format: Format) -> Result<i32> {
    let list = c.call("GET", "/api/v1/schedules", None).await?;
    if format.is_data() {
        output::data(format, &list["schedules"]);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = list["schedules"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|s| {
                    let next = s["next_fire_at"].as_u64().map_or(String::new(), |t| {
                        let now = plexus_engine::now_ms();
                        if t > now {
                            format!("in {}", millis(t - now))
                        } else {
                            "due".into()
                        }
                    });
                    let state = if s["paused"] == true {
                        "paused"
                    } else {
                        "active"
                    };
                    vec![
                        s["name"].as_str().unwrap_or("").to_owned(),
                        s["workflow"].as_str().unwrap_or("").to_owned(),
                        s["cron"].as_str().unwrap_or("").to_owned(),
                        state.to_owned(),
                        next,
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    output::table(&["SCHEDULE", "WORKFLOW", "CRON", "STATE", "NEXT"], &rows);
    Ok(0)
}

pub async fn schedule_create(c: &Client, body: Json, format: Format) -> Result<i32> {
    let s = c
        .call("POST", "/api/v1/schedules", Some(&body.to_string()))
        .await?;
    match format {
        Format::Json | Format::Yaml => output::data(format, &s),
        Format::Table => println!(
            "schedule {} fires `{}` on `{}`",
            s["name"].as_str().unwrap_or(""),
            s["workflow"].as_str().unwrap_or(""),
            s["cron"].as_str().unwrap_or("")
        ),
    }
    Ok(0)
}

/// pause, resume or delete a schedule.
pub async fn schedule_action(c: &Client, name: &str, action: &str) -> Result<i32> {
    match action {
        "delete" => {
            c.call(
                "DELETE",
                &format!("/api/v1/schedules/{}", segment(name)),
                None,
            )
            .await?
        }
        _ => {
            c.call(
                "POST",
                &format!("/api/v1/schedules/{}/{action}", segment(name)),
                Some("{}"),
            )
            .await?
        }
    };
    println!("schedule {name}: {action}d");
    Ok(0)
}
