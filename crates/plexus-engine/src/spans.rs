//! Trace spans: one per run (while this engine drives it) and one per step attempt, its
//! child. They are `tracing` spans with the target [`SPAN_TARGET`], so that whoever
//! installs the subscriber decides where they go (the binary exports them over OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set). When nothing listens to that target, creating
//! one costs a callsite check and nothing is kept.
//!
//! Spans are opened and closed from the run's events, never entered: a run is not a
//! lexical scope in the scheduler loop.

use crate::pools::RunId;
use plexus_core::machine::{Event, EventKind};
use plexus_store::ParentRef;
use std::collections::HashMap;
use tracing::Span;

/// The `tracing` target of run and attempt spans.
pub const SPAN_TARGET: &str = "plexus_trace";

type AttemptKey = (RunId, String, Option<u32>, u32);

#[derive(Default)]
pub(crate) struct Spans {
    runs: HashMap<RunId, Span>,
    attempts: HashMap<AttemptKey, Span>,
}

impl Spans {
    /// Opens the span of a run this engine starts driving (new or resumed). A
    /// sub-workflow's run is a child of the parent's attempt span.
    pub fn open_run(
        &mut self,
        run: &RunId,
        workflow: &str,
        resumed: bool,
        parent: Option<&ParentRef>,
    ) {
        let parent = parent.and_then(|p| {
            let key = (
                p.run_id.as_str().into(),
                p.step_id.clone(),
                p.item,
                p.attempt,
            );
            self.attempts.get(&key).and_then(Span::id)
        });
        let span = tracing::info_span!(
            target: SPAN_TARGET,
            parent: parent,
            "run",
            otel.name = format!("run {workflow}"),
            run_id = %run,
            workflow,
            resumed,
            state = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        if !span.is_disabled() {
            self.runs.insert(run.clone(), span);
        }
    }

    /// Ends the run's span and any attempt span still open under it.
    pub fn close_run(&mut self, run: &RunId, state: &str, error: Option<&str>) {
        self.attempts.retain(|(r, ..), _| r != run);
        if let Some(span) = self.runs.remove(run) {
            span.record("state", state);
            if state == "failed" {
                span.record("otel.status_code", "ERROR");
                if let Some(error) = error {
                    span.record("otel.status_description", error);
                }
            }
        }
    }

    /// Opens and closes attempt spans as the run's events say.
    pub fn observe(&mut self, run: &RunId, e: &Event) {
        let Some(parent) = self.runs.get(run) else {
            return;
        };
        match &e.kind {
            EventKind::StepStarted {
                step_id,
                item,
                attempt,
                ..
            } => {
                let span = tracing::info_span!(
                    target: SPAN_TARGET,
                    parent: parent,
                    "attempt",
                    otel.name = format!("step {step_id}"),
                    run_id = %run,
                    step_id = %step_id,
                    item = item.map(i64::from),
                    attempt = *attempt,
                    outcome = tracing::field::Empty,
                    otel.status_code = tracing::field::Empty,
                    otel.status_description = tracing::field::Empty,
                );
                self.attempts
                    .insert((run.clone(), step_id.clone(), *item, *attempt), span);
            }
            EventKind::StepSucceeded {
                step_id,
                item,
                attempt,
                ..
            } => self.end(run, step_id, *item, *attempt, "succeeded", None),
            EventKind::StepFailed {
                step_id,
                item,
                attempt,
                error,
                ..
            } => self.end(run, step_id, *item, *attempt, "failed", Some(error)),
            EventKind::StepInterrupted {
                step_id,
                item,
                attempt,
            } => self.end(run, step_id, *item, *attempt, "interrupted", None),
            EventKind::StepCancelled { step_id } => {
                for ((_, _, _, _), span) in self
                    .attempts
                    .extract_if(|(r, s, ..), _| r == run && s == step_id)
                {
                    span.record("outcome", "cancelled");
                }
            }
            _ => {}
        }
    }

    fn end(
        &mut self,
        run: &RunId,
        step: &str,
        item: Option<u32>,
        attempt: u32,
        outcome: &str,
        error: Option<&str>,
    ) {
        if let Some(span) = self
            .attempts
            .remove(&(run.clone(), step.to_owned(), item, attempt))
        {
            span.record("outcome", outcome);
            if let Some(error) = error {
                span.record("otel.status_code", "ERROR");
                span.record("otel.status_description", error);
            }
        }
    }
}
