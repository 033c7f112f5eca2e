//! Deciding what runs: a pending step's trigger rule, then launching its units and
//! starting their attempts (pools, approvals, rendering the work).

use super::render::render_work;
use super::*;

impl RunState {
    pub(super) fn evaluate_pending(&mut self, t: &mut Transition, now: Millis) {
        for i in 0..self.steps.len() {
            if self.steps[i].unit.status == StepStatus::Pending {
                self.evaluate_step(t, now, i);
            }
        }
    }

    pub(super) fn start(&mut self, t: &mut Transition, now: Millis) {
        self.emit(
            t,
            now,
            EventKind::RunStarted {
                inputs: self.inputs.clone(),
            },
        );
        for i in 0..self.steps.len() {
            if self.plan.nodes[i].parents.is_empty() {
                self.evaluate_step(t, now, i);
            }
        }
    }

    fn parent_counts(&self, i: usize) -> ParentCounts {
        let mut c = ParentCounts {
            total: self.plan.nodes[i].parents.len() as u32,
            ..Default::default()
        };
        for &p in &self.plan.nodes[i].parents {
            match self.steps[p].unit.status {
                StepStatus::Succeeded => c.succeeded += 1,
                StepStatus::Failed if self.plan.nodes[p].on_failure == OnFailure::Continue => {
                    c.succeeded += 1
                }
                StepStatus::Failed => c.failed += 1,
                StepStatus::Skipped | StepStatus::Cancelled => c.skipped += 1,
                _ => {}
            }
        }
        c
    }

    /// Decides whether a pending step fires now.
    pub(super) fn evaluate_step(&mut self, t: &mut Transition, now: Millis, i: usize) {
        // A paused run starts nothing new; `Resume` evaluates the pending steps again.
        if self.steps[i].unit.status != StepStatus::Pending || self.status == RunStatus::Paused {
            return;
        }
        let step = self.plan.step(i);
        match evaluate(step.trigger, self.parent_counts(i)) {
            Verdict::Wait => {}
            Verdict::Skip(reason) => self.skip_step(t, now, i, reason.to_owned()),
            Verdict::Fire => {
                if let Some(cond) = step.when.clone() {
                    match template::eval_condition(&cond, &self.context(i, None)) {
                        Ok(true) => {}
                        Ok(false) => {
                            return self.skip_step(
                                t,
                                now,
                                i,
                                format!("condition `{cond}` is false"),
                            );
                        }
                        Err(e) => {
                            return self.fail_step_now(
                                t,
                                now,
                                i,
                                format!("`when` could not be evaluated: {e}"),
                            );
                        }
                    }
                }
                let gated = self.plan.nodes[i].gate.is_some();
                if gated && !self.steps[i].approved {
                    self.request_approval(t, now, i);
                } else if !gated || self.still_as_approved(t, now, i) {
                    self.launch(t, now, i);
                }
            }
        }
    }

    pub(super) fn launch(&mut self, t: &mut Transition, now: Millis, i: usize) {
        let step = self.plan.step(i);
        if let StepKind::Approval(_) = step.kind {
            return self.request_approval(t, now, i);
        }
        let Some(source) = step.foreach.clone() else {
            return self.launch_unit(
                t,
                now,
                Unit {
                    step: i,
                    item: None,
                },
            );
        };
        let evaluated = if source.trim_start().starts_with('[') {
            serde_json::from_str::<Json>(&source).map_err(|e| e.to_string())
        } else {
            template::eval_value(&source, &self.context(i, None))
        };
        let items = match evaluated {
            Ok(Json::Array(items)) => items,
            Ok(other) => {
                return self.fail_step_now(
                    t,
                    now,
                    i,
                    format!("`foreach` must give a list, it gave {other}"),
                );
            }
            Err(e) => {
                return self.fail_step_now(
                    t,
                    now,
                    i,
                    format!("`foreach` could not be evaluated: {e}"),
                );
            }
        };
        let step_id = step.id.clone();
        let empty = items.is_empty();
        self.emit(
            t,
            now,
            EventKind::StepExpanded {
                step_id: step_id.clone(),
                items,
            },
        );
        if empty {
            self.emit(
                t,
                now,
                EventKind::StepSucceeded {
                    step_id,
                    item: None,
                    attempt: 0,
                    output: Arc::new(json!([])),
                },
            );
            return self.on_step_terminal(t, now, i);
        }
        self.launch_items(t, now, i);
    }

    pub(super) fn launch_unit(&mut self, t: &mut Transition, now: Millis, u: Unit) {
        let plan = Arc::clone(&self.plan);
        let step = plan.step(u.step);
        match &step.kind {
            // Processes always take a pool slot; other work that acts (agent, llm,
            // builtins) does when the workflow names a pool for it, so a pool can limit
            // calls to an agent or a model too. A sub-workflow takes one only when the
            // step itself names a pool: holding a slot of the pool its own steps need
            // would deadlock. Waiting takes no slot.
            kind if matches!(kind, StepKind::Run(_) | StepKind::Python(_))
                || (self.declares_pool(step)
                    && matches!(
                        kind,
                        StepKind::Agent { .. }
                            | StepKind::Llm(_)
                            | StepKind::Builtin(Builtin::Noop | Builtin::Echo | Builtin::Fail)
                    ))
                || (step.pool.is_some() && matches!(kind, StepKind::Workflow(_))) =>
            {
                self.unit_mut(u).status = StepStatus::Queued;
                let node = &plan.nodes[u.step];
                t.actions.push(Action::Enqueue {
                    unit: u,
                    pool: node.pool.clone(),
                    slots: step.pool_slots,
                });
            }
            StepKind::Wait(w) => {
                let attempt = self.unit(u).attempt + 1;
                let (until, purpose) = match (w.timer, w.timeout) {
                    (Some(d), _) => (Some(now + d.as_millis() as u64), TimerPurpose::Elapsed),
                    (None, Some(d)) => (Some(now + d.as_millis() as u64), TimerPurpose::Timeout),
                    (None, None) => (None, TimerPurpose::Timeout),
                };
                let step_id = step.id.clone();
                let signal = w.signal.clone();
                self.emit(
                    t,
                    now,
                    EventKind::StepWaiting {
                        step_id,
                        item: u.item,
                        attempt,
                        signal,
                        until,
                    },
                );
                if let Some(at) = until {
                    t.actions.push(Action::SetTimer {
                        at,
                        unit: u,
                        attempt,
                        purpose,
                    });
                }
            }
            StepKind::Builtin(Builtin::Sleep) => {
                let attempt = self.unit(u).attempt + 1;
                let step_id = step.id.clone();
                let duration = match self.sleep_duration(u) {
                    Ok(d) => d,
                    Err(e) => return self.fail_unit(t, now, u, attempt, e, Json::Null, false),
                };
                let until = now + duration.as_millis() as u64;
                self.emit(
                    t,
                    now,
                    EventKind::StepWaiting {
                        step_id,
                        item: u.item,
                        attempt,
                        signal: None,
                        until: Some(until),
                    },
                );
                t.actions.push(Action::SetTimer {
                    at: until,
                    unit: u,
                    attempt,
                    purpose: TimerPurpose::Elapsed,
                });
            }
            _ => {
                // In-process and logical work takes no pool slot.
                self.unit_mut(u).status = StepStatus::Queued;
                self.start_attempt(t, now, u);
            }
        }
    }

    /// Whether the step, or the workflow's defaults, name a pool.
    fn declares_pool(&self, step: &crate::manifest::Step) -> bool {
        step.pool.is_some() || self.plan.manifest.defaults.pool.is_some()
    }

    fn sleep_duration(&self, u: Unit) -> Result<std::time::Duration, String> {
        let with = self.plan.step(u.step).with.clone().unwrap_or(Json::Null);
        let rendered = template::render_value(&with, &self.context(u.step, u.item))?;
        match rendered.get("duration") {
            Some(Json::String(s)) => crate::duration::parse_duration(s),
            Some(Json::Number(n)) => Ok(std::time::Duration::from_secs_f64(
                n.as_f64().unwrap_or(0.0).max(0.0),
            )),
            _ => Err("builtin sleep needs `with: {duration: 5s}`".into()),
        }
    }

    pub(super) fn start_attempt(&mut self, t: &mut Transition, now: Millis, u: Unit) {
        self.start_attempt_inner(t, now, u, true)
    }

    /// Renders the unit's work and starts attempt `attempt + 1` (with `record` false, re-attaches
    /// to the current attempt of a workflow step without a new event).
    pub(super) fn start_attempt_inner(
        &mut self,
        t: &mut Transition,
        now: Millis,
        u: Unit,
        record: bool,
    ) {
        let step = self.plan.step(u.step);
        let attempt = self.unit(u).attempt + 1;
        let key = format!(
            "{}/{}/{}/{attempt}",
            self.run_id,
            step.id,
            u.item.map_or_else(|| "-".to_owned(), |k| k.to_string())
        );
        let ctx = self.context(u.step, u.item);
        let rendered = render_work(step, &ctx, self.plan.mode, &self.plan.manifest.defaults);
        let (work, detail, env, workdir) = match rendered {
            Ok(r) => r,
            Err(e) => {
                return self.fail_unit(
                    t,
                    now,
                    u,
                    attempt,
                    format!("template error: {e}"),
                    Json::Null,
                    false,
                );
            }
        };
        if record {
            let step_id = step.id.clone();
            self.emit(
                t,
                now,
                EventKind::StepStarted {
                    step_id,
                    item: u.item,
                    attempt,
                    key: key.clone(),
                    detail,
                },
            );
        } else {
            self.unit_mut(u).status = StepStatus::Running;
            self.unit_mut(u).attempt = attempt;
        }
        let mut work = work;
        if let (Work::Llm(w), None) = (&mut work, u.item) {
            w.journal = self.steps[u.step].journal.clone();
        }
        let step = self.plan.step(u.step);
        let node = &self.plan.nodes[u.step];
        t.actions.push(Action::Execute(Task {
            unit: u,
            step_id: step.id.clone(),
            attempt,
            key,
            work,
            timeout: node.timeout,
            env,
            workdir,
            pool: node.pool.clone(),
            isolate: !self.plan.manifest.unisolated,
            permission: crate::plan::effective_permission(step, &self.plan.options.action_floors),
        }));
    }
}
