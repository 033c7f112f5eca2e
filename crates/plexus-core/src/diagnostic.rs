//! Problems found in a manifest, each pointing at a place in the file.

use serde::Serialize;
use std::fmt;

/// A 1-based line and column in a manifest file (0:0 when unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Loc {
    pub line: u32,
    pub column: u32,
}

/// Whether a diagnostic stops the manifest from running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    #[default]
    Error,
    /// The manifest runs, but something in it will not do what it says (yet).
    Warning,
}

/// One problem in a manifest. Validation collects all of them rather than stopping at the first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: String,
    pub line: u32,
    pub column: u32,
    /// The step the problem belongs to, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// A stable, machine-readable code such as `unknown-key` or `cycle`.
    pub code: &'static str,
    pub message: String,
    /// What the user can do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn new(code: &'static str, loc: Loc, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            file: String::new(),
            line: loc.line,
            column: loc.column,
            step: None,
            code,
            message: message.into(),
            hint: None,
        }
    }

    /// The same problem as a warning: reported, but the manifest still runs.
    pub fn warning(mut self) -> Self {
        self.severity = Severity::Warning;
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_step(mut self, step: Option<&str>) -> Self {
        self.step = step.map(str::to_owned);
        self
    }

    pub fn loc(&self) -> Loc {
        Loc {
            line: self.line,
            column: self.column,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = if self.file.is_empty() {
            "<manifest>"
        } else {
            &self.file
        };
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{file}:{}:{}: {severity}[{}]",
            self.line, self.column, self.code
        )?;
        if let Some(step) = &self.step {
            write!(f, " in step `{step}`")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// The suggestion for a misspelt name, if one of `candidates` is close enough: one or two
/// edits away (a transposition counts once), or very similar by Jaro-Winkler.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let allowed_edits = if name.chars().count() >= 5 { 2 } else { 1 };
    candidates
        .into_iter()
        .filter(|c| *c != name)
        .map(|c| {
            (
                strsim::damerau_levenshtein(name, c),
                strsim::jaro_winkler(name, c),
                c,
            )
        })
        .filter(|(edits, score, _)| *edits <= allowed_edits || *score > 0.85)
        .min_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)))
        .map(|(_, _, c)| c)
}
