//! Attempts handed to their executors: held ahead of their durable start where the
//! executor can, and their records kept with the next commit.

use super::*;

impl Loop {
    /// Forgets an ended attempt's record: a record still in the open batch was never
    /// written and is dropped; one already committed is deleted with the next.
    pub(super) fn forget_record(
        &mut self,
        run: &RunId,
        step_id: &str,
        unit: Unit,
        attempt: u32,
        recorded: bool,
    ) {
        let unwritten = self.batch.records.iter().position(|r| {
            let k = &r.key;
            k.step_id == step_id
                && k.item == unit.item
                && k.attempt == attempt
                && *k.run_id == **run
        });
        if let Some(at) = unwritten {
            self.batch.records.swap_remove(at);
        } else if recorded {
            self.batch.records_done.push(plexus_store::AttemptKey {
                run_id: run.to_string(),
                step_id: step_id.to_owned(),
                item: unit.item,
                attempt,
            });
        }
    }

    /// Starts an attempt's task with its executor; with `hold`, the attempt is got ready
    /// ahead of its durable start and waits for its release (see [`exec::Held`]).
    pub(super) fn start_attempt(
        &mut self,
        run: RunId,
        task: plexus_core::machine::Task,
        hold: bool,
    ) {
        let Some(active) = self.runs.get(&run) else {
            return;
        };
        let (kill_tx, kill_rx) = oneshot::channel();
        self.running.insert((run.clone(), task.unit), kill_tx);
        let tx = self.engine.tx.clone();
        let (unit, attempt) = (task.unit, task.attempt);
        let executors = self.executors.clone();
        let executor = executors.for_work(&task.work);
        let recorder = (tx.clone(), run.clone(), executor.name());
        let journal = exec::Journal::scheduler(tx.clone(), run.clone(), unit, attempt);
        let ctx = AttemptCtx {
            run_id: run.clone(),
            base_dir: active.base_dir.clone(),
            logs: (self.engine.logs.receiver_count() > 0).then(|| self.engine.logs.clone()),
            // Sent before the attempt can finish, so the record precedes its removal.
            record: Box::new(move |data| {
                let (tx, run_id, executor) = recorder;
                if tx
                    .try_send(Msg::Recorded {
                        run_id,
                        unit,
                        attempt,
                        executor,
                        data,
                    })
                    .is_err()
                {
                    tracing::warn!(executor, "the scheduler is too busy to record an attempt");
                }
            }),
            journal,
        };
        let attempt_future = if hold {
            let held = executor.hold(task, ctx, kill_rx);
            self.gates
                .insert((run.clone(), unit, attempt), held.release);
            held.attempt
        } else {
            executor.start(task, ctx, kill_rx)
        };
        tokio::spawn(async move {
            let finished = attempt_future.await;
            // The engine may be gone; the attempt's end is then recovered from its
            // record at the next start.
            tx.send(Msg::AttemptDone {
                run_id: run,
                unit,
                attempt,
                finished,
            })
            .await
            .ok();
        });
    }

    /// Notes when each attempt that leaves the loop was made (for `EngineStats`), and
    /// gets the attempts that can be held ready before their events are durable: loading a
    /// shell overlaps the commit. Their `Execute` action, once durable, releases them.
    pub(super) fn hold_ahead(&mut self, run: &RunId, actions: &[Action]) {
        for a in actions {
            let Action::Execute(task) = a else { continue };
            let executor = self.executors.for_work(&task.work);
            if executor.answers_now() {
                continue;
            }
            let can_hold = executor.can_hold(task);
            let key = (run.clone(), task.unit, task.attempt);
            self.attempt_times
                .insert(key.clone(), (Instant::now(), None));
            if self.stopping.is_none() && can_hold {
                self.start_attempt(run.clone(), task.clone(), true);
            }
        }
    }
}
