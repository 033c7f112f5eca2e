//! Durable storage for Plexus. The engine talks to the [`Store`] trait only; [`SqliteStore`]
//! is the embedded implementation, [`PgStore`] the one several replicas share.
//!
//! Every write of run progress goes through [`Store::commit`]: events are appended and the
//! `runs`/`steps` rows they imply are updated in the same transaction.

pub mod auth;
mod copy;
mod materialize;
mod postgres;
mod sqlite;
mod sqlite_auth;
mod wal;

pub mod conformance;
pub mod test_postgres;

pub use auth::AuthStore;
pub use copy::{Copied, copy_sqlite_to_postgres};
pub use materialize::{RowChange, RunAudit, StepChange, materialize, run_audit, run_audit_entry};
pub use postgres::{PgStore, PostgresOptions, redacted_url};
pub use sqlite::{SqliteOptions, SqliteStore, WRITER_THREAD, measure_commit_latency};

use plexus_core::machine::{Event, Millis};
use serde::Serialize;
use serde_json::Value as Json;

/// What went wrong in a store, by what a caller can do about it: try again
/// ([`StoreError::is_retryable`]: another writer won, or the database is busy or out of
/// reach for now), free space ([`StoreError::Full`]), fix the request (not found,
/// ambiguous), or nothing but report it ([`StoreError::Db`]: a bug or damaged data).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(String),
    /// The database is busy or locked right now.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The database server cannot be reached (refused, reset, not answering): a store
    /// that shares a server with other replicas; an engine waits for it to come back.
    #[error("the database cannot be reached: {0}")]
    Unreachable(String),
    #[error("the database is full or the disk is out of space: {0}")]
    Full(String),
    #[error("run `{0}` not found")]
    RunNotFound(String),
    #[error("run id prefix `{0}` matches several runs; give more characters")]
    Ambiguous(String),
    #[error("{0}")]
    Conflict(String),
    /// See [`NewRun::newest_version`].
    #[error("workflow `{0}` changed while the run was being started; start it again")]
    WorkflowChanged(String),
    #[error("the store is closed")]
    Closed,
}

impl StoreError {
    /// Whether the same operation may succeed if tried again later (after re-reading,
    /// for a conflict).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Conflict(_)
                | StoreError::WorkflowChanged(_)
                | StoreError::Unavailable(_)
                | StoreError::Unreachable(_)
        )
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The error of a commit whose fencing token for `run_id` is not the run's any more.
pub(crate) fn fenced_out(run_id: &str) -> StoreError {
    StoreError::Conflict(format!(
        "run `{run_id}` was taken over by another engine (its lease ran out); this engine may not write to it any more"
    ))
}

/// Events committed for a run, as announced to every process sharing the store: the
/// run and the range of sequence numbers (read them with [`RunStore::events`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CommittedEvents {
    pub run_id: std::sync::Arc<str>,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// Where a child run reports back to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParentRef {
    pub run_id: String,
    pub step_id: String,
    pub item: Option<u32>,
    pub attempt: u32,
}

#[derive(Debug, Clone)]
pub struct NewRun {
    pub id: String,
    pub workflow: String,
    /// The manifest text, kept so a run can resume even if the file changes or vanishes.
    pub manifest: String,
    /// Directory that relative paths in the manifest (sub-workflows) are resolved against.
    pub base_dir: Option<String>,
    pub inputs: Json,
    pub step_ids: Vec<String>,
    pub parent: Option<ParentRef>,
    pub owner: Option<String>,
    pub lease_until: Option<Millis>,
    pub created_at: Millis,
    /// Starting again with the same key finds this run instead of creating another.
    pub idempotency_key: Option<String>,
    pub workflow_version: Option<u32>,
    /// Made from what the caller last read as the newest version of its stored workflow
    /// (`workflow_version`): when that is not the newest any more (a newer version was
    /// applied, or the workflow deleted, since), nothing is made and the error is
    /// [`StoreError::WorkflowChanged`]. Lets a caller keep the newest versions it read
    /// instead of reading one before each start.
    pub newest_version: bool,
    /// Who started it (`user:NAME`, `local:USER`, `schedule:NAME`...): the actor of its
    /// audit records. `None` for sub-workflow runs, which inherit nothing to audit as.
    pub started_by: Option<String>,
    /// The execution mode it runs in (`manual`, `guided`, `autonomous`).
    pub mode: Option<String>,
    /// The compiled plan it runs (`Plan::to_stored`): resuming uses it as it is.
    pub plan: Option<String>,
    /// Every actor who answers for this run's start (the caller, the poster of the event,
    /// whoever created or last changed the schedule or trigger): none of them may approve
    /// its steps under `approvals.forbid_self_approval`.
    pub responsible: Vec<String>,
}

/// What a run runs, kept apart from its row (see [`Store::run_definition`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RunDefinition {
    pub manifest: String,
    /// The compiled plan it started with ([`NewRun::plan`]); `None` for runs stored
    /// before plans were kept.
    pub plan: Option<String>,
}

/// A cron schedule that starts runs of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduleRow {
    pub name: String,
    pub workflow: String,
    pub cron: String,
    pub inputs: Json,
    pub catch_up: plexus_core::schedule::CatchUp,
    pub paused: bool,
    pub next_fire_at: Millis,
    pub last_fired_at: Option<Millis>,
    /// Created by a manifest's `schedule:` (and removed with it).
    pub from_manifest: bool,
    pub created_at: Millis,
    /// Who created it or last changed it (paused, resumed, replaced).
    pub changed_by: Option<String>,
}

/// An event received through the API, with the runs it started.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReceivedEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub payload: Json,
    pub dedupe_key: Option<String>,
    pub received_at: Millis,
    pub runs: Vec<String>,
}

/// Something that reached nothing (an event no workflow subscribes to, a signal no step
/// waits for), kept so that it is never dropped silently.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub kind: String,
    pub target: String,
    pub payload: Json,
    pub reason: String,
    pub created_at: Millis,
}

/// One version of a workflow definition applied through the API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkflowRow {
    pub name: String,
    pub version: u32,
    pub manifest: String,
    pub created_at: Millis,
    /// Who applied this version.
    pub applied_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRow {
    pub id: String,
    pub workflow: String,
    pub status: String,
    pub base_dir: Option<String>,
    pub inputs: Json,
    pub outputs: Json,
    pub error: Option<String>,
    pub parent: Option<ParentRef>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub finished_at: Option<Millis>,
    pub owner: Option<String>,
    pub lease_until: Option<Millis>,
    pub last_seq: u64,
    pub started_by: Option<String>,
    pub mode: Option<String>,
    /// See [`NewRun::responsible`].
    pub responsible: Vec<String>,
}

/// A step waiting for a human decision (see [`Store::awaiting_approvals`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PendingApproval {
    pub run_id: String,
    pub workflow: String,
    pub step_id: String,
    /// Who started the run: who asks.
    pub requested_by: Option<String>,
    /// Everyone who answers for the run's start (see [`NewRun::responsible`]).
    pub responsible: Vec<String>,
    /// The `step_awaiting_approval` event (permission, rendered detail, expiry).
    pub request: Json,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRow {
    pub step_id: String,
    pub status: String,
    pub attempt: u32,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    pub output: Json,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub status: Option<String>,
    pub workflow: Option<String>,
    /// Only non-terminal runs.
    pub active: bool,
    pub limit: usize,
    /// Only runs listed after this run id (cursor pagination; newest first).
    pub before: Option<String>,
    /// Only runs created at or after this time.
    pub created_since: Option<Millis>,
    /// Only runs created before this time.
    pub created_until: Option<Millis>,
    /// Only runs this owner does not hold (an engine looking for runs to take over).
    pub not_owned_by: Option<String>,
    /// Only runs whose owner's id starts with this (the engines of one host).
    pub owner_prefix: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    Signal,
    Approve,
    Reject,
    Cancel,
    Pause,
    Resume,
}

impl CommandKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Signal => "signal",
            CommandKind::Approve => "approve",
            CommandKind::Reject => "reject",
            CommandKind::Cancel => "cancel",
            CommandKind::Pause => "pause",
            CommandKind::Resume => "resume",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "signal" => CommandKind::Signal,
            "approve" => CommandKind::Approve,
            "reject" => CommandKind::Reject,
            "cancel" => CommandKind::Cancel,
            "pause" => CommandKind::Pause,
            "resume" => CommandKind::Resume,
            _ => return None,
        })
    }
}

/// A control request for a run, stored until the engine that owns the run applies it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Command {
    pub id: i64,
    pub run_id: String,
    pub kind: CommandKind,
    pub step_id: Option<String>,
    pub data: Json,
    pub actor: String,
    pub created_at: Millis,
    pub consumed_at: Option<Millis>,
    pub result: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Artifact {
    pub sha256: String,
    pub run_id: String,
    pub step_id: String,
    pub attempt: u32,
    pub name: String,
    pub size: u64,
}

/// stdout and stderr of an attempt whose output replaced them (see [`Store::step_logs`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepLogs {
    pub run_id: String,
    pub step_id: String,
    pub item: Option<u32>,
    pub attempt: u32,
    pub stdout: String,
    pub stderr: String,
    pub exit_code: Option<i32>,
}

/// Which attempt a record belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct AttemptKey {
    pub run_id: String,
    pub step_id: String,
    pub item: Option<u32>,
    pub attempt: u32,
}

/// What an executor must find again should its engine die during an attempt (see
/// [`RunStore::attempt_records`]): for the local-process executor, the process group to
/// stop. `data` is the executor's own; the store keeps it by attempt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptRecord {
    pub key: AttemptKey,
    /// The executor that wrote it (and reads it back).
    pub executor: String,
    pub data: Json,
}

/// Commits that must land in the order they were sent, all or a prefix: once one
/// fails, every later one on the chain fails without being applied, so an engine that
/// keeps several commits in flight never leaves a gap in a run's events.
#[derive(Debug, Clone, Default)]
pub struct CommitChain(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl CommitChain {
    pub fn is_broken(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn break_chain(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// One group commit: everything the engine learnt during one tick, across runs.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<(String, Event)>,
    pub consumed: Vec<(i64, Option<String>)>,
    pub artifacts: Vec<Artifact>,
    pub records: Vec<AttemptRecord>,
    /// Attempts that ended: their records are removed.
    pub records_done: Vec<AttemptKey>,
    /// Logs of attempts whose `$PLEXUS_OUTPUT` replaced stdout/stderr in their output.
    pub logs: Vec<StepLogs>,
    /// The chain this commit belongs to (see [`CommitChain`]).
    pub chain: Option<CommitChain>,
    /// The fencing token the committing engine holds for each run it drives (see
    /// [`RunStore::claim_run`]): checked in the commit's own transaction, and the whole
    /// commit is refused with [`StoreError::Conflict`] when a run's token has moved on.
    pub fences: Vec<(String, u64)>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.consumed.is_empty()
            && self.artifacts.is_empty()
            && self.records.is_empty()
            && self.records_done.is_empty()
            && self.logs.is_empty()
    }
}

/// Runs and what belongs to them: events, steps, commands, artifacts, logs, process
/// records, leases. Everything the engine needs to drive and resume runs.
#[async_trait::async_trait]
pub trait RunStore: Send + Sync + 'static {
    /// Creates a run and its pending step rows. Creating an existing id is a no-op that
    /// returns `false` (sub-workflow starts are retried with the same id).
    async fn create_run(&self, run: NewRun) -> Result<bool>;
    /// Appends events and updates the rows they imply, atomically.
    async fn commit(&self, batch: Batch) -> Result<()>;
    /// Takes ownership of a run if nobody holds a live lease on it (or `force`), and
    /// returns the run's new fencing token (`None`: someone else holds it). Every claim
    /// raises the token, so commits that name an older one ([`Batch::fences`]) are
    /// refused: an engine whose lease was taken over can never write to the run again.
    async fn claim_run(
        &self,
        run_id: &str,
        owner: &str,
        lease_until: Millis,
        now: Millis,
        force: bool,
    ) -> Result<Option<u64>>;
    /// Takes over at most `limit` top-level runs that nobody drives — no owner, or an
    /// owner (not `owner` itself: an engine never takes a run from itself, which would
    /// fence out its own commits) whose lease ran out before `now` — for `owner` until `lease_until`, the
    /// oldest first, each with its new fencing token. Runs another replica is claiming
    /// at the same moment are skipped, not waited for (`FOR UPDATE SKIP LOCKED`), so
    /// replicas share the work instead of queueing on it.
    async fn claim_orphans(
        &self,
        owner: &str,
        lease_until: Millis,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<(RunRow, u64)>>;
    /// Resolves when runs may have been handed back (a replica shut down cleanly), after
    /// `wait` at the latest. A backend with notifications resolves when one arrives.
    async fn orphans_may_be_waiting(&self, wait: std::time::Duration);
    /// Extends the leases of every non-terminal run `owner` holds.
    async fn renew_leases(&self, owner: &str, lease_until: Millis) -> Result<()>;
    /// Gives up ownership of `owner`'s non-terminal runs (clean shutdown).
    async fn release_runs(&self, owner: &str) -> Result<()>;
    /// Finds a run by id, unique id prefix, or `last` (the newest run).
    async fn get_run(&self, id_or_prefix: &str) -> Result<RunRow>;
    async fn list_runs(&self, filter: RunFilter) -> Result<Vec<RunRow>>;
    /// How many runs are in each state.
    async fn count_runs_by_status(&self) -> Result<Vec<(String, u64)>>;
    async fn steps(&self, run_id: &str) -> Result<Vec<StepRow>>;
    /// What a run runs: its manifest text and the compiled plan it started with.
    async fn run_definition(&self, run_id: &str) -> Result<RunDefinition>;
    /// Events with `seq > after`, in order, at most `limit`.
    async fn events(&self, run_id: &str, after: u64, limit: usize) -> Result<Vec<Event>>;
    async fn children(&self, run_id: &str) -> Result<Vec<RunRow>>;
    async fn add_command(
        &self,
        run_id: &str,
        kind: CommandKind,
        step_id: Option<&str>,
        data: Json,
        actor: &str,
        now: Millis,
    ) -> Result<i64>;
    /// Resolves when commands for `owner`'s runs may be waiting, after `wait` at the
    /// latest. A backend with notifications (PostgreSQL's LISTEN/NOTIFY) resolves when one
    /// arrives; one without polls. The engine then reads [`RunStore::pending_commands`].
    async fn commands_may_be_waiting(&self, owner: &str, wait: std::time::Duration);
    /// Announcements of the events every process sharing the store commits (PostgreSQL:
    /// LISTEN/NOTIFY), for followers of runs another replica drives. `None`: the backend
    /// announces nothing, and this process's own engine is the only feed.
    fn committed_events(&self) -> Option<tokio::sync::broadcast::Receiver<CommittedEvents>>;
    /// Unapplied commands for runs owned by `owner`.
    async fn pending_commands(&self, owner: &str) -> Result<Vec<Command>>;
    async fn command(&self, id: i64) -> Result<Option<Command>>;
    async fn artifacts(&self, run_id: &str) -> Result<Vec<Artifact>>;
    /// Every step waiting for approval, oldest run first.
    async fn awaiting_approvals(&self) -> Result<Vec<PendingApproval>>;
    /// Whether the store can serve reads and writes now (for `/healthz`).
    async fn health(&self) -> Result<()>;
    /// The logs kept for one attempt whose output replaced them, if any.
    async fn step_logs(
        &self,
        run_id: &str,
        step_id: &str,
        item: Option<u32>,
        attempt: u32,
    ) -> Result<Option<StepLogs>>;
    async fn find_run_by_key(&self, idempotency_key: &str) -> Result<Option<RunRow>>;
    /// The records of a run's attempts that have not ended (see [`AttemptRecord`]).
    async fn attempt_records(&self, run_id: &str) -> Result<Vec<AttemptRecord>>;
}

/// What starts runs and what could not reach one: workflow definitions, schedules,
/// event triggers, received events, dead letters.
#[async_trait::async_trait]
pub trait CatalogStore: Send + Sync + 'static {
    /// Stores a workflow definition; a new version unless it equals the newest one.
    /// Returns the stored row and whether a new version was created.
    async fn put_workflow(
        &self,
        name: &str,
        manifest: &str,
        applied_by: Option<&str>,
        now: Millis,
    ) -> Result<(WorkflowRow, bool)>;
    async fn get_workflow(&self, name: &str, version: Option<u32>) -> Result<Option<WorkflowRow>>;
    /// The newest version of every workflow that is not deleted.
    async fn list_workflows(&self) -> Result<Vec<WorkflowRow>>;
    async fn delete_workflow(&self, name: &str, now: Millis) -> Result<bool>;
    /// Creates or replaces a schedule. When one exists with the same cron, its
    /// `next_fire_at`, `paused` and `last_fired_at` are kept.
    async fn put_schedule(&self, schedule: ScheduleRow) -> Result<ScheduleRow>;
    async fn get_schedule(&self, name: &str) -> Result<Option<ScheduleRow>>;
    async fn list_schedules(&self) -> Result<Vec<ScheduleRow>>;
    async fn delete_schedule(&self, name: &str) -> Result<bool>;
    async fn set_schedule_paused(&self, name: &str, paused: bool, by: Option<&str>)
    -> Result<bool>;
    /// Schedules not paused whose `next_fire_at` is at or before `now`.
    async fn due_schedules(&self, now: Millis) -> Result<Vec<ScheduleRow>>;
    /// Moves `next_fire_at` from `expected` to `next` if nobody else did: `false` means
    /// another process advanced it first.
    async fn advance_schedule(
        &self,
        name: &str,
        expected: Millis,
        next: Millis,
        fired_at: Millis,
    ) -> Result<bool>;
    /// Replaces the event types `workflow` starts on.
    async fn set_triggers(&self, workflow: &str, event_types: &[String]) -> Result<()>;
    /// Workflows that start on `event_type`.
    async fn triggered_by(&self, event_type: &str) -> Result<Vec<String>>;
    /// Records an event; with a dedupe key seen before, returns the first event instead
    /// (and `false`).
    async fn record_event(&self, event: ReceivedEvent) -> Result<(ReceivedEvent, bool)>;
    async fn set_event_runs(&self, id: &str, runs: &[String]) -> Result<()>;
    async fn add_dead_letter(
        &self,
        kind: &str,
        target: &str,
        payload: Json,
        reason: &str,
        now: Millis,
    ) -> Result<i64>;
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>>;
}

/// One call of a model, for accounting.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LlmUsage {
    pub time: Millis,
    /// Who made it (`user:NAME`); for a step, the run's starter when `None`.
    pub actor: Option<String>,
    /// The API key it came with (its id), for calls through the gateway.
    pub api_key: Option<String>,
    pub run_id: Option<String>,
    pub step_id: Option<String>,
    /// `gateway` or `step`.
    pub source: String,
    pub provider: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// By the price table when the call was made; 0 when it has no price for the model.
    pub cost_usd: f64,
}

/// What model calls are summed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGroup {
    Run,
    User,
    Key,
    Provider,
    Model,
}

/// The model calls of one group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageTotal {
    /// The run, user, key, provider or model (`-` for calls without one).
    pub group: String,
    pub calls: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cost_usd: f64,
}

/// Token and cost accounting of model calls.
#[async_trait::async_trait]
pub trait UsageStore: Send + Sync + 'static {
    async fn record_llm_usage(&self, usage: LlmUsage) -> Result<()>;
    /// Sums of the calls made at or after `since`, by `by`, the costliest first (then by
    /// tokens).
    async fn llm_usage(&self, by: UsageGroup, since: Millis) -> Result<Vec<UsageTotal>>;
    /// The tokens `actor`'s calls took at or after `since` (what a budget checks).
    async fn tokens_used(&self, actor: &str, since: Millis) -> Result<u64>;
}

/// One `plexus serve` sharing the store, as the store knows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Replica {
    /// Its engine's owner id (what the runs it drives name as their owner).
    pub id: String,
    pub host: String,
    /// Where its HTTP API listens.
    pub address: String,
    pub version: String,
    pub started_at: Millis,
    pub heartbeat_at: Millis,
    /// The unfinished runs it drives now (filled in by [`ReplicaStore::replicas`]).
    pub runs: u64,
}

/// The replicas that share a store: each one's heartbeat, and what it drives.
#[async_trait::async_trait]
pub trait ReplicaStore: Send + Sync + 'static {
    /// Records that `replica` is alive at `replica.heartbeat_at` (its row is made the
    /// first time); rows of replicas silent for a day are dropped.
    async fn heartbeat(&self, replica: &Replica) -> Result<()>;
    /// Every replica with a row, the latest heartbeat first, with the runs each drives.
    async fn replicas(&self) -> Result<Vec<Replica>>;
    /// Removes a replica's row (a clean shutdown).
    async fn forget_replica(&self, id: &str) -> Result<()>;
}

/// Everything Plexus keeps, by concern: [`RunStore`], [`CatalogStore`], [`AuthStore`]
/// (users, keys, sessions, audit, settings), [`UsageStore`] and [`ReplicaStore`]. A
/// backend implements them all; the engine and the server hold an `Arc<dyn Store>`.
pub trait Store: RunStore + CatalogStore + AuthStore + UsageStore + ReplicaStore {}

impl<T: RunStore + CatalogStore + AuthStore + UsageStore + ReplicaStore> Store for T {}
