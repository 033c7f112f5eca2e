//! Validation and compilation of a manifest into a [`Plan`]: the step graph with every
//! default resolved, checked as a whole so that all problems are reported at once.

use crate::diagnostic::{Diagnostic, Loc, did_you_mean};
use crate::manifest::*;
use crate::node::parse_document;
use crate::parse::manifest_from_node;
use crate::template;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

/// What compilation needs to know about the machine: the executor pools and their sizes.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CompileOptions {
    pub pools: BTreeMap<String, u32>,
    /// The mode of a manifest that does not set one (the `execution_mode` setting).
    pub default_mode: Option<Mode>,
    /// The permission agent actions declare (`agent/action`), for the actions a manifest
    /// calls: a step is gated at least at its action's permission, whatever it says.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub action_floors: BTreeMap<String, Permission>,
}

impl CompileOptions {
    pub fn with_default_pool(cores: u32) -> Self {
        CompileOptions {
            pools: BTreeMap::from([("default".to_owned(), cores.max(1))]),
            default_mode: None,
            action_floors: BTreeMap::new(),
        }
    }
}

/// The version of how this build compiles a manifest into a [`Plan`], stored with each
/// run (see [`CompileOptions::to_stored`]). A change to compilation or validation that
/// could give a run already started another plan raises it.
pub const PLAN_FORMAT: u32 = 1;

/// A manifest ready to run: graph edges, resolved defaults and approval gates per step.
#[derive(Debug, Clone)]
pub struct Plan {
    pub manifest: Manifest,
    /// The mode the run uses: the manifest's, else the default it was compiled with.
    pub mode: Mode,
    /// One per step, same order as `manifest.steps`.
    pub nodes: Vec<StepNode>,
    pub index: HashMap<String, usize>,
    /// Steps grouped by depth: every step's parents are in earlier layers.
    pub layers: Vec<Vec<usize>>,
    /// Steps the run `outputs` read.
    pub output_refs: Vec<usize>,
    /// What it was compiled with, its mode resolved: compiling its manifest again with
    /// these gives the same plan, whatever the machine's configuration is by then.
    pub options: CompileOptions,
}

#[derive(Debug, Clone)]
pub struct StepNode {
    pub parents: Vec<usize>,
    pub children: Vec<usize>,
    /// Steps whose outputs this step's templates read (all are ancestors).
    pub refs: Vec<usize>,
    pub retry: RetryPolicy,
    pub timeout: Option<Duration>,
    pub pool: String,
    pub on_failure: OnFailure,
    /// Set when a human must approve before the step's first attempt.
    pub gate: Option<Permission>,
    /// How long the gate waits for a decision; then the step is rejected.
    pub approval_timeout: Option<Duration>,
}

/// Why stored compile options cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoredPlanError {
    #[error(
        "the run was compiled by plan format {found}; this plexus compiles format {PLAN_FORMAT}"
    )]
    Format { found: u64 },
    #[error("the run's stored compile options cannot be read: {0}")]
    Invalid(String),
}

impl Plan {
    /// The agent actions its steps call, as (agent, action), without repeats.
    pub fn agent_actions(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for s in &self.manifest.steps {
            if let StepKind::Agent { agent, action } = &s.kind
                && !out.iter().any(|(a, b)| a == agent && b == action)
            {
                out.push((agent.clone(), action.clone()));
            }
        }
        out
    }
}

impl CompileOptions {
    /// The options as stored with a run, so that resuming it compiles its manifest into
    /// exactly the plan it started with, whatever the pools or settings say by then.
    pub fn to_stored(&self) -> String {
        serde_json::json!({"format": PLAN_FORMAT, "options": self}).to_string()
    }

    /// Reads options written by [`CompileOptions::to_stored`] in this build's format.
    pub fn from_stored(text: &str) -> Result<CompileOptions, StoredPlanError> {
        #[derive(serde::Deserialize)]
        struct Stored {
            format: u64,
            options: serde_json::Value,
        }
        let invalid = |e: serde_json::Error| StoredPlanError::Invalid(e.to_string());
        let stored: Stored = serde_json::from_str(text).map_err(invalid)?;
        if stored.format != u64::from(PLAN_FORMAT) {
            return Err(StoredPlanError::Format {
                found: stored.format,
            });
        }
        serde_json::from_value(stored.options).map_err(invalid)
    }
}

impl Plan {
    pub fn step(&self, i: usize) -> &Step {
        &self.manifest.steps[i]
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// Parses and compiles manifest text. Every diagnostic carries `file`.
pub fn load(text: &str, file: &str, opts: &CompileOptions) -> Result<Plan, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let result = match parse_document(text) {
        Err(e) => {
            diags.push(
                Diagnostic::new("syntax", e.loc, e.message)
                    .with_hint("fix the YAML/JSON syntax at this place"),
            );
            None
        }
        Ok(root) => {
            manifest_from_node(&root, &mut diags).and_then(|m| compile(m, opts, &mut diags))
        }
    };
    for d in &mut diags {
        d.file = file.to_owned();
    }
    diags.sort_by_key(|d| (d.line, d.column));
    match result {
        Some(plan) if diags.is_empty() => Ok(plan),
        _ => Err(diags),
    }
}

/// Graph and reference checks. Appends problems to `diags`; returns the plan only if
/// the graph itself could be built.
pub fn compile(
    manifest: Manifest,
    opts: &CompileOptions,
    diags: &mut Vec<Diagnostic>,
) -> Option<Plan> {
    let mode = manifest.mode.or(opts.default_mode).unwrap_or_default();
    let steps = &manifest.steps;
    let mut index: HashMap<String, usize> = HashMap::with_capacity(steps.len());
    for (i, s) in steps.iter().enumerate() {
        if let Some(&first) = index.get(&s.id) {
            diags.push(
                Diagnostic::new(
                    "duplicate-id",
                    s.locs.id,
                    format!("duplicate step id `{}`", s.id),
                )
                .with_step(Some(&s.id))
                .with_hint(format!(
                    "first defined at line {}; ids must be unique",
                    steps[first].locs.id.line
                )),
            );
        } else {
            index.insert(s.id.clone(), i);
        }
    }

    let mut nodes: Vec<StepNode> = steps
        .iter()
        .map(|s| StepNode {
            parents: Vec::new(),
            children: Vec::new(),
            refs: Vec::new(),
            retry: s
                .retry
                .clone()
                .or_else(|| manifest.defaults.retry.clone())
                .unwrap_or_default(),
            timeout: s.timeout.or(manifest.defaults.timeout),
            pool: s
                .pool
                .clone()
                .or_else(|| manifest.defaults.pool.clone())
                .unwrap_or_else(|| "default".into()),
            on_failure: s
                .on_failure
                .or(manifest.defaults.on_failure)
                .unwrap_or_default(),
            gate: gate_for(mode, s, &opts.action_floors),
            approval_timeout: s.approval_timeout.or(manifest.defaults.approval_timeout),
        })
        .collect();

    for (i, s) in steps.iter().enumerate() {
        for (j, need) in s.needs.iter().enumerate() {
            let loc = s.locs.needs.get(j).copied().unwrap_or(s.locs.step);
            match index.get(need) {
                Some(&p) if p == i => diags.push(
                    Diagnostic::new("cycle", loc, format!("step `{}` needs itself", s.id))
                        .with_step(Some(&s.id)),
                ),
                Some(&p) => {
                    if !nodes[i].parents.contains(&p) {
                        nodes[i].parents.push(p);
                        nodes[p].children.push(i);
                    }
                }
                None => {
                    let mut d = Diagnostic::new(
                        "unknown-need",
                        loc,
                        format!("`needs` names unknown step `{need}`"),
                    )
                    .with_step(Some(&s.id));
                    if let Some(m) = did_you_mean(need, index.keys().map(String::as_str)) {
                        d = d.with_hint(format!("did you mean `{m}`?"));
                    }
                    diags.push(d);
                }
            }
        }
    }

    let layers = check_cycles(steps, &nodes, diags);
    check_triggers(steps, &nodes, diags);
    check_pools(steps, &nodes, opts, diags);
    let output_refs = check_templates(&manifest, &index, &mut nodes, diags);
    for s in steps {
        if s.when.as_deref().map(str::trim) == Some("false") {
            diags.push(
                Diagnostic::new(
                    "unreachable",
                    s.locs.field("when"),
                    format!(
                        "step `{}` can never run: its condition is always false",
                        s.id
                    ),
                )
                .with_step(Some(&s.id))
                .with_hint("remove the step or give it a real condition"),
            );
        }
    }
    Some(Plan {
        manifest,
        mode,
        nodes,
        index,
        layers,
        output_refs,
        options: CompileOptions {
            pools: opts.pools.clone(),
            default_mode: Some(mode),
            action_floors: opts.action_floors.clone(),
        },
    })
}

/// The key of an agent action in [`CompileOptions::action_floors`].
pub fn action_key(agent: &str, action: &str) -> String {
    format!("{agent}/{action}")
}

/// The permission a step runs with: its own, raised to what its agent action declares.
pub fn effective_permission(s: &Step, floors: &BTreeMap<String, Permission>) -> Permission {
    match &s.kind {
        StepKind::Agent { agent, action } => floors
            .get(&action_key(agent, action))
            .map_or(s.permission, |floor| s.permission.max(*floor)),
        _ => s.permission,
    }
}

fn gate_for(mode: Mode, s: &Step, floors: &BTreeMap<String, Permission>) -> Option<Permission> {
    if matches!(s.kind, StepKind::Approval(_)) {
        return None; // an approval step is its own gate
    }
    let permission = effective_permission(s, floors);
    match (mode, permission) {
        (_, Permission::Modify | Permission::Admin) => Some(permission),
        (Mode::Manual, p) if !matches!(s.kind, StepKind::Wait(_)) => Some(p),
        _ => None,
    }
}

/// Orders the graph in layers (Kahn); whatever cannot be ordered is on or behind a cycle.
fn check_cycles(
    steps: &[Step],
    nodes: &[StepNode],
    diags: &mut Vec<Diagnostic>,
) -> Vec<Vec<usize>> {
    let n = nodes.len();
    let mut indegree: Vec<usize> = nodes.iter().map(|s| s.parents.len()).collect();
    let mut depth = vec![0usize; n];
    let mut queue: VecDeque<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut layers: Vec<Vec<usize>> = Vec::new();
    let mut done = vec![false; n];
    while let Some(i) = queue.pop_front() {
        done[i] = true;
        if layers.len() <= depth[i] {
            layers.resize_with(depth[i] + 1, Vec::new);
        }
        layers[depth[i]].push(i);
        for &c in &nodes[i].children {
            depth[c] = depth[c].max(depth[i] + 1);
            indegree[c] -= 1;
            if indegree[c] == 0 {
                queue.push_back(c);
            }
        }
    }
    // Every leftover step has a leftover parent, so walking up parents must loop.
    let mut on_cycle = vec![false; n];
    for start in 0..n {
        if done[start] || on_cycle[start] {
            continue;
        }
        let mut seen_at: HashMap<usize, usize> = HashMap::new();
        let mut path = Vec::new();
        let mut cur = start;
        while !seen_at.contains_key(&cur) && !on_cycle[cur] {
            seen_at.insert(cur, path.len());
            path.push(cur);
            cur = *nodes[cur]
                .parents
                .iter()
                .find(|&&p| !done[p])
                .expect("leftover step has a leftover parent");
        }
        if on_cycle[cur] {
            continue; // joins a cycle already reported
        }
        let mut cycle: Vec<usize> = path[seen_at[&cur]..].to_vec();
        cycle.reverse(); // parent -> child order
        for &c in &cycle {
            on_cycle[c] = true;
        }
        let names: Vec<&str> = cycle
            .iter()
            .chain(cycle.first())
            .map(|&c| steps[c].id.as_str())
            .collect();
        let first = &steps[cycle[0]];
        diags.push(
            Diagnostic::new(
                "cycle",
                first.locs.step,
                format!("steps form a cycle: {}", names.join(" -> ")),
            )
            .with_step(Some(&first.id))
            .with_hint("remove one of these `needs` so the steps form a DAG"),
        );
    }
    for i in 0..n {
        if !done[i] && !on_cycle[i] {
            diags.push(
                Diagnostic::new(
                    "unreachable",
                    steps[i].locs.step,
                    format!(
                        "step `{}` can never run: it depends on a cycle",
                        steps[i].id
                    ),
                )
                .with_step(Some(&steps[i].id)),
            );
        }
    }
    layers
}

fn check_triggers(steps: &[Step], nodes: &[StepNode], diags: &mut Vec<Diagnostic>) {
    for (s, node) in steps.iter().zip(nodes) {
        let loc = s.locs.field("trigger");
        match s.trigger {
            Trigger::AllSuccess => {}
            Trigger::Quorum(q) if q as usize > node.parents.len() => diags.push(
                Diagnostic::new(
                    "bad-trigger",
                    loc,
                    format!(
                        "quorum {q} is larger than the number of parents ({})",
                        node.parents.len()
                    ),
                )
                .with_step(Some(&s.id))
                .with_hint("lower the quorum or add steps to `needs`"),
            ),
            _ if node.parents.is_empty() && s.needs.is_empty() => diags.push(
                Diagnostic::new(
                    "bad-trigger",
                    loc,
                    "a trigger rule needs parents, but the step has no `needs`",
                )
                .with_step(Some(&s.id))
                .with_hint("add `needs` or remove `trigger`"),
            ),
            _ => {}
        }
    }
}

fn check_pools(
    steps: &[Step],
    nodes: &[StepNode],
    opts: &CompileOptions,
    diags: &mut Vec<Diagnostic>,
) {
    for (s, node) in steps.iter().zip(nodes) {
        match opts.pools.get(&node.pool) {
            None => {
                let mut d = Diagnostic::new(
                    "unknown-pool",
                    s.locs.field("pool"),
                    format!("unknown pool `{}`", node.pool),
                )
                .with_step(Some(&s.id));
                d = match did_you_mean(&node.pool, opts.pools.keys().map(String::as_str)) {
                    Some(m) => d.with_hint(format!("did you mean `{m}`?")),
                    None => d.with_hint(format!(
                        "define it with `--pool {}=N` or in plexus.toml under [pools]",
                        node.pool
                    )),
                };
                diags.push(d);
            }
            Some(&cap) if s.pool_slots > cap => diags.push(
                Diagnostic::new(
                    "pool-slots",
                    s.locs.field("pool_slots"),
                    format!(
                        "pool_slots {} is more than pool `{}` has ({cap})",
                        s.pool_slots, node.pool
                    ),
                )
                .with_step(Some(&s.id))
                .with_hint("lower pool_slots or give the pool more capacity"),
            ),
            _ => {}
        }
    }
}

/// Every string in a step that is rendered, with the field it came from.
fn templates_of(s: &Step) -> Vec<(&'static str, &str, bool)> {
    let mut out: Vec<(&'static str, &str, bool)> = Vec::new();
    match &s.kind {
        StepKind::Run(cmd) => out.push(("run", cmd, false)),
        StepKind::Python(src) => out.push(("python", src, false)),
        StepKind::Approval(a) => {
            if let Some(m) = &a.message {
                out.push(("approval", m, false));
            }
        }
        StepKind::Workflow(p) => out.push(("workflow", p, false)),
        // Every string of the mapping is rendered (prompt, system, vars...).
        StepKind::Llm(spec) => json_strings(spec, &mut |t| out.push(("llm", t, false))),
        _ => {}
    }
    if let Some(w) = &s.when {
        out.push(("when", w, true));
    }
    if let Some(f) = &s.foreach
        && !f.trim_start().starts_with('[')
    {
        out.push(("foreach", f, true));
    }
    if let Some(w) = &s.workdir {
        out.push(("workdir", w, false));
    }
    for v in s.env.values() {
        out.push(("env", v, false));
    }
    if let Some(with) = &s.with {
        json_strings(with, &mut |t| out.push(("with", t, false)));
    }
    out
}

fn json_strings<'a>(v: &'a serde_json::Value, f: &mut impl FnMut(&'a str)) {
    match v {
        serde_json::Value::String(s) => f(s),
        serde_json::Value::Array(a) => a.iter().for_each(|x| json_strings(x, f)),
        serde_json::Value::Object(m) => m.values().for_each(|x| json_strings(x, f)),
        _ => {}
    }
}

/// Checks every template; records what each step reads and returns what `outputs` read.
fn check_templates(
    manifest: &Manifest,
    index: &HashMap<String, usize>,
    nodes: &mut [StepNode],
    diags: &mut Vec<Diagnostic>,
) -> Vec<usize> {
    let input_names: HashSet<&str> = manifest.inputs.iter().map(|d| d.name.as_str()).collect();
    for (i, s) in manifest.steps.iter().enumerate() {
        let mut refs = Vec::new();
        for (field, text, is_expr) in templates_of(s) {
            let loc = s.locs.field(field);
            let checked = if is_expr {
                template::check_expression(text)
            } else {
                template::check_template(text)
            };
            if let Err(e) = checked {
                diags.push(
                    Diagnostic::new(
                        "bad-template",
                        loc,
                        format!("`{field}` has a template error: {e}"),
                    )
                    .with_step(Some(&s.id)),
                );
                continue;
            }
            check_input_refs(text, &input_names, loc, Some(&s.id), diags);
            for name in template::referenced_names(text, "steps") {
                match index.get(&name) {
                    None => {
                        let mut d = Diagnostic::new(
                            "unknown-ref",
                            loc,
                            format!("`{field}` refers to unknown step `{name}`"),
                        )
                        .with_step(Some(&s.id));
                        if let Some(m) = did_you_mean(&name, index.keys().map(String::as_str)) {
                            d = d.with_hint(format!("did you mean `{m}`?"));
                        }
                        diags.push(d);
                    }
                    Some(&r) if !is_ancestor(nodes, r, i) => diags.push(
                        Diagnostic::new(
                            "not-ancestor",
                            loc,
                            format!(
                                "`{field}` reads step `{name}`, which does not run before this step"
                            ),
                        )
                        .with_step(Some(&s.id))
                        .with_hint(format!(
                            "add `{name}` to `needs` (directly or through another step)"
                        )),
                    ),
                    Some(&r) => {
                        if !refs.contains(&r) {
                            refs.push(r);
                        }
                    }
                }
            }
        }
        nodes[i].refs = refs;
    }
    let mut output_refs = Vec::new();
    let mut outputs = Vec::new();
    for v in manifest.outputs.values() {
        json_strings(v, &mut |t| outputs.push(t));
    }
    for text in outputs {
        if let Err(e) = template::check_template(text) {
            diags.push(Diagnostic::new(
                "bad-template",
                Loc::default(),
                format!("`outputs` has a template error: {e}"),
            ));
        }
        check_input_refs(text, &input_names, Loc::default(), None, diags);
        for name in template::referenced_names(text, "steps") {
            match index.get(&name) {
                Some(&i) if !output_refs.contains(&i) => output_refs.push(i),
                Some(_) => {}
                None => diags.push(Diagnostic::new(
                    "unknown-ref",
                    Loc::default(),
                    format!("`outputs` refers to unknown step `{name}`"),
                )),
            }
        }
    }
    output_refs
}

fn check_input_refs(
    text: &str,
    inputs: &HashSet<&str>,
    loc: Loc,
    step: Option<&str>,
    diags: &mut Vec<Diagnostic>,
) {
    for name in template::referenced_names(text, "inputs") {
        if !inputs.contains(name.as_str()) {
            let mut d = Diagnostic::new(
                "unknown-input",
                loc,
                format!("template refers to undeclared input `{name}`"),
            )
            .with_step(step);
            d = match did_you_mean(&name, inputs.iter().copied()) {
                Some(m) => d.with_hint(format!("did you mean `{m}`?")),
                None => d.with_hint(format!(
                    "declare it under `inputs:`, e.g. `{name}: {{type: string}}`"
                )),
            };
            diags.push(d);
        }
    }
}

/// Whether `a` is an ancestor of `b` (walks up from `b`; cheap for the shallow graphs
/// templates usually reference).
fn is_ancestor(nodes: &[StepNode], a: usize, b: usize) -> bool {
    let mut seen = HashSet::new();
    let mut stack = nodes[b].parents.clone();
    while let Some(x) = stack.pop() {
        if x == a {
            return true;
        }
        if seen.insert(x) {
            stack.extend(nodes[x].parents.iter().copied());
        }
    }
    false
}

/// Warnings about `| safe` over a run's inputs in `run:` and `python:`: it turns off the
/// quoting that keeps an input from adding a command or code.
pub fn unquoted_inputs(plan: &Plan, file: &str) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for step in &plan.manifest.steps {
        let (field, source) = match &step.kind {
            StepKind::Run(c) => ("run", c),
            StepKind::Python(s) => ("python", s),
            _ => continue,
        };
        for expr in source
            .split("{{")
            .skip(1)
            .filter_map(|r| r.split("}}").next())
        {
            let safe = expr
                .split('|')
                .skip(1)
                .any(|f| f.trim().split(['(', ' ']).next() == Some("safe"));
            let inputs = crate::template::referenced_names(expr, "inputs");
            if safe && !inputs.is_empty() {
                let mut d = Diagnostic::new(
                    "unquoted-input",
                    step.locs.field(field),
                    format!(
                        "`| safe` puts input {} into the {field} command as it is: whoever starts the run can add commands",
                        inputs.join(", ")
                    ),
                )
                .with_step(Some(&step.id))
                .with_hint("drop `| safe`: each value is then one shell word (a Python literal in `python:`)")
                .warning();
                d.file = file.to_owned();
                out.push(d);
            }
        }
    }
    out
}
