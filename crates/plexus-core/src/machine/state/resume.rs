//! Taking a run up again: after its engine stopped (`resume`) and after it ended (`retry`).

use super::*;

impl RunState {
    /// Resets the failed and cancelled steps, and the steps skipped behind them, then
    /// carries on as if they had never run.
    pub(super) fn retry(
        &mut self,
        t: &mut Transition,
        now: Millis,
        by: String,
    ) -> Result<(), Rejected> {
        if !matches!(self.status, RunStatus::Failed | RunStatus::Cancelled) {
            return Err(Rejected::RunNotIn {
                status: self.status.as_str(),
                expected: "failed or cancelled",
            });
        }
        let mut reset = vec![false; self.steps.len()];
        for &layer_step in self.plan.layers.iter().flatten() {
            let i = layer_step;
            reset[i] = match self.steps[i].unit.status {
                StepStatus::Failed | StepStatus::Cancelled => true,
                StepStatus::Skipped => self.plan.nodes[i].parents.iter().any(|&p| reset[p]),
                _ => false,
            };
        }
        self.emit(t, now, EventKind::RunRetried { by });
        for (i, &r) in reset.iter().enumerate() {
            if r {
                let step_id = self.plan.step(i).id.clone();
                self.emit(t, now, EventKind::StepReset { step_id });
            }
        }
        self.evaluate_pending(t, now);
        Ok(())
    }

    /// After a restart: re-arm timers, retry interrupted attempts as new attempts,
    /// re-queue what was queued, and continue.
    /// `reattach` is the engine's word, per kind of step, on an attempt that was running
    /// when its engine stopped: go on with it where it is (a sub-workflow's child run is
    /// durable on its own), or record it interrupted and start a new attempt.
    pub fn resume(&mut self, now: Millis, reattach: &dyn Fn(&StepKind) -> bool) -> Transition {
        let mut t = Transition::default();
        if self.status.is_terminal() {
            return t;
        }
        if self.seq == 0 {
            self.start(&mut t, now);
            self.maybe_finish(&mut t, now);
            return t;
        }
        for i in 0..self.steps.len() {
            let status = self.steps[i].unit.status;
            match status {
                StepStatus::Pending | StepStatus::Queued => continue, // evaluated below
                StepStatus::AwaitingApproval => {
                    if let Some(at) = self.steps[i].unit.wake_at {
                        t.actions.push(Action::SetTimer {
                            at,
                            unit: Unit {
                                step: i,
                                item: None,
                            },
                            attempt: 0,
                            purpose: TimerPurpose::Timeout,
                        });
                    }
                    continue;
                }
                s if s.is_terminal() => continue,
                _ => {}
            }
            let units: Vec<Unit> = match &self.steps[i].items {
                Some(items) => (0..items.launched)
                    .map(|k| Unit {
                        step: i,
                        item: Some(k),
                    })
                    .collect(),
                None => vec![Unit {
                    step: i,
                    item: None,
                }],
            };
            for u in units {
                self.resume_unit(&mut t, now, u, reattach);
            }
            if self.steps[i].items.is_some() {
                self.launch_items(&mut t, now, i);
                self.maybe_finish_items(&mut t, now, i);
            }
        }
        for i in 0..self.steps.len() {
            if matches!(
                self.steps[i].unit.status,
                StepStatus::Pending | StepStatus::Queued
            ) {
                self.steps[i].unit.status = StepStatus::Pending;
                self.evaluate_step(&mut t, now, i);
            }
        }
        self.maybe_finish(&mut t, now);
        t
    }

    pub(super) fn resume_unit(
        &mut self,
        t: &mut Transition,
        now: Millis,
        u: Unit,
        reattach: &dyn Fn(&StepKind) -> bool,
    ) {
        let unit = self.unit(u).clone();
        match unit.status {
            StepStatus::Running if reattach(&self.plan.step(u.step).kind) => {
                // Go on with the attempt where it is instead of starting over.
                self.unit_mut(u).status = StepStatus::Queued;
                self.unit_mut(u).attempt = unit.attempt - 1;
                self.start_attempt_inner(t, now, u, false);
            }
            StepStatus::Running => {
                let step_id = self.plan.step(u.step).id.clone();
                self.emit(
                    t,
                    now,
                    EventKind::StepInterrupted {
                        step_id,
                        item: u.item,
                        attempt: unit.attempt,
                    },
                );
                self.launch_unit(t, now, u);
            }
            StepStatus::Pending | StepStatus::Queued => self.launch_unit(t, now, u),
            StepStatus::RetryWait => t.actions.push(Action::SetTimer {
                at: unit.wake_at.unwrap_or(now),
                unit: u,
                attempt: unit.attempt,
                purpose: TimerPurpose::Retry,
            }),
            StepStatus::Waiting => {
                if let Some(at) = unit.wake_at {
                    let purpose = if self.is_timer_wait(u.step) {
                        TimerPurpose::Elapsed
                    } else {
                        TimerPurpose::Timeout
                    };
                    t.actions.push(Action::SetTimer {
                        at,
                        unit: u,
                        attempt: unit.attempt,
                        purpose,
                    });
                }
            }
            _ => {}
        }
    }
}
