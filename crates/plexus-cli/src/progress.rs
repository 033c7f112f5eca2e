//! Live progress of a run: a status line redrawn in place on a terminal, plain lines
//! otherwise. Everything goes to stderr so stdout stays clean for `-o json`.

use crate::output::{millis, one_line};
use plexus_core::machine::{Event, EventKind};
use std::collections::{BTreeSet, HashMap};
use std::io::{IsTerminal, Write};
use std::time::Instant;

pub struct Progress {
    tty: bool,
    total: usize,
    done: usize,
    running: BTreeSet<String>,
    started: Instant,
    step_started: HashMap<String, u64>,
    line_shown: bool,
}

const SPINNER: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

impl Progress {
    pub fn new(total: usize, already_done: usize) -> Self {
        Progress {
            // Redraw in place only when a person watches both streams; plain lines otherwise.
            tty: std::io::stdout().is_terminal() && std::io::stderr().is_terminal(),
            total,
            done: already_done,
            running: BTreeSet::new(),
            started: Instant::now(),
            step_started: HashMap::new(),
            line_shown: false,
        }
    }

    fn clear(&mut self) {
        if self.tty && self.line_shown {
            eprint!("\r\x1b[2K");
            self.line_shown = false;
        }
    }

    /// Prints a line above the status line.
    pub fn say(&mut self, text: &str) {
        if crate::output::quiet() {
            return;
        }
        self.clear();
        eprintln!("{text}");
        self.redraw();
    }

    pub fn redraw(&mut self) {
        if !self.tty || crate::output::quiet() {
            return;
        }
        let frame = SPINNER[(self.started.elapsed().as_millis() / 100) as usize % SPINNER.len()];
        let mut running: Vec<&str> = self.running.iter().map(String::as_str).take(4).collect();
        if self.running.len() > 4 {
            running.push("…");
        }
        let running = if running.is_empty() {
            String::new()
        } else {
            format!(" · running: {}", running.join(", "))
        };
        eprint!(
            "\r\x1b[2K{frame} {}/{} steps done{running} · {:.1}s",
            self.done,
            self.total,
            self.started.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
        self.line_shown = true;
    }

    pub fn finish(&mut self) {
        self.clear();
    }

    pub fn on_event(&mut self, e: &Event) {
        let elapsed = |p: &Self, id: &str| {
            p.step_started
                .get(id)
                .map(|t| millis(e.time.saturating_sub(*t)))
                .unwrap_or_default()
        };
        match &e.kind {
            EventKind::StepStarted {
                step_id,
                item: None,
                attempt,
                ..
            } => {
                self.step_started.entry(step_id.clone()).or_insert(e.time);
                self.running.insert(step_id.clone());
                if *attempt > 1 {
                    self.say(&format!("↻ {step_id}: attempt {attempt}"));
                } else if !self.tty {
                    self.say(&format!("▸ {step_id} started"));
                }
            }
            EventKind::StepExpanded { step_id, items } => {
                self.step_started.entry(step_id.clone()).or_insert(e.time);
                self.running.insert(step_id.clone());
                self.say(&format!("▸ {step_id}: {} items", items.len()));
            }
            EventKind::StepWaiting {
                step_id,
                item: None,
                signal,
                until,
                ..
            } => {
                self.step_started.entry(step_id.clone()).or_insert(e.time);
                self.running.insert(step_id.clone());
                let what = match (signal, until) {
                    (Some(s), _) => format!("waiting for signal `{s}`"),
                    (None, Some(t)) => format!("waiting {}", millis(t.saturating_sub(e.time))),
                    _ => "waiting".into(),
                };
                self.say(&format!("… {step_id}: {what}"));
            }
            EventKind::StepSucceeded {
                step_id,
                item: None,
                ..
            } => {
                self.done += 1;
                self.running.remove(step_id);
                let d = elapsed(self, step_id);
                self.say(&format!("✓ {step_id} {d}"));
            }
            EventKind::StepFailed {
                step_id,
                item: None,
                error,
                retry_at,
                ..
            } => {
                let d = elapsed(self, step_id);
                match retry_at {
                    Some(at) => self.say(&format!(
                        "✗ {step_id}: {} (retrying in {})",
                        one_line(error, 100),
                        millis(at.saturating_sub(e.time))
                    )),
                    None => {
                        self.done += 1;
                        self.running.remove(step_id);
                        self.say(&format!("✗ {step_id} {d}: {}", one_line(error, 120)));
                    }
                }
            }
            EventKind::StepFailed {
                step_id,
                item: Some(k),
                error,
                retry_at: None,
                ..
            } => {
                self.say(&format!("✗ {step_id}[{k}]: {}", one_line(error, 100)));
            }
            EventKind::StepInterrupted {
                step_id, attempt, ..
            } => {
                self.say(&format!(
                    "⚡ {step_id}: attempt {attempt} was interrupted; starting a new attempt"
                ));
            }
            EventKind::StepSkipped {
                step_id,
                reason,
                by,
                comment,
            } => {
                self.done += 1;
                self.running.remove(step_id);
                let why =
                    plexus_core::machine::skip_text(reason, by.as_deref(), comment.as_deref());
                self.say(&format!("↷ {step_id} skipped: {}", one_line(&why, 100)));
            }
            EventKind::StepCancelled { step_id } => {
                self.done += 1;
                self.running.remove(step_id);
            }
            EventKind::StepAwaitingApproval { step_id, .. } => {
                self.running.insert(step_id.clone());
            }
            EventKind::StepApproved { step_id, by, .. } => {
                self.say(&format!("✔ {step_id} approved by {by}"));
            }
            _ => {}
        }
    }
}
