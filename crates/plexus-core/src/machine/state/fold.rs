//! The fold: how each event changes a run's state. Used live (every emitted event) and
//! when restoring a run from its stored events, so both give the same state.

use super::*;

impl RunState {
    /// Applies one event. Used both live (every emitted event) and when restoring.
    pub fn apply(&mut self, e: &Event) {
        self.seq = e.seq;
        let step_of = |s: &RunState, id: &str| s.index_of(id);
        // What templates read of a step is made again after any event about it.
        if let Some(i) = e.kind.step_id().and_then(|id| step_of(self, id)) {
            self.steps[i].output_value.take();
        }
        match &e.kind {
            EventKind::RunStarted { inputs } => {
                self.status = RunStatus::Running;
                self.inputs = inputs.clone();
                self.inputs_value.take();
            }
            EventKind::StepExpanded { step_id, items } => {
                if let Some(i) = step_of(self, step_id) {
                    let n = items.len();
                    self.steps[i].items = Some(Box::new(Items {
                        values: items.clone(),
                        units: vec![UnitRt::default(); n],
                        launched: 0,
                        finished: 0,
                        failed: 0,
                    }));
                    self.steps[i].unit.status = StepStatus::Running;
                }
            }
            EventKind::StepAwaitingApproval {
                step_id,
                expires_at,
                detail,
                ..
            } => {
                if let Some(i) = step_of(self, step_id) {
                    self.steps[i].unit.status = StepStatus::AwaitingApproval;
                    self.steps[i].unit.wake_at = *expires_at;
                    self.steps[i].approved = false;
                    self.steps[i].requested_digest = detail
                        .get("digest")
                        .and_then(Json::as_str)
                        .map(str::to_owned);
                }
            }
            EventKind::StepApproved { step_id, .. } => {
                if let Some(i) = step_of(self, step_id) {
                    self.steps[i].approved = true;
                    self.steps[i].approved_digest = self.steps[i].requested_digest.clone();
                    self.steps[i].unit.status = StepStatus::Pending;
                    self.steps[i].unit.wake_at = None;
                }
            }
            EventKind::StepStarted {
                step_id,
                item,
                attempt,
                ..
            }
            | EventKind::StepWaiting {
                step_id,
                item,
                attempt,
                ..
            } => {
                let Some(i) = step_of(self, step_id) else {
                    return;
                };
                let u = Unit {
                    step: i,
                    item: *item,
                };
                let waiting = matches!(e.kind, EventKind::StepWaiting { .. });
                let until = match &e.kind {
                    EventKind::StepWaiting { until, .. } => *until,
                    _ => None,
                };
                self.mark_launched(u);
                let unit = self.unit_mut(u);
                unit.status = if waiting {
                    StepStatus::Waiting
                } else {
                    StepStatus::Running
                };
                unit.attempt = *attempt;
                unit.wake_at = until;
            }
            EventKind::StepSucceeded {
                step_id,
                item,
                attempt,
                output,
            } => {
                let Some(i) = step_of(self, step_id) else {
                    return;
                };
                let u = Unit {
                    step: i,
                    item: *item,
                };
                let unit = self.unit_mut(u);
                unit.attempt = *attempt;
                unit.output = output.clone();
                unit.error = None;
                match item {
                    Some(_) => {
                        unit.status = StepStatus::Succeeded;
                        unit.wake_at = None;
                        if let Some(items) = &mut self.steps[i].items {
                            items.finished += 1;
                        }
                    }
                    None => {
                        self.set_terminal(i, StepStatus::Succeeded);
                        self.clear_item_outputs(i);
                    }
                }
            }
            EventKind::StepFailed {
                step_id,
                item,
                attempt,
                error,
                output,
                retry_at,
            } => {
                let Some(i) = step_of(self, step_id) else {
                    return;
                };
                let u = Unit {
                    step: i,
                    item: *item,
                };
                self.mark_launched(u);
                let unit = self.unit_mut(u);
                unit.attempt = *attempt;
                unit.failures += 1;
                unit.error = Some(error.clone());
                unit.output = output.clone();
                if retry_at.is_some() {
                    unit.status = StepStatus::RetryWait;
                    unit.wake_at = *retry_at;
                    return;
                }
                match item {
                    Some(_) => {
                        unit.status = StepStatus::Failed;
                        unit.wake_at = None;
                        let step = &mut self.steps[i];
                        if let Some(items) = &mut step.items {
                            items.finished += 1;
                            items.failed += 1;
                        }
                        step.unit.status = StepStatus::Partial;
                    }
                    None => {
                        self.set_terminal(i, StepStatus::Failed);
                        self.clear_item_outputs(i);
                    }
                }
            }
            EventKind::StepInterrupted {
                step_id,
                item,
                attempt,
            } => {
                let Some(i) = step_of(self, step_id) else {
                    return;
                };
                let unit = self.unit_mut(Unit {
                    step: i,
                    item: *item,
                });
                unit.attempt = *attempt;
                unit.status = StepStatus::Pending;
            }
            EventKind::StepSkipped {
                step_id, reason, ..
            } => {
                if let Some(i) = step_of(self, step_id) {
                    self.steps[i].unit.error = Some(reason.clone());
                    self.set_terminal(i, StepStatus::Skipped);
                }
            }
            EventKind::StepCancelled { step_id } => {
                if let Some(i) = step_of(self, step_id) {
                    self.set_terminal(i, StepStatus::Cancelled);
                }
            }
            EventKind::RunSucceeded { outputs } => {
                self.status = RunStatus::Succeeded;
                self.outputs = outputs.clone();
            }
            EventKind::RunFailed { error, outputs } => {
                self.status = RunStatus::Failed;
                self.error = Some(error.clone());
                self.outputs = outputs.clone();
            }
            EventKind::RunCancelled { reason } => {
                self.status = RunStatus::Cancelled;
                self.error = Some(reason.clone());
            }
            EventKind::RunPaused { .. } => self.status = RunStatus::Paused,
            EventKind::RunResumed { .. } => self.status = RunStatus::Running,
            EventKind::RunRetried { .. } => {
                self.status = RunStatus::Running;
                self.error = None;
                self.outputs = Json::Null;
            }
            EventKind::StepProgress { step_id, entry, .. } => {
                if let Some(i) = step_of(self, step_id) {
                    self.steps[i].journal.push(entry.clone());
                }
            }
            EventKind::StepReset { step_id } => {
                if let Some(i) = step_of(self, step_id) {
                    let step = &mut self.steps[i];
                    step.journal.clear();
                    if step.unit.status.is_terminal() {
                        self.open += 1;
                    }
                    let attempt = step.unit.attempt;
                    step.unit = UnitRt {
                        attempt,
                        ..UnitRt::default()
                    };
                    step.items = None;
                    step.approved = false;
                    step.requested_digest = None;
                    step.approved_digest = None;
                }
            }
        }
    }

    pub(super) fn mark_launched(&mut self, u: Unit) {
        if let (Some(item), Some(items)) = (u.item, &mut self.steps[u.step].items) {
            items.launched = items.launched.max(item + 1);
        }
    }
}
