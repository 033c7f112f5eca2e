//! Drives Plexus runs. One scheduler task owns the state of every active run, applies
//! inputs to their state machines, commits the resulting events in one transaction per
//! tick (group commit) and only then performs the actions those events imply.

pub mod agents;
pub mod exec;
pub mod intents;
mod owner;
pub mod pools;
mod scheduler;
pub mod spans;
pub mod template_sandbox;
mod timers;

pub use exec::process::LogChunk;
pub use owner::{hostname, new_owner_id, owner_alive};
pub use pools::{PoolStats, RunId};

use plexus_core::machine::{Event, Input, Millis, Rejected, RunState, RunStatus};
use plexus_core::{CompileOptions, Diagnostic, Plan};
use plexus_store::{NewRun, ParentRef, Store, StoreError};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub pools: BTreeMap<String, u32>,
    /// Holds `work/` (attempt scratch space) and `artifacts/`.
    pub data_dir: PathBuf,
    /// Identifies this engine as the owner of the runs it drives (see [`new_owner_id`]).
    pub owner: String,
    pub output_cap: usize,
    pub python: String,
    /// How long a run's lease lasts: another engine may take a run over once its
    /// owner has not renewed it for this long.
    pub lease: Duration,
    /// How often the leases of every run this engine drives are renewed (one write).
    pub renew_every: Duration,
    /// How often control commands from other processes are picked up.
    pub command_poll: Duration,
    /// Run steps isolated from the data directory when the system allows it (see
    /// [`exec::isolation`]); off only to measure what it costs.
    pub isolate_steps: bool,
    /// How agent plugins are watched and called.
    pub agents: agents::AgentsConfig,
}

impl EngineConfig {
    pub fn new(data_dir: PathBuf, pools: BTreeMap<String, u32>) -> Self {
        EngineConfig {
            pools,
            data_dir,
            owner: new_owner_id(),
            output_cap: 1024 * 1024,
            python: std::env::var("PLEXUS_PYTHON").unwrap_or_else(|_| "python3".into()),
            lease: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            command_poll: Duration::from_millis(200),
            isolate_steps: true,
            agents: agents::AgentsConfig::default(),
        }
    }

    pub fn compile_options(&self) -> CompileOptions {
        CompileOptions {
            pools: self.pools.clone(),
            default_mode: None,
            action_floors: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Rejected(#[from] Rejected),
    #[error("run `{0}` is not active in this engine")]
    NotActive(String),
    #[error(
        "run `{run}` is being driven by another process ({owner}); stop it first or wait for its lease to expire"
    )]
    Owned { run: String, owner: String },
    #[error("run `{run}` is already {status}")]
    Finished { run: String, status: String },
    #[error("the stored manifest of run `{run}` no longer compiles: {problems}")]
    Manifest { run: String, problems: String },
    #[error("the engine has stopped: {0}")]
    Stopped(String),
    #[error(transparent)]
    Restore(#[from] plexus_core::machine::RestoreError),
}

/// Why an input sent to the scheduler was not applied.
#[derive(Debug)]
pub(crate) enum InputError {
    Rejected(Rejected),
    NotActive,
    /// Applied in memory, but its events could not be made durable.
    NotPersisted(String),
}

/// What happened, after it became durable.
#[derive(Debug, Clone)]
pub enum Notice {
    Event {
        run_id: RunId,
        event: Arc<Event>,
    },
    Finished {
        run_id: RunId,
        status: RunStatus,
    },
    /// The engine cannot persist and has stopped; runs resume from their last commit.
    Fatal {
        error: String,
    },
}

/// What the scheduler loop shares about its own health (see [`Engine::health`]).
#[derive(Debug, Default)]
pub(crate) struct Liveness {
    /// Why the loop stopped for good (it could not persist); it never clears.
    fatal: std::sync::Mutex<Option<String>>,
    /// Wall-clock time the oldest commit still in flight was sent, 0 if none.
    commit_since: AtomicU64,
    /// Since when, and why, renewing the leases fails (cleared by a renewal that works).
    renewal_failing: std::sync::Mutex<Option<(Millis, String)>>,
    /// Why the engine dropped its runs and waits for the store (cleared when it is back).
    suspended: std::sync::Mutex<Option<String>>,
}

impl Liveness {
    pub(crate) fn set_fatal(&self, error: String) {
        if let Ok(mut f) = self.fatal.lock() {
            f.get_or_insert(error);
        }
    }

    pub(crate) fn set_suspended(&self, why: Option<String>) {
        if let Ok(mut s) = self.suspended.lock() {
            *s = why;
        }
    }

    pub(crate) fn renewed(&self, outcome: Result<(), String>) {
        if let Ok(mut failing) = self.renewal_failing.lock() {
            match outcome {
                Ok(()) => *failing = None,
                Err(e) => {
                    let since = failing.as_ref().map_or_else(now_ms, |f| f.0);
                    *failing = Some((since, e));
                }
            }
        }
    }

    pub(crate) fn set_commit_since(&self, since: Option<Millis>) {
        self.commit_since
            .store(since.unwrap_or(0), Ordering::Relaxed);
    }
}

/// How long the scheduler loop may take to answer a health probe.
const HEALTH_ANSWER: Duration = Duration::from_secs(1);
/// How long a commit may stay in flight before the engine counts as stalled.
const COMMIT_STALL: Duration = Duration::from_secs(10);

/// The engine's own health, as `/healthz` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EngineHealth {
    /// `running`, `stalled` (the loop or a commit is not moving) or `stopped` (it cannot
    /// persist and stopped: runs resume from their last commit after a restart).
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The pools, when the loop answered.
    #[serde(skip)]
    pub pools: Option<Vec<PoolStats>>,
}

impl EngineHealth {
    pub fn is_ok(&self) -> bool {
        self.state == "running"
    }
}

/// Counters for benchmarks and `/metrics`.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub commits: AtomicU64,
    pub events: AtomicU64,
    pub commit_micros: AtomicU64,
    /// Subprocess attempts, and their time from being made (`step_started` produced) to
    /// being released (durable), from release to their result reaching the scheduler.
    pub attempts: AtomicU64,
    pub attempt_wait_micros: AtomicU64,
    pub attempt_run_micros: AtomicU64,
}

impl EngineStats {
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.commits.load(Ordering::Relaxed),
            self.events.load(Ordering::Relaxed),
            self.commit_micros.load(Ordering::Relaxed),
        )
    }

    /// (attempts, mean µs until durable, mean µs from release to result).
    pub fn attempt_means(&self) -> (u64, u64, u64) {
        let n = self.attempts.load(Ordering::Relaxed);
        let mean = |v: &AtomicU64| v.load(Ordering::Relaxed) / n.max(1);
        (
            n,
            mean(&self.attempt_wait_micros),
            mean(&self.attempt_run_micros),
        )
    }
}

pub(crate) enum Msg {
    /// Takes a run into the loop: started (no events yet), resumed (events), or with
    /// `first` applied instead (retry of a finished run).
    Adopt {
        state: Box<RunState>,
        base_dir: PathBuf,
        parent: Option<ParentRef>,
        reply: Option<oneshot::Sender<()>>,
        first: Option<Input>,
        /// The run's fencing token when this engine claimed or created it (`None`: not
        /// known, commits are not fenced).
        fence: Option<u64>,
    },
    Input {
        run_id: String,
        input: Input,
        /// Answered once the events the input caused are durable.
        reply: Option<oneshot::Sender<Result<(), InputError>>>,
    },
    AttemptDone {
        run_id: RunId,
        unit: plexus_core::machine::Unit,
        attempt: u32,
        finished: exec::AttemptResult,
    },
    Commands(Vec<plexus_store::Command>),
    /// The store says commands from other processes may be waiting.
    CommandsMayWait,
    /// The store answers again after it was lost (see `scheduler::suspend`).
    StoreBack,
    /// An executor's record of a running attempt, to be made durable (see
    /// [`exec::AttemptCtx::record`]).
    Recorded {
        run_id: RunId,
        unit: plexus_core::machine::Unit,
        attempt: u32,
        executor: &'static str,
        data: Json,
    },
    /// Whether a run is driven by this engine now.
    IsActive {
        run_id: RunId,
        reply: oneshot::Sender<bool>,
    },
    Pools(oneshot::Sender<Vec<PoolStats>>),
    /// Records of attempts a dead engine left, for their executors to deal with.
    CleanUp {
        records: Vec<plexus_store::AttemptRecord>,
        reply: oneshot::Sender<()>,
    },
    Shutdown {
        grace: Duration,
        reply: oneshot::Sender<()>,
    },
}

/// A handle to the engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub(crate) tx: mpsc::Sender<Msg>,
    pub(crate) notices: broadcast::Sender<Notice>,
    pub(crate) logs: broadcast::Sender<LogChunk>,
    pub(crate) finished: broadcast::Sender<(RunId, RunStatus)>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: Arc<EngineConfig>,
    pub stats: Arc<EngineStats>,
    pub(crate) liveness: Arc<Liveness>,
    /// How steps are isolated, found once at start.
    pub(crate) isolation: Arc<exec::isolation::Isolation>,
    /// `steps.require_isolation`: refuse to run steps rather than run them unisolated.
    pub(crate) require_isolation: Arc<std::sync::atomic::AtomicBool>,
    /// The agents agent steps call.
    pub agents: agents::Agents,
    /// The MCP servers run as agents.
    pub mcp: agents::mcp::McpAgents,
    /// The LLM providers `llm` steps call.
    pub llm: Arc<plexus_llm::Providers>,
}

/// A run to start.
pub struct Submission {
    pub plan: Arc<Plan>,
    pub manifest_text: String,
    pub base_dir: PathBuf,
    /// Inputs already checked with [`plexus_core::parse::resolve_inputs`].
    pub inputs: Json,
    /// The same key returns the run it first created instead of starting another.
    pub idempotency_key: Option<String>,
    pub workflow_version: Option<u32>,
    /// `workflow_version` is what the caller read as the newest version: the run is made
    /// only while it still is (see [`plexus_store::NewRun::newest_version`]).
    pub newest_version: bool,
    /// Who starts it (the actor of the run's audit records).
    pub started_by: Option<String>,
    /// Every actor who answers for the start (see [`plexus_store::NewRun::responsible`]).
    pub responsible: Vec<String>,
}

/// What [`Engine::submit_run`] did.
pub struct Submitted {
    pub id: String,
    /// When the run was made; `None` when the idempotency key named an earlier run.
    pub created_at: Option<Millis>,
}

/// The plan a stored run started with: its manifest compiled with the options it was
/// first compiled with (pools, mode), so later changes to the configuration or settings
/// do not touch a run already started. A run stored before options were kept, or by a
/// build that compiles another plan format, is compiled with today's pools, in the mode
/// it started in.
pub async fn stored_plan(
    store: &dyn Store,
    row: &plexus_store::RunRow,
    opts: &CompileOptions,
) -> Result<Plan, EngineError> {
    let stored = store.run_definition(&row.id).await?;
    let opts = match stored.plan.as_deref().map(CompileOptions::from_stored) {
        Some(Ok(pinned)) => pinned,
        Some(Err(e @ plexus_core::plan::StoredPlanError::Invalid(_))) => {
            return Err(EngineError::Manifest {
                run: row.id.clone(),
                problems: e.to_string(),
            });
        }
        other => {
            if let Some(Err(why)) = other {
                tracing::warn!(run = %row.id, reason = %why, "compiling the run with today's pools");
            }
            CompileOptions {
                default_mode: row
                    .mode
                    .as_deref()
                    .and_then(plexus_core::manifest::Mode::parse),
                ..opts.clone()
            }
        }
    };
    let file = format!("(stored manifest of run {})", row.id);
    plexus_core::load(&stored.manifest, &file, &opts).map_err(|d| EngineError::Manifest {
        run: row.id.clone(),
        problems: d
            .iter()
            .map(Diagnostic::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// A new time-ordered id (UUIDv7), as runs get.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

impl Engine {
    /// Starts the scheduler task. Call from within a Tokio runtime.
    pub fn start(store: Arc<dyn Store>, config: EngineConfig) -> Engine {
        let (tx, rx) = mpsc::channel(65_536);
        let (notices, _) = broadcast::channel(65_536);
        let (logs, _) = broadcast::channel(4_096);
        let (finished, _) = broadcast::channel(4_096);
        let isolation = if config.isolate_steps {
            exec::isolation::Isolation::probe(&config.data_dir)
        } else {
            exec::isolation::Isolation::disabled("turned off in the engine's configuration")
        };
        match isolation.availability() {
            exec::isolation::Availability::On { mechanism } => {
                tracing::debug!(mechanism, "steps run isolated from the data directory")
            }
            exec::isolation::Availability::Off { reason } => tracing::warn!(
                %reason,
                "isolation: off — steps can reach the data directory (the store, the keys)"
            ),
        }
        let agents = agents::Agents::new(config.agents.clone());
        let engine = Engine {
            tx,
            notices,
            logs,
            finished,
            store,
            config: Arc::new(config),
            stats: Arc::default(),
            liveness: Arc::default(),
            isolation: Arc::new(isolation),
            require_isolation: Arc::default(),
            mcp: agents::mcp::McpAgents::new(agents.clone()),
            llm: Arc::default(),
            agents,
        };
        scheduler::spawn(engine.clone(), rx);
        engine
    }

    /// Whether steps run isolated from the data directory (and how), or why not.
    pub fn isolation(&self) -> &exec::isolation::Availability {
        self.isolation.availability()
    }

    /// `steps.require_isolation`: with it on and isolation off, steps fail to start.
    pub fn set_require_isolation(&self, required: bool) {
        self.require_isolation
            .store(required, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn owner(&self) -> &str {
        &self.config.owner
    }

    /// How long leases last and how often they are renewed.
    pub fn lease_timing(&self) -> (Duration, Duration) {
        (self.config.lease, self.config.renew_every)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    /// Only the ends of runs (cheaper than [`Engine::subscribe`] when that is all you need).
    pub fn finished(&self) -> broadcast::Receiver<(RunId, RunStatus)> {
        self.finished.subscribe()
    }

    pub fn logs(&self) -> broadcast::Receiver<LogChunk> {
        self.logs.subscribe()
    }

    async fn send(&self, msg: Msg) -> Result<(), EngineError> {
        self.tx
            .send(msg)
            .await
            .map_err(|_| EngineError::Stopped("the scheduler is not running".into()))
    }

    /// Creates and starts a run; returns its id once the run is recorded. With an
    /// idempotency key already used, returns that run's id and starts nothing.
    pub async fn submit(&self, sub: Submission) -> Result<String, EngineError> {
        self.submit_run(sub).await.map(|s| s.id)
    }

    /// [`Self::submit`], telling also whether and when the run was made.
    pub async fn submit_run(&self, sub: Submission) -> Result<Submitted, EngineError> {
        let earlier = |id| Submitted {
            id,
            created_at: None,
        };
        if let Some(key) = &sub.idempotency_key
            && let Some(existing) = self.store.find_run_by_key(key).await?
        {
            return Ok(earlier(existing.id));
        }
        let id = new_id();
        let now = now_ms();
        let plan = sub.plan;
        let created = self
            .store
            .create_run(NewRun {
                id: id.clone(),
                workflow: plan.manifest.name.clone(),
                manifest: sub.manifest_text,
                base_dir: Some(sub.base_dir.to_string_lossy().into_owned()),
                inputs: sub.inputs.clone(),
                step_ids: plan.manifest.steps.iter().map(|s| s.id.clone()).collect(),
                parent: None,
                owner: Some(self.config.owner.clone()),
                lease_until: Some(now + self.config.lease.as_millis() as u64),
                created_at: now,
                idempotency_key: sub.idempotency_key.clone(),
                workflow_version: sub.workflow_version,
                newest_version: sub.newest_version,
                started_by: sub.started_by.clone(),
                mode: Some(plan.mode.as_str().to_owned()),
                plan: Some(plan.options.to_stored()),
                responsible: sub.responsible.clone(),
            })
            .await?;
        if !created {
            // Another submission with the same key won the race.
            let key = sub.idempotency_key.unwrap_or_default();
            let existing = self.store.find_run_by_key(&key).await?;
            return existing
                .map(|r| earlier(r.id))
                .ok_or(EngineError::NotActive(id));
        }
        let state = RunState::new(id.clone(), plan, sub.inputs);
        let (reply, done) = oneshot::channel();
        self.send(Msg::Adopt {
            state: Box::new(state),
            base_dir: sub.base_dir,
            parent: None,
            reply: Some(reply),
            first: None,
            // Created owned by this engine: nobody has claimed it since.
            fence: Some(0),
        })
        .await?;
        let _ = done.await;
        Ok(Submitted {
            id,
            created_at: Some(now),
        })
    }

    /// Takes over an interrupted run and continues it from its events.
    pub async fn resume(&self, run_id: &str) -> Result<String, EngineError> {
        let row = self.store.get_run(run_id).await?;
        // Claiming a run this engine drives would fence out its own commits.
        if self.is_active(&row.id).await? {
            return Ok(row.id);
        }
        let now = now_ms();
        if let Some(status) = RunStatus::parse(&row.status).filter(|s| s.is_terminal()) {
            return Err(EngineError::Finished {
                run: row.id,
                status: status.as_str().into(),
            });
        }
        let live_lease = row.lease_until.is_some_and(|t| t >= now);
        let force = match &row.owner {
            Some(owner) if owner != &self.config.owner => {
                // A live engine renews its leases every few seconds; on this host a dead
                // owner is seen at once, without waiting for the lease to run out.
                let alive = owner_alive(owner) != Some(false) && live_lease;
                if alive {
                    return Err(EngineError::Owned {
                        run: row.id,
                        owner: owner.clone(),
                    });
                }
                true
            }
            _ => false,
        };
        let lease_until = now + self.config.lease.as_millis() as u64;
        let Some(fence) = self
            .store
            .claim_run(&row.id, &self.config.owner, lease_until, now, force)
            .await?
        else {
            return Err(EngineError::Owned {
                run: row.id.clone(),
                owner: row.owner.unwrap_or_default(),
            });
        };
        self.take_over(row, fence).await
    }

    /// Takes up again the runs this engine owns but does not drive (after the store was
    /// lost and came back); one that another engine has claimed meanwhile is left to it.
    pub async fn resume_own_runs(&self) {
        let own = match self
            .store
            .list_runs(plexus_store::RunFilter {
                active: true,
                limit: 100_000,
                owner_prefix: Some(self.config.owner.clone()),
                ..Default::default()
            })
            .await
        {
            Ok(runs) => runs,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list this engine's runs to take them up again");
                return;
            }
        };
        for row in own
            .into_iter()
            .filter(|r| r.parent.is_none() && r.owner.as_deref() == Some(&self.config.owner))
        {
            let id = row.id.clone();
            match self.resume(&id).await {
                Ok(_) => tracing::info!(run = %id, "took a run up again"),
                Err(e) => tracing::warn!(run = %id, error = %e, "could not take a run up again"),
            }
        }
    }

    /// Continues a run this engine has just claimed (with `fence`, the claim's token):
    /// what its last owner's attempts left behind is dealt with first, then the run is
    /// rebuilt from its events and driven from where it stopped.
    pub async fn take_over(
        &self,
        row: plexus_store::RunRow,
        fence: u64,
    ) -> Result<String, EngineError> {
        let leftovers = self.store.attempt_records(&row.id).await?;
        if !leftovers.is_empty() {
            // Each executor deals with what its attempts left, before any new attempt.
            let done = leftovers.iter().map(|r| r.key.clone()).collect();
            let (reply, cleaned) = oneshot::channel();
            self.send(Msg::CleanUp {
                records: leftovers,
                reply,
            })
            .await?;
            cleaned
                .await
                .map_err(|_| EngineError::Stopped("no answer".into()))?;
            self.store
                .commit(plexus_store::Batch {
                    records_done: done,
                    ..Default::default()
                })
                .await?;
        }
        self.adopt_stored(row, None, Some(fence)).await
    }

    /// Rebuilds a stored run from its events and hands it to the scheduler, which then
    /// resumes it (or applies `first` instead).
    async fn adopt_stored(
        &self,
        row: plexus_store::RunRow,
        first: Option<Input>,
        fence: Option<u64>,
    ) -> Result<String, EngineError> {
        let plan = stored_plan(&*self.store, &row, &self.config.compile_options()).await?;
        let events = self.store.events(&row.id, 0, 0).await?;
        let state = RunState::restore(row.id.clone(), Arc::new(plan), row.inputs.clone(), &events)?;
        let base_dir = row
            .base_dir
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        let (reply, done) = oneshot::channel();
        let adopt = Msg::Adopt {
            state: Box::new(state),
            base_dir,
            parent: row.parent,
            reply: Some(reply),
            first,
            fence,
        };
        self.send(adopt).await?;
        let _ = done.await;
        Ok(row.id)
    }

    /// Runs a failed or cancelled run again from the steps that did not succeed.
    pub async fn retry(&self, run_id: &str, by: &str) -> Result<String, EngineError> {
        let row = self.store.get_run(run_id).await?;
        if !matches!(
            RunStatus::parse(&row.status),
            Some(RunStatus::Failed | RunStatus::Cancelled)
        ) {
            return Err(EngineError::Rejected(Rejected::RunNotIn {
                status: RunStatus::parse(&row.status).map_or("unknown", RunStatus::as_str),
                expected: "failed or cancelled",
            }));
        }
        // Nobody drives a finished run, so taking it is always allowed.
        let now = now_ms();
        let lease_until = now + self.config.lease.as_millis() as u64;
        let fence = self
            .store
            .claim_run(&row.id, &self.config.owner, lease_until, now, true)
            .await?;
        self.adopt_stored(row, Some(Input::Retry { by: by.to_owned() }), fence)
            .await
    }

    /// Applies an input (signal, approve, reject, cancel, pause) to a run this engine
    /// drives. Returns once the events it caused are durable: `Ok` means the input
    /// survives a crash that happens right after.
    pub async fn input(&self, run_id: &str, input: Input) -> Result<(), EngineError> {
        let (reply, answer) = oneshot::channel();
        self.send(Msg::Input {
            run_id: run_id.to_owned(),
            input,
            reply: Some(reply),
        })
        .await?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(InputError::Rejected(r))) => Err(EngineError::Rejected(r)),
            Ok(Err(InputError::NotActive)) => Err(EngineError::NotActive(run_id.to_owned())),
            Ok(Err(InputError::NotPersisted(e))) => Err(EngineError::Stopped(format!(
                "the input to run `{run_id}` was not made durable: {e}"
            ))),
            Err(_) => Err(EngineError::Stopped(
                "the scheduler stopped before the input was durable".into(),
            )),
        }
    }

    /// Whether the scheduler loop is alive and committing: it answers a probe within a
    /// second, no commit has been in flight for more than ten, and it has not stopped
    /// on a store failure (a state it never leaves: the process must be restarted).
    pub async fn health(&self) -> EngineHealth {
        let stopped = |reason: String| EngineHealth {
            state: "stopped",
            reason: Some(reason),
            pools: None,
        };
        let fatal = || {
            self.liveness
                .fatal
                .lock()
                .ok()
                .and_then(|f| f.clone())
                .map(|fatal| stopped(format!("cannot persist run progress: {fatal}")))
        };
        if let Some(health) = fatal() {
            return health;
        }
        if let Some(why) = self.liveness.suspended.lock().ok().and_then(|s| s.clone()) {
            return EngineHealth {
                state: "suspended",
                reason: Some(format!(
                    "the store cannot be reached; no work is taken until it answers again: {why}"
                )),
                pools: None,
            };
        }
        let pools = match tokio::time::timeout(HEALTH_ANSWER, self.pool_stats()).await {
            Ok(Ok(pools)) => pools,
            // The loop stopped after the first look: its reason, if it left one.
            Ok(Err(e)) => return fatal().unwrap_or_else(|| stopped(e.to_string())),
            Err(_) => {
                return EngineHealth {
                    state: "stalled",
                    reason: Some(format!(
                        "the scheduler loop did not answer within {} ms",
                        HEALTH_ANSWER.as_millis()
                    )),
                    pools: None,
                };
            }
        };
        let failing = self
            .liveness
            .renewal_failing
            .lock()
            .ok()
            .and_then(|f| f.clone());
        if let Some((since, error)) = failing {
            let lapsed = now_ms().saturating_sub(since);
            if lapsed >= self.config.lease.as_millis() as u64 {
                return EngineHealth {
                    state: "stalled",
                    reason: Some(format!(
                        "the leases of its runs could not be renewed for {lapsed} ms (other replicas may take them over): {error}"
                    )),
                    pools: Some(pools),
                };
            }
        }
        let since = self.liveness.commit_since.load(Ordering::Relaxed);
        let waited = now_ms().saturating_sub(since);
        if since > 0 && waited > COMMIT_STALL.as_millis() as u64 {
            return EngineHealth {
                state: "stalled",
                reason: Some(format!(
                    "a commit has been waiting for the store for {waited} ms"
                )),
                pools: Some(pools),
            };
        }
        EngineHealth {
            state: "running",
            reason: None,
            pools: Some(pools),
        }
    }

    /// Whether this engine drives the run now.
    pub(crate) async fn is_active(&self, run_id: &str) -> Result<bool, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.send(Msg::IsActive {
            run_id: run_id.into(),
            reply,
        })
        .await?;
        answer
            .await
            .map_err(|_| EngineError::Stopped("no answer".into()))
    }

    pub async fn pool_stats(&self) -> Result<Vec<PoolStats>, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.send(Msg::Pools(reply)).await?;
        answer
            .await
            .map_err(|_| EngineError::Stopped("no answer".into()))
    }

    /// Commits what is pending, hands the leases of unfinished runs back and stops.
    pub async fn shutdown(&self) {
        self.drain(Duration::ZERO).await
    }

    /// Stops starting work, lets running attempts finish for up to `grace`, commits, kills
    /// what still runs (those attempts resume as new attempts at the next start), hands the
    /// leases back and stops.
    pub async fn drain(&self, grace: Duration) {
        let (reply, done) = oneshot::channel();
        if self.tx.send(Msg::Shutdown { grace, reply }).await.is_ok() {
            let _ = done.await;
        }
    }
}
