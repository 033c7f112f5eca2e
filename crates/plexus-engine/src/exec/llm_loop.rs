//! `llm` steps with `tools`: a tool-calling loop over registered agents' actions (the
//! agentic loop). The model is asked, the tools it calls are checked and run, their
//! results go back to it, until it answers without calling any or a budget is spent.
//!
//! - Every proposed call is checked before it is made: an unknown tool, arguments that
//!   are not JSON or do not fit the action's schema go back to the model as the call's
//!   result, and count against the tool-call budget.
//! - READ actions run; MODIFY and ADMIN ones wait for a person's approval in the run's
//!   approvals inbox (in manual mode every call waits). A rejected call's result tells
//!   the model so.
//! - Durable: each reply, each decision and each call's result is a journal entry of the
//!   step (a run event) made durable before the loop acts on it. An attempt after a crash
//!   rebuilds the conversation from the journal: a completed model call or tool call is
//!   never made again; a call cut off by the crash is made again with the same
//!   idempotency key.

use super::Journal;
use super::llm::{Validator, repair};
use crate::agents::{ActionCall, Agents};
use plexus_core::machine::LlmWork;
use plexus_core::manifest::{Mode, Permission};
use plexus_llm::{Budget, ChatRequest, Message, Providers, Tool, ToolCall, Usage};
use serde_json::{Map, Value as Json, json};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// How long a tool call waits for its approval unless the step says
/// (`approval_timeout`).
const APPROVAL_WAIT: Duration = Duration::from_secs(3600);
/// How much of a tool's result goes back to the model.
const RESULT_LIMIT: usize = 16 * 1024;

/// The step and attempt the loop runs in.
pub(crate) struct LoopCtx<'a> {
    pub providers: &'a Providers,
    pub agents: &'a Agents,
    pub journal: &'a Journal,
    /// The run and step, where the calls are accounted.
    pub accounts: &'a super::llm::Accounts,
    pub timeout: Duration,
}

impl LoopCtx<'_> {
    fn run_id(&self) -> &str {
        &self.accounts.run_id
    }

    fn step_id(&self) -> &str {
        &self.accounts.step_id
    }
}

/// The tools a step may use, by the names the model sees.
struct Toolbox {
    tools: Vec<Tool>,
    /// Model-facing name -> (agent, action).
    by_name: HashMap<String, (String, String)>,
}

/// A name the chat APIs accept (`^[a-zA-Z0-9_-]{1,64}$`) for `agent`'s `action`.
fn tool_name(agent: &str, action: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let mut name = format!("{}__{}", clean(agent), clean(action));
    name.truncate(64);
    name
}

/// The tools `wanted` names: `agent.action` (or `agent/action`), `agent` (all of its
/// actions), or `*` (every registered action).
fn toolbox(agents: &Agents, wanted: &[String]) -> Result<Toolbox, String> {
    let registered = agents.list();
    let mut tools = Vec::new();
    let mut by_name = HashMap::new();
    let mut add = |agent: &str, a: &crate::agents::ActionView| {
        let name = tool_name(agent, &a.id);
        if by_name.contains_key(&name) {
            return;
        }
        by_name.insert(name.clone(), (agent.to_owned(), a.id.clone()));
        let mut description = a.description.clone();
        if a.permission > Permission::Read {
            description.push_str(" (needs a person's approval)");
        }
        tools.push(Tool {
            name,
            description,
            parameters: a.params_schema.clone(),
        });
    };
    for w in wanted {
        let (agent, action) = match w.split_once(['.', '/']) {
            Some((a, b)) => (a, Some(b)),
            None => (w.as_str(), None),
        };
        let mut found = false;
        for instance in registered
            .iter()
            .filter(|i| (agent == "*" && i.kind == "agent") || i.name == agent)
        {
            for a in instance
                .actions
                .iter()
                .filter(|a| action.is_none_or(|x| x == a.id))
            {
                add(&instance.name, a);
                found = true;
            }
        }
        if !found && agent != "*" {
            return Err(match action {
                Some(x) => format!("`tools`: no registered agent `{agent}` offers an action `{x}`"),
                None => format!("`tools`: no agent `{agent}` is registered"),
            });
        }
    }
    Ok(Toolbox { tools, by_name })
}

/// What the loop has done so far: the conversation and what it used.
#[derive(Default)]
struct Progress {
    messages: Vec<Message>,
    usage: Usage,
    /// Model calls made.
    iterations: u32,
    /// Tool calls resolved (made, refused or invalid).
    tool_calls: u32,
    /// The last reply: its turn number and its tool calls.
    last: Option<(u32, Vec<ToolCall>, String)>,
    /// Results by (turn, call id).
    results: HashMap<(u32, String), Json>,
    /// Decisions by (turn, call id): approved, by, comment.
    decisions: HashMap<(u32, String), (bool, String, String)>,
    /// Every tool call resolved, in order, for the step's output.
    trace: Vec<Json>,
    model: String,
}

impl Progress {
    /// Takes up the loop from its journal (see the module).
    fn replay(start: Vec<Message>, journal: &[Json], schema: Option<&Validator>) -> Progress {
        let mut p = Progress {
            messages: start,
            ..Progress::default()
        };
        for (i, entry) in journal.iter().enumerate() {
            let turn = entry["turn"].as_u64().unwrap_or(0) as u32;
            let call = entry["call"].as_str().unwrap_or_default().to_owned();
            match entry["type"].as_str() {
                Some("reply") => {
                    let calls: Vec<ToolCall> =
                        serde_json::from_value(entry["tool_calls"].clone()).unwrap_or_default();
                    let content = entry["content"].as_str().unwrap_or_default().to_owned();
                    if let Ok(u) = serde_json::from_value::<Usage>(entry["usage"].clone()) {
                        p.usage += u;
                    }
                    p.iterations += 1;
                    p.model = entry["model"].as_str().unwrap_or_default().to_owned();
                    p.messages.push(Message {
                        role: "assistant".into(),
                        content: content.clone(),
                        tool_calls: calls.clone(),
                        tool_call_id: None,
                    });
                    // A final reply that did not fit the schema was sent back: say so again.
                    if calls.is_empty()
                        && i + 1 < journal.len()
                        && let Some(v) = schema
                        && let Err(problems) = v.check(&content)
                    {
                        p.messages.push(repair(&problems));
                    }
                    p.last = Some((turn, calls, content));
                }
                Some("approval") => {
                    p.decisions.insert(
                        (turn, call),
                        (
                            entry["approved"] == true,
                            entry["by"].as_str().unwrap_or_default().to_owned(),
                            entry["comment"].as_str().unwrap_or_default().to_owned(),
                        ),
                    );
                }
                Some("tool") => {
                    p.tool_calls += 1;
                    p.messages
                        .push(Message::tool_result(&call, result_text(entry)));
                    p.trace.push(trace_of(entry));
                    p.results.insert((turn, call), entry.clone());
                }
                _ => {}
            }
        }
        p
    }
}

/// What the model reads of a resolved call.
fn result_text(entry: &Json) -> String {
    let text = match entry["status"].as_str() {
        Some("ok") => match &entry["result"] {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        },
        _ => format!(
            "error: {}",
            entry["error"].as_str().unwrap_or("the call failed")
        ),
    };
    if text.len() <= RESULT_LIMIT {
        return text;
    }
    let mut cut = RESULT_LIMIT;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… (cut at {RESULT_LIMIT} bytes)", &text[..cut])
}

/// A resolved call as the step's output lists it.
fn trace_of(entry: &Json) -> Json {
    let mut t = json!({
        "tool": entry["tool"], "agent": entry["agent"], "action": entry["action"],
        "arguments": entry["arguments"], "status": entry["status"],
    });
    for k in ["result", "error", "approved_by"] {
        if !entry[k].is_null() {
            t[k] = entry[k].clone();
        }
    }
    t
}

/// Why the loop stopped short.
fn spent(what: &str, used: u64, limit: u64, setting: &str) -> String {
    format!(
        "the agentic loop stopped: it has used {used} of its {limit} {what} (budgets.{setting}) without a final answer"
    )
}

/// Runs the loop for an `llm` step with `tools`; the step's output, or why it failed
/// (with the output so far).
pub(crate) async fn run(cx: LoopCtx<'_>, work: &LlmWork) -> Result<Json, (String, Json)> {
    let (spec, journal) = (&work.spec, &work.journal);
    let fail = |e: String| (e, Json::Null);
    let prompt = spec["prompt"]
        .as_str()
        .filter(|p| !p.trim().is_empty())
        .ok_or_else(|| fail("an llm step needs a `prompt`".into()))?;
    let wanted: Vec<String> = match &spec["tools"] {
        Json::Array(t) => t
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| fail("`tools` is a list of agent or agent.action names".into()))?,
        Json::String(s) => vec![s.clone()],
        _ => {
            return Err(fail(
                "`tools` is a list of agent or agent.action names".into(),
            ));
        }
    };
    let fallbacks = super::llm::fallbacks_of(spec).map_err(fail)?;
    let validator = Validator::of(spec).map_err(fail)?;
    let budget: Budget = cx.providers.budget().lowered_by(&spec["budget"]);
    let approval_wait = spec["approval_timeout"]
        .as_str()
        .map(plexus_core::duration::parse_duration)
        .transpose()
        .map_err(|e| fail(format!("`approval_timeout`: {e}")))?
        .unwrap_or(APPROVAL_WAIT);
    // After a start, the agents named may not have registered yet.
    for w in &wanted {
        let agent = w.split_once(['.', '/']).map_or(w.as_str(), |(a, _)| a);
        if agent != "*" {
            cx.agents.knows_patiently(agent).await;
        }
    }
    let toolbox = toolbox(cx.agents, &wanted).map_err(fail)?;

    let mut start = Vec::new();
    if let Some(system) = spec["system"].as_str() {
        start.push(Message::new("system", system));
    }
    let mut user = prompt.to_owned();
    if let Some(s) = spec.get("output_schema").filter(|s| !s.is_null()) {
        user.push_str(&format!(
            "\n\nWhen you have the answer, answer with only a JSON value that fits this JSON Schema:\n{s}"
        ));
    }
    start.push(Message::new("user", user));
    let mut p = Progress::replay(start, journal, validator.as_ref());
    if !journal.is_empty() {
        tracing::info!(
            run = cx.run_id(),
            step = cx.step_id(),
            entries = journal.len(),
            iterations = p.iterations,
            tool_calls = p.tool_calls,
            "agentic loop taken up from its journal"
        );
    }

    loop {
        // The calls of the last reply that are not resolved yet.
        if let Some((turn, calls, _)) = p.last.clone() {
            for call in calls {
                if p.results.contains_key(&(turn, call.id.clone())) {
                    continue;
                }
                if p.tool_calls >= budget.max_tool_calls {
                    let e = spent(
                        "tool calls",
                        p.tool_calls.into(),
                        budget.max_tool_calls.into(),
                        "agentic_max_tool_calls",
                    );
                    return Err((e, output(&p, "", "budget")));
                }
                let entry = resolve(&cx, work.mode, &toolbox, &mut p, turn, &call, approval_wait)
                    .await
                    .map_err(|e| (e, output(&p, "", "error")))?;
                cx.journal
                    .append(entry.clone())
                    .await
                    .map_err(|e| (e, output(&p, "", "error")))?;
                p.tool_calls += 1;
                p.messages
                    .push(Message::tool_result(&call.id, result_text(&entry)));
                p.trace.push(trace_of(&entry));
                p.results.insert((turn, call.id.clone()), entry);
            }
        }
        // A reply without tool calls is the answer (when it fits the schema).
        if let Some((_, calls, content)) = &p.last
            && calls.is_empty()
        {
            match &validator {
                None => return Ok(output(&p, content, "stop")),
                Some(v) => match v.check(content) {
                    Ok(value) => {
                        let mut out = output(&p, content, "stop");
                        out["value"] = value;
                        return Ok(out);
                    }
                    Err(problems) => p.messages.push(repair(&problems)),
                },
            }
        }
        if p.iterations >= budget.max_iterations {
            let e = spent(
                "model calls",
                p.iterations.into(),
                budget.max_iterations.into(),
                "agentic_max_iterations",
            );
            return Err((e, output(&p, "", "budget")));
        }
        if p.usage.total_tokens >= budget.max_tokens {
            let e = spent(
                "tokens",
                p.usage.total_tokens,
                budget.max_tokens,
                "agentic_max_tokens",
            );
            return Err((e, output(&p, "", "budget")));
        }
        let request = ChatRequest {
            model: spec["model"].as_str().map(str::to_owned),
            messages: p.messages.clone(),
            max_tokens: spec["max_tokens"].as_u64().map(|n| n as u32),
            temperature: spec["temperature"].as_f64(),
            json: false,
            tools: toolbox.tools.clone(),
            timeout: cx.timeout,
        };
        let (provider, reply) = cx
            .providers
            .chat_routed(spec["provider"].as_str(), &fallbacks, request)
            .await
            .map_err(|e| (e, output(&p, "", "error")))?;
        let turn = p.iterations + 1;
        // Calls without an id (some local servers) get one, so results can answer them.
        let calls: Vec<ToolCall> = reply
            .tool_calls
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| {
                if c.id.is_empty() {
                    c.id = format!("call_{turn}_{i}");
                }
                c
            })
            .collect();
        let entry = json!({
            "type": "reply", "turn": turn, "provider": provider, "model": reply.model,
            "content": reply.content, "tool_calls": calls,
            "finish_reason": reply.finish_reason, "usage": reply.usage,
        });
        cx.journal
            .append(entry)
            .await
            .map_err(|e| (e, output(&p, "", "error")))?;
        cx.accounts
            .record(cx.providers, &provider, &reply.model, reply.usage);
        p.iterations = turn;
        p.usage += reply.usage;
        p.model = reply.model;
        p.messages.push(Message {
            role: "assistant".into(),
            content: reply.content.clone(),
            tool_calls: calls.clone(),
            tool_call_id: None,
        });
        p.last = Some((turn, calls, reply.content));
    }
}

/// The step's output: the answer, what was used, every tool call.
fn output(p: &Progress, text: &str, stopped: &str) -> Json {
    json!({
        "text": text,
        "model": p.model,
        "finish_reason": stopped,
        "usage": p.usage,
        "iterations": p.iterations,
        "tool_calls": p.trace,
    })
}

/// Checks, gates and makes one tool call; the journal entry of its result. `Err` only
/// when the loop cannot go on (the journal cannot be written).
async fn resolve(
    cx: &LoopCtx<'_>,
    mode: Mode,
    toolbox: &Toolbox,
    p: &mut Progress,
    turn: u32,
    call: &ToolCall,
    approval_wait: Duration,
) -> Result<Json, String> {
    let mut entry = json!({"type": "tool", "turn": turn, "call": call.id, "tool": call.name});
    let refuse = |mut entry: Json, status: &str, error: String| {
        entry["status"] = json!(status);
        entry["error"] = json!(error);
        entry
    };
    let Some((agent, action)) = toolbox.by_name.get(&call.name) else {
        let offered: Vec<&str> = toolbox.tools.iter().map(|t| t.name.as_str()).collect();
        return Ok(refuse(
            entry,
            "invalid",
            format!(
                "there is no tool `{}`; the tools are: {}",
                call.name,
                offered.join(", ")
            ),
        ));
    };
    entry["agent"] = json!(agent);
    entry["action"] = json!(action);
    let arguments: Json = match serde_json::from_str(&call.arguments) {
        Ok(Json::Object(m)) => Json::Object(m),
        Ok(other) => {
            return Ok(refuse(
                entry,
                "invalid",
                format!("the arguments must be a JSON object, not {other}"),
            ));
        }
        Err(e) => {
            return Ok(refuse(
                entry,
                "invalid",
                format!("the arguments are not JSON ({e}): {}", call.arguments),
            ));
        }
    };
    entry["arguments"] = arguments.clone();
    let (instance, spec) = match cx.agents.pick_patiently(agent, action).await {
        Ok(found) => found,
        Err(e) => return Ok(refuse(entry, "error", e.to_string())),
    };
    let problems = spec.check(&arguments);
    if !problems.is_empty() {
        return Ok(refuse(
            entry,
            "invalid",
            format!(
                "the arguments do not fit the tool's schema: {}",
                problems.join("; ")
            ),
        ));
    }
    if mode == Mode::Manual || spec.permission > Permission::Read {
        let key = (turn, call.id.clone());
        let decision = match p.decisions.get(&key) {
            Some(d) => d.clone(),
            None => {
                let d = ask_approval(
                    cx,
                    agent,
                    action,
                    spec.permission,
                    &arguments,
                    turn,
                    call,
                    approval_wait,
                )
                .await?;
                p.decisions.insert(key, d.clone());
                d
            }
        };
        let (approved, by, comment) = decision;
        if !approved {
            let why = if by.is_empty() {
                "nobody approved it in time".to_owned()
            } else if comment.is_empty() {
                format!("rejected by {by}")
            } else {
                format!("rejected by {by}: {comment}")
            };
            return Ok(refuse(
                entry,
                "rejected",
                format!("the call was not made: {why}"),
            ));
        }
        entry["approved_by"] = json!(by);
    }
    let Json::Object(params) = arguments else {
        unreachable!("checked to be an object above")
    };
    let outcome = cx
        .agents
        .execute(
            &instance,
            &spec,
            ActionCall {
                execution_id: cx.run_id().to_owned(),
                step_id: cx.step_id().to_owned(),
                params,
                mode: super::agent::mode_wire(mode),
                context: BTreeMap::from([(
                    "idempotency_key".to_owned(),
                    format!("{}/{}/{turn}/{}", cx.run_id(), cx.step_id(), call.id),
                )]),
                time_range: None,
                tenant_id: plexus_agent::tenant_id(plexus_agent::DEFAULT_TENANT_SLUG),
                deadline: cx.timeout,
            },
        )
        .await;
    Ok(match outcome {
        plexus_core::machine::Outcome::Success(v) => {
            entry["status"] = json!("ok");
            entry["result"] = v;
            entry
        }
        plexus_core::machine::Outcome::Failure { error, .. } => refuse(entry, "error", error),
    })
}

/// Asks a person to approve a call, in the run's approvals inbox; the request and the
/// decision are journal entries (audited with the run). `(approved, by, comment)`; `by`
/// is empty when nobody decided in time.
#[allow(clippy::too_many_arguments)]
async fn ask_approval(
    cx: &LoopCtx<'_>,
    agent: &str,
    action: &str,
    permission: Permission,
    arguments: &Json,
    turn: u32,
    call: &ToolCall,
    wait: Duration,
) -> Result<(bool, String, String), String> {
    let permission_name = plexus_core::machine::permission_name(permission);
    cx.journal
        .append(json!({
            "type": "approval_requested", "turn": turn, "call": call.id,
            "agent": agent, "action": action, "permission": permission_name,
            "arguments": arguments,
        }))
        .await?;
    let _asking = cx.agents.approvals.calling(
        cx.run_id(),
        cx.step_id(),
        agent,
        std::time::Instant::now() + wait,
    );
    let mut context = Map::new();
    context.insert("tool_call".into(), json!(call.id));
    context.insert("action".into(), json!(format!("{agent}/{action}")));
    context.insert("arguments".into(), arguments.clone());
    let (_, decision) = cx
        .agents
        .approvals
        .request(
            cx.run_id(),
            agent,
            &format!(
                "the model asks to call {agent}/{action} ({permission_name}) with {arguments}"
            ),
            permission,
            Json::Object(context),
            wait,
            crate::now_ms(),
        )
        .await;
    let (approved, by, comment) = match decision {
        Some(d) => (d.approved, d.by, d.comment),
        None => (false, String::new(), String::new()),
    };
    cx.journal
        .append(json!({
            "type": "approval", "turn": turn, "call": call.id, "approved": approved,
            "by": by, "comment": comment,
        }))
        .await?;
    Ok((approved, by, comment))
}
