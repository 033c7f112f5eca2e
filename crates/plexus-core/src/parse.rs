//! Converts a located document tree into a typed [`Manifest`], collecting every problem.

use crate::diagnostic::{Diagnostic, Loc, did_you_mean};
use crate::duration::parse_duration;
use crate::manifest::*;
use crate::node::{Node, Value};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::time::Duration;

/// Reads a mapping's entries, remembering which keys were used so the rest can be
/// reported as unknown (with a "did you mean").
struct Fields<'a> {
    entries: &'a [(crate::node::Key, Node)],
    used: Vec<bool>,
    context: &'static str,
    step: Option<String>,
}

impl<'a> Fields<'a> {
    fn new(
        node: &'a Node,
        context: &'static str,
        step: Option<&str>,
        out: &mut Vec<Diagnostic>,
    ) -> Option<Self> {
        match &node.value {
            Value::Map(entries) => Some(Fields {
                entries,
                used: vec![false; entries.len()],
                context,
                step: step.map(str::to_owned),
            }),
            _ => {
                out.push(
                    Diagnostic::new(
                        "wrong-type",
                        node.loc,
                        format!("{context} must be a mapping, found {}", node.describe()),
                    )
                    .with_step(step),
                );
                None
            }
        }
    }

    fn get(&mut self, key: &str) -> Option<&'a Node> {
        let i = self.entries.iter().position(|(k, _)| k.name == key)?;
        self.used[i] = true;
        Some(&self.entries[i].1)
    }

    fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _)| k.name == key)
    }

    fn finish(self, known: &[&str], out: &mut Vec<Diagnostic>) {
        for (i, (key, _)) in self.entries.iter().enumerate() {
            if self.used[i] || known.contains(&key.name.as_str()) {
                continue;
            }
            let mut d = Diagnostic::new(
                "unknown-key",
                key.loc,
                format!("unknown key `{}` in {}", key.name, self.context),
            )
            .with_step(self.step.as_deref());
            d = match did_you_mean(&key.name, known.iter().copied()) {
                Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                None => d.with_hint(format!("known keys: {}", known.join(", "))),
            };
            out.push(d);
        }
    }
}

struct Ctx<'o> {
    out: &'o mut Vec<Diagnostic>,
    step: Option<String>,
}

impl Ctx<'_> {
    fn err(&mut self, code: &'static str, loc: Loc, msg: impl Into<String>) -> &mut Diagnostic {
        self.out
            .push(Diagnostic::new(code, loc, msg).with_step(self.step.as_deref()));
        self.out.last_mut().expect("just pushed")
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            // Scalars written without quotes are still fine where text is expected.
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => {
                self.err(
                    "wrong-type",
                    node.loc,
                    format!("{what} must be a string, found {}", node.describe()),
                );
                None
            }
        }
    }

    fn strings(&mut self, node: &Node, what: &str) -> Vec<(String, Loc)> {
        match &node.value {
            Value::Str(s) => vec![(s.clone(), node.loc)],
            Value::Seq(items) => items
                .iter()
                .filter_map(|n| self.string(n, what).map(|s| (s, n.loc)))
                .collect(),
            _ => {
                self.err(
                    "wrong-type",
                    node.loc,
                    format!(
                        "{what} must be a list of strings, found {}",
                        node.describe()
                    ),
                );
                Vec::new()
            }
        }
    }

    fn uint(&mut self, node: &Node, what: &str) -> Option<u64> {
        match &node.value {
            Value::Int(i) if *i >= 0 => Some(*i as u64),
            _ => {
                self.err(
                    "wrong-type",
                    node.loc,
                    format!(
                        "{what} must be a non-negative integer, found {}",
                        node.describe()
                    ),
                );
                None
            }
        }
    }

    fn number(&mut self, node: &Node, what: &str) -> Option<f64> {
        match &node.value {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => {
                self.err(
                    "wrong-type",
                    node.loc,
                    format!("{what} must be a number, found {}", node.describe()),
                );
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        match &node.value {
            Value::Bool(b) => Some(*b),
            _ => {
                self.err(
                    "wrong-type",
                    node.loc,
                    format!("{what} must be true or false, found {}", node.describe()),
                );
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, what: &str) -> Option<Duration> {
        let text = match &node.value {
            Value::Int(i) if *i >= 0 => return Some(Duration::from_secs(*i as u64)),
            Value::Str(s) => s.clone(),
            _ => {
                self.err(
                    "bad-duration",
                    node.loc,
                    format!(
                        "{what} must be a duration such as 30s or 5m, found {}",
                        node.describe()
                    ),
                );
                return None;
            }
        };
        match parse_duration(&text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err("bad-duration", node.loc, format!("{what}: {e}"));
                None
            }
        }
    }

    fn choice<T: Copy>(&mut self, node: &Node, what: &str, options: &[(&str, T)]) -> Option<T> {
        let s = self.string(node, what)?;
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == s) {
            return Some(*v);
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let hint = match did_you_mean(&s, names.iter().copied()) {
            Some(m) => format!("did you mean `{m}`?"),
            None => format!("expected one of: {}", names.join(", ")),
        };
        self.err(
            "bad-value",
            node.loc,
            format!("`{s}` is not a valid {what}"),
        )
        .hint = Some(hint);
        None
    }

    fn string_map(&mut self, node: &Node, what: &str) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        match &node.value {
            Value::Map(entries) => {
                for (k, v) in entries {
                    if let Some(s) = self.string(v, what) {
                        map.insert(k.name.clone(), s);
                    }
                }
            }
            _ => {
                self.err(
                    "wrong-type",
                    node.loc,
                    format!("{what} must be a mapping, found {}", node.describe()),
                );
            }
        }
        map
    }
}

const TOP_KEYS: &[&str] = &[
    "version",
    "name",
    "description",
    "intents",
    "mode",
    "inputs",
    "defaults",
    "schedule",
    "on",
    "steps",
    "outputs",
    "isolation",
];

const STEP_KEYS: &[&str] = &[
    "id",
    "description",
    "run",
    "python",
    "builtin",
    "wait",
    "approval",
    "workflow",
    "agent",
    "action",
    "llm",
    "needs",
    "trigger",
    "when",
    "foreach",
    "concurrency",
    "retry",
    "timeout",
    "approval_timeout",
    "blast_radius",
    "pool",
    "pool_slots",
    "resources",
    "constraints",
    "permission",
    "on_failure",
    "env",
    "workdir",
    "with",
];

/// Converts a document into a manifest. Problems are appended to `out`; the manifest is
/// returned whenever its skeleton (a mapping) could be read, so later checks can still run.
pub fn manifest_from_node(root: &Node, out: &mut Vec<Diagnostic>) -> Option<Manifest> {
    if matches!(root.value, Value::Null) {
        out.push(
            Diagnostic::new("empty", root.loc, "the manifest is empty")
                .with_hint("start with `version: plexus/v1`, a `name` and a list of `steps`"),
        );
        return None;
    }
    let mut f = Fields::new(root, "the manifest", None, out)?;
    let mut cx = Ctx { out, step: None };

    let version = match f.get("version") {
        Some(n) => {
            let v = cx.string(n, "version").unwrap_or_default();
            if v != MANIFEST_VERSION {
                cx.err("bad-version", n.loc, format!("unsupported version `{v}`"))
                    .hint = Some(format!("write `version: {MANIFEST_VERSION}`"));
            }
            v
        }
        None => {
            cx.err("missing-key", root.loc, "missing `version`").hint =
                Some(format!("add `version: {MANIFEST_VERSION}` at the top"));
            String::new()
        }
    };
    let name = match f.get("name") {
        Some(n) => {
            let v = cx.string(n, "name").unwrap_or_default();
            if !valid_name(&v) {
                cx.err(
                    "bad-name",
                    n.loc,
                    format!("workflow name `{v}` is not allowed"),
                )
                .hint = Some(
                    "use lower-case letters, digits, `_` and `-`, starting with a letter or digit"
                        .into(),
                );
            }
            v
        }
        None => {
            cx.err("missing-key", root.loc, "missing `name`").hint =
                Some("add e.g. `name: my-workflow`".into());
            String::new()
        }
    };
    let description = f
        .get("description")
        .and_then(|n| cx.string(n, "description"));
    let intents = f
        .get("intents")
        .map(|n| {
            cx.strings(n, "intents")
                .into_iter()
                .map(|(s, _)| s)
                .collect()
        })
        .unwrap_or_default();
    let mode = f.get("mode").and_then(|n| {
        cx.choice(
            n,
            "mode",
            &[
                ("manual", Mode::Manual),
                ("guided", Mode::Guided),
                ("autonomous", Mode::Autonomous),
            ],
        )
    });
    let inputs = f
        .get("inputs")
        .map(|n| parse_inputs(n, &mut cx))
        .unwrap_or_default();
    let defaults = f
        .get("defaults")
        .map(|n| parse_defaults(n, &mut cx))
        .unwrap_or_default();
    let schedule = f.get("schedule").and_then(|n| {
        let s = cx.string(n, "schedule")?;
        if let Err(e) = s.parse::<croner::Cron>() {
            cx.err(
                "bad-cron",
                n.loc,
                format!("`{s}` is not a valid cron expression: {e}"),
            )
            .hint = Some(
                "five fields: minute hour day-of-month month day-of-week, e.g. \"0 8 * * 1-5\""
                    .into(),
            );
        }
        Some(s)
    });
    let on = f
        .get("on")
        .map(|n| cx.strings(n, "on").into_iter().map(|(s, _)| s).collect())
        .unwrap_or_default();
    let steps = match f.get("steps") {
        Some(n) => match &n.value {
            Value::Seq(items) => {
                if items.is_empty() {
                    cx.err("no-steps", n.loc, "`steps` is empty").hint =
                        Some("a workflow needs at least one step".into());
                }
                items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| parse_step(s, i, cx.out))
                    .collect()
            }
            _ => {
                cx.err(
                    "wrong-type",
                    n.loc,
                    format!("`steps` must be a list, found {}", n.describe()),
                );
                Vec::new()
            }
        },
        None => {
            cx.err("missing-key", root.loc, "missing `steps`").hint =
                Some("add a list of steps, e.g. `steps: [{id: hello, run: echo hi}]`".into());
            Vec::new()
        }
    };
    let outputs = match f.get("outputs") {
        Some(n) => match &n.value {
            Value::Map(entries) => entries
                .iter()
                .map(|(k, v)| (k.name.clone(), v.to_json()))
                .collect(),
            _ => {
                cx.err(
                    "wrong-type",
                    n.loc,
                    format!("`outputs` must be a mapping, found {}", n.describe()),
                );
                BTreeMap::new()
            }
        },
        None => BTreeMap::new(),
    };
    let unisolated = f
        .get("isolation")
        .and_then(|n| cx.choice(n, "isolation", &[("default", false), ("none", true)]))
        .unwrap_or(false);
    f.finish(TOP_KEYS, cx.out);
    Some(Manifest {
        unisolated,
        version,
        name,
        description,
        intents,
        mode,
        inputs,
        defaults,
        schedule,
        on,
        steps,
        outputs,
    })
}

pub fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn parse_inputs(node: &Node, cx: &mut Ctx) -> Vec<InputDef> {
    let Value::Map(entries) = &node.value else {
        cx.err(
            "wrong-type",
            node.loc,
            format!("`inputs` must be a mapping, found {}", node.describe()),
        );
        return Vec::new();
    };
    let mut inputs = Vec::new();
    for (key, spec) in entries {
        let mut def = InputDef {
            name: key.name.clone(),
            ty: InputType::String,
            required: false,
            default: None,
            description: None,
            loc: key.loc,
        };
        // `name: string` is shorthand for `name: {type: string}`.
        if let Value::Str(_) = spec.value {
            def.ty = parse_input_type(spec, cx).unwrap_or(InputType::String);
            inputs.push(def);
            continue;
        }
        let Some(mut f) = Fields::new(spec, "an input", None, cx.out) else {
            continue;
        };
        if let Some(n) = f.get("type") {
            def.ty = parse_input_type(n, cx).unwrap_or(InputType::Any);
        }
        if let Some(n) = f.get("required") {
            def.required = cx.boolean(n, "required").unwrap_or(false);
        }
        if let Some(n) = f.get("default") {
            let v = n.to_json();
            if !def.ty.accepts(&v) {
                cx.err(
                    "bad-default",
                    n.loc,
                    format!(
                        "default of input `{}` does not match its type {:?}",
                        def.name, def.ty
                    ),
                );
            }
            def.default = Some(v);
        }
        if let Some(n) = f.get("description") {
            def.description = cx.string(n, "description");
        }
        f.finish(&["type", "required", "default", "description"], cx.out);
        inputs.push(def);
    }
    inputs
}

fn parse_input_type(node: &Node, cx: &mut Ctx) -> Option<InputType> {
    cx.choice(
        node,
        "input type",
        &[
            ("string", InputType::String),
            ("integer", InputType::Integer),
            ("number", InputType::Number),
            ("boolean", InputType::Boolean),
            ("object", InputType::Object),
            ("array", InputType::Array),
            ("any", InputType::Any),
        ],
    )
}

fn parse_defaults(node: &Node, cx: &mut Ctx) -> Defaults {
    let mut d = Defaults::default();
    let Some(mut f) = Fields::new(node, "`defaults`", None, cx.out) else {
        return d;
    };
    d.timeout = f.get("timeout").and_then(|n| cx.duration(n, "timeout"));
    d.approval_timeout = f
        .get("approval_timeout")
        .and_then(|n| cx.duration(n, "approval_timeout"));
    d.retry = f.get("retry").and_then(|n| parse_retry(n, cx));
    d.pool = f.get("pool").and_then(|n| cx.string(n, "pool"));
    d.on_failure = f.get("on_failure").and_then(|n| parse_on_failure(n, cx));
    d.llm = f.get("llm").and_then(|n| parse_llm_defaults(n, cx));
    f.finish(
        &[
            "timeout",
            "approval_timeout",
            "retry",
            "pool",
            "on_failure",
            "llm",
        ],
        cx.out,
    );
    d
}

/// `defaults.llm`: the keys of an `llm` step that a workflow may set for all of them.
fn parse_llm_defaults(node: &Node, cx: &mut Ctx) -> Option<Json> {
    const KEYS: [&str; 7] = [
        "provider",
        "model",
        "fallbacks",
        "max_tokens",
        "temperature",
        "budget",
        "approval_timeout",
    ];
    let f = Fields::new(node, "`defaults.llm`", None, cx.out)?;
    f.finish(&KEYS, cx.out);
    // The values are checked as a step's (only the known keys: the others are reported).
    let mut as_step = node.clone();
    if let Value::Map(entries) = &mut as_step.value {
        entries.retain(|(k, _)| KEYS.contains(&k.name.as_str()));
        entries.push((
            crate::node::Key {
                name: "prompt".into(),
                loc: node.loc,
            },
            Node {
                value: Value::Str("-".into()),
                loc: node.loc,
            },
        ));
    }
    parse_llm(&as_step, cx)?;
    Some(node.to_json())
}

fn parse_on_failure(node: &Node, cx: &mut Ctx) -> Option<OnFailure> {
    cx.choice(
        node,
        "on_failure",
        &[
            ("fail_run", OnFailure::FailRun),
            ("continue", OnFailure::Continue),
            ("skip_downstream", OnFailure::SkipDownstream),
        ],
    )
}

fn parse_retry(node: &Node, cx: &mut Ctx) -> Option<RetryPolicy> {
    // `retry: 3` is shorthand for `retry: {max_attempts: 3}`.
    if let Value::Int(_) = node.value {
        let n = cx.uint(node, "retry")?;
        return Some(RetryPolicy {
            max_attempts: n as u32,
            ..Default::default()
        });
    }
    let mut f = Fields::new(node, "`retry`", cx.step.as_deref(), cx.out)?;
    let mut r = RetryPolicy::default();
    if let Some(n) = f.get("max_attempts") {
        match cx.uint(n, "max_attempts") {
            Some(0) => {
                cx.err("bad-value", n.loc, "max_attempts must be at least 1")
                    .hint = Some("1 means no retry".into());
            }
            Some(v) => r.max_attempts = v.min(u32::MAX as u64) as u32,
            None => {}
        }
    }
    if let Some(n) = f.get("backoff") {
        r.backoff = cx.duration(n, "backoff").unwrap_or(r.backoff);
    }
    if let Some(n) = f.get("multiplier") {
        match cx.number(n, "multiplier") {
            Some(m) if m >= 1.0 && m.is_finite() => r.multiplier = m,
            Some(_) => {
                cx.err("bad-value", n.loc, "multiplier must be at least 1");
            }
            None => {}
        }
    }
    if let Some(n) = f.get("max_backoff") {
        r.max_backoff = cx.duration(n, "max_backoff");
    }
    if let Some(n) = f.get("jitter") {
        match &n.value {
            Value::Bool(b) => r.jitter = if *b { 0.2 } else { 0.0 },
            _ => match cx.number(n, "jitter") {
                Some(j) if (0.0..=1.0).contains(&j) => r.jitter = j,
                Some(_) => {
                    cx.err(
                        "bad-value",
                        n.loc,
                        "jitter must be between 0 and 1 (a fraction of each delay) or true",
                    );
                }
                None => {}
            },
        }
    }
    f.finish(
        &[
            "max_attempts",
            "backoff",
            "multiplier",
            "max_backoff",
            "jitter",
        ],
        cx.out,
    );
    Some(r)
}

fn parse_step(node: &Node, index: usize, out: &mut Vec<Diagnostic>) -> Option<Step> {
    let mut f = Fields::new(node, "a step", None, out)?;
    let mut cx = Ctx { out, step: None };
    let mut locs = StepLocs {
        step: node.loc,
        ..Default::default()
    };
    let id = match f.get("id") {
        Some(n) => {
            locs.id = n.loc;
            let id = cx.string(n, "id").unwrap_or_default();
            if !valid_name(&id) {
                cx.err("bad-id", n.loc, format!("step id `{id}` is not allowed"))
                    .hint = Some(
                    "use lower-case letters, digits, `_` and `-`, starting with a letter or digit"
                        .into(),
                );
            }
            id
        }
        None => {
            cx.err(
                "missing-key",
                node.loc,
                format!("step #{} has no `id`", index + 1),
            )
            .hint = Some("every step needs a unique `id`".into());
            format!("#{}", index + 1)
        }
    };
    cx.step = Some(id.clone());
    f.step = Some(id.clone());

    let present: Vec<&str> = StepKind::KEYS
        .iter()
        .copied()
        .filter(|k| f.has(k))
        .collect();
    if present.is_empty() {
        cx.err("no-kind", node.loc, "the step says nothing to do")
            .hint = Some(format!(
            "give it exactly one of: {}",
            StepKind::KEYS.join(", ")
        ));
    } else if present.len() > 1 {
        cx.err(
            "two-kinds",
            node.loc,
            format!("the step has more than one kind: {}", present.join(", ")),
        )
        .hint = Some("split it into several steps joined with `needs`".into());
    }
    let mut kind = None;
    for key in &present {
        let n = f.get(key).expect("present");
        locs.set(key_static(key), n.loc);
        let k = match *key {
            "run" => cx.string(n, "run").map(StepKind::Run),
            "python" => cx.string(n, "python").map(StepKind::Python),
            "builtin" => cx
                .choice(
                    n,
                    "builtin",
                    &[
                        ("noop", Builtin::Noop),
                        ("echo", Builtin::Echo),
                        ("sleep", Builtin::Sleep),
                        ("fail", Builtin::Fail),
                    ],
                )
                .map(StepKind::Builtin),
            "wait" => parse_wait(n, &mut cx).map(StepKind::Wait),
            "approval" => parse_approval(n, &mut cx).map(StepKind::Approval),
            "workflow" => cx.string(n, "workflow").map(StepKind::Workflow),
            "agent" => {
                let agent = cx.string(n, "agent");
                let action = match f.get("action") {
                    Some(a) => {
                        locs.set("action", a.loc);
                        cx.string(a, "action")
                    }
                    None => {
                        cx.err("missing-key", n.loc, "an agent step needs an `action`");
                        None
                    }
                };
                agent
                    .zip(action)
                    .map(|(agent, action)| StepKind::Agent { agent, action })
            }
            "llm" => parse_llm(n, &mut cx).map(StepKind::Llm),
            _ => None,
        };
        if kind.is_none() {
            kind = k;
        }
    }
    if let Some(n) = f.get("action")
        && !present.contains(&"agent")
    {
        {
            cx.err("stray-key", n.loc, "`action` only applies to agent steps")
                .hint = Some("add `agent: NAME` or remove `action`".into());
        }
    }

    let mut step = Step {
        id,
        description: f
            .get("description")
            .and_then(|n| cx.string(n, "description")),
        kind: kind.unwrap_or(StepKind::Builtin(Builtin::Noop)),
        needs: Vec::new(),
        trigger: Trigger::AllSuccess,
        when: None,
        foreach: None,
        concurrency: None,
        retry: None,
        timeout: None,
        approval_timeout: None,
        blast_radius: None,
        pool: None,
        pool_slots: 1,
        resources: None,
        constraints: BTreeMap::new(),
        permission: Permission::Read,
        on_failure: None,
        env: BTreeMap::new(),
        workdir: None,
        with: None,
        locs: StepLocs::default(),
    };
    if let Some(n) = f.get("needs") {
        for (s, loc) in cx.strings(n, "needs") {
            step.needs.push(s);
            locs.needs.push(loc);
        }
    }
    if let Some(n) = f.get("trigger") {
        locs.set("trigger", n.loc);
        step.trigger = parse_trigger(n, &mut cx).unwrap_or_default();
    }
    for key in ["when", "foreach", "workdir"] {
        if let Some(n) = f.get(key) {
            locs.set(key_static(key), n.loc);
            let v = match &n.value {
                // `foreach: [a, b]` is a literal list: keep it as JSON text.
                Value::Seq(_) if key == "foreach" => Some(n.to_json().to_string()),
                Value::Bool(b) if key == "when" => Some(b.to_string()),
                _ => cx.string(n, key),
            };
            match key {
                "when" => step.when = v,
                "foreach" => step.foreach = v,
                _ => step.workdir = v,
            }
        }
    }
    if let Some(n) = f.get("concurrency") {
        locs.set("concurrency", n.loc);
        match cx.uint(n, "concurrency") {
            Some(0) => {
                cx.err("bad-value", n.loc, "concurrency must be at least 1");
            }
            Some(c) => step.concurrency = Some(c.min(u32::MAX as u64) as u32),
            None => {}
        }
    }
    if let Some(n) = f.get("retry") {
        step.retry = parse_retry(n, &mut cx);
    }
    if let Some(n) = f.get("timeout") {
        step.timeout = cx.duration(n, "timeout");
    }
    if let Some(n) = f.get("approval_timeout") {
        step.approval_timeout = cx.duration(n, "approval_timeout");
    }
    if let Some(n) = f.get("blast_radius") {
        step.blast_radius = cx.string(n, "blast_radius");
    }
    if let Some(n) = f.get("pool") {
        locs.set("pool", n.loc);
        step.pool = cx.string(n, "pool");
    }
    if let Some(n) = f.get("pool_slots") {
        locs.set("pool_slots", n.loc);
        match cx.uint(n, "pool_slots") {
            Some(0) => {
                cx.err("bad-value", n.loc, "pool_slots must be at least 1");
            }
            Some(s) => step.pool_slots = s.min(u32::MAX as u64) as u32,
            None => {}
        }
    }
    if let Some(n) = f.get("resources") {
        step.resources = parse_resources(n, &mut cx);
    }
    if let Some(n) = f.get("constraints") {
        step.constraints = cx.string_map(n, "constraints");
    }
    if let Some(n) = f.get("permission") {
        step.permission = cx
            .choice(
                n,
                "permission",
                &[
                    ("read", Permission::Read),
                    ("modify", Permission::Modify),
                    ("write", Permission::Modify),
                    ("admin", Permission::Admin),
                ],
            )
            .unwrap_or(Permission::Read);
    }
    if let Some(n) = f.get("on_failure") {
        step.on_failure = parse_on_failure(n, &mut cx);
    }
    if let Some(n) = f.get("env") {
        locs.set("env", n.loc);
        step.env = cx.string_map(n, "env");
    }
    if let Some(n) = f.get("with") {
        locs.set("with", n.loc);
        step.with = Some(n.to_json());
    }
    f.finish(STEP_KEYS, cx.out);
    step.locs = locs;
    Some(step)
}

/// Field names as `'static` keys for [`StepLocs::fields`].
fn key_static(key: &str) -> &'static str {
    STEP_KEYS
        .iter()
        .copied()
        .find(|k| *k == key)
        .unwrap_or("step")
}

fn parse_trigger(node: &Node, cx: &mut Ctx) -> Option<Trigger> {
    if let Value::Map(_) = node.value {
        let mut f = Fields::new(node, "`trigger`", cx.step.as_deref(), cx.out)?;
        let q = match f.get("quorum") {
            Some(n) => match cx.uint(n, "quorum") {
                Some(0) => {
                    cx.err("bad-trigger", n.loc, "quorum must be at least 1");
                    None
                }
                Some(q) => Some(Trigger::Quorum(q.min(u32::MAX as u64) as u32)),
                None => None,
            },
            None => {
                cx.err(
                    "bad-trigger",
                    node.loc,
                    "a trigger mapping must be `{quorum: N}`",
                );
                None
            }
        };
        f.finish(&["quorum"], cx.out);
        return q;
    }
    let name = cx.string(node, "trigger")?;
    match Trigger::from_name(&name) {
        Some(t) => Some(t),
        None => {
            let hint = match did_you_mean(&name, Trigger::NAMES) {
                Some(m) => format!("did you mean `{m}`?"),
                None => format!(
                    "expected one of: {}, or {{quorum: N}}",
                    Trigger::NAMES.join(", ")
                ),
            };
            cx.err("bad-trigger", node.loc, format!("unknown trigger `{name}`"))
                .hint = Some(hint);
            None
        }
    }
}

fn parse_wait(node: &Node, cx: &mut Ctx) -> Option<WaitSpec> {
    let mut spec = WaitSpec {
        signal: None,
        timer: None,
        timeout: None,
    };
    // `wait: 30s` is shorthand for a timer.
    if let Value::Str(_) | Value::Int(_) = node.value {
        spec.timer = cx.duration(node, "wait");
        return Some(spec);
    }
    let mut f = Fields::new(node, "`wait`", cx.step.as_deref(), cx.out)?;
    spec.signal = f.get("signal").and_then(|n| cx.string(n, "signal"));
    spec.timer = f.get("timer").and_then(|n| cx.duration(n, "timer"));
    spec.timeout = f.get("timeout").and_then(|n| cx.duration(n, "timeout"));
    if spec.signal.is_none() && spec.timer.is_none() {
        cx.err(
            "bad-wait",
            node.loc,
            "a wait step needs `signal: NAME` or `timer: DURATION`",
        );
    }
    if spec.signal.is_some() && spec.timer.is_some() {
        cx.err(
            "bad-wait",
            node.loc,
            "a wait step takes either `signal` or `timer`, not both",
        )
        .hint = Some("use `timeout` to bound a signal wait".into());
    }
    f.finish(&["signal", "timer", "timeout"], cx.out);
    Some(spec)
}

/// The keys of an `llm:` mapping.
pub const LLM_KEYS: [&str; 13] = [
    "prompt",
    "system",
    "template",
    "vars",
    "provider",
    "fallbacks",
    "model",
    "max_tokens",
    "temperature",
    "output_schema",
    "tools",
    "budget",
    "approval_timeout",
];

/// `llm: "prompt"` or a mapping of [`LLM_KEYS`], checked here and kept as JSON for the
/// executor (its strings are templates, rendered when the step starts).
fn parse_llm(node: &Node, cx: &mut Ctx) -> Option<Json> {
    if let Value::Str(_) = node.value {
        return Some(node.to_json());
    }
    let mut f = Fields::new(node, "`llm`", cx.step.as_deref(), cx.out)?;
    for key in ["prompt", "system", "template", "provider", "model"] {
        if let Some(n) = f.get(key) {
            cx.string(n, key);
        }
    }
    if !f.has("prompt") && !f.has("template") {
        cx.err(
            "missing-key",
            node.loc,
            "an llm step needs a `prompt` (or a plugin's prompt `template`)",
        );
    }
    for key in ["fallbacks", "tools"] {
        if let Some(n) = f.get(key) {
            cx.strings(n, key);
        }
    }
    if let Some(n) = f.get("max_tokens") {
        cx.uint(n, "max_tokens");
    }
    if let Some(n) = f.get("temperature") {
        cx.number(n, "temperature");
    }
    if let Some(n) = f.get("approval_timeout") {
        cx.duration(n, "approval_timeout");
    }
    if let Some(n) = f.get("vars")
        && !matches!(n.value, Value::Map(_))
    {
        cx.err(
            "wrong-type",
            n.loc,
            format!("`vars` must be a mapping, found {}", n.describe()),
        );
    }
    if let Some(n) = f.get("output_schema")
        && !matches!(n.value, Value::Map(_) | Value::Bool(_))
    {
        cx.err(
            "wrong-type",
            n.loc,
            format!(
                "`output_schema` must be a JSON Schema (a mapping), found {}",
                n.describe()
            ),
        );
    }
    if let Some(n) = f.get("budget") {
        let known = ["max_iterations", "max_tool_calls", "max_tokens"];
        if let Some(mut b) = Fields::new(n, "`budget`", cx.step.as_deref(), cx.out) {
            for key in known {
                if let Some(v) = b.get(key) {
                    cx.uint(v, key);
                }
            }
            b.finish(&known, cx.out);
        }
    }
    f.finish(&LLM_KEYS, cx.out);
    Some(node.to_json())
}

fn parse_approval(node: &Node, cx: &mut Ctx) -> Option<ApprovalSpec> {
    let mut spec = ApprovalSpec {
        message: None,
        timeout: None,
        on_timeout: TimeoutPolicy::Reject,
    };
    match &node.value {
        Value::Null | Value::Bool(true) => return Some(spec),
        Value::Str(s) => {
            spec.message = Some(s.clone());
            return Some(spec);
        }
        _ => {}
    }
    let mut f = Fields::new(node, "`approval`", cx.step.as_deref(), cx.out)?;
    spec.message = f.get("message").and_then(|n| cx.string(n, "message"));
    spec.timeout = f.get("timeout").and_then(|n| cx.duration(n, "timeout"));
    if let Some(n) = f.get("on_timeout") {
        spec.on_timeout = cx
            .choice(
                n,
                "on_timeout",
                &[
                    ("reject", TimeoutPolicy::Reject),
                    ("approve", TimeoutPolicy::Approve),
                ],
            )
            .unwrap_or_default();
    }
    f.finish(&["message", "timeout", "on_timeout"], cx.out);
    Some(spec)
}

fn parse_resources(node: &Node, cx: &mut Ctx) -> Option<Resources> {
    let mut f = Fields::new(node, "`resources`", cx.step.as_deref(), cx.out)?;
    let r = Resources {
        cpu: f.get("cpu").and_then(|n| cx.number(n, "cpu")),
        memory_mb: f.get("memory_mb").and_then(|n| cx.uint(n, "memory_mb")),
        gpu: f
            .get("gpu")
            .and_then(|n| cx.uint(n, "gpu"))
            .map(|g| g.min(u32::MAX as u64) as u32),
    };
    f.finish(&["cpu", "memory_mb", "gpu"], cx.out);
    Some(r)
}

/// Inputs given by the user, checked against the manifest: unknown names, wrong types and
/// missing required inputs are all reported; defaults fill the rest.
pub fn resolve_inputs(
    manifest: &Manifest,
    given: &serde_json::Map<String, Json>,
) -> Result<serde_json::Map<String, Json>, Vec<String>> {
    let mut errors = Vec::new();
    let mut out = serde_json::Map::new();
    for (name, value) in given {
        match manifest.inputs.iter().find(|d| &d.name == name) {
            None => {
                let names = manifest.inputs.iter().map(|d| d.name.as_str());
                let hint = did_you_mean(name, names)
                    .map(|m| format!(" (did you mean `{m}`?)"))
                    .unwrap_or_default();
                errors.push(format!("unknown input `{name}`{hint}"));
            }
            Some(def) => {
                let value = coerce_input(def.ty, value);
                if def.ty.accepts(&value) {
                    out.insert(name.clone(), value);
                } else {
                    errors.push(
                        format!("input `{name}` must be of type {:?}, got {value}", def.ty)
                            .to_lowercase(),
                    );
                }
            }
        }
    }
    for def in &manifest.inputs {
        if out.contains_key(&def.name) {
            continue;
        }
        match &def.default {
            Some(v) => {
                out.insert(def.name.clone(), v.clone());
            }
            None if def.required => errors.push(format!("missing required input `{}`", def.name)),
            None => {
                out.insert(def.name.clone(), Json::Null);
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// `--input n=5` arrives as the string "5": turn it into the declared type when it parses.
fn coerce_input(ty: InputType, value: &Json) -> Json {
    let Json::String(s) = value else {
        return value.clone();
    };
    match ty {
        InputType::Integer
        | InputType::Number
        | InputType::Boolean
        | InputType::Object
        | InputType::Array => serde_json::from_str(s)
            .ok()
            .filter(|v| ty.accepts(v))
            .unwrap_or_else(|| value.clone()),
        _ => value.clone(),
    }
}
