//! The scheduler loop: owns every active run, the pools, the timers and the open batch;
//! the commit pipeline is here, and beside it the attempts handed to executors, child
//! runs, and control from other processes.

mod attempts;
mod control;
mod suspend;

use crate::exec::{self, AttemptCtx, Executors, process};
use crate::pools::{Pools, RunId};
use crate::timers::Timers;
use crate::{Engine, Msg, Notice, now_ms};
use plexus_core::machine::{Action, Input, RunState, RunStatus, Unit};
use plexus_store::{Artifact, Batch, StoreError};
use serde_json::Value as Json;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

struct Active {
    state: RunState,
    base_dir: PathBuf,
    /// The fencing token this engine holds for the run: every commit names it, and the
    /// store refuses the commit if another engine has claimed the run since.
    fence: Option<u64>,
}

type CommitFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send>>;

struct InFlight {
    /// Polled by the loop itself (not spawned): one wake-up less per commit. Polled once
    /// when made, so that its job reaches the store's writer at once.
    commit: CommitFuture,
    /// The outcome, if that first poll already had it.
    early: Option<Result<(), StoreError>>,
    actions: Vec<(RunId, Action)>,
    notices: Vec<Notice>,
    /// Answers to control inputs, sent once this commit is durable.
    replies: Vec<InputReply>,
    started: Instant,
    /// When it was sent, in wall-clock time (for the engine's health).
    sent_at: plexus_core::machine::Millis,
    events: usize,
}

/// A client's control input answered only once the events it caused are durable: an
/// acknowledged approval, signal or cancel survives `kill -9` right after the answer.
type InputReply = oneshot::Sender<Result<(), crate::InputError>>;

/// Runs holding more steps and items than this are freed off the loop when they end.
const LARGE_RUN_UNITS: usize = 10_000;

/// See [`Loop::records_due`].
const LAZY_RECORDS: Duration = Duration::from_millis(50);

/// Commits in flight at once: while one is being made durable, the next tick's events
/// are already on their way (the store groups whatever is queued into one transaction).
const MAX_IN_FLIGHT: usize = 4;

struct Loop {
    engine: Engine,
    /// When the first process record of the open batch arrived.
    lazy_since: Option<Instant>,
    /// Who performs each kind of work.
    executors: Executors,
    runs: HashMap<RunId, Active>,
    pools: Pools,
    timers: Timers,
    running: HashMap<(RunId, Unit), oneshot::Sender<()>>,
    batch: Batch,
    /// The runs whose fencing token the open batch names already.
    fenced: HashSet<RunId>,
    actions: Vec<(RunId, Action)>,
    notices: Vec<Notice>,
    replies: Vec<InputReply>,
    /// Commits sent to the store, oldest first. They land in order on one
    /// [`CommitChain`]; each one's actions run once it (and so every one before it) is
    /// durable.
    inflight: std::collections::VecDeque<InFlight>,
    chain: plexus_store::CommitChain,
    seen_commands: HashSet<i64>,
    polling: bool,
    stopping: Option<oneshot::Sender<()>>,
    /// When draining ends and what still runs is killed.
    deadline: Option<Instant>,
    /// When running steps started (for the step duration histogram).
    step_starts: HashMap<(RunId, String), u64>,
    spans: crate::spans::Spans,
    /// Attempts got ready ahead of their durable start (see [`exec::Held`]), waiting to
    /// be released.
    gates: HashMap<(RunId, Unit, u32), exec::Release>,
    /// When each subprocess attempt was made and released (for [`EngineStats`]).
    attempt_times: HashMap<(RunId, Unit, u32), (Instant, Option<Instant>)>,
    /// Attempts stopped when the store was lost, until they report (see [`suspend`]).
    abandoned: HashSet<(RunId, Unit)>,
    abandoned_since: Option<Instant>,
}

pub(crate) fn spawn(engine: Engine, rx: mpsc::Receiver<Msg>) {
    let cfg = &engine.config;
    let processes = process::ProcessSettings {
        scratch: Arc::new(crate::exec::scratch::ScratchPool::new(
            &cfg.data_dir.join("work"),
        )),
        artifact_root: cfg.data_dir.join("artifacts"),
        output_cap: cfg.output_cap,
        python: cfg.python.clone(),
        // As many as the default pool runs at once: what independent shell steps need.
        warm: Arc::new(exec::held::WarmShells::new(
            cfg.pools.get("default").copied().unwrap_or(1).clamp(1, 8) as usize,
        )),
        isolation: engine.isolation.clone(),
        require_isolation: engine.require_isolation.clone(),
        warm_isolated: Arc::new(exec::held::WarmIsolated::new(
            cfg.pools.get("default").copied().unwrap_or(1).clamp(1, 8) as usize,
        )),
    };
    let executors = Executors::new(
        exec::LocalProcesses::new(processes, crate::owner::hostname()),
        exec::SubWorkflows::new(engine.clone()),
        exec::agent::AgentCalls::new(engine.agents.clone()),
        exec::llm::LlmCalls::new(
            engine.llm.clone(),
            engine.agents.clone(),
            engine.store.clone(),
        ),
    );
    let pools = Pools::new(&cfg.pools);
    let lp = Loop {
        engine,
        lazy_since: None,
        executors,
        runs: HashMap::new(),
        pools,
        timers: Timers::default(),
        running: HashMap::new(),
        batch: Batch::default(),
        fenced: HashSet::new(),
        actions: Vec::new(),
        notices: Vec::new(),
        replies: Vec::new(),
        inflight: Default::default(),
        chain: Default::default(),
        seen_commands: HashSet::new(),
        polling: false,
        stopping: None,
        deadline: None,
        step_starts: HashMap::new(),
        spans: Default::default(),
        gates: HashMap::new(),
        attempt_times: HashMap::new(),
        abandoned: HashSet::new(),
        abandoned_since: None,
    };
    spawn_command_watch(&lp.engine);
    tokio::spawn(lp.run(rx));
}

/// Tells the loop whenever the store says commands from other processes may be waiting
/// (polling for SQLite, a notification for a backend that has them). Ends with the loop.
fn spawn_command_watch(engine: &Engine) {
    let store = Arc::clone(&engine.store);
    let owner = engine.config.owner.clone();
    let wait = engine.config.command_poll;
    let tx = engine.tx.downgrade();
    tokio::spawn(async move {
        loop {
            store.commands_may_be_waiting(&owner, wait).await;
            let Some(tx) = tx.upgrade() else { return };
            if tx.send(Msg::CommandsMayWait).await.is_err() {
                return;
            }
        }
    });
}

impl Loop {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut lease = tokio::time::interval(self.engine.config.renew_every);
        lease.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.flush();
            let drained =
                self.running.is_empty() || self.deadline.is_some_and(|d| Instant::now() >= d);
            if self.stopping.is_some()
                && drained
                && self.inflight.is_empty()
                && self.batch.is_empty()
                && self.actions.is_empty()
            {
                break;
            }
            let grace_ends = self.deadline.filter(|_| !self.running.is_empty());
            let timer_wait = self
                .timers
                .next_at()
                .map(|at| Duration::from_millis(at.saturating_sub(now_ms())));
            let records_due = self.records_due().filter(|_| self.inflight.is_empty());
            tokio::select! {
                result = async {
                    let front = self.inflight.front_mut().expect("guarded");
                    match front.early.take() {
                        Some(r) => r,
                        None => (&mut front.commit).await,
                    }
                }, if !self.inflight.is_empty() => {
                    let done = self.inflight.pop_front().expect("guarded");
                    self.engine.liveness.set_commit_since(self.inflight.front().map(|f| f.sent_at));
                    match result {
                        // The database is away: wait for it, then go on from what is durable.
                        Err(e @ StoreError::Unreachable(_)) => {
                            self.suspend(e);
                            continue;
                        }
                        Err(e) => {
                            self.fatal(e);
                            return;
                        }
                        Ok(()) => {}
                    }
                    let stats = &self.engine.stats;
                    metrics::histogram!("plexus_store_commit_seconds").record(done.started.elapsed().as_secs_f64());
                    metrics::counter!("plexus_events_committed_total").increment(done.events as u64);
                    stats.commits.fetch_add(1, Ordering::Relaxed);
                    stats.events.fetch_add(done.events as u64, Ordering::Relaxed);
                    stats.commit_micros.fetch_add(done.started.elapsed().as_micros() as u64, Ordering::Relaxed);
                    for n in done.notices {
                        let _ = self.engine.notices.send(n);
                    }
                    for r in done.replies {
                        let _ = r.send(Ok(()));
                    }
                    self.perform(done.actions);
                }
                msg = rx.recv() => {
                    let Some(msg) = msg else { break };
                    self.on_msg(msg);
                    // Take whatever else is waiting so it joins the same commit.
                    for _ in 0..16_384 {
                        match rx.try_recv() {
                            Ok(m) => self.on_msg(m),
                            Err(_) => break,
                        }
                    }
                }
                _ = tokio::time::sleep(timer_wait.unwrap_or(Duration::ZERO)), if timer_wait.is_some() => {
                    for due in self.timers.pop_due(now_ms()) {
                        let input = Input::TimerFired { unit: due.unit, attempt: due.attempt, purpose: due.purpose };
                        let _ = self.apply(&due.run, input);
                    }
                }
                _ = tokio::time::sleep_until(records_due.unwrap_or_else(Instant::now).into()), if records_due.is_some() => {}
                _ = tokio::time::sleep_until(grace_ends.unwrap_or_else(Instant::now).into()), if grace_ends.is_some() => {}
                _ = lease.tick() => self.renew_leases(),
            }
        }
        // Not fatal: the leases then run out by themselves and the runs are taken over later.
        if let Err(e) = self
            .engine
            .store
            .release_runs(&self.engine.config.owner)
            .await
        {
            tracing::warn!(error = %e, "could not hand back the leases of unfinished runs");
        }
        let reply = self.stopping.take();
        // Scratch space and idle shells are let go before the caller learns that the
        // engine stopped: a command may end its process right after.
        drop(self);
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
    }

    fn fatal(&mut self, e: StoreError) {
        tracing::error!(error = %e, "cannot persist run progress; stopping the engine");
        self.engine.liveness.set_fatal(e.to_string());
        // Inputs whose events did not become durable are answered with the failure, so
        // no client takes them as acknowledged.
        let waiting = self.inflight.drain(..).flat_map(|f| f.replies);
        for r in waiting.chain(self.replies.drain(..)) {
            let _ = r.send(Err(crate::InputError::NotPersisted(e.to_string())));
        }
        for (_, kill) in self.running.drain() {
            let _ = kill.send(());
        }
        let _ = self.engine.notices.send(Notice::Fatal {
            error: e.to_string(),
        });
        if let Some(reply) = self.stopping.take() {
            let _ = reply.send(());
        }
    }

    /// Starts a commit of the open batch, or performs eventless actions right away.
    /// When only process records are waiting, they are committed after this delay at the
    /// latest; usually they ride along with the next events, costing no commit of their own.
    fn records_due(&self) -> Option<Instant> {
        let lazy = self.batch.events.is_empty()
            && self.batch.consumed.is_empty()
            && self.batch.artifacts.is_empty();
        (lazy && !self.batch.is_empty())
            .then(|| self.lazy_since.unwrap_or_else(Instant::now) + LAZY_RECORDS)
    }

    fn flush(&mut self) {
        while self.inflight.len() < MAX_IN_FLIGHT {
            let wait_for_more = self.records_due().is_some_and(|due| due > Instant::now());
            if !self.batch.is_empty() && !wait_for_more {
                self.lazy_since = None;
                let mut batch = std::mem::take(&mut self.batch);
                batch.chain = Some(self.chain.clone());
                self.fenced.clear();
                let events = batch.events.len();
                let store = Arc::clone(&self.engine.store);
                let mut commit: CommitFuture = Box::pin(async move { store.commit(batch).await });
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                let early = match commit.as_mut().poll(&mut cx) {
                    std::task::Poll::Ready(r) => Some(r),
                    std::task::Poll::Pending => None,
                };
                if self.inflight.is_empty() {
                    self.engine.liveness.set_commit_since(Some(now_ms()));
                }
                self.inflight.push_back(InFlight {
                    commit,
                    early,
                    actions: std::mem::take(&mut self.actions),
                    notices: std::mem::take(&mut self.notices),
                    replies: std::mem::take(&mut self.replies),
                    started: Instant::now(),
                    sent_at: now_ms(),
                    events,
                });
                return;
            }
            if !self.inflight.is_empty() {
                // Actions without events of their own still wait for what is in flight.
                return;
            }
            if self.actions.is_empty() {
                for n in self.notices.drain(..) {
                    let _ = self.engine.notices.send(n);
                }
                // Nothing is waiting to be made durable: what the inputs caused already is.
                for r in self.replies.drain(..) {
                    let _ = r.send(Ok(()));
                }
                return;
            }
            let actions = std::mem::take(&mut self.actions);
            self.perform(actions);
        }
    }

    fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Adopt {
                mut state,
                base_dir,
                parent,
                reply,
                first,
                fence,
            } => {
                let run: RunId = state.run_id.as_str().into();
                if self.runs.contains_key(&run) {
                    // Driven here already (a sub-workflow re-attached, a second resume).
                    if let Some(reply) = reply {
                        reply.send(()).ok();
                    }
                    return;
                }
                let now = now_ms();
                let t = match first {
                    Some(input) => state.handle(input, now).unwrap_or_default(),
                    None if state.seq == 0 => state.handle(Input::Start, now).unwrap_or_default(),
                    None => state.resume(now, &Executors::reattaches),
                };
                self.spans.open_run(
                    &run,
                    &state.plan.manifest.name,
                    state.seq > t.events.len() as u64,
                    parent.as_ref(),
                );
                self.runs.insert(
                    run.clone(),
                    Active {
                        state: *state,
                        base_dir,
                        fence,
                    },
                );
                self.absorb(&run, t);
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
            Msg::Input {
                run_id,
                input,
                reply,
            } => {
                let result = self.apply(&RunId::from(run_id.as_str()), input);
                if let Some(reply) = reply {
                    match result {
                        // Answered when the open batch, which holds its events, is durable.
                        Some(Ok(())) => self.replies.push(reply),
                        Some(Err(r)) => {
                            let _ = reply.send(Err(crate::InputError::Rejected(r)));
                        }
                        None => {
                            let _ = reply.send(Err(crate::InputError::NotActive));
                        }
                    }
                }
            }
            Msg::Recorded {
                run_id,
                unit,
                attempt,
                executor,
                data,
            } => {
                if let Some(active) = self.runs.get(&run_id) {
                    self.lazy_since.get_or_insert_with(Instant::now);
                    self.batch.records.push(plexus_store::AttemptRecord {
                        key: plexus_store::AttemptKey {
                            run_id: run_id.to_string(),
                            step_id: active.state.plan.step(unit.step).id.clone(),
                            item: unit.item,
                            attempt,
                        },
                        executor: executor.to_owned(),
                        data,
                    });
                }
            }
            Msg::CleanUp { records, reply } => {
                for r in &records {
                    match self.executors.by_name(&r.executor) {
                        Some(executor) => executor.clean_up(std::slice::from_ref(r)),
                        None => {
                            tracing::warn!(run = %r.key.run_id, executor = %r.executor, "an attempt record of an executor this engine does not have")
                        }
                    }
                }
                reply.send(()).ok();
            }
            Msg::AttemptDone {
                run_id,
                unit,
                attempt,
                finished,
            } => {
                if self.was_abandoned(&run_id, unit) {
                    return;
                }
                if let Some((made, Some(released))) =
                    self.attempt_times.remove(&(run_id.clone(), unit, attempt))
                {
                    let stats = &self.engine.stats;
                    stats.attempts.fetch_add(1, Ordering::Relaxed);
                    stats.attempt_wait_micros.fetch_add(
                        released.duration_since(made).as_micros() as u64,
                        Ordering::Relaxed,
                    );
                    stats
                        .attempt_run_micros
                        .fetch_add(released.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
                self.running.remove(&(run_id.clone(), unit));
                let step_id = self
                    .runs
                    .get(&run_id)
                    .map(|a| a.state.plan.step(unit.step).id.clone());
                if let Some(step_id) = &step_id {
                    self.forget_record(&run_id, step_id, unit, attempt, finished.recorded);
                }
                self.pools.release(&run_id, unit);
                self.grant();
                if let Some(step_id) = step_id.filter(|_| self.runs.contains_key(&run_id)) {
                    if let Some(logs) = finished.logs {
                        self.batch.logs.push(plexus_store::StepLogs {
                            run_id: run_id.to_string(),
                            step_id: step_id.clone(),
                            item: unit.item,
                            attempt,
                            stdout: logs.stdout,
                            stderr: logs.stderr,
                            exit_code: logs.exit_code,
                        });
                    }
                    for a in &finished.artifacts {
                        self.batch.artifacts.push(Artifact {
                            sha256: a.sha256.clone(),
                            run_id: run_id.to_string(),
                            step_id: step_id.clone(),
                            attempt,
                            name: a.name.clone(),
                            size: a.size,
                        });
                    }
                }
                let _ = self.apply(
                    &run_id,
                    Input::AttemptFinished {
                        unit,
                        attempt,
                        outcome: finished.outcome,
                    },
                );
            }
            Msg::Commands(commands) => self.apply_commands(commands),
            Msg::IsActive { run_id, reply } => {
                reply.send(self.runs.contains_key(&run_id)).ok();
            }
            Msg::CommandsMayWait => self.poll_commands(),
            Msg::StoreBack => self.store_back(),
            Msg::Pools(reply) => {
                let _ = reply.send(self.pools.stats());
            }
            Msg::Shutdown { grace, reply } => {
                self.stopping = Some(reply);
                self.deadline = Some(Instant::now() + grace);
            }
        }
    }

    /// Applies an input to a run; `None` if the run is not active here.
    fn apply(
        &mut self,
        run: &RunId,
        input: Input,
    ) -> Option<Result<(), plexus_core::machine::Rejected>> {
        let active = self.runs.get_mut(run)?;
        Some(match active.state.handle(input, now_ms()) {
            Ok(t) => {
                self.absorb(run, t);
                Ok(())
            }
            Err(r) => Err(r),
        })
    }

    /// Names the run's fencing token in the open batch, once: if another engine has
    /// claimed the run since this one did, the store refuses the whole commit.
    fn fence_in_batch(&mut self, run: &RunId) {
        if let Some(fence) = self.runs.get(run).and_then(|a| a.fence)
            && self.fenced.insert(run.clone())
        {
            self.batch.fences.push((run.to_string(), fence));
        }
    }

    fn absorb(&mut self, run: &RunId, t: plexus_core::machine::Transition) {
        let listening = self.engine.notices.receiver_count() > 0;
        if !t.events.is_empty() {
            self.fence_in_batch(run);
        }
        for e in t.events {
            self.observe(run, &e);
            if listening {
                self.notices.push(Notice::Event {
                    run_id: run.clone(),
                    event: Arc::new(e.clone()),
                });
            }
            self.batch.events.push((run.to_string(), e));
        }
        self.hold_ahead(run, &t.actions);
        let mut queued = false;
        for a in t.actions {
            match a {
                // Queueing for a slot has no effect outside this process, so it is not
                // held back until the transition is durable: the step granted now joins
                // the same commit (its start still becomes durable only after what led
                // to it, as commits apply in order), and a chain of steps costs one
                // commit per step instead of two.
                Action::Enqueue { unit, pool, slots } => {
                    self.pools.enqueue(run.clone(), unit, &pool, slots);
                    queued = true;
                }
                other => self.actions.push((run.clone(), other)),
            }
        }
        if queued {
            self.grant();
        }
    }

    /// Step durations for `/metrics`: from a step's start to its end.
    fn observe(&mut self, run: &RunId, e: &plexus_core::machine::Event) {
        use plexus_core::machine::EventKind::*;
        self.spans.observe(run, e);
        // Run events at info, step events at debug (`PLEXUS_LOG=debug`), with their ids.
        match e.kind.step_id() {
            None => {
                tracing::info!(run = %run, seq = e.seq, event = e.kind.type_name(), "run event")
            }
            Some(step) => tracing::debug!(
                run = %run,
                step,
                item = e.kind.item(),
                attempt = e.kind.attempt(),
                seq = e.seq,
                event = e.kind.type_name(),
                "step event"
            ),
        }
        match &e.kind {
            StepStarted {
                step_id,
                item: None,
                ..
            }
            | StepExpanded { step_id, .. } => {
                self.step_starts
                    .entry((run.clone(), step_id.clone()))
                    .or_insert(e.time);
            }
            StepSucceeded {
                step_id,
                item: None,
                ..
            }
            | StepFailed {
                step_id,
                item: None,
                retry_at: None,
                ..
            } => {
                if let Some(start) = self.step_starts.remove(&(run.clone(), step_id.clone())) {
                    let outcome = if matches!(e.kind, StepSucceeded { .. }) {
                        "succeeded"
                    } else {
                        "failed"
                    };
                    let secs = e.time.saturating_sub(start) as f64 / 1000.0;
                    metrics::histogram!("plexus_step_duration_seconds", "outcome" => outcome)
                        .record(secs);
                }
            }
            StepCancelled { step_id } | StepSkipped { step_id, .. } => {
                self.step_starts.remove(&(run.clone(), step_id.clone()));
            }
            _ => {}
        }
    }

    fn grant(&mut self) {
        if self.stopping.is_some() {
            return; // draining: nothing new starts
        }
        for (run, unit) in self.pools.grant() {
            if self.apply(&run, Input::SlotGranted(unit)).is_none() {
                self.pools.release(&run, unit);
            }
        }
    }

    fn perform(&mut self, actions: Vec<(RunId, Action)>) {
        let mut regrant = false;
        for (run, action) in actions {
            match action {
                Action::Enqueue { unit, pool, slots } => {
                    self.pools.enqueue(run, unit, &pool, slots);
                    regrant = true;
                }
                Action::Dequeue { unit } => {
                    self.pools.release(&run, unit);
                    regrant = true;
                }
                Action::Execute(task) => {
                    if let Some(outcome) = self.executors.for_work(&task.work).answer_now(&task) {
                        let _ = self.apply(
                            &run,
                            Input::AttemptFinished {
                                unit: task.unit,
                                attempt: task.attempt,
                                outcome,
                            },
                        );
                        continue;
                    }
                    let key = (run.clone(), task.unit, task.attempt);
                    let now = Instant::now();
                    self.attempt_times
                        .entry(key.clone())
                        .or_insert((now, None))
                        .1 = Some(now);
                    // A held attempt is released, unless it was killed meanwhile (dropping
                    // its release, it ends without doing anything); anything else starts now.
                    match self.gates.remove(&key) {
                        Some(release) if self.running.contains_key(&(run.clone(), task.unit)) => {
                            release()
                        }
                        Some(_) => {}
                        None => self.start_attempt(run, task, false),
                    }
                }
                Action::SetTimer {
                    at,
                    unit,
                    attempt,
                    purpose,
                } => self.timers.set(at, run, unit, attempt, purpose),
                Action::Kill { unit, .. } => {
                    if let Some(kill) = self.running.remove(&(run, unit)) {
                        let _ = kill.send(());
                    }
                }
                Action::Finished { status } => self.finished(run, status),
            }
        }
        if regrant {
            self.grant();
        }
    }

    fn finished(&mut self, run: RunId, status: RunStatus) {
        self.notices.push(Notice::Finished {
            run_id: run.clone(),
            status,
        });
        let _ = self.engine.finished.send((run.clone(), status));
        metrics::counter!("plexus_runs_finished_total", "state" => status.as_str()).increment(1);
        let Some(active) = self.runs.remove(&run) else {
            return;
        };
        self.spans
            .close_run(&run, status.as_str(), active.state.error.as_deref());
        // Freeing a large run's state (a foreach over 100,000 items) takes tens of
        // milliseconds that other runs need not wait for.
        if active.state.units() > LARGE_RUN_UNITS {
            tokio::task::spawn_blocking(move || drop(active));
        }
    }
}
