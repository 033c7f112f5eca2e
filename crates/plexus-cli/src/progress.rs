//! Live progress of a run: a status line redrawn in place on a terminal, plain lines
//! otherwise. Everything goes to stderr so stdout stays clean for `-o json`.

use crate::output::{millis, one_line};
use plexus_core::machine::{Event, EventKind};
use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::time::Instant;

pub struct Progress {
    tty: bool,
    total: usize,
    done: usize,
    /// What each unfinished step is doing, as the status line names it.
    active: BTreeMap<String, Activity>,
    started: Instant,
    step_started: HashMap<String, u64>,
    line_shown: bool,
    /// While a prompt is open: nothing is drawn, lines wait here.
    held: Option<Vec<String>>,
}

/// What a step that has not ended is doing. The status line says it truthfully: a step
/// waiting for a person is never shown as running.
#[derive(Debug, Clone, PartialEq)]
enum Activity {
    Running,
    AwaitingApproval,
    WaitingForSignal(String),
    /// Until this time (ms since the epoch).
    WaitingUntil(u64),
    Waiting,
    /// Failed; the next attempt starts at this time (ms since the epoch).
    Retrying(u64),
}

impl Activity {
    /// The heading the status line groups steps under.
    fn heading(&self, now: u64) -> String {
        match self {
            Activity::Running => "running".into(),
            Activity::AwaitingApproval => "awaiting approval".into(),
            Activity::WaitingForSignal(s) => format!("waiting for signal {s}"),
            Activity::WaitingUntil(t) => format!("waiting {}", millis(t.saturating_sub(now))),
            Activity::Waiting => "waiting".into(),
            Activity::Retrying(t) => format!("retrying in {}", millis(t.saturating_sub(now))),
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

const SPINNER: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

impl Progress {
    pub fn new(total: usize, already_done: usize) -> Self {
        Progress {
            // Redraw in place only when a person watches both streams; plain lines otherwise.
            tty: std::io::stdout().is_terminal() && std::io::stderr().is_terminal(),
            total,
            done: already_done,
            active: BTreeMap::new(),
            started: Instant::now(),
            step_started: HashMap::new(),
            line_shown: false,
            held: None,
        }
    }

    fn clear(&mut self) {
        if self.tty && self.line_shown {
            eprint!("\r\x1b[2K");
            self.line_shown = false;
        }
    }

    /// Stops drawing while something else owns the terminal (a prompt): the status line
    /// is cleared and lines are held until [`Self::resume`].
    pub fn pause(&mut self) {
        self.clear();
        self.held.get_or_insert_with(Vec::new);
    }

    /// Prints what was held during a pause and draws again.
    pub fn resume(&mut self) {
        for line in self.held.take().unwrap_or_default() {
            self.say(&line);
        }
    }

    /// Prints a line above the status line.
    pub fn say(&mut self, text: &str) {
        if crate::output::quiet() {
            return;
        }
        if let Some(held) = &mut self.held {
            held.push(text.to_owned());
            return;
        }
        self.clear();
        eprintln!("{text}");
        self.redraw();
    }

    pub fn redraw(&mut self) {
        if !self.tty || crate::output::quiet() || self.held.is_some() {
            return;
        }
        let frame = SPINNER[(self.started.elapsed().as_millis() / 100) as usize % SPINNER.len()];
        eprint!(
            "\r\x1b[2K{frame} {}/{} steps done{} · {:.1}s",
            self.done,
            self.total,
            self.activities(),
            self.started.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
        self.line_shown = true;
    }

    /// ` · running: a, b · awaiting approval: restart`: unfinished steps under what they
    /// are doing, a few names each.
    fn activities(&self) -> String {
        let now = now_ms();
        let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
        for (step, activity) in &self.active {
            let heading = activity.heading(now);
            match groups.iter_mut().find(|(h, _)| *h == heading) {
                Some((_, steps)) => steps.push(step),
                None => groups.push((heading, vec![step])),
            }
        }
        groups
            .into_iter()
            .map(|(heading, mut steps)| {
                if steps.len() > 4 {
                    steps.truncate(4);
                    steps.push("…");
                }
                format!(" · {heading}: {}", steps.join(", "))
            })
            .collect()
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
                self.active.insert(step_id.clone(), Activity::Running);
                if *attempt > 1 {
                    self.say(&format!("↻ {step_id}: attempt {attempt}"));
                } else if !self.tty {
                    self.say(&format!("▸ {step_id} started"));
                }
            }
            EventKind::StepExpanded { step_id, items } => {
                self.step_started.entry(step_id.clone()).or_insert(e.time);
                self.active.insert(step_id.clone(), Activity::Running);
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
                let activity = match (signal, until) {
                    (Some(s), _) => Activity::WaitingForSignal(s.clone()),
                    (None, Some(t)) => Activity::WaitingUntil(*t),
                    _ => Activity::Waiting,
                };
                self.active.insert(step_id.clone(), activity);
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
                self.active.remove(step_id);
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
                    Some(at) => {
                        self.active.insert(step_id.clone(), Activity::Retrying(*at));
                        self.say(&format!(
                            "✗ {step_id}: {} (retrying in {})",
                            one_line(error, 100),
                            millis(at.saturating_sub(e.time))
                        ))
                    }
                    None => {
                        self.done += 1;
                        self.active.remove(step_id);
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
                self.active.remove(step_id);
                let why =
                    plexus_core::machine::skip_text(reason, by.as_deref(), comment.as_deref());
                self.say(&format!("↷ {step_id} skipped: {}", one_line(&why, 100)));
            }
            EventKind::StepCancelled { step_id } => {
                self.done += 1;
                self.active.remove(step_id);
            }
            EventKind::StepAwaitingApproval { step_id, .. } => {
                self.active
                    .insert(step_id.clone(), Activity::AwaitingApproval);
            }
            EventKind::StepApproved { step_id, by, .. } => {
                // Until it starts (a pool slot may keep it), it is neither waiting nor running.
                self.active.remove(step_id);
                self.say(&format!("✔ {step_id} approved by {by}"));
            }
            EventKind::StepProgress { step_id, entry, .. } => {
                if let Some(line) = journal_line(entry) {
                    self.say(&format!("  {step_id}: {line}"));
                }
            }
            _ => {}
        }
    }
}

/// What a person following a run sees of an agentic loop's journal entry.
fn journal_line(entry: &serde_json::Value) -> Option<String> {
    let call = || {
        format!(
            "{}/{}",
            entry["agent"].as_str().unwrap_or("?"),
            entry["action"]
                .as_str()
                .unwrap_or(entry["tool"].as_str().unwrap_or("?"))
        )
    };
    match entry["type"].as_str()? {
        "reply" => {
            let calls = entry["tool_calls"].as_array().map_or(0, Vec::len);
            Some(if calls > 0 {
                format!("the model asks for {calls} tool call(s)")
            } else {
                "the model answered".to_owned()
            })
        }
        "approval_requested" => Some(format!(
            "{} ({}) waits for approval: plexus approval list",
            call(),
            entry["permission"].as_str().unwrap_or("")
        )),
        "approval" if entry["approved"] == true => Some(format!(
            "{} approved by {}",
            call_of(entry),
            entry["by"].as_str().unwrap_or("?")
        )),
        "approval" => Some(format!("{} not approved", call_of(entry))),
        "tool" => Some(format!(
            "{} {}",
            call(),
            entry["status"].as_str().unwrap_or("")
        )),
        _ => None,
    }
}

fn call_of(entry: &serde_json::Value) -> String {
    format!("call {}", entry["call"].as_str().unwrap_or("?"))
}
