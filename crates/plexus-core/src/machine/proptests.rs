//! Random workflows driven in random orders, with crashes at random points. Whatever
//! happens, the live state always equals the fold of the events recorded so far, the
//! events are numbered without gaps, every step ends at most once, and every run ends.

use super::*;
use crate::plan::{CompileOptions, load};
use proptest::prelude::*;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

/// One generated step: its parents (indices of earlier steps), what it is, how it joins.
#[derive(Debug, Clone)]
struct StepSpec {
    parents: Vec<usize>,
    kind: u8,
    trigger: u8,
    attempts: u32,
    /// Attempts of a `run` step that fail before one succeeds.
    fails: u32,
    on_failure: u8,
}

fn step_spec(i: usize) -> impl Strategy<Value = StepSpec> {
    (
        proptest::collection::vec(0..i.max(1), 0..3),
        0u8..8,
        0u8..7,
        1u32..4,
        0u32..4,
        0u8..3,
    )
        .prop_map(
            move |(mut parents, kind, trigger, attempts, fails, on_failure)| {
                if i == 0 {
                    parents.clear();
                }
                parents.sort_unstable();
                parents.dedup();
                StepSpec {
                    parents,
                    kind,
                    trigger,
                    attempts,
                    fails,
                    on_failure,
                }
            },
        )
}

fn workflow() -> impl Strategy<Value = Vec<StepSpec>> {
    (2usize..8).prop_flat_map(|n| (0..n).map(step_spec).collect::<Vec<_>>())
}

fn yaml(specs: &[StepSpec]) -> String {
    let mut y = String::from("version: plexus/v1\nname: prop\nsteps:\n");
    for (i, s) in specs.iter().enumerate() {
        y.push_str(&format!("- id: s{i}\n"));
        if !s.parents.is_empty() {
            let needs: Vec<String> = s.parents.iter().map(|p| format!("s{p}")).collect();
            y.push_str(&format!("  needs: [{}]\n", needs.join(", ")));
            let trigger = [
                "all_success",
                "all_done",
                "one_success",
                "one_done",
                "one_failed",
                "none_failed_min_one_success",
                "all_success",
            ][s.trigger as usize];
            y.push_str(&format!("  trigger: {trigger}\n"));
        }
        match s.kind {
            0 => y.push_str("  builtin: noop\n"),
            1 => y.push_str("  builtin: fail\n  with: {message: planned}\n"),
            2 => y.push_str(&format!("  run: work s{i} fails {}\n", s.fails)),
            3 => y.push_str(&format!(
                "  run: work s{i} fails {}\n  permission: modify\n",
                s.fails
            )),
            4 => y.push_str("  approval: {message: go?}\n"),
            5 => y.push_str(&format!("  wait: {{signal: s{i}}}\n")),
            6 => y.push_str("  wait: {timer: 2s}\n"),
            _ => y.push_str(&format!(
                "  foreach: '[1, 2, 3]'\n  concurrency: 2\n  run: work s{i} item {{{{ item }}}} fails {}\n",
                s.fails
            )),
        }
        if s.attempts > 1 {
            y.push_str(&format!(
                "  retry: {{max_attempts: {}, backoff: 1s}}\n",
                s.attempts
            ));
        }
        let on_failure = ["fail_run", "continue", "skip_downstream"][s.on_failure as usize];
        y.push_str(&format!("  on_failure: {on_failure}\n"));
    }
    y
}

/// Plays the engine: performs actions as inputs, some now, some later, in an order the
/// test chooses; a crash loses everything in memory and restores from the events.
struct Sim {
    run: RunState,
    events: Vec<Event>,
    now: Millis,
    pending: Vec<Input>,
    timers: Vec<(Millis, Input)>,
    /// Attempts of each `run` command so far (the command says how many fail first).
    tries: HashMap<String, u32>,
}

impl Sim {
    fn feed(&mut self, t: Transition) {
        self.events.extend(t.events);
        for a in t.actions {
            match a {
                Action::Enqueue { unit, .. } => self.pending.push(Input::SlotGranted(unit)),
                Action::Execute(task) => {
                    let outcome = match &task.work {
                        Work::Shell { command } => {
                            let tries = self.tries.entry(command.clone()).or_default();
                            *tries += 1;
                            let fails: u32 = command
                                .rsplit(' ')
                                .next()
                                .and_then(|n| n.parse().ok())
                                .unwrap_or(0);
                            if *tries <= fails {
                                Outcome::Failure {
                                    error: "exit 1".into(),
                                    output: json!({"exit_code": 1}),
                                }
                            } else {
                                Outcome::Success(json!({"stdout": command}))
                            }
                        }
                        Work::Fail(m) => Outcome::Failure {
                            error: m.clone(),
                            output: Json::Null,
                        },
                        _ => Outcome::Success(Json::Null),
                    };
                    self.pending.push(Input::AttemptFinished {
                        unit: task.unit,
                        attempt: task.attempt,
                        outcome,
                    });
                }
                Action::Kill { unit, attempt } => self.pending.push(Input::AttemptFinished {
                    unit,
                    attempt,
                    outcome: Outcome::Failure {
                        error: "cancelled".into(),
                        output: Json::Null,
                    },
                }),
                Action::SetTimer {
                    at,
                    unit,
                    attempt,
                    purpose,
                } => self.timers.push((
                    at,
                    Input::TimerFired {
                        unit,
                        attempt,
                        purpose,
                    },
                )),
                Action::Dequeue { .. } | Action::Finished { .. } => {}
            }
        }
    }

    fn handle(&mut self, input: Input) {
        // A rejected input (a stale grant, a decision for a step that moved on) leaves the
        // run as it was; the engine answers such inputs with an error.
        if let Ok(t) = self.run.handle(input, self.now) {
            self.feed(t);
        }
        self.check_fold();
    }

    /// The live state is the fold of the events recorded so far.
    fn check_fold(&self) {
        let restored = RunState::restore(
            self.run.run_id.clone(),
            Arc::clone(&self.run.plan),
            self.run.inputs.clone(),
            &self.events,
        )
        .expect("the history folds");
        assert_eq!(restored.status, self.run.status);
        assert_eq!(restored.seq, self.run.seq);
        assert_eq!(restored.outputs, self.run.outputs);
        assert_eq!(restored.error, self.run.error);
        for i in 0..self.run.plan.len() {
            let (mut live, folded) = (self.run.step_view(i), restored.step_view(i));
            // Waiting for a slot is in memory only: the fold sees the step as it was
            // before it was queued (pending, or waiting for its retry), and a resume
            // queues it again.
            if live.status == StepStatus::Queued
                && matches!(folded.status, StepStatus::Pending | StepStatus::RetryWait)
            {
                live.status = folded.status;
            }
            assert_eq!(live, folded, "step {i} after {} events", self.events.len());
        }
    }

    /// The engine dies: what it had in memory is gone; a new one restores and resumes.
    fn crash(&mut self) {
        self.pending.clear();
        self.timers.clear();
        let mut restored = RunState::restore(
            self.run.run_id.clone(),
            Arc::clone(&self.run.plan),
            self.run.inputs.clone(),
            &self.events,
        )
        .expect("the history folds");
        let t = restored.resume(self.now, &|k| {
            matches!(k, crate::manifest::StepKind::Workflow(_))
        });
        self.run = restored;
        self.feed(t);
        self.check_fold();
    }

    fn fire_next_timer(&mut self) -> bool {
        if self.timers.is_empty() {
            return false;
        }
        self.timers.sort_by_key(|(at, _)| *at);
        let (at, input) = self.timers.remove(0);
        self.now = self.now.max(at);
        self.handle(input);
        true
    }

    /// A decision or signal for a step that waits for one, if any does.
    fn outside_input(&self, approve: bool) -> Option<Input> {
        (0..self.run.plan.len()).find_map(|i| {
            let id = self.run.plan.step(i).id.clone();
            match self.run.step_status(i) {
                StepStatus::AwaitingApproval if approve => Some(Input::Approve {
                    step_id: id,
                    by: "user:ada".into(),
                    comment: None,
                }),
                StepStatus::AwaitingApproval => Some(Input::Reject {
                    step_id: id,
                    by: "user:ada".into(),
                    comment: None,
                }),
                StepStatus::Waiting
                    if matches!(
                        &self.run.plan.step(i).kind,
                        crate::manifest::StepKind::Wait(w) if w.signal.is_some()
                    ) =>
                {
                    Some(Input::Signal {
                        step_id: id,
                        data: json!({"ok": true}),
                    })
                }
                _ => None,
            }
        })
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn any_order_and_any_crash_keeps_the_fold_and_ends_each_step_once(
        specs in workflow(),
        choices in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let text = yaml(&specs);
        let opts = CompileOptions::with_default_pool(2);
        let plan = match load(&text, "prop.yaml", &opts) {
            Ok(p) => Arc::new(p),
            // A combination the validator refuses (e.g. a trigger that can never fire).
            Err(_) => return Ok(()),
        };
        let mut sim = Sim {
            run: RunState::new("r1", plan, json!({})),
            events: Vec::new(),
            now: 1_000,
            pending: Vec::new(),
            timers: Vec::new(),
            tries: HashMap::new(),
        };
        sim.handle(Input::Start);
        for c in choices {
            if sim.run.status.is_terminal() {
                break;
            }
            match c % 11 {
                0..=3 if !sim.pending.is_empty() => {
                    let at = (c as usize / 11) % sim.pending.len();
                    let input = sim.pending.remove(at);
                    sim.handle(input);
                }
                4 => { sim.fire_next_timer(); }
                5 => sim.crash(),
                6 | 7 => {
                    if let Some(input) = sim.outside_input(c % 2 == 0) {
                        sim.handle(input);
                    }
                }
                8 => sim.handle(Input::Pause { by: "user:ada".into() }),
                9 => sim.handle(Input::Resume { by: "user:ada".into() }),
                10 if c > 240 => sim.handle(Input::Cancel { reason: "enough".into() }),
                _ => {}
            }
        }
        // Then let it finish: everything in order, approving and signalling what waits.
        if sim.run.status == RunStatus::Paused {
            sim.handle(Input::Resume { by: "user:ada".into() });
        }
        let mut rounds = 0;
        while !sim.run.status.is_terminal() {
            rounds += 1;
            prop_assert!(rounds < 10_000, "the run never ends:\n{text}");
            if !sim.pending.is_empty() {
                let input = sim.pending.remove(0);
                sim.handle(input);
            } else if let Some(input) = sim.outside_input(true) {
                sim.handle(input);
            } else {
                prop_assert!(sim.fire_next_timer(), "the run is stuck:\n{text}\n{:#?}", sim.events);
            }
        }
        // Every step ended, each exactly once.
        for i in 0..sim.run.plan.len() {
            prop_assert!(sim.run.step_status(i).is_terminal(), "step s{i} did not end:\n{text}");
            let id = format!("s{i}");
            let ends = sim.events.iter().filter(|e| match &e.kind {
                EventKind::StepSucceeded { step_id, item: None, .. }
                | EventKind::StepFailed { step_id, item: None, retry_at: None, .. }
                | EventKind::StepSkipped { step_id, .. }
                | EventKind::StepCancelled { step_id } => *step_id == id,
                _ => false,
            }).count();
            prop_assert_eq!(ends, 1, "step {} ended {} times:\n{}", id, ends, text);
        }
        let seqs: Vec<u64> = sim.events.iter().map(|e| e.seq).collect();
        prop_assert_eq!(seqs, (1..=sim.events.len() as u64).collect::<Vec<_>>());
    }
}
