//! [`RunState`]: one run's state, changed only by applying events. Here: the state and
//! what an input leads to (ending units, timers, cancelling, finishing the run); beside
//! it the parts with an idea of their own: launching steps, the fold, resuming,
//! approvals, foreach, rendering.

mod approvals;
mod fold;
mod foreach;
mod launch;
mod render;
mod resume;

use super::trigger::{ParentCounts, Verdict, evaluate};
use super::*;
use crate::manifest::{Builtin, OnFailure, RetryPolicy, StepKind, TimeoutPolicy};
use crate::plan::Plan;
use crate::template;
use minijinja::Value as TemplateValue;
use serde_json::json;
use std::cell::OnceCell;
use std::sync::Arc;

/// The output of a unit that has none; one value shared by all of them.
fn null() -> Arc<Json> {
    static NULL: std::sync::LazyLock<Arc<Json>> = std::sync::LazyLock::new(|| Arc::new(Json::Null));
    Arc::clone(&NULL)
}

/// See [`RunState::launch_items`].
pub const ITEMS_IN_FLIGHT: u32 = 1024;

#[derive(Debug, Clone)]
struct UnitRt {
    status: StepStatus,
    /// Number of the last attempt started (0 = none yet).
    attempt: u32,
    /// Failed attempts, counted against `retry.max_attempts` (interruptions are not).
    failures: u32,
    /// Shared with the event that set it (see [`EventKind::StepSucceeded`]).
    output: Arc<Json>,
    error: Option<String>,
    /// When the pending retry or the current wait ends.
    wake_at: Option<Millis>,
}

impl Default for UnitRt {
    fn default() -> Self {
        UnitRt {
            status: StepStatus::Pending,
            attempt: 0,
            failures: 0,
            output: null(),
            error: None,
            wake_at: None,
        }
    }
}

#[derive(Debug, Clone)]
struct Items {
    values: Vec<Json>,
    units: Vec<UnitRt>,
    /// Items `0..launched` have been handed out (in order).
    launched: u32,
    finished: u32,
    failed: u32,
}

#[derive(Debug, Clone, Default)]
struct StepRt {
    unit: UnitRt,
    approved: bool,
    /// The digest of the last approval request (see `approval_detail`).
    requested_digest: Option<String>,
    /// The digest of what was approved: checked again before the step runs.
    approved_digest: Option<String>,
    items: Option<Box<Items>>,
    /// The step's journal (see [`EventKind::StepProgress`]); cleared when it is reset.
    journal: Vec<Json>,
    /// `unit.output` as a template value, made when a template first reads it and shared
    /// by every later reader (each foreach item of a step that reads it): a large output
    /// is converted once, not once per item. Cleared by every event about the step.
    output_value: OnceCell<TemplateValue>,
}

/// The state of one run: the fold of its events over its plan.
#[derive(Debug, Clone)]
pub struct RunState {
    pub run_id: String,
    pub plan: Arc<Plan>,
    pub inputs: Json,
    pub status: RunStatus,
    /// Sequence number of the last event.
    pub seq: u64,
    pub outputs: Json,
    pub error: Option<String>,
    steps: Vec<StepRt>,
    /// Steps not yet in a terminal state.
    open: usize,
    /// `inputs` as a template value (see [`StepRt::output_value`]).
    inputs_value: OnceCell<TemplateValue>,
}

/// A read-only view of one step, for display.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StepView {
    pub id: String,
    pub status: StepStatus,
    pub attempt: u32,
    pub output: Json,
    pub error: Option<String>,
}

impl RunState {
    /// A run that has not started yet (no events).
    pub fn new(run_id: impl Into<String>, plan: Arc<Plan>, inputs: Json) -> Self {
        let n = plan.len();
        RunState {
            run_id: run_id.into(),
            plan,
            inputs,
            status: RunStatus::Queued,
            seq: 0,
            outputs: Json::Null,
            error: None,
            steps: vec![StepRt::default(); n],
            open: n,
            inputs_value: OnceCell::new(),
        }
    }

    /// Rebuilds a run from its persisted events, all of them from the first: a gap in
    /// their sequence, or an event about a step the plan does not have, is refused.
    pub fn restore(
        run_id: impl Into<String>,
        plan: Arc<Plan>,
        inputs: Json,
        events: &[Event],
    ) -> Result<Self, super::RestoreError> {
        let mut state = RunState::new(run_id, plan, inputs);
        for e in events {
            if e.seq != state.seq + 1 {
                return Err(super::RestoreError::Gap {
                    run: state.run_id,
                    after: state.seq,
                    found: e.seq,
                });
            }
            if let Some(step) = e.kind.step_id()
                && state.index_of(step).is_none()
            {
                return Err(super::RestoreError::UnknownStep {
                    run: state.run_id,
                    seq: e.seq,
                    step: step.to_owned(),
                });
            }
            state.apply(e);
        }
        Ok(state)
    }

    pub fn step_status(&self, i: usize) -> StepStatus {
        self.steps[i].unit.status
    }

    pub fn step_view(&self, i: usize) -> StepView {
        let s = &self.steps[i];
        StepView {
            id: self.plan.step(i).id.clone(),
            status: s.unit.status,
            attempt: s.unit.attempt,
            output: Json::clone(&s.unit.output),
            error: s.unit.error.clone(),
        }
    }

    pub fn open_steps(&self) -> usize {
        self.open
    }

    fn index_of(&self, step_id: &str) -> Option<usize> {
        self.plan.index.get(step_id).copied()
    }

    fn unit(&self, u: Unit) -> &UnitRt {
        let s = &self.steps[u.step];
        match (u.item, &s.items) {
            (Some(i), Some(items)) => &items.units[i as usize],
            _ => &s.unit,
        }
    }

    fn unit_mut(&mut self, u: Unit) -> &mut UnitRt {
        let s = &mut self.steps[u.step];
        match (u.item, &mut s.items) {
            (Some(i), Some(items)) => &mut items.units[i as usize],
            _ => &mut s.unit,
        }
    }

    fn set_terminal(&mut self, step: usize, status: StepStatus) {
        let unit = &mut self.steps[step].unit;
        if !unit.status.is_terminal() {
            self.open -= 1;
        }
        unit.status = status;
        unit.wake_at = None;
    }

    /// A foreach step's end carries its items' outputs; they are not kept twice.
    fn clear_item_outputs(&mut self, i: usize) {
        if let Some(items) = &mut self.steps[i].items {
            for u in &mut items.units {
                u.output = null();
            }
        }
    }

    /// Steps plus foreach items: how much state the run holds.
    pub fn units(&self) -> usize {
        (self.steps.iter())
            .map(|s| 1 + s.items.as_ref().map_or(0, |i| i.units.len()))
            .sum()
    }

    // ----- the fold -------------------------------------------------------------------

    fn emit(&mut self, t: &mut Transition, now: Millis, kind: EventKind) {
        let e = Event {
            seq: self.seq + 1,
            time: now,
            kind,
        };
        self.apply(&e);
        t.events.push(e);
    }

    /// Applies an input and returns the events to persist and the actions to perform.
    pub fn handle(&mut self, input: Input, now: Millis) -> Result<Transition, Rejected> {
        let mut t = Transition::default();
        if self.status.is_terminal() && !matches!(input, Input::Retry { .. }) {
            return match input {
                // Late answers from attempts, timers or slots are harmless after the end.
                Input::AttemptFinished { .. }
                | Input::TimerFired { .. }
                | Input::SlotGranted(_) => Ok(t),
                _ => Err(Rejected::RunFinished(self.status.as_str())),
            };
        }
        match input {
            Input::Start => {
                if self.seq == 0 {
                    self.start(&mut t, now);
                }
            }
            Input::SlotGranted(u) => {
                if self.unit(u).status == StepStatus::Queued {
                    self.start_attempt(&mut t, now, u);
                } else {
                    // Cancelled or stale grant: give the slots straight back.
                    t.actions.push(Action::Dequeue { unit: u });
                }
            }
            Input::AttemptFinished {
                unit,
                attempt,
                outcome,
            } => {
                let current = self.unit(unit);
                if current.status == StepStatus::Running && current.attempt == attempt {
                    match outcome {
                        Outcome::Success(output) => {
                            self.succeed_unit(&mut t, now, unit, attempt, output)
                        }
                        Outcome::Failure { error, output } => {
                            self.fail_unit(&mut t, now, unit, attempt, error, output, true)
                        }
                    }
                }
            }
            Input::TimerFired {
                unit,
                attempt,
                purpose,
            } => self.timer_fired(&mut t, now, unit, attempt, purpose),
            Input::Progress {
                unit,
                attempt,
                entry,
            } => {
                let step_id = self.plan.step(unit.step).id.clone();
                let current = self.unit(unit);
                if unit.item.is_some()
                    || current.status != StepStatus::Running
                    || current.attempt != attempt
                {
                    return Err(Rejected::WrongState {
                        step: step_id,
                        status: current.status.as_str(),
                        expected: "running this attempt",
                    });
                }
                self.emit(
                    &mut t,
                    now,
                    EventKind::StepProgress {
                        step_id,
                        attempt,
                        entry,
                    },
                );
            }
            Input::Signal { step_id, data } => {
                let i = self
                    .index_of(&step_id)
                    .ok_or_else(|| Rejected::UnknownStep(step_id.clone()))?;
                let waiting: Vec<Unit> = self
                    .units_of(i)
                    .filter(|u| self.is_signal_wait(*u))
                    .collect();
                if waiting.is_empty() {
                    return Err(Rejected::WrongState {
                        step: step_id,
                        status: self.steps[i].unit.status.as_str(),
                        expected: "waiting for a signal",
                    });
                }
                for u in waiting {
                    let attempt = self.unit(u).attempt;
                    self.succeed_unit(&mut t, now, u, attempt, data.clone());
                }
            }
            Input::Approve {
                step_id,
                by,
                comment,
            } => {
                let i = self.awaiting_approval(&step_id)?;
                self.emit(
                    &mut t,
                    now,
                    EventKind::StepApproved {
                        step_id,
                        by: by.clone(),
                        comment: comment.clone(),
                    },
                );
                self.after_approval(&mut t, now, i, by, comment);
            }
            Input::Reject {
                step_id,
                by,
                comment,
            } => {
                let i = self.awaiting_approval(&step_id)?;
                self.emit(
                    &mut t,
                    now,
                    EventKind::StepSkipped {
                        step_id,
                        reason: REJECTED.into(),
                        by: Some(by),
                        comment,
                    },
                );
                self.on_step_terminal(&mut t, now, i);
            }
            Input::Cancel { reason } => self.cancel(&mut t, now, reason),
            Input::Pause { by } => {
                self.expect_status(RunStatus::Running, "running")?;
                self.emit(&mut t, now, EventKind::RunPaused { by });
            }
            Input::Resume { by } => {
                self.expect_status(RunStatus::Paused, "paused")?;
                self.emit(&mut t, now, EventKind::RunResumed { by });
                self.evaluate_pending(&mut t, now);
            }
            Input::Retry { by } => self.retry(&mut t, now, by)?,
        }
        self.maybe_finish(&mut t, now);
        Ok(t)
    }

    fn expect_status(&self, status: RunStatus, expected: &'static str) -> Result<(), Rejected> {
        if self.status == status {
            Ok(())
        } else {
            Err(Rejected::RunNotIn {
                status: self.status.as_str(),
                expected,
            })
        }
    }

    fn succeed_unit(
        &mut self,
        t: &mut Transition,
        now: Millis,
        u: Unit,
        attempt: u32,
        output: Json,
    ) {
        let step_id = self.plan.step(u.step).id.clone();
        self.emit(
            t,
            now,
            EventKind::StepSucceeded {
                step_id,
                item: u.item,
                attempt,
                output: Arc::new(output),
            },
        );
        match u.item {
            Some(_) => self.after_item(t, now, u.step),
            None => self.on_step_terminal(t, now, u.step),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fail_unit(
        &mut self,
        t: &mut Transition,
        now: Millis,
        u: Unit,
        attempt: u32,
        error: String,
        output: Json,
        retryable: bool,
    ) {
        let step_id = self.plan.step(u.step).id.clone();
        let policy = &self.plan.nodes[u.step].retry;
        let failures = self.unit(u).failures + 1;
        if retryable && failures < policy.max_attempts {
            let delay = backoff(
                policy,
                failures,
                &format!("{}/{step_id}/{:?}", self.run_id, u.item),
            );
            let at = now + delay;
            self.emit(
                t,
                now,
                EventKind::StepFailed {
                    step_id,
                    item: u.item,
                    attempt,
                    error,
                    output: Arc::new(output),
                    retry_at: Some(at),
                },
            );
            t.actions.push(Action::SetTimer {
                at,
                unit: u,
                attempt,
                purpose: TimerPurpose::Retry,
            });
            return;
        }
        self.emit(
            t,
            now,
            EventKind::StepFailed {
                step_id,
                item: u.item,
                attempt,
                error,
                output: Arc::new(output),
                retry_at: None,
            },
        );
        match u.item {
            Some(_) => self.after_item(t, now, u.step),
            None => self.on_step_terminal(t, now, u.step),
        }
    }

    /// Fails a step outright (bad `when`, bad `foreach`): no attempt, no retry.
    fn fail_step_now(&mut self, t: &mut Transition, now: Millis, i: usize, error: String) {
        self.fail_unit(
            t,
            now,
            Unit {
                step: i,
                item: None,
            },
            0,
            error,
            Json::Null,
            false,
        )
    }

    fn skip_step(&mut self, t: &mut Transition, now: Millis, i: usize, reason: String) {
        let step_id = self.plan.step(i).id.clone();
        self.emit(
            t,
            now,
            EventKind::StepSkipped {
                step_id,
                reason,
                by: None,
                comment: None,
            },
        );
        self.on_step_terminal(t, now, i);
    }

    fn on_step_terminal(&mut self, t: &mut Transition, now: Millis, i: usize) {
        if self.steps[i].unit.status == StepStatus::Failed
            && self.plan.nodes[i].on_failure == OnFailure::SkipDownstream
        {
            let reason = format!(
                "upstream step `{}` failed (on_failure: skip_downstream)",
                self.plan.step(i).id
            );
            let mut stack = self.plan.nodes[i].children.clone();
            while let Some(c) = stack.pop() {
                if self.steps[c].unit.status == StepStatus::Pending {
                    let step_id = self.plan.step(c).id.clone();
                    self.emit(
                        t,
                        now,
                        EventKind::StepSkipped {
                            step_id,
                            reason: reason.clone(),
                            by: None,
                            comment: None,
                        },
                    );
                    stack.extend(self.plan.nodes[c].children.iter().copied());
                }
            }
        }
        let plan = Arc::clone(&self.plan);
        for &c in &plan.nodes[i].children {
            self.evaluate_step(t, now, c);
        }
    }

    fn timer_fired(
        &mut self,
        t: &mut Transition,
        now: Millis,
        u: Unit,
        attempt: u32,
        purpose: TimerPurpose,
    ) {
        if u.item.is_none() && self.steps[u.step].unit.status == StepStatus::AwaitingApproval {
            if purpose != TimerPurpose::Timeout {
                return;
            }
            let policy = match &self.plan.step(u.step).kind {
                StepKind::Approval(a) => a.on_timeout,
                _ => TimeoutPolicy::Reject,
            };
            let step_id = self.plan.step(u.step).id.clone();
            match policy {
                TimeoutPolicy::Reject => self.skip_step(t, now, u.step, APPROVAL_TIMED_OUT.into()),
                TimeoutPolicy::Approve => {
                    self.emit(
                        t,
                        now,
                        EventKind::StepApproved {
                            step_id,
                            by: "timeout".into(),
                            comment: Some("approved when the timeout passed".into()),
                        },
                    );
                    self.after_approval(t, now, u.step, "timeout".into(), None);
                }
            }
            return;
        }
        let unit = self.unit(u);
        if unit.attempt != attempt {
            return;
        }
        match (purpose, unit.status) {
            (TimerPurpose::Retry, StepStatus::RetryWait) => self.launch_unit(t, now, u),
            (TimerPurpose::Elapsed, StepStatus::Waiting) => {
                let output = if self.is_timer_wait(u.step) {
                    json!({"waited_until": now})
                } else {
                    Json::Null
                };
                self.succeed_unit(t, now, u, attempt, output)
            }
            (TimerPurpose::Timeout, StepStatus::Waiting) => {
                let what = match &self.plan.step(u.step).kind {
                    StepKind::Wait(w) => w
                        .signal
                        .clone()
                        .map_or("a signal".to_owned(), |s| format!("signal `{s}`")),
                    _ => "a signal".into(),
                };
                self.fail_unit(
                    t,
                    now,
                    u,
                    attempt,
                    format!("timed out waiting for {what}"),
                    Json::Null,
                    true,
                )
            }
            _ => {}
        }
    }

    fn is_timer_wait(&self, i: usize) -> bool {
        match &self.plan.step(i).kind {
            StepKind::Wait(w) => w.timer.is_some(),
            StepKind::Builtin(Builtin::Sleep) => true,
            _ => false,
        }
    }

    fn is_signal_wait(&self, u: Unit) -> bool {
        self.unit(u).status == StepStatus::Waiting
            && matches!(&self.plan.step(u.step).kind, StepKind::Wait(w) if w.timer.is_none())
    }

    fn units_of(&self, i: usize) -> impl Iterator<Item = Unit> + '_ {
        let items = self.steps[i]
            .items
            .as_ref()
            .map_or(0, |it| it.values.len() as u32);
        let whole = (items == 0).then_some(Unit {
            step: i,
            item: None,
        });
        whole.into_iter().chain((0..items).map(move |k| Unit {
            step: i,
            item: Some(k),
        }))
    }

    fn cancel(&mut self, t: &mut Transition, now: Millis, reason: String) {
        for i in 0..self.steps.len() {
            if self.steps[i].unit.status.is_terminal() {
                continue;
            }
            let units: Vec<Unit> = self.units_of(i).collect();
            for u in units {
                let unit = self.unit(u);
                match unit.status {
                    StepStatus::Running => t.actions.push(Action::Kill {
                        unit: u,
                        attempt: unit.attempt,
                    }),
                    StepStatus::Queued => t.actions.push(Action::Dequeue { unit: u }),
                    _ => {}
                }
            }
            let step_id = self.plan.step(i).id.clone();
            self.emit(t, now, EventKind::StepCancelled { step_id });
        }
        self.emit(t, now, EventKind::RunCancelled { reason });
        t.actions.push(Action::Finished {
            status: RunStatus::Cancelled,
        });
    }

    fn maybe_finish(&mut self, t: &mut Transition, now: Millis) {
        if self.open > 0 || self.status.is_terminal() || self.seq == 0 {
            return;
        }
        let failed: Vec<usize> = (0..self.steps.len())
            .filter(|&i| {
                self.steps[i].unit.status == StepStatus::Failed
                    && self.plan.nodes[i].on_failure == OnFailure::FailRun
            })
            .collect();
        let outputs = if self.plan.manifest.outputs.is_empty() {
            Ok(json!({}))
        } else {
            let outputs = serde_json::to_value(&self.plan.manifest.outputs).unwrap_or(Json::Null);
            template::render_value(&outputs, &self.outputs_context())
        };
        if let Some(&first) = failed.first() {
            let step = self.plan.step(first);
            let mut error = format!(
                "step `{}` failed: {}",
                step.id,
                self.steps[first].unit.error.clone().unwrap_or_default()
            );
            if failed.len() > 1 {
                error.push_str(&format!(" (and {} more failed steps)", failed.len() - 1));
            }
            self.emit(
                t,
                now,
                EventKind::RunFailed {
                    error,
                    outputs: outputs.unwrap_or(Json::Null),
                },
            );
            t.actions.push(Action::Finished {
                status: RunStatus::Failed,
            });
            return;
        }
        match outputs {
            Ok(outputs) => {
                self.emit(t, now, EventKind::RunSucceeded { outputs });
                t.actions.push(Action::Finished {
                    status: RunStatus::Succeeded,
                });
            }
            Err(e) => {
                self.emit(
                    t,
                    now,
                    EventKind::RunFailed {
                        error: format!("run outputs could not be rendered: {e}"),
                        outputs: Json::Null,
                    },
                );
                t.actions.push(Action::Finished {
                    status: RunStatus::Failed,
                });
            }
        }
    }
}

/// Delay before the retry that follows the `failures`-th failure, in ms. Jitter is derived
/// from `seed` so the same run always computes the same delays.
pub(crate) fn backoff(policy: &RetryPolicy, failures: u32, seed: &str) -> Millis {
    let base = policy.backoff.as_millis() as f64;
    let mut delay = base * policy.multiplier.powi(failures.saturating_sub(1) as i32);
    if let Some(max) = policy.max_backoff {
        delay = delay.min(max.as_millis() as f64);
    }
    if policy.jitter > 0.0 {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in seed.bytes().chain(failures.to_le_bytes()) {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
        let frac = (h >> 11) as f64 / (1u64 << 53) as f64;
        delay *= 1.0 - policy.jitter * frac;
    }
    delay.max(0.0).min(u64::MAX as f64 / 2.0) as Millis
}
