//! State machine tests: a tiny in-memory driver plays the engine's part.

use super::*;
use crate::plan::{CompileOptions, load};
use serde_json::json;
use std::sync::Arc;

fn plan(yaml: &str) -> Arc<Plan> {
    let opts = CompileOptions::with_default_pool(4);
    Arc::new(load(yaml, "test.yaml", &opts).unwrap_or_else(|d| panic!("{d:#?}")))
}

use crate::plan::Plan;

/// Drives a run to quiescence. Shell commands "succeed" unless they contain "false";
/// timers fire immediately (in time order); all events are collected.
struct Driver {
    run: RunState,
    events: Vec<Event>,
    now: Millis,
    pending: Vec<Input>,
    timers: Vec<(Millis, Input)>,
    executed: Vec<String>,
    fire_timers: bool,
}

impl Driver {
    fn new(yaml: &str) -> Self {
        Driver {
            run: RunState::new("r1", plan(yaml), json!({})),
            events: Vec::new(),
            now: 1_000,
            pending: Vec::new(),
            timers: Vec::new(),
            executed: Vec::new(),
            fire_timers: true,
        }
    }

    fn feed(&mut self, t: Transition) {
        self.events.extend(t.events);
        for a in t.actions {
            match a {
                Action::Enqueue { unit, .. } => self.pending.push(Input::SlotGranted(unit)),
                Action::Execute(task) => {
                    let outcome = match &task.work {
                        Work::Shell { command } => {
                            self.executed.push(command.clone());
                            if command.contains("false") {
                                Outcome::Failure {
                                    error: "exit 1".into(),
                                    output: json!({"exit_code": 1}),
                                }
                            } else {
                                Outcome::Success(json!({"stdout": command, "exit_code": 0}))
                            }
                        }
                        Work::Echo(v) => Outcome::Success(v.clone()),
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
                Action::SetTimer {
                    at,
                    unit,
                    attempt,
                    purpose,
                } => {
                    self.timers.push((
                        at,
                        Input::TimerFired {
                            unit,
                            attempt,
                            purpose,
                        },
                    ));
                }
                _ => {}
            }
        }
    }

    fn settle(&mut self) {
        if self.run.seq == 0 {
            self.pending.push(Input::Start);
        }
        loop {
            while let Some(input) = (!self.pending.is_empty()).then(|| self.pending.remove(0)) {
                let t = self.run.handle(input, self.now).expect("input accepted");
                self.feed(t);
            }
            if !self.fire_timers || self.timers.is_empty() {
                return;
            }
            self.timers.sort_by_key(|(at, _)| *at);
            let (at, input) = self.timers.remove(0);
            self.now = self.now.max(at);
            self.pending.push(input);
        }
    }

    fn types(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|e| match e.kind.step_id() {
                Some(s) => format!("{}:{s}", e.kind.type_name()),
                None => e.kind.type_name().to_owned(),
            })
            .collect()
    }

    fn status(&self, id: &str) -> StepStatus {
        self.run.step_status(self.run.plan.index[id])
    }
}

#[test]
fn sequential_steps_run_in_order_and_pass_outputs() {
    let mut d = Driver::new(
        "version: plexus/v1\nname: t\nsteps:\n- id: a\n  builtin: echo\n  with: {msg: hi}\n- id: b\n  needs: [a]\n  run: echo {{ steps.a.output.msg }}\n",
    );
    d.settle();
    assert_eq!(d.run.status, RunStatus::Succeeded);
    assert_eq!(d.executed, vec!["echo hi"]);
    assert_eq!(
        d.types(),
        vec![
            "run_started",
            "step_started:a",
            "step_succeeded:a",
            "step_started:b",
            "step_succeeded:b",
            "run_succeeded"
        ]
    );
    let seqs: Vec<u64> = d.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=6).collect::<Vec<_>>());
}

#[test]
fn retries_with_exponential_backoff_then_fails_the_run() {
    let mut d = Driver::new(
        "version: plexus/v1\nname: t\nsteps:\n- id: a\n  run: 'false'\n  retry: {max_attempts: 3, backoff: 1s, multiplier: 3}\n- id: cleanup\n  needs: [a]\n  trigger: all_done\n  builtin: noop\n- id: after\n  needs: [a]\n  builtin: noop\n",
    );
    d.settle();
    let retry_ats: Vec<Option<Millis>> = d
        .events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::StepFailed { retry_at, .. } => Some(*retry_at),
            _ => None,
        })
        .collect();
    assert_eq!(retry_ats, vec![Some(2_000), Some(5_000), None]);
    assert_eq!(d.executed.len(), 3);
    assert_eq!(d.status("cleanup"), StepStatus::Succeeded);
    assert_eq!(d.status("after"), StepStatus::Skipped);
    assert_eq!(d.run.status, RunStatus::Failed);
    assert!(d.run.error.as_deref().unwrap().contains("step `a` failed"));
}

#[test]
fn on_failure_continue_and_skip_downstream() {
    let mut d = Driver::new(
        "version: plexus/v1\nname: t\nsteps:\n- id: a\n  run: 'false'\n  on_failure: continue\n- id: b\n  needs: [a]\n  builtin: noop\n- id: c\n  run: 'false'\n  on_failure: skip_downstream\n- id: d\n  needs: [c]\n  trigger: all_done\n  builtin: noop\n",
    );
    d.settle();
    assert_eq!(d.status("b"), StepStatus::Succeeded);
    assert_eq!(d.status("d"), StepStatus::Skipped);
    assert_eq!(d.run.status, RunStatus::Succeeded);
}

#[test]
fn when_false_skips_and_quorum_fires_early() {
    let mut d = Driver::new(
        "version: plexus/v1\nname: t\ninputs: {go: {type: boolean, default: false}}\nsteps:\n- {id: a, builtin: noop}\n- {id: b, builtin: noop}\n- {id: c, run: 'false'}\n- {id: q, needs: [a, b, c], trigger: {quorum: 2}, builtin: noop}\n- {id: w, needs: [q], when: 'inputs.go', builtin: noop}\n",
    );
    d.settle();
    assert_eq!(d.status("q"), StepStatus::Succeeded);
    assert_eq!(d.status("w"), StepStatus::Skipped);
}

#[test]
fn foreach_respects_concurrency_and_collects_outputs() {
    let mut d = Driver::new(
        "version: plexus/v1\nname: t\nsteps:\n- id: list\n  builtin: echo\n  with: {hosts: [h1, h2, h3]}\n- id: ping\n  needs: [list]\n  foreach: '{{ steps.list.output.hosts }}'\n  concurrency: 2\n  run: ping {{ item }}\n",
    );
    // Hold execution to see that only two items are queued at once.
    let t = d.run.handle(Input::Start, d.now).unwrap();
    d.feed(t);
    let first = d.pending.remove(0);
    let t = d.run.handle(first, d.now).unwrap();
    let enqueued = t
        .actions
        .iter()
        .filter(|a| matches!(a, Action::Enqueue { .. }))
        .count();
    assert_eq!(enqueued, 2);
    d.feed(t);
    d.settle();
    assert_eq!(d.executed, vec!["ping h1", "ping h2", "ping h3"]);
    let out = &d.run.step_view(1).output;
    assert_eq!(out.as_array().unwrap().len(), 3);
    assert_eq!(d.run.status, RunStatus::Succeeded);
}

#[test]
fn approval_gate_and_signal_wait() {
    let mut d = Driver::new(
        "version: plexus/v1\nname: t\nsteps:\n- id: gate\n  run: kubectl restart\n  permission: modify\n- id: sig\n  needs: [gate]\n  wait: {signal: go}\n",
    );
    d.settle();
    assert_eq!(d.status("gate"), StepStatus::AwaitingApproval);
    assert!(d.executed.is_empty(), "nothing runs before approval");
    let err = d
        .run
        .handle(
            Input::Signal {
                step_id: "sig".into(),
                data: json!(1),
            },
            d.now,
        )
        .unwrap_err();
    assert!(matches!(err, Rejected::WrongState { .. }));
    let t = d
        .run
        .handle(
            Input::Approve {
                step_id: "gate".into(),
                by: "alice".into(),
                comment: None,
            },
            d.now,
        )
        .unwrap();
    d.feed(t);
    d.settle();
    assert_eq!(d.executed, vec!["kubectl restart"]);
    assert_eq!(d.status("sig"), StepStatus::Waiting);
    let t = d
        .run
        .handle(
            Input::Signal {
                step_id: "sig".into(),
                data: json!({"ok": true}),
            },
            d.now,
        )
        .unwrap();
    d.feed(t);
    assert_eq!(d.run.status, RunStatus::Succeeded);
    assert_eq!(d.run.step_view(1).output, json!({"ok": true}));
}

#[test]
fn rejection_skips_and_downstream_follows_triggers() {
    let mut d = Driver::new(
        "version: plexus/v1\nname: t\nsteps:\n- id: ok\n  approval: {message: 'deploy?'}\n- id: deploy\n  needs: [ok]\n  run: deploy\n- id: report\n  needs: [deploy]\n  trigger: all_done\n  builtin: noop\n",
    );
    d.settle();
    let t = d
        .run
        .handle(
            Input::Reject {
                step_id: "ok".into(),
                by: "bob".into(),
                comment: Some("not now".into()),
            },
            d.now,
        )
        .unwrap();
    d.feed(t);
    d.settle();
    assert_eq!(d.status("ok"), StepStatus::Skipped);
    assert_eq!(d.status("deploy"), StepStatus::Skipped);
    assert_eq!(d.status("report"), StepStatus::Succeeded);
    assert_eq!(d.run.status, RunStatus::Succeeded);
}

/// A gated step that nobody decides on is rejected when its `approval_timeout` passes
/// (never run): the timeout policy of gates is reject, and only that.
#[test]
fn an_undecided_gate_is_rejected_when_its_approval_timeout_passes() {
    let mut d = Driver::new(
        "version: plexus/v1\nname: t\ndefaults: {approval_timeout: 10m}\nsteps:\n- id: change\n  run: rm -rf cache\n  permission: modify\n  blast_radius: \"the cache of {{ run.id }}\"\n- id: report\n  needs: [change]\n  trigger: all_done\n  builtin: noop\n",
    );
    d.settle();
    assert!(d.executed.is_empty(), "nothing ran unapproved");
    assert_eq!(d.status("change"), StepStatus::Skipped);
    assert_eq!(d.status("report"), StepStatus::Succeeded);
    let (expires, detail) = d
        .events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::StepAwaitingApproval {
                expires_at, detail, ..
            } => Some((expires_at.unwrap(), detail.clone())),
            _ => None,
        })
        .unwrap();
    assert_eq!(expires, 1_000 + 600_000);
    assert_eq!(detail["blast_radius"], "the cache of r1");
    assert_eq!(detail["command"], "rm -rf cache");
    assert!(d.events.iter().any(|e| matches!(&e.kind,
        EventKind::StepSkipped { reason, .. } if reason == APPROVAL_TIMED_OUT)));
}

#[test]
fn cancel_kills_running_work_and_ends_the_run() {
    let mut d = Driver::new(
        "version: plexus/v1\nname: t\nsteps:\n- id: a\n  run: sleep 100\n- id: b\n  needs: [a]\n  run: echo\n",
    );
    let t = d.run.handle(Input::Start, d.now).unwrap();
    d.feed(t);
    let grant = d.pending.remove(0);
    let t = d.run.handle(grant, d.now).unwrap();
    assert!(matches!(t.actions[0], Action::Execute(_)));
    let t = d
        .run
        .handle(
            Input::Cancel {
                reason: "ctrl-c".into(),
            },
            d.now,
        )
        .unwrap();
    assert!(t.actions.iter().any(|a| matches!(a, Action::Kill { .. })));
    assert_eq!(d.run.status, RunStatus::Cancelled);
    assert!(
        d.run
            .handle(
                Input::Cancel {
                    reason: "again".into()
                },
                d.now
            )
            .is_err()
    );
}

#[test]
fn restore_then_resume_retries_an_interrupted_attempt_as_a_new_attempt() {
    let yaml = "version: plexus/v1\nname: t\nsteps:\n- id: a\n  run: echo a\n- id: b\n  needs: [a]\n  run: echo b\n";
    let mut d = Driver::new(yaml);
    let t = d.run.handle(Input::Start, d.now).unwrap();
    d.feed(t);
    let grant = d.pending.remove(0);
    let t = d.run.handle(grant, d.now).unwrap();
    d.events.extend(t.events); // `a` started; its process is lost with the crash

    let mut restored = RunState::restore("r1", plan(yaml), json!({}), &d.events).unwrap();
    assert_eq!(restored.step_status(0), StepStatus::Running);
    let t = restored.resume(d.now, &|k| {
        matches!(k, crate::manifest::StepKind::Workflow(_))
    });
    assert_eq!(t.events[0].kind.type_name(), "step_interrupted");
    assert_eq!(t.events[0].seq, d.events.len() as u64 + 1);
    let mut d2 = Driver {
        run: restored,
        events: d.events.clone(),
        ..Driver::new(yaml)
    };
    d2.pending.clear();
    d2.feed(t);
    d2.settle();
    assert_eq!(d2.run.status, RunStatus::Succeeded);
    let a_attempts: Vec<u32> = d2
        .events
        .iter()
        .filter(|e| e.kind.type_name() == "step_started" && e.kind.step_id() == Some("a"))
        .filter_map(|e| e.kind.attempt())
        .collect();
    assert_eq!(a_attempts, vec![1, 2]);
    let succeeded_a = d2
        .types()
        .iter()
        .filter(|t| *t == "step_succeeded:a")
        .count();
    assert_eq!(succeeded_a, 1);
}

#[test]
fn resuming_a_folded_run_reaches_the_same_state() {
    let yaml = "version: plexus/v1\nname: t\nsteps:\n- {id: a, builtin: noop}\n- {id: b, needs: [a], wait: {timer: 5s}}\n- {id: c, needs: [b], builtin: noop}\n";
    let mut d = Driver::new(yaml);
    d.fire_timers = false;
    d.settle();
    assert_eq!(d.status("b"), StepStatus::Waiting);
    let mut restored = RunState::restore("r1", plan(yaml), json!({}), &d.events).unwrap();
    let t = restored.resume(d.now, &|k| {
        matches!(k, crate::manifest::StepKind::Workflow(_))
    });
    assert!(t.events.is_empty());
    assert_eq!(
        t.actions,
        vec![Action::SetTimer {
            at: 6_000,
            unit: Unit {
                step: 1,
                item: None
            },
            attempt: 1,
            purpose: TimerPurpose::Elapsed
        }]
    );
}

#[test]
fn backoff_is_capped_and_jitter_is_deterministic() {
    use crate::manifest::RetryPolicy;
    use std::time::Duration;
    let p = RetryPolicy {
        max_attempts: 10,
        backoff: Duration::from_secs(2),
        multiplier: 2.0,
        max_backoff: Some(Duration::from_secs(60)),
        jitter: 0.0,
    };
    assert_eq!(state::backoff(&p, 1, "k"), 2_000);
    assert_eq!(state::backoff(&p, 3, "k"), 8_000);
    assert_eq!(state::backoff(&p, 9, "k"), 60_000);
    let j = RetryPolicy { jitter: 0.5, ..p };
    let a = state::backoff(&j, 2, "k");
    assert_eq!(a, state::backoff(&j, 2, "k"));
    assert!((2_000..=4_000).contains(&a), "{a}");
}

#[test]
fn a_paused_run_starts_nothing_new_until_resumed() {
    let mut d = Driver::new(
        "version: plexus/v1\nname: t\nsteps:\n- {id: a, builtin: noop}\n- {id: b, needs: [a], builtin: noop}\n",
    );
    let t = d.run.handle(Input::Start, d.now).unwrap();
    d.feed(t);
    let t = d
        .run
        .handle(Input::Pause { by: "ops".into() }, d.now)
        .unwrap();
    assert_eq!(t.events[0].kind.type_name(), "run_paused");
    d.feed(t);
    assert_eq!(d.run.status, RunStatus::Paused);
    d.settle(); // `a` finishes; `b` must not start
    assert_eq!(d.status("a"), StepStatus::Succeeded);
    assert_eq!(d.status("b"), StepStatus::Pending);
    assert!(
        d.run
            .handle(Input::Pause { by: "ops".into() }, d.now)
            .is_err(),
        "already paused"
    );
    let t = d
        .run
        .handle(Input::Resume { by: "ops".into() }, d.now)
        .unwrap();
    d.feed(t);
    d.settle();
    assert_eq!(d.run.status, RunStatus::Succeeded);
    // The fold gives the same answer.
    let restored = RunState::restore("r1", Arc::clone(&d.run.plan), json!({}), &d.events).unwrap();
    assert_eq!(restored.status, RunStatus::Succeeded);
}

#[test]
fn retry_reruns_failed_steps_and_what_was_skipped_behind_them() {
    let yaml = "version: plexus/v1\nname: t\nsteps:\n- {id: ok, run: 'echo ok'}\n- {id: bad, needs: [ok], run: 'false'}\n- {id: after, needs: [bad], run: 'echo after'}\n- {id: off, when: 'false == true', builtin: noop}\n";
    let mut d = Driver::new(yaml);
    d.settle();
    assert_eq!(d.run.status, RunStatus::Failed);
    assert_eq!(d.status("after"), StepStatus::Skipped);
    let t = d
        .run
        .handle(Input::Retry { by: "x".into() }, d.now)
        .unwrap();
    d.feed(t);
    // The second try still fails at `bad` (the driver fails commands with "false").
    d.settle();
    let types = d.types();
    let from = types.iter().position(|t| t == "run_retried").unwrap();
    assert_eq!(
        &types[from..from + 3],
        ["run_retried", "step_reset:bad", "step_reset:after"]
    );
    let bad_attempts: Vec<u32> = d
        .events
        .iter()
        .filter(|e| e.kind.type_name() == "step_started" && e.kind.step_id() == Some("bad"))
        .filter_map(|e| e.kind.attempt())
        .collect();
    assert_eq!(bad_attempts, vec![1, 2], "attempt numbers go on");
    assert_eq!(
        d.executed.iter().filter(|c| *c == "echo ok").count(),
        1,
        "what succeeded is not run again"
    );
    assert_eq!(
        d.status("off"),
        StepStatus::Skipped,
        "a step skipped by its own condition stays skipped"
    );
    let err = d
        .run
        .handle(Input::Pause { by: "x".into() }, d.now)
        .unwrap_err();
    assert!(matches!(err, Rejected::RunFinished(_)));
}

#[test]
fn restoring_refuses_a_gap_in_the_events_and_names_it() {
    let yaml = "version: plexus/v1\nname: t\nsteps:\n- {id: a, builtin: noop}\n- {id: b, needs: [a], builtin: noop}\n";
    let mut d = Driver::new(yaml);
    d.settle();
    assert!(d.events.len() >= 4);
    let mut gapped = d.events.clone();
    gapped.remove(2); // event 3
    let err = RunState::restore("r1", plan(yaml), json!({}), &gapped).unwrap_err();
    assert_eq!(
        err,
        crate::machine::RestoreError::Gap {
            run: "r1".into(),
            after: 2,
            found: 4
        }
    );
    assert!(
        err.to_string()
            .contains("event 4 follows event 2, expected 3"),
        "{err}"
    );
    // Events that do not start at 1 are a gap too.
    let err = RunState::restore("r1", plan(yaml), json!({}), &d.events[1..]).unwrap_err();
    assert!(matches!(
        err,
        crate::machine::RestoreError::Gap {
            after: 0,
            found: 2,
            ..
        }
    ));
    // An event about a step the plan does not have.
    let other = "version: plexus/v1\nname: t\nsteps:\n- {id: a, builtin: noop}\n";
    let err = RunState::restore("r1", plan(other), json!({}), &d.events).unwrap_err();
    assert!(
        matches!(err, crate::machine::RestoreError::UnknownStep { ref step, .. } if step == "b"),
        "{err}"
    );
}

/// A foreach without `concurrency` over more items than [`state::ITEMS_IN_FLIGHT`] hands
/// out that many at a time, so one transition never carries all of a large list's work;
/// the outputs still come out complete and in order, and the fold of the events gives the
/// same step as the live run.
#[test]
fn a_large_foreach_is_handed_out_in_bounded_waves() {
    let n = state::ITEMS_IN_FLIGHT as usize * 2 + 5;
    let yaml = format!(
        "version: plexus/v1\nname: t\nsteps:\n- id: gen\n  builtin: echo\n  with: {{items: '{{{{ range({n}) | list }}}}'}}\n- id: each\n  needs: [gen]\n  foreach: '{{{{ steps.gen.output.items }}}}'\n  builtin: echo\n  with: {{n: '{{{{ item }}}}'}}\n"
    );
    let mut d = Driver::new(&yaml);
    let t = d.run.handle(Input::Start, d.now).unwrap();
    d.feed(t);
    let mut largest = 0;
    while !d.pending.is_empty() {
        let input = d.pending.remove(0);
        let t = d.run.handle(input, d.now).unwrap();
        let executes = t
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Execute(_)))
            .count();
        largest = largest.max(executes);
        d.feed(t);
    }
    assert_eq!(largest, state::ITEMS_IN_FLIGHT as usize);
    assert_eq!(d.run.status, RunStatus::Succeeded);
    let out = d.run.step_view(1).output;
    let expected: Vec<Json> = (0..n).map(|k| json!({"n": k})).collect();
    assert_eq!(out, Json::Array(expected));
    let restored = RunState::restore("r1", Arc::clone(&d.run.plan), json!({}), &d.events).unwrap();
    assert_eq!(restored.step_view(1), d.run.step_view(1));
}

/// A pool limits any work that acts once the workflow names one for it: a builtin (as an
/// agent or LLM call will) with `pool` waits for a slot; without one it runs at once.
#[test]
fn a_named_pool_limits_builtins_too() {
    let yaml = "version: plexus/v1\nname: t\nsteps:\n- {id: free, builtin: noop}\n- {id: limited, builtin: noop, pool: solo}\n- {id: parked, wait: {signal: go}, pool: solo}\n";
    let opts = CompileOptions {
        pools: std::collections::BTreeMap::from([
            ("default".to_owned(), 4),
            ("solo".to_owned(), 1),
        ]),
        default_mode: None,
        action_floors: Default::default(),
    };
    let plan = Arc::new(load(yaml, "test.yaml", &opts).unwrap());
    let mut run = RunState::new("r1", plan, json!({}));
    let t = run.handle(Input::Start, 1_000).unwrap();
    let enqueued: Vec<usize> = t
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Enqueue { unit, pool, .. } => {
                assert_eq!(pool, "solo");
                Some(unit.step)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        enqueued,
        [1],
        "only the builtin that names a pool waits for a slot"
    );
    let executed: Vec<&str> = t
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Execute(task) => Some(task.step_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(executed, ["free"]);
}

/// The attack as found: `run: sh -c "$X"` with `env: {X: "echo EVIL"}` showed the approver
/// only `sh -c "$X"`. Approvers see the environment (secret values hidden), the directory
/// and the pool, with a digest; a step whose work no longer matches the approved digest
/// is asked again instead of run.
#[test]
fn an_approval_shows_everything_and_binds_to_its_digest() {
    let yaml = "version: plexus/v1\nname: t\nsteps:\n- id: change\n  run: sh -c \"$X\"\n  env: {X: \"echo EVIL\", API_TOKEN: \"tok-123\"}\n  workdir: sub\n  timeout: 1m\n  permission: modify\n";
    let mut d = Driver::new(yaml);
    d.settle();
    assert!(d.executed.is_empty(), "nothing ran unapproved");
    let detail = d
        .events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::StepAwaitingApproval { detail, .. } => Some(detail.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(detail["command"], "sh -c \"$X\"");
    assert_eq!(detail["env"]["X"], "echo EVIL");
    assert!(!detail.to_string().contains("tok-123"), "{detail}");
    assert_eq!(detail["workdir"], "sub");
    assert_eq!(detail["pool"], "default");
    assert_eq!(detail["timeout"], "1m");
    assert_eq!(detail["digest"].as_str().unwrap().len(), 64);

    // What was shown differs from what would run: the approval is asked again.
    let mut events = d.events.clone();
    for e in &mut events {
        if let EventKind::StepAwaitingApproval { detail, .. } = &mut e.kind {
            detail["digest"] = json!("0".repeat(64));
        }
    }
    let mut run = RunState::restore("r1".to_owned(), plan(yaml), json!({}), &events).unwrap();
    let approve = Input::Approve {
        step_id: "change".into(),
        by: "bob".into(),
        comment: None,
    };
    let t = run.handle(approve.clone(), d.now).unwrap();
    assert!(
        t.events.iter().any(|e| matches!(&e.kind,
            EventKind::StepAwaitingApproval { detail, .. } if detail.get("changed_since_approval").is_some())),
        "{:?}",
        t.events
    );
    assert!(
        !t.actions
            .iter()
            .any(|a| matches!(a, Action::Enqueue { .. } | Action::Execute(_))),
        "nothing starts on a stale approval"
    );
    assert_eq!(run.step_status(0), StepStatus::AwaitingApproval);
    // Approved again, as it is now: it runs.
    let t = run.handle(approve, d.now).unwrap();
    assert!(
        t.actions
            .iter()
            .any(|a| matches!(a, Action::Enqueue { .. }))
    );
}
