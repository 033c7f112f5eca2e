//! Printing for people (aligned tables) and for scripts (`-o json`).

use clap::ValueEnum;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

impl Format {
    /// JSON or YAML: output for scripts rather than people.
    pub fn is_data(self) -> bool {
        matches!(self, Format::Json | Format::Yaml)
    }
}

/// Whether to color what goes to `stream`: a terminal, and no `NO_COLOR` (no-color.org).
pub fn colors(stream: &impl std::io::IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `--quiet`: no progress and no remarks on stderr; results and errors still appear.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, std::sync::atomic::Ordering::Relaxed);
}

pub fn quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

/// A remark for the person at the terminal (on stderr), unless `--quiet`.
pub fn remark(text: &str) {
    if !quiet() {
        eprintln!("{text}");
    }
}

/// Writes a line to stdout. A reader that went away (`plexus runs list -o json | head`) ends
/// the command quietly, as with other Unix tools, instead of a panic.
pub fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// Prints a value as JSON or YAML (as `format` says; tables fall back to JSON).
pub fn data<T: Serialize>(format: Format, value: &T) {
    if format == Format::Yaml {
        match serde_saphyr::to_string(value) {
            Ok(text) => out(text.trim_end_matches('\n')),
            Err(e) => eprintln!("error: cannot write YAML: {e}"),
        }
    } else {
        json(value);
    }
}

pub fn json<T: Serialize>(value: &T) {
    out(&serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")));
}

/// Prints rows under a header, columns padded to the widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out(s.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

pub fn ago(ms: u64) -> String {
    let now = plexus_engine::now_ms();
    let secs = now.saturating_sub(ms) / 1000;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

pub fn millis(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.2}s", ms as f64 / 1000.0)
    }
}

/// Shortens text to one line of at most `max` characters.
pub fn one_line(s: &str, max: usize) -> String {
    let first = s
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if first.chars().count() > max {
        format!(
            "{}…",
            first
                .chars()
                .take(max.saturating_sub(1))
                .collect::<String>()
        )
    } else {
        first.to_owned()
    }
}

/// The tool calls of each step that ran an agentic loop (an `llm` step with `tools`),
/// from its output: what the model called, with what, and what came of it.
pub fn tool_calls<'a>(steps: impl Iterator<Item = (&'a str, &'a serde_json::Value)>) {
    for (id, out) in steps {
        let Some(calls) = out["tool_calls"].as_array() else {
            continue;
        };
        println!(
            "\n{id}: {} model calls, {} tokens, {} tool calls",
            out["iterations"],
            out["usage"]["total_tokens"],
            calls.len()
        );
        let rows: Vec<Vec<String>> = calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let tool = match (c["agent"].as_str(), c["action"].as_str()) {
                    (Some(a), Some(b)) => format!("{a}/{b}"),
                    _ => c["tool"].as_str().unwrap_or("?").to_owned(),
                };
                let came = match c["status"].as_str() {
                    Some("ok") => c["result"].to_string(),
                    _ => c["error"].as_str().unwrap_or("").to_owned(),
                };
                let status = match c["approved_by"].as_str() {
                    Some(by) => format!("ok (approved by {by})"),
                    None => c["status"].as_str().unwrap_or("").to_owned(),
                };
                vec![
                    (i + 1).to_string(),
                    tool,
                    one_line(&c["arguments"].to_string(), 40),
                    status,
                    one_line(&came, 60),
                ]
            })
            .collect();
        table(&["#", "TOOL", "ARGUMENTS", "STATUS", "RESULT"], &rows);
    }
}
