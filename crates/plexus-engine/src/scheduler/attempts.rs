//! Attempts handed to their executors: held ahead of their durable start where the
//! executor can, and their process records kept with the next commit.

use super::*;

impl Loop {
    /// Forgets an ended attempt's process record: a record still in the open batch was
    /// never written and is dropped; one already committed is deleted with the next.
    pub(super) fn forget_process(
        &mut self,
        run: &RunId,
        step_id: &str,
        unit: Unit,
        attempt: u32,
        spawned: bool,
    ) {
        let unwritten = self.batch.processes.iter().position(|p| {
            p.step_id == step_id
                && p.item == unit.item
                && p.attempt == attempt
                && *p.run_id == **run
        });
        if let Some(at) = unwritten {
            self.batch.processes.swap_remove(at);
        } else if spawned {
            self.batch.processes_done.push(plexus_store::ProcessRecord {
                run_id: run.to_string(),
                step_id: step_id.to_owned(),
                item: unit.item,
                attempt,
                host: String::new(),
                pgid: 0,
                start_ticks: 0,
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
        let recorder = (tx.clone(), run.clone());
        let ctx = AttemptCtx {
            run_id: run.clone(),
            base_dir: active.base_dir.clone(),
            logs: (self.engine.logs.receiver_count() > 0).then(|| self.engine.logs.clone()),
            // Sent before the attempt can finish, so the record precedes its removal.
            record: Box::new(move |pgid, start_ticks| {
                let (tx, run_id) = recorder;
                if tx
                    .try_send(Msg::Spawned {
                        run_id,
                        unit,
                        attempt,
                        pgid,
                        start_ticks,
                    })
                    .is_err()
                {
                    tracing::warn!(pgid, "the scheduler is too busy to record a process group");
                }
            }),
        };
        let executors = self.executors.clone();
        let executor = executors.for_work(&task.work);
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
