//! `foreach` steps: handing out items in bounded waves and gathering their outputs.

use super::*;

impl RunState {
    /// Hands out foreach items up to the step's concurrency. Without one, work that ends
    /// by itself keeps at most [`ITEMS_IN_FLIGHT`] items started and unfinished, so no
    /// single transition (and no single turn of the engine's loop) does more than that
    /// many items' work; items that wait for the outside world (signals, timers) all
    /// start at once, since each may be woken on its own.
    pub(super) fn launch_items(&mut self, t: &mut Transition, now: Millis, i: usize) {
        let step = self.plan.step(i);
        let limit = step.concurrency.unwrap_or(match step.kind {
            StepKind::Wait(_) => u32::MAX,
            _ => ITEMS_IN_FLIGHT,
        });
        loop {
            let Some(items) = &mut self.steps[i].items else {
                return;
            };
            let active = items.launched - items.finished;
            if items.launched as usize >= items.values.len() || active >= limit {
                return;
            }
            let k = items.launched;
            items.launched += 1;
            self.launch_unit(
                t,
                now,
                Unit {
                    step: i,
                    item: Some(k),
                },
            );
        }
    }

    pub(super) fn after_item(&mut self, t: &mut Transition, now: Millis, i: usize) {
        self.launch_items(t, now, i);
        self.maybe_finish_items(t, now, i);
    }

    /// Ends a foreach step once every item has ended.
    pub(super) fn maybe_finish_items(&mut self, t: &mut Transition, now: Millis, i: usize) {
        let Some(items) = &self.steps[i].items else {
            return;
        };
        if self.steps[i].unit.status.is_terminal() || (items.finished as usize) < items.values.len()
        {
            return;
        }
        let failed = items.failed;
        let total = items.values.len();
        let step_id = self.plan.step(i).id.clone();
        // The items' outputs move into the step's; nothing reads them one by one after
        // this (the fold clears them too, see `apply`).
        // Each item's output is usually held by nothing else by now, so it moves.
        let outputs: Vec<Json> = (self.steps[i].items.iter_mut())
            .flat_map(|items| items.units.iter_mut())
            .map(|u| {
                let output = std::mem::replace(&mut u.output, super::null());
                Arc::try_unwrap(output).unwrap_or_else(|shared| Json::clone(&shared))
            })
            .collect();
        // One value for the event and the state alike: no copy of 100,000 outputs.
        let output = Arc::new(Json::Array(outputs));
        if failed == 0 {
            self.emit(
                t,
                now,
                EventKind::StepSucceeded {
                    step_id,
                    item: None,
                    attempt: 0,
                    output,
                },
            );
        } else {
            let error = format!("{failed} of {total} items failed");
            self.emit(
                t,
                now,
                EventKind::StepFailed {
                    step_id,
                    item: None,
                    attempt: 0,
                    error,
                    output,
                    retry_at: None,
                },
            );
        }
        self.on_step_terminal(t, now, i);
    }
}
