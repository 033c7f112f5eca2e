//! `plexus`: run durable workflows on your machine, inspect and control them.

mod bench;
mod bench_agents;
mod bench_clients;
mod bench_gateway;
mod bench_http;
mod bench_intents;
mod bench_replicas;
mod cli;
mod cmd_admin;
mod cmd_agent;
mod cmd_ask;
mod cmd_docs;
mod cmd_promote;
mod cmd_provider;
mod cmd_replica;
mod cmd_run;
mod cmd_runs;
mod cmd_serve;
mod cmd_store;
mod cmd_validate;
mod config;
mod help;
mod http_client;
mod login;
mod output;
mod progress;
mod remote;
mod serve_lock;
mod target;
mod telemetry;

use anyhow::{Context, Result};
use cli::{
    Cli, Command, ConfigCommand, EventCommand, RunsCommand, ScheduleCommand, WorkflowCommand,
};
use cmd_admin::ApprovalCommand;
use output::Format;
use serde_json::{Value as Json, json};
use target::{Control, RunsQuery, Target};

/// The argument that makes the binary the template sandbox's worker (not a command).
const TEMPLATE_WORKER: &str = "__template-worker";

fn main() {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == TEMPLATE_WORKER)
    {
        std::process::exit(plexus_engine::template_sandbox::serve_worker());
    }
    install_template_sandbox();
    let cli = parse_command_line();
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

/// Every command, once: where a command exists both locally and on a server, the
/// [`Target`] chosen from `--server` (or the saved context) decides which.
/// The command line, parsed with the help that carries every command's examples.
fn parse_command_line() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let mut matches = help::with_examples(Cli::command()).get_matches();
    Cli::from_arg_matches_mut(&mut matches).unwrap_or_else(|e| e.exit())
}

/// Templates that could build huge values render in a worker process: this binary,
/// started again with [`TEMPLATE_WORKER`].
fn install_template_sandbox() {
    match std::env::current_exe() {
        Ok(program) => {
            let sandbox = plexus_engine::template_sandbox::WorkerSandbox::new(
                program,
                vec![TEMPLATE_WORKER.into()],
            );
            plexus_core::template::sandbox::install(Box::new(sandbox));
        }
        // Rendering then stays in this process, bounded by fuel and output size only.
        Err(e) => eprintln!("warning: templates render without a sandbox: {e}"),
    }
}

async fn dispatch(cli: Cli) -> Result<i32> {
    let g = cli.global;
    output::set_quiet(g.quiet);
    // After the command where it takes them, else before it (or from the environment).
    let place = cli.command.place();
    let data_dir = place.data_dir.or(g.data_dir);
    let server = place.server.or(g.server);
    let data_dir_flag = data_dir.clone();
    let serve_flags = match &cli.command {
        Command::Serve {
            listen_addr,
            grpc_addr,
            body_limit,
            shutdown_grace,
            tls_cert,
            tls_key,
            allowed_origins,
            ..
        } => {
            let env = config::ServeFlags::from_env()?;
            config::ServeFlags {
                listen_addr: listen_addr.clone(),
                grpc_addr: grpc_addr.clone(),
                body_limit: *body_limit,
                shutdown_grace: *shutdown_grace,
                tls_cert: tls_cert.clone(),
                tls_key: tls_key.clone(),
                allowed_origins: if allowed_origins.is_empty() {
                    env.allowed_origins
                } else {
                    Some(allowed_origins.clone())
                },
            }
        }
        _ => config::ServeFlags::from_env()?,
    };
    let settings = config::resolve(
        data_dir,
        g.database_url.clone(),
        cli.command.pools(),
        g.config.as_deref(),
        serve_flags,
    )?;
    let compile = plexus_core::CompileOptions {
        pools: settings.pools.clone(),
        default_mode: None,
        action_floors: Default::default(),
    };
    let format = g.output;
    let client = remote::server(server.as_deref())?;
    let target = match &client {
        Some(c) => Target::Remote(c),
        None => Target::Local(&settings),
    };
    match cli.command {
        // Generated from the command definitions.
        Command::Completion { shell } => cmd_docs::completion(shell),
        Command::Man { dir } => cmd_docs::man(dir.as_deref()),
        // Work on a manifest or on this machine: always local.
        Command::Validate { files, remote, .. } => {
            let server = explicit_server(&remote)?;
            cmd_validate::validate(&files, &compile, format, server.as_ref()).await
        }
        Command::Plan { file, remote, .. } => {
            let server = explicit_server(&remote)?;
            cmd_validate::plan(&file, &compile, format, server.as_ref()).await
        }
        Command::Serve {
            wait_for_lock,
            bootstrap_key_file,
            ..
        } => cmd_serve::serve(&settings, wait_for_lock, bootstrap_key_file.as_deref()).await,
        Command::Config {
            cmd: ConfigCommand::Show,
            ..
        } => {
            settings.print(format);
            Ok(0)
        }
        Command::Store { cmd, .. } => cmd_store::run(cmd, &settings, format).await,
        Command::TokenKeys {
            cmd: cmd_admin::TokenKeysCommand::Rotate,
            ..
        } => cmd_admin::rotate_token_key(&settings.keys_dir, format),
        Command::Bench {
            quick, scenario, ..
        } => match (&scenario, format) {
            // The parent asks each child process for one scenario in JSON.
            (Some(name), Format::Json) => {
                bench::run_one(name, quick, data_dir_flag.as_deref()).await
            }
            _ => bench::run_all(quick, scenario.as_deref(), format, data_dir_flag.as_deref()),
        },

        // Runs: the local store or the server.
        Command::Run {
            file,
            input,
            inputs,
            follow_logs,
            ..
        } => {
            let args = cmd_run::RunArgs {
                file,
                inputs: input,
                inputs_file: inputs,
                follow_logs,
                format,
            };
            target.run(args).await
        }
        Command::Resume {
            run, follow_logs, ..
        } => target.resume(&run, follow_logs, format).await,
        Command::Runs {
            cmd:
                RunsCommand::List {
                    status,
                    workflow,
                    interrupted,
                    limit,
                },
            ..
        } => {
            let query = RunsQuery {
                status,
                workflow,
                interrupted,
                limit,
            };
            target.runs_list(query, format).await
        }
        Command::Runs {
            cmd: RunsCommand::Show { run },
            ..
        } => target.runs_show(&run, format).await,
        Command::Runs {
            cmd: RunsCommand::Events { run, after },
            ..
        } => target.runs_events(&run, after, format).await,
        Command::Runs {
            cmd: RunsCommand::Watch { run },
            ..
        } => target.runs_watch(&run, format).await,
        Command::Runs {
            cmd: RunsCommand::Promote { run, name, file },
            ..
        } => cmd_promote::promote(&target, &run, name, file).await,
        Command::Runs {
            cmd: RunsCommand::Cancel { run },
            ..
        } => target.control(&run, Control::Cancel, format).await,
        Command::Signal {
            run, step, data, ..
        } => {
            let data = match data {
                Some(d) => serde_json::from_str::<Json>(&d)
                    .with_context(|| format!("--data is not valid JSON: {d}"))?,
                None => Json::Null,
            };
            target
                .control(&run, Control::Signal { step, data }, format)
                .await
        }
        Command::Approve {
            run, step, comment, ..
        }
        | Command::Approval {
            cmd: ApprovalCommand::Approve { run, step, comment },
            ..
        } => {
            target
                .control(&run, Control::Approve { step, comment }, format)
                .await
        }
        Command::Reject {
            run, step, comment, ..
        }
        | Command::Approval {
            cmd: ApprovalCommand::Reject { run, step, comment },
            ..
        } => {
            target
                .control(&run, Control::Reject { step, comment }, format)
                .await
        }
        Command::Approval {
            cmd: ApprovalCommand::List,
            ..
        } => target.approvals_list(format).await,
        Command::Audit { cmd, .. } => target.audit(&cmd, format).await,
        Command::Replica { cmd, .. } => cmd_replica::run(cmd, &target, format).await,

        // A server's own business.
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
            let c = target.server("logout")?;
            let context = remote::context_file().context("no config directory")?;
            login::logout(c, &context).await
        }
        Command::User { cmd, .. } => {
            cmd_admin::user(target.admin_server("user")?, &cmd, format).await
        }
        Command::ApiKey { cmd, .. } => {
            cmd_admin::api_key(target.admin_server("api-key")?, &cmd, format).await
        }
        Command::Settings { cmd, .. } => {
            cmd_admin::settings(target.admin_server("settings")?, &cmd, format).await
        }
        Command::Workflow { cmd, .. } => {
            let c = target.server("workflow")?;
            match cmd {
                WorkflowCommand::Apply { file } => remote::workflow_apply(c, &file, format).await,
                WorkflowCommand::List => remote::workflow_list(c, format).await,
                WorkflowCommand::Get { name, version } => {
                    remote::workflow_get(c, &name, version, format).await
                }
                WorkflowCommand::Delete { name } => remote::workflow_delete(c, &name).await,
            }
        }
        Command::Agent { cmd, .. } => {
            let c = target.server("agent")?;
            cmd_agent::agent(c, cmd, format).await
        }
        Command::Provider { cmd, .. } => {
            let c = target.server("provider")?;
            cmd_provider::provider(c, cmd, format).await
        }
        Command::Ask {
            question,
            input,
            dry_run,
            no_loop,
            limit,
            ..
        } => {
            let c = target.server("ask")?;
            let args = cmd_ask::AskArgs {
                question,
                inputs: cmd_run::given_inputs(&input, None)?,
                dry_run,
                no_loop,
                limit,
            };
            cmd_ask::ask(c, args, format).await
        }
        Command::Action { cmd, .. } => {
            let c = target.server("action")?;
            cmd_agent::action(c, cmd, format).await
        }
        Command::Schedule { cmd, .. } => {
            let c = target.server("schedule")?;
            match cmd {
                ScheduleCommand::List => remote::schedule_list(c, format).await,
                ScheduleCommand::Create {
                    workflow,
                    cron,
                    name,
                    inputs,
                    catch_up,
                } => {
                    let inputs = match inputs {
                        Some(i) => serde_json::from_str::<Json>(&i)
                            .with_context(|| format!("--inputs is not valid JSON: {i}"))?,
                        None => json!({}),
                    };
                    let body = json!({"workflow": workflow, "cron": cron, "name": name, "inputs": inputs, "catch_up": catch_up});
                    remote::schedule_create(c, body, format).await
                }
                ScheduleCommand::Pause { name } => remote::schedule_action(c, &name, "pause").await,
                ScheduleCommand::Resume { name } => {
                    remote::schedule_action(c, &name, "resume").await
                }
                ScheduleCommand::Delete { name } => {
                    remote::schedule_action(c, &name, "delete").await
                }
            }
        }
        Command::Event {
            cmd:
                EventCommand::Emit {
                    event_type,
                    payload,
                    dedupe_key,
                },
            ..
        } => {
            let c = target.server("event")?;
            let payload = match payload {
                Some(p) => serde_json::from_str::<Json>(&p)
                    .with_context(|| format!("--payload is not valid JSON: {p}"))?,
                None => Json::Null,
            };
            remote::event_emit(c, &event_type, payload, dedupe_key.as_deref(), format).await
        }
    }
}

/// The server `--server` or PLEXUS_SERVER names (not the saved context: validating a
/// file stays local unless a server is asked for).
fn explicit_server(remote: &cli::Remote) -> Result<Option<http_client::Client>> {
    match remote.server.as_deref() {
        Some(url) if url != "local" => remote::server(Some(url)),
        _ => Ok(None),
    }
}
