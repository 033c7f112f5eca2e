//! The command line: every command, option and help text `plexus` accepts.

use crate::cmd_admin;
use crate::output::Format;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

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
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// The heading global options are listed under, after a command's own.
const GLOBAL: &str = "Global options";

/// Executor pools, for the commands that run or check work on this machine.
#[derive(Args, Default, Clone)]
pub struct Pools {
    /// Executor pool size, NAME=SLOTS (repeatable); `default` is the number of cores
    #[arg(long = "pool", value_name = "NAME=SLOTS")]
    pub pools: Vec<String>,
}

const DATA_DIR_HELP: &str =
    "Directory of the embedded store, artifacts and scratch space [default: $XDG_DATA_HOME/plexus]";
const SERVER_HELP: &str = "Talk to this `plexus serve` instead of the local store (e.g. http://127.0.0.1:8080; `local` for the local store) [default: the context saved by `plexus init`]";

/// Options for every command. `--data-dir` and `--server` are accepted here too (before
/// the command); after it, only the commands they do something for offer them.
#[derive(Args)]
pub struct Global {
    #[arg(long, env = "PLEXUS_DATA_DIR", value_name = "DIR", help = DATA_DIR_HELP, help_heading = GLOBAL)]
    pub data_dir: Option<PathBuf>,
    /// Where the store is: postgres://USER:PASSWORD@HOST:PORT/DB (replicas sharing one
    /// PostgreSQL database) or sqlite:PATH [default: store.url in plexus.toml, else the
    /// SQLite file in the data directory]
    #[arg(long, global = true, env = "PLEXUS_DATABASE_URL", value_name = "URL", hide_env_values = true, help_heading = GLOBAL)]
    pub database_url: Option<String>,
    /// Configuration file [default: ./plexus.toml, then $XDG_CONFIG_HOME/plexus/plexus.toml]
    #[arg(long, global = true, env = "PLEXUS_CONFIG", value_name = "FILE", help_heading = GLOBAL)]
    pub config: Option<PathBuf>,
    /// Output format
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table, help_heading = GLOBAL)]
    pub output: Format,
    #[arg(long, env = "PLEXUS_SERVER", value_name = "URL", help = SERVER_HELP, help_heading = GLOBAL)]
    pub server: Option<String>,
    /// No progress or remarks on stderr (results and errors still appear)
    #[arg(short, long, global = true, help_heading = GLOBAL)]
    pub quiet: bool,
}

/// Where a command that works on runs finds them: the local store or a server.
#[derive(Args, Default, Clone)]
pub struct Place {
    #[arg(long, global = true, env = "PLEXUS_DATA_DIR", value_name = "DIR", help = DATA_DIR_HELP, help_heading = GLOBAL)]
    pub data_dir: Option<PathBuf>,
    #[arg(long, global = true, env = "PLEXUS_SERVER", value_name = "URL", help = SERVER_HELP, help_heading = GLOBAL)]
    pub server: Option<String>,
}

/// For commands that only work on this machine's data directory.
#[derive(Args, Default, Clone)]
pub struct Local {
    #[arg(long, global = true, env = "PLEXUS_DATA_DIR", value_name = "DIR", help = DATA_DIR_HELP, help_heading = GLOBAL)]
    pub data_dir: Option<PathBuf>,
}

/// For commands that only talk to a server.
#[derive(Args, Default, Clone)]
pub struct Remote {
    #[arg(long, global = true, env = "PLEXUS_SERVER", value_name = "URL", help = SERVER_HELP, help_heading = GLOBAL)]
    pub server: Option<String>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a workflow now, durably, and show its progress
    ///
    /// Exit status: 0 succeeded, 1 failed, 2 invalid manifest or inputs, 130 cancelled.
    /// Steps that wait for approval prompt on a terminal; elsewhere approve them with
    /// `plexus approve RUN STEP` from another shell.
    Run {
        #[command(flatten)]
        place: Place,
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
        #[command(flatten)]
        pools: Pools,
    },
    /// Continue an interrupted run (after a crash, kill -9 or reboot)
    Resume {
        run: String,
        #[command(flatten)]
        place: Place,
        #[arg(long)]
        follow_logs: bool,
        #[command(flatten)]
        pools: Pools,
    },
    /// Check manifests and report every problem with file:line:column (exit 2 if invalid)
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        pools: Pools,
        /// Also check agent steps against the agents registered with this server
        #[command(flatten)]
        remote: Remote,
    },
    /// Show how a workflow will run: layers, parallel steps, pools, approval gates
    ///
    /// With --server, agent steps are gated at the permission their actions declare
    /// there, and checked against them.
    Plan {
        file: PathBuf,
        #[command(flatten)]
        pools: Pools,
        #[command(flatten)]
        remote: Remote,
    },
    /// Inspect and control runs
    Runs {
        #[command(flatten)]
        place: Place,
        #[command(subcommand)]
        cmd: RunsCommand,
    },
    /// Deliver a signal to a step waiting in `wait: {signal: ...}`
    Signal {
        #[command(flatten)]
        place: Place,
        run: String,
        step: String,
        /// JSON data; it becomes the step's output
        #[arg(long, value_name = "JSON")]
        data: Option<String>,
    },
    /// Approve a step that waits for approval
    Approve {
        #[command(flatten)]
        place: Place,
        run: String,
        step: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Reject a step that waits for approval (it is skipped with reason `rejected`)
    Reject {
        #[command(flatten)]
        place: Place,
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
        #[command(flatten)]
        local: Local,
        #[command(flatten)]
        pools: Pools,
        /// Address of the HTTP API [default: 0.0.0.0:8080; plexus.toml: listen_addr]
        #[arg(long, env = "PLEXUS_LISTEN_ADDR")]
        listen_addr: Option<String>,
        /// Address of the gRPC API (JobService, health) [default: the HTTP API's host, port
        /// 9090; plexus.toml: grpc_addr]
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
        /// A browser origin (scheme://host[:port]) allowed to open the WebSocket besides
        /// the server's own (repeatable) [env: PLEXUS_ALLOWED_ORIGINS, comma-separated;
        /// plexus.toml: allowed_origins]
        #[arg(long = "allowed-origin", value_name = "ORIGIN")]
        allowed_origins: Vec<String>,
        /// When another `plexus serve` holds the data directory, wait until it stops
        /// instead of refusing to start (a new version taking over from a draining one)
        #[arg(long)]
        wait_for_lock: bool,
        /// On the first start of a data directory, make this the admin's API key
        /// (`plx_<id>_<secret>`, read from FILE) instead of printing a new one; or set
        /// PLEXUS_BOOTSTRAP_API_KEY
        #[arg(long, value_name = "FILE")]
        bootstrap_key_file: Option<PathBuf>,
    },
    /// Show the effective configuration and where each value comes from
    Config {
        #[command(flatten)]
        local: Local,
        #[command(subcommand)]
        cmd: ConfigCommand,
    },
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
    User {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        cmd: cmd_admin::UserCommand,
    },
    /// API keys for scripts
    #[command(name = "api-key")]
    ApiKey {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        cmd: cmd_admin::ApiKeyCommand,
    },
    /// Steps waiting for a human decision
    Approval {
        #[command(flatten)]
        place: Place,
        #[command(subcommand)]
        cmd: cmd_admin::ApprovalCommand,
    },
    /// The tamper-evident audit log: verify, list, export
    ///
    /// Without a server, works on --data-dir (stop the server first, or use its API).
    Audit {
        #[command(flatten)]
        place: Place,
        #[command(subcommand)]
        cmd: cmd_admin::AuditCommand,
    },
    /// Runtime settings of a server (admin): execution mode, budgets, providers
    Settings {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        cmd: cmd_admin::SettingsCommand,
    },
    /// Print a shell completion script
    ///
    /// Examples:
    ///   plexus completion bash > ~/.local/share/bash-completion/completions/plexus
    ///   plexus completion zsh > "${fpath[1]}/_plexus"
    ///   plexus completion fish > ~/.config/fish/completions/plexus.fish
    #[command(verbatim_doc_comment)]
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page, or write one page per command into a directory
    ///
    /// Examples:
    ///   plexus man | man -l -
    ///   plexus man --dir /usr/local/share/man/man1
    #[command(verbatim_doc_comment)]
    Man {
        /// Write plexus.1 and plexus-COMMAND.1 for every command here
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// The `plexus serve` replicas sharing the store, and the runs each drives
    Replica {
        #[command(flatten)]
        place: Place,
        #[command(subcommand)]
        cmd: crate::cmd_replica::ReplicaCommand,
    },
    /// The store itself: copy a single-machine store into PostgreSQL
    Store {
        #[command(flatten)]
        local: Local,
        #[command(subcommand)]
        cmd: crate::cmd_store::StoreCommand,
    },
    /// The keys in --data-dir that sign session tokens
    #[command(name = "token-keys")]
    TokenKeys {
        #[command(flatten)]
        local: Local,
        #[command(subcommand)]
        cmd: cmd_admin::TokenKeysCommand,
    },
    /// Workflow definitions on a server
    Workflow {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        cmd: WorkflowCommand,
    },
    /// Events for a server's `on:` triggers
    Event {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        cmd: EventCommand,
    },
    /// Cron schedules on a server
    Schedule {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        cmd: ScheduleCommand,
    },
    /// Agents registered with a server: list, health, configuration
    Agent {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        cmd: crate::cmd_agent::AgentCommand,
    },
    /// LLM providers of a server (what `llm` steps call)
    Provider {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        cmd: crate::cmd_provider::ProviderCommand,
    },
    /// Ask in plain words: run the workflow or action the question names, or let an
    /// agentic loop answer it
    ///
    /// The server matches the question against its stored workflows' `intents` and its
    /// agents' actions: a phrase with placeholders (`why is {service} slow`) that the
    /// whole question fits is certain and fills the inputs; otherwise the words are
    /// ranked (BM25), and a configured model may pick among the best. The best match
    /// runs when its score reaches `intents.min_score` (0.6); inputs it lacks are asked
    /// for on a terminal. When nothing matches well enough and an LLM provider is
    /// configured, an agentic loop answers, calling the agents' actions as tools (those
    /// that change things wait for `plexus approve`).
    ///
    /// Examples:
    ///   plexus ask "why is checkout slow?"
    ///   plexus ask "scale web" --input replicas=3
    ///   plexus ask "how big is the reports folder" --dry-run -o json
    Ask {
        #[command(flatten)]
        remote: Remote,
        question: String,
        /// An input, KEY=VALUE (repeatable), besides those the question names
        #[arg(short, long = "input", value_name = "KEY=VALUE")]
        input: Vec<String>,
        /// Only show the candidates and what would run
        #[arg(long)]
        dry_run: bool,
        /// Never start an agentic loop
        #[arg(long)]
        no_loop: bool,
        /// How many candidates to show
        #[arg(long, default_value_t = 5)]
        limit: usize,
    },
    /// Run an agent's action by hand (with the approval and audit of a step)
    Action {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        cmd: crate::cmd_agent::ActionCommand,
    },
    /// Measure the durable core against its targets, each next to a baseline taken now
    ///
    /// Scenarios: sequential-40 (40 dependent noop steps), fanout-1000 (1,000 parallel
    /// steps and a join), throughput-10k (10,000 independent steps), foreach-100k (a
    /// foreach over 100,000 items of another step's output vs ten times 10,000, and the
    /// longest the engine's loop kept a caller waiting meanwhile), shell-100 (100
    /// independent `true` commands: per-step time vs one bare fork+exec, and vs bare
    /// fork+exec as many at a time as cores), shell-chain-100 (100 `true` commands one
    /// after another vs bare fork+exec one at a time), isolation-100 (100 `true` steps
    /// isolated from the data directory vs the same unisolated), park-100k (100,000 steps waiting
    /// for a signal: peak memory, then one signal each), http-1000 (1,000 runs of 5 steps submitted over
    /// HTTP by 32 clients: submit rate, runs/s, p50/p99 submit-to-finish), http-clients
    /// (`plexus serve` as its own process; 50 clients wait for 2,000 one-step runs by long
    /// poll and by WebSocket: workflows/s, p50/p99, server CPU per run, vs in-process),
    /// agent-roundtrip (a no-op action of a Rust agent through the engine vs a direct
    /// gRPC call, p50/p99), agent-throughput (1,000 calls at once, and 1,000 agent steps
    /// of one durable run, vs direct calls), intents (34 phrasings over the examples'
    /// intent catalogue: top-1 accuracy without a model; matching latency with 1,000
    /// workflows vs a plain scan), gateway (chat calls through /v1/chat/completions vs
    /// straight to a scripted model server, 1 and 64 clients).
    /// Each runs in its own process on a fresh store with synchronous=FULL.
    Bench {
        #[command(flatten)]
        local: Local,
        /// Small sizes, for a smoke test
        #[arg(long)]
        quick: bool,
        /// Run only this scenario
        #[arg(long, value_name = "NAME")]
        scenario: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum WorkflowCommand {
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
pub enum ScheduleCommand {
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
pub enum EventCommand {
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
pub enum ConfigCommand {
    /// Every setting with its value and source (flag or environment, file, default)
    Show,
}

#[derive(Subcommand)]
pub enum RunsCommand {
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
    /// Follow a run live until it ends (on a server, or one another process drives here)
    ///
    /// Ctrl-C detaches: the run goes on. Exit status as `plexus run` once it ends.
    ///
    /// Example: plexus runs watch 01a2   (a unique prefix of the id is enough)
    Watch { run: String },
    /// Turn an agentic loop that succeeded into a workflow making the same tool calls
    ///
    /// One agent step per tool call that succeeded, in the order the model made them,
    /// each after the one before; the question becomes the workflow's intent. MODIFY
    /// and ADMIN actions wait for approval as in any workflow.
    ///
    /// Example: plexus runs promote 01a2 --name tidy-reports -f tidy.yaml
    Promote {
        run: String,
        /// The workflow's name (default promoted-RUNID)
        #[arg(long)]
        name: Option<String>,
        /// Write the YAML here instead of standard output
        #[arg(short, long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
}

fn parse_duration_flag(s: &str) -> Result<std::time::Duration, String> {
    plexus_core::duration::parse_duration(s)
}

impl Command {
    /// The `--pool` flags of a command that takes them.
    pub fn pools(&self) -> &[String] {
        match self {
            Command::Run { pools, .. }
            | Command::Resume { pools, .. }
            | Command::Validate { pools, .. }
            | Command::Plan { pools, .. }
            | Command::Serve { pools, .. } => &pools.pools,
            _ => &[],
        }
    }
}

impl Command {
    /// The `--data-dir` and `--server` given after the command, where it takes them.
    pub fn place(&self) -> Place {
        match self {
            Command::Run { place, .. }
            | Command::Resume { place, .. }
            | Command::Signal { place, .. }
            | Command::Approve { place, .. }
            | Command::Reject { place, .. }
            | Command::Runs { place, .. }
            | Command::Approval { place, .. }
            | Command::Audit { place, .. }
            | Command::Replica { place, .. } => place.clone(),
            Command::Serve { local, .. }
            | Command::Bench { local, .. }
            | Command::Config { local, .. }
            | Command::Store { local, .. }
            | Command::TokenKeys { local, .. } => Place {
                data_dir: local.data_dir.clone(),
                server: None,
            },
            Command::User { remote, .. }
            | Command::ApiKey { remote, .. }
            | Command::Settings { remote, .. }
            | Command::Workflow { remote, .. }
            | Command::Event { remote, .. }
            | Command::Schedule { remote, .. }
            | Command::Agent { remote, .. }
            | Command::Provider { remote, .. }
            | Command::Action { remote, .. }
            | Command::Ask { remote, .. } => Place {
                data_dir: None,
                server: remote.server.clone(),
            },
            _ => Place::default(),
        }
    }
}
