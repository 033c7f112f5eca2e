//! `plexus`: run durable workflows on your machine, inspect and control them.

mod bench;
mod bench_http;
mod cmd_admin;
mod cmd_run;
mod cmd_runs;
mod cmd_serve;
mod cmd_validate;
mod config;
mod http_client;
mod login;
mod output;
mod progress;
mod remote;
mod telemetry;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use output::Format;
use plexus_store::{CommandKind, RunFilter, Store};
use serde_json::{Value as Json, json};
use std::path::PathBuf;
use std::sync::Arc;

const ABOUT: &str = "Durable workflows for AI-agent operations.

A workflow is a YAML file of steps (shell, python, builtins, waits, approvals,
sub-workflows) joined by `needs`. `plexus run` executes it durably in an embedded
SQLite store: kill the process at any point and `plexus resume RUN` continues.

Start here:
  plexus validate flow.yaml          check a manifest, every problem at once
  plexus plan flow.yaml              see layers, parallelism and approval gates
  plexus run flow.yaml -i key=value  run it, with live progress
  plexus runs list                   recent runs (interrupted ones are marked)";

#[derive(Parser)]
#[command(name = "plexus", version, about = "Durable workflows for AI-agent operations", long_about = ABOUT)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Global {
    /// Directory of the embedded store, artifacts and scratch space
    /// [default: $XDG_DATA_HOME/plexus]
    #[arg(long, global = true, env = "PLEXUS_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Executor pool size, NAME=SLOTS (repeatable); `default` is the number of cores
    #[arg(long = "pool", global = true, value_name = "NAME=SLOTS")]
    pools: Vec<String>,
    /// Configuration file [default: ./plexus.toml, then $XDG_CONFIG_HOME/plexus/plexus.toml]
    #[arg(long, global = true, env = "PLEXUS_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Output format
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// Talk to this `plexus serve` instead of the local store (e.g. http://127.0.0.1:8080;
    /// `local` for the local store) [default: the context saved by `plexus init`]
    #[arg(long, global = true, env = "PLEXUS_SERVER", value_name = "URL")]
    server: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a workflow now, durably, and show its progress
    ///
    /// Exit status: 0 succeeded, 1 failed, 2 invalid manifest or inputs, 130 cancelled.
    /// Steps that wait for approval prompt on a terminal; elsewhere approve them with
    /// `plexus approve RUN STEP` from another shell.
    Run {
        /// The workflow manifest (YAML or JSON)
        file: PathBuf,
        /// An input, KEY=VALUE (repeatable); values are converted to the declared type
        #[arg(short, long = "input", value_name = "KEY=VALUE")]
        input: Vec<String>,
        /// A JSON file holding an object of inputs
        #[arg(long, value_name = "FILE")]
        inputs: Option<PathBuf>,
        /// Stream the output of steps as they run
        #[arg(long)]
        follow_logs: bool,
    },
    /// Continue an interrupted run (after a crash, kill -9 or reboot)
    Resume {
        run: String,
        #[arg(long)]
        follow_logs: bool,
    },
    /// Check manifests and report every problem with file:line:column (exit 2 if invalid)
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show how a workflow will run: layers, parallel steps, pools, approval gates
    Plan { file: PathBuf },
    /// Inspect and control runs
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Deliver a signal to a step waiting in `wait: {signal: ...}`
    Signal {
        run: String,
        step: String,
        /// JSON data; it becomes the step's output
        #[arg(long, value_name = "JSON")]
        data: Option<String>,
    },
    /// Approve a step that waits for approval
    Approve {
        run: String,
        step: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Reject a step that waits for approval (it is skipped with reason `rejected`)
    Reject {
        run: String,
        step: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Run the engine with its HTTP API (runs started through it survive restarts)
    ///
    /// At start, every interrupted run in the data directory is resumed. SIGTERM or
    /// Ctrl-C stops taking requests, commits what is pending and hands unfinished runs
    /// back for the next start. Logs are JSON lines on stderr.
    ///
    /// Every request needs a credential. The first start on an empty data directory
    /// creates the user `admin` and prints one API key for it in the log, once:
    /// `plexus login --api-key plx_...`, create real users, then revoke it.
    Serve {
        /// Address of the HTTP API [default: 0.0.0.0:8080; plexus.toml: listen_addr]
        #[arg(long, env = "PLEXUS_LISTEN_ADDR")]
        listen_addr: Option<String>,
        /// Address of the gRPC API (JobService, health) [default: 0.0.0.0:9090; plexus.toml: grpc_addr]
        #[arg(long, env = "PLEXUS_GRPC_ADDR")]
        grpc_addr: Option<String>,
        /// Largest request body accepted, in bytes [default: 4194304; plexus.toml: body_limit]
        #[arg(long, env = "PLEXUS_BODY_LIMIT")]
        body_limit: Option<usize>,
        /// On SIGTERM, how long running steps may take to finish before they are killed
        /// (they then run again as new attempts at the next start)
        /// [default: 30s; plexus.toml: shutdown_grace]
        #[arg(long, env = "PLEXUS_SHUTDOWN_GRACE", value_parser = parse_duration_flag)]
        shutdown_grace: Option<std::time::Duration>,
        /// Serve the HTTP API over TLS with this PEM certificate chain (and --tls-key)
        /// [plexus.toml: tls_cert]
        #[arg(long, env = "PLEXUS_TLS_CERT", value_name = "FILE")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert [plexus.toml: tls_key]
        #[arg(long, env = "PLEXUS_TLS_KEY", value_name = "FILE")]
        tls_key: Option<PathBuf>,
    },
    /// Show the effective configuration and where each value comes from
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Save the server to talk to (in the user's config directory, mode 0600); commands
    /// that work on runs then go to it unless --server says otherwise
    Init {
        #[arg(long, value_name = "URL")]
        server: String,
        /// Save this API key as the credential for the server (checked first); or sign
        /// in later with `plexus login`
        #[arg(long, value_name = "KEY")]
        api_key: Option<String>,
    },
    /// Sign in to a server; the session is kept in the context file (0600) and refreshed
    ///
    /// Scripts can skip this and set PLEXUS_API_KEY instead.
    Login {
        /// The server [default: --server, PLEXUS_SERVER, or the saved context]
        #[arg(long = "url", value_name = "URL")]
        url: Option<String>,
        #[arg(long, short = 'u')]
        username: Option<String>,
        /// Read the password from stdin instead of the terminal
        #[arg(long)]
        password_stdin: bool,
        /// Sign in with an API key (plx_...) instead of a password
        #[arg(long, value_name = "KEY", conflicts_with = "username")]
        api_key: Option<String>,
    },
    /// End the saved session on the server and forget it
    Logout,
    /// Users of a server and their roles (admin)
    #[command(subcommand)]
    User(cmd_admin::UserCommand),
    /// API keys for scripts
    #[command(subcommand, name = "api-key")]
    ApiKey(cmd_admin::ApiKeyCommand),
    /// Steps waiting for a human decision
    #[command(subcommand)]
    Approval(cmd_admin::ApprovalCommand),
    /// The tamper-evident audit log: verify, list, export
    ///
    /// Without a server, works on --data-dir (stop the server first, or use its API).
    #[command(subcommand)]
    Audit(cmd_admin::AuditCommand),
    /// Runtime settings of a server (admin): execution mode, budgets, providers
    #[command(subcommand)]
    Settings(cmd_admin::SettingsCommand),
    /// The keys in --data-dir that sign session tokens
    #[command(subcommand, name = "token-keys")]
    TokenKeys(cmd_admin::TokenKeysCommand),
    /// Workflow definitions on a server
    #[command(subcommand)]
    Workflow(WorkflowCommand),
    /// Events for a server's `on:` triggers
    #[command(subcommand)]
    Event(EventCommand),
    /// Cron schedules on a server
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Measure the durable core against its targets, each next to a baseline taken now
    ///
    /// Scenarios: sequential-40 (40 dependent noop steps), fanout-1000 (1,000 parallel
    /// steps and a join), throughput-10k (10,000 independent steps), foreach-100k (a
    /// foreach over 100,000 items of another step's output vs ten times 10,000, and the
    /// longest the engine's loop kept a caller waiting meanwhile), shell-100 (100
    /// independent `true` commands: per-step time vs one bare fork+exec, and vs bare
    /// fork+exec as many at a time as cores), shell-chain-100 (100 `true` commands one
    /// after another vs bare fork+exec one at a time), park-100k (100,000 steps waiting
    /// for a signal: peak memory, then one signal each), http-1000 (1,000 runs of 5 steps submitted over
    /// HTTP by 32 clients: submit rate, runs/s, p50/p99 submit-to-finish). Each runs in
    /// its own process on a fresh store with synchronous=FULL.
    Bench {
        /// Small sizes, for a smoke test
        #[arg(long)]
        quick: bool,
        /// Run only this scenario
        #[arg(long, value_name = "NAME")]
        scenario: Option<String>,
    },
}

#[derive(Subcommand)]
enum WorkflowCommand {
    /// Store a manifest as a new version (unchanged text keeps its version)
    Apply { file: PathBuf },
    /// The newest version of every workflow
    List,
    /// Print a stored manifest
    Get {
        name: String,
        #[arg(long)]
        version: Option<u32>,
    },
    /// Delete a workflow and every version of it
    Delete { name: String },
}

#[derive(Subcommand)]
enum ScheduleCommand {
    /// Every schedule with its next tick
    List,
    /// Start WORKFLOW on every tick of CRON (5 fields, or 6 with seconds first; UTC)
    Create {
        workflow: String,
        cron: String,
        /// Name of the schedule [default: the workflow's name]
        #[arg(long)]
        name: Option<String>,
        /// Inputs as a JSON object
        #[arg(long, value_name = "JSON")]
        inputs: Option<String>,
        /// Missed ticks: skip (fire the newest once) or run_missed (fire each)
        #[arg(long, default_value = "skip")]
        catch_up: String,
    },
    Pause {
        name: String,
    },
    Resume {
        name: String,
    },
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
enum EventCommand {
    /// Post an event: every workflow with the type under `on:` starts
    Emit {
        #[arg(value_name = "TYPE")]
        event_type: String,
        /// JSON payload
        #[arg(long, value_name = "JSON")]
        payload: Option<String>,
        /// The same key posted twice starts runs once
        #[arg(long)]
        dedupe_key: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Every setting with its value and source (flag or environment, file, default)
    Show,
}

#[derive(Subcommand)]
enum RunsCommand {
    /// Recent runs, newest first
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        workflow: Option<String>,
        /// Only runs that no process is driving (resume them with `plexus resume`)
        #[arg(long)]
        interrupted: bool,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One run with its steps (a unique prefix of the id is enough)
    Show { run: String },
    /// The run's event history
    Events {
        run: String,
        /// Only events after this sequence number
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Cancel a run: running steps are killed, the rest cancelled
    Cancel { run: String },
    /// Follow a run on a server live, until it ends
    Watch { run: String },
}

fn main() {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve { .. });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // `serve` logs JSON lines for log collectors; commands log for people.
    let telemetry = {
        let _inside = runtime.enter();
        telemetry::init(serving, if serving { "info" } else { "warn" })
    };
    let code = match telemetry {
        Ok(telemetry) => {
            let code = match runtime.block_on(dispatch(cli)) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            };
            telemetry.shutdown();
            code
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    // Exit without waiting for threads blocked on the terminal (approval prompts).
    std::process::exit(code);
}

async fn dispatch(cli: Cli) -> Result<i32> {
    let g = cli.global;
    let g_data_dir = g.data_dir.clone();
    let serve_flags = match &cli.command {
        Command::Serve {
            listen_addr,
            grpc_addr,
            body_limit,
            shutdown_grace,
            tls_cert,
            tls_key,
        } => config::ServeFlags {
            listen_addr: listen_addr.clone(),
            grpc_addr: grpc_addr.clone(),
            body_limit: *body_limit,
            shutdown_grace: *shutdown_grace,
            tls_cert: tls_cert.clone(),
            tls_key: tls_key.clone(),
        },
        _ => config::ServeFlags::from_env()?,
    };
    let settings = config::resolve(g.data_dir, &g.pools, g.config.as_deref(), serve_flags)?;
    let compile = plexus_core::CompileOptions {
        pools: settings.pools.clone(),
        default_mode: None,
    };
    let format = g.output;
    let client = remote::server(g.server.as_deref())?;
    if let Some(c) = &client
        && let Some(code) = dispatch_remote(c, &cli.command, format).await?
    {
        return Ok(code);
    }
    match cli.command {
        Command::Init { server, api_key } => remote::init(&server, api_key.as_deref()).await,
        Command::Login {
            url,
            username,
            password_stdin,
            api_key,
        } => {
            let server = url
                .or_else(|| client.as_ref().map(|c| c.base_url()))
                .context(
                    "give the server: --url URL, --server URL or `plexus init --server URL`",
                )?;
            let context = remote::context_file()
                .context("no config directory: set XDG_CONFIG_HOME or HOME")?;
            let args = login::LoginArgs {
                server,
                username,
                password_stdin,
                api_key,
            };
            login::login(args, &context).await
        }
        Command::Logout => {
            let c = remote::need(client, "logout")?;
            let context = remote::context_file().context("no config directory")?;
            login::logout(&c, &context).await
        }
        Command::User(_) => cmd_admin::needs_server("user"),
        Command::ApiKey(_) => cmd_admin::needs_server("api-key"),
        Command::Settings(_) => cmd_admin::needs_server("settings"),
        Command::TokenKeys(cmd_admin::TokenKeysCommand::Rotate) => {
            cmd_admin::rotate_token_key(&settings.data_dir, format)
        }
        Command::Audit(cmd) => {
            let store = settings.open_store()?;
            cmd_admin::audit_local(&*store, &cmd, format).await
        }
        Command::Approval(cmd_admin::ApprovalCommand::List) => {
            let store = settings.open_store()?;
            cmd_admin::approvals_local(&*store, format).await
        }
        Command::Approval(cmd_admin::ApprovalCommand::Approve { run, step, comment }) => {
            let data = json!({ "comment": comment });
            control(&settings, &run, CommandKind::Approve, &step, data, format).await
        }
        Command::Approval(cmd_admin::ApprovalCommand::Reject { run, step, comment }) => {
            let data = json!({ "comment": comment });
            control(&settings, &run, CommandKind::Reject, &step, data, format).await
        }
        Command::Workflow(_) => remote::need(client, "workflow").map(|_| 0),
        Command::Event(_) => remote::need(client, "event").map(|_| 0),
        Command::Schedule(_) => remote::need(client, "schedule").map(|_| 0),
        Command::Runs(RunsCommand::Watch { .. }) => remote::need(client, "runs watch").map(|_| 0),
        Command::Bench { quick, scenario } => match (&scenario, format) {
            // The parent asks each child process for one scenario in JSON.
            (Some(name), Format::Json) => bench::run_one(name, quick, g_data_dir.as_deref()).await,
            _ => bench::run_all(quick, scenario.as_deref(), format, g_data_dir.as_deref()),
        },
        Command::Serve { .. } => cmd_serve::serve(&settings).await,
        Command::Config(ConfigCommand::Show) => {
            let shown = settings.show();
            match format {
                Format::Json | Format::Yaml => output::data(format, &shown),
                Format::Table => {
                    let file = shown["config_file"].as_str().unwrap_or("(none found)");
                    println!("configuration file: {file}\n");
                    let rows: Vec<Vec<String>> = [
                        "data_dir",
                        "pools",
                        "fsync",
                        "listen_addr",
                        "grpc_addr",
                        "body_limit",
                        "shutdown_grace",
                        "tls",
                    ]
                    .iter()
                    .map(|k| {
                        let v = &shown[*k]["value"];
                        let value = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                        vec![
                            k.to_string(),
                            value,
                            shown[*k]["source"].as_str().unwrap_or("").to_owned(),
                        ]
                    })
                    .collect();
                    output::table(&["SETTING", "VALUE", "SOURCE"], &rows);
                }
            }
            Ok(0)
        }
        Command::Validate { files } => cmd_validate::validate(&files, &compile, format),
        Command::Plan { file } => cmd_validate::plan(&file, &compile, format),
        Command::Run {
            file,
            input,
            inputs,
            follow_logs,
        } => {
            cmd_run::run(
                &settings,
                cmd_run::RunArgs {
                    file,
                    inputs: input,
                    inputs_file: inputs,
                    follow_logs,
                    format,
                },
            )
            .await
        }
        Command::Resume { run, follow_logs } => {
            cmd_run::resume(&settings, &run, follow_logs, format).await
        }
        Command::Runs(rc) => {
            let store: Arc<dyn Store> = settings.open_store()?;
            match rc {
                RunsCommand::List {
                    status,
                    workflow,
                    interrupted,
                    limit,
                } => {
                    let active = interrupted;
                    cmd_runs::list(
                        &*store,
                        RunFilter {
                            status,
                            workflow,
                            active,
                            limit,
                            ..Default::default()
                        },
                        interrupted,
                        format,
                    )
                    .await
                }
                RunsCommand::Show { run } => {
                    cmd_runs::show_run(&*store, &run, format).await.map(|_| 0)
                }
                RunsCommand::Events { run, after } => {
                    cmd_runs::events(&*store, &run, after, format).await
                }
                RunsCommand::Watch { .. } => unreachable!("answered before: watch needs a server"),
                RunsCommand::Cancel { run } => {
                    let actor = cmd_run::local_user();
                    cmd_runs::control(
                        store,
                        &run,
                        CommandKind::Cancel,
                        None,
                        Json::Null,
                        &actor,
                        &settings,
                        format,
                    )
                    .await
                }
            }
        }
        Command::Signal { run, step, data } => {
            let data = match data {
                Some(d) => serde_json::from_str::<Json>(&d)
                    .with_context(|| format!("--data is not valid JSON: {d}"))?,
                None => Json::Null,
            };
            let data = json!({ "data": data });
            control(&settings, &run, CommandKind::Signal, &step, data, format).await
        }
        Command::Approve { run, step, comment } => {
            let data = json!({ "comment": comment });
            control(&settings, &run, CommandKind::Approve, &step, data, format).await
        }
        Command::Reject { run, step, comment } => {
            let data = json!({ "comment": comment });
            control(&settings, &run, CommandKind::Reject, &step, data, format).await
        }
    }
}

/// Signal, approve or reject a step as the local user.
async fn control(
    settings: &config::Settings,
    run: &str,
    kind: CommandKind,
    step: &str,
    data: Json,
    format: Format,
) -> Result<i32> {
    let store: Arc<dyn Store> = settings.open_store()?;
    let actor = cmd_run::local_user();
    cmd_runs::control(store, run, kind, Some(step), data, &actor, settings, format).await
}

fn parse_duration_flag(s: &str) -> Result<std::time::Duration, String> {
    plexus_core::duration::parse_duration(s)
}

/// Runs the command against the server when it is one that works remotely; `None`
/// means "do it locally".
async fn dispatch_remote(
    c: &http_client::Client,
    command: &Command,
    format: Format,
) -> Result<Option<i32>> {
    let code = match command {
        Command::Run {
            file,
            input,
            inputs,
            ..
        } => {
            let given = cmd_run::given_inputs(input, inputs.as_deref())?;
            remote::run(c, file, given, format).await?
        }
        Command::Runs(RunsCommand::List {
            status,
            workflow,
            limit,
            ..
        }) => remote::runs_list(c, workflow.as_deref(), status.as_deref(), *limit, format).await?,
        Command::Runs(RunsCommand::Show { run }) => remote::runs_show(c, run, format).await?,
        Command::Runs(RunsCommand::Events { run, after }) => {
            remote::runs_events(c, run, *after, format).await?
        }
        Command::Runs(RunsCommand::Cancel { run }) => {
            remote::control(c, run, "cancel", json!({}), format).await?
        }
        Command::Runs(RunsCommand::Watch { run }) => remote::watch(c, run, format).await?,
        Command::Signal { run, step, data } => {
            let data = match data {
                Some(d) => serde_json::from_str::<Json>(d)
                    .with_context(|| format!("--data is not valid JSON: {d}"))?,
                None => Json::Null,
            };
            remote::control(
                c,
                run,
                &format!("steps/{step}/signal"),
                json!({ "data": data }),
                format,
            )
            .await?
        }
        Command::Approve { run, step, comment } => {
            remote::control(
                c,
                run,
                &format!("steps/{step}/approve"),
                json!({ "comment": comment }),
                format,
            )
            .await?
        }
        Command::Reject { run, step, comment } => {
            remote::control(
                c,
                run,
                &format!("steps/{step}/reject"),
                json!({ "comment": comment }),
                format,
            )
            .await?
        }
        Command::Workflow(WorkflowCommand::Apply { file }) => {
            remote::workflow_apply(c, file, format).await?
        }
        Command::User(cmd) => cmd_admin::user(c, cmd, format).await?,
        Command::ApiKey(cmd) => cmd_admin::api_key(c, cmd, format).await?,
        Command::Settings(cmd) => cmd_admin::settings(c, cmd, format).await?,
        Command::Audit(cmd) => cmd_admin::audit_remote(c, cmd, format).await?,
        Command::Approval(cmd_admin::ApprovalCommand::List) => {
            cmd_admin::approvals_remote(c, format).await?
        }
        Command::Approval(cmd_admin::ApprovalCommand::Approve { run, step, comment }) => {
            let body = json!({ "comment": comment });
            remote::control(c, run, &format!("steps/{step}/approve"), body, format).await?
        }
        Command::Approval(cmd_admin::ApprovalCommand::Reject { run, step, comment }) => {
            let body = json!({ "comment": comment });
            remote::control(c, run, &format!("steps/{step}/reject"), body, format).await?
        }
        Command::Workflow(WorkflowCommand::List) => remote::workflow_list(c, format).await?,
        Command::Workflow(WorkflowCommand::Get { name, version }) => {
            remote::workflow_get(c, name, *version, format).await?
        }
        Command::Workflow(WorkflowCommand::Delete { name }) => {
            remote::workflow_delete(c, name).await?
        }
        Command::Schedule(ScheduleCommand::List) => remote::schedule_list(c, format).await?,
        Command::Schedule(ScheduleCommand::Create {
            workflow,
            cron,
            name,
            inputs,
            catch_up,
        }) => {
            let inputs = match inputs {
                Some(i) => serde_json::from_str::<Json>(i)
                    .with_context(|| format!("--inputs is not valid JSON: {i}"))?,
                None => json!({}),
            };
            let body = json!({"workflow": workflow, "cron": cron, "name": name, "inputs": inputs, "catch_up": catch_up});
            remote::schedule_create(c, body, format).await?
        }
        Command::Schedule(ScheduleCommand::Pause { name }) => {
            remote::schedule_action(c, name, "pause").await?
        }
        Command::Schedule(ScheduleCommand::Resume { name }) => {
            remote::schedule_action(c, name, "resume").await?
        }
        Command::Schedule(ScheduleCommand::Delete { name }) => {
            remote::schedule_action(c, name, "delete").await?
        }
        Command::Event(EventCommand::Emit {
            event_type,
            payload,
            dedupe_key,
        }) => {
            let payload = match payload {
                Some(p) => serde_json::from_str::<Json>(p)
                    .with_context(|| format!("--payload is not valid JSON: {p}"))?,
                None => Json::Null,
            };
            remote::event_emit(c, event_type, payload, dedupe_key.as_deref(), format).await?
        }
        _ => return Ok(None),
    };
    Ok(Some(code))
}
