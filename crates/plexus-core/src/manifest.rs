//! The typed workflow manifest (`version: plexus/v1`). See `docs/manifest.md`.

use crate::diagnostic::Loc;
use serde::Serialize;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::time::Duration;

pub const MANIFEST_VERSION: &str = "plexus/v1";

#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub version: String,
    pub name: String,
    pub description: Option<String>,
    pub intents: Vec<String>,
    /// As written; `None` means the server's `execution_mode` setting, else guided.
    pub mode: Option<Mode>,
    pub inputs: Vec<InputDef>,
    pub defaults: Defaults,
    pub schedule: Option<String>,
    pub on: Vec<String>,
    pub steps: Vec<Step>,
    /// Run outputs: name -> template value rendered when the run ends.
    pub outputs: BTreeMap<String, Json>,
    /// `isolation: none`: its steps run without isolation from the data directory (an
    /// admin's decision, audited by the server).
    pub unisolated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Every step waits for approval.
    Manual,
    /// MODIFY and ADMIN steps wait for approval.
    #[default]
    Guided,
    /// Same gating as guided for MODIFY/ADMIN; only agentic loops behave differently.
    Autonomous,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Manual => "manual",
            Mode::Guided => "guided",
            Mode::Autonomous => "autonomous",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "manual" => Some(Mode::Manual),
            "guided" => Some(Mode::Guided),
            "autonomous" => Some(Mode::Autonomous),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InputType {
    String,
    Integer,
    Number,
    Boolean,
    Object,
    Array,
    Any,
}

impl InputType {
    pub fn accepts(self, value: &Json) -> bool {
        match self {
            InputType::String => value.is_string(),
            InputType::Integer => value.is_i64() || value.is_u64(),
            InputType::Number => value.is_number(),
            InputType::Boolean => value.is_boolean(),
            InputType::Object => value.is_object(),
            InputType::Array => value.is_array(),
            InputType::Any => true,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct InputDef {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: InputType,
    pub required: bool,
    pub default: Option<Json>,
    pub description: Option<String>,
    #[serde(skip)]
    pub loc: Loc,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Defaults {
    pub timeout: Option<Duration>,
    pub approval_timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    pub pool: Option<String>,
    pub on_failure: Option<OnFailure>,
    /// What every `llm` step of the workflow uses unless it says otherwise: `provider`,
    /// `model`, `fallbacks`, `max_tokens`, `temperature`, `budget`, `approval_timeout`.
    pub llm: Option<Json>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff: Duration,
    pub multiplier: f64,
    pub max_backoff: Option<Duration>,
    /// Fraction (0..=1) of each delay that is randomised.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            backoff: Duration::from_secs(1),
            multiplier: 2.0,
            max_backoff: None,
            jitter: 0.0,
        }
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    #[default]
    Read,
    Modify,
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// The run ends failed; downstream steps still follow their trigger rules.
    #[default]
    FailRun,
    /// The failure does not fail the run and counts as done-successfully for triggers.
    Continue,
    /// Every downstream step is skipped; the run does not fail because of this step.
    SkipDownstream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    #[default]
    AllSuccess,
    AllDone,
    OneSuccess,
    OneDone,
    OneFailed,
    NoneFailedMinOneSuccess,
    Quorum(u32),
}

impl Trigger {
    pub const NAMES: [&'static str; 6] = [
        "all_success",
        "all_done",
        "one_success",
        "one_done",
        "one_failed",
        "none_failed_min_one_success",
    ];

    pub fn from_name(name: &str) -> Option<Trigger> {
        Some(match name {
            "all_success" => Trigger::AllSuccess,
            "all_done" => Trigger::AllDone,
            "one_success" => Trigger::OneSuccess,
            "one_done" => Trigger::OneDone,
            "one_failed" => Trigger::OneFailed,
            "none_failed_min_one_success" => Trigger::NoneFailedMinOneSuccess,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Builtin {
    Noop,
    Echo,
    Sleep,
    Fail,
}

impl Builtin {
    pub const NAMES: [&'static str; 4] = ["noop", "echo", "sleep", "fail"];
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WaitSpec {
    /// Wait for `plexus signal RUN STEP`; the signal's data becomes the output.
    pub signal: Option<String>,
    /// Wait for a fixed time.
    pub timer: Option<Duration>,
    /// Give up (the step fails) after this long.
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutPolicy {
    #[default]
    Reject,
    Approve,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApprovalSpec {
    pub message: Option<String>,
    pub timeout: Option<Duration>,
    pub on_timeout: TimeoutPolicy,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Run(String),
    Python(String),
    Builtin(Builtin),
    Wait(WaitSpec),
    Approval(ApprovalSpec),
    /// Path of a sub-workflow manifest, relative to the parent manifest.
    Workflow(String),
    Agent {
        agent: String,
        action: String,
    },
    Llm(Json),
}

impl StepKind {
    pub const KEYS: [&'static str; 8] = [
        "run", "python", "builtin", "wait", "approval", "workflow", "agent", "llm",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Run(_) => "run",
            StepKind::Python(_) => "python",
            StepKind::Builtin(_) => "builtin",
            StepKind::Wait(_) => "wait",
            StepKind::Approval(_) => "approval",
            StepKind::Workflow(_) => "workflow",
            StepKind::Agent { .. } => "agent",
            StepKind::Llm(_) => "llm",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Resources {
    pub cpu: Option<f64>,
    pub memory_mb: Option<u64>,
    pub gpu: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub id: String,
    pub description: Option<String>,
    pub kind: StepKind,
    pub needs: Vec<String>,
    pub trigger: Trigger,
    pub when: Option<String>,
    pub foreach: Option<String>,
    pub concurrency: Option<u32>,
    pub retry: Option<RetryPolicy>,
    pub timeout: Option<Duration>,
    /// How long a gated step waits for a decision before it is rejected.
    pub approval_timeout: Option<Duration>,
    /// What the step can affect, shown to approvers (a template).
    pub blast_radius: Option<String>,
    pub pool: Option<String>,
    pub pool_slots: u32,
    pub resources: Option<Resources>,
    pub constraints: BTreeMap<String, String>,
    pub permission: Permission,
    pub on_failure: Option<OnFailure>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    /// Parameters for agent, workflow and builtin steps (templates allowed in strings).
    pub with: Option<Json>,
    #[serde(skip)]
    pub locs: StepLocs,
}

/// Where the parts of a step were written, for diagnostics found after parsing.
#[derive(Debug, Clone, Default)]
pub struct StepLocs {
    pub step: Loc,
    pub id: Loc,
    pub needs: Vec<Loc>,
    /// A short list (not a map): it is kept for every step of large generated workflows.
    pub fields: Vec<(&'static str, Loc)>,
}

impl StepLocs {
    pub fn field(&self, name: &str) -> Loc {
        self.fields
            .iter()
            .find(|(k, _)| *k == name)
            .map_or(self.step, |(_, l)| *l)
    }

    pub fn set(&mut self, name: &'static str, loc: Loc) {
        self.fields.push((name, loc));
    }
}
