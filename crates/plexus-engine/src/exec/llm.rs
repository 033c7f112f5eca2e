//! `llm` steps: the rendered prompt sent to a provider (`provider:`, else the default),
//! the reply as the step's output. With `output_schema`, the reply must be a JSON value
//! that fits the schema: the model is asked again, with what was wrong, up to
//! [`REPAIRS`] times, and the parsed value is the output. The rendered request is in the
//! step's start event and the reply in its end event, so a completed call is never made
//! again after a crash.

use super::{AttemptCtx, AttemptFuture, AttemptResult, Executor};
use plexus_core::machine::{Outcome, Task, Work};
use plexus_llm::{ChatRequest, Message, Providers, Usage};
use serde_json::{Value as Json, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// How many times a reply that does not fit `output_schema` is sent back for repair.
pub const REPAIRS: usize = 2;

/// Deadline of a model call when the step sets no `timeout`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

pub struct LlmCalls {
    providers: Arc<Providers>,
    agents: crate::agents::Agents,
    store: Arc<dyn plexus_store::Store>,
}

impl LlmCalls {
    pub fn new(
        providers: Arc<Providers>,
        agents: crate::agents::Agents,
        store: Arc<dyn plexus_store::Store>,
    ) -> Self {
        LlmCalls {
            providers,
            agents,
            store,
        }
    }
}

/// Where a step's model calls are accounted: the run and step they belong to.
#[derive(Clone)]
pub(crate) struct Accounts {
    pub store: Option<Arc<dyn plexus_store::Store>>,
    pub run_id: String,
    pub step_id: String,
}

impl Accounts {
    /// Records one model call (tokens, cost by the price table) for the run's starter;
    /// in the background, as a failure to account must not fail the step.
    pub fn record(&self, providers: &Providers, provider: &str, model: &str, usage: Usage) {
        metrics::counter!("plexus_llm_requests_total", "provider" => provider.to_owned(), "source" => "step").increment(1);
        metrics::counter!("plexus_llm_tokens_total", "provider" => provider.to_owned(), "source" => "step")
            .increment(usage.total_tokens);
        let cost = providers.cost(provider, model, usage);
        metrics::counter!("plexus_llm_cost_microdollars_total", "provider" => provider.to_owned(), "source" => "step")
            .increment((cost * 1e6).round() as u64);
        let Some(store) = self.store.clone() else {
            return;
        };
        let record = plexus_store::LlmUsage {
            time: crate::now_ms(),
            actor: None,
            api_key: None,
            run_id: Some(self.run_id.clone()),
            step_id: Some(self.step_id.clone()),
            source: "step".into(),
            provider: provider.to_owned(),
            model: model.to_owned(),
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cost_usd: cost,
        };
        tokio::spawn(async move {
            if let Err(e) = store.record_llm_usage(record).await {
                tracing::warn!(error = %e, "a model call could not be accounted");
            }
        });
    }
}

/// Sets a step's `prompt` from the prompt template it names (`template:`, contributed by
/// an agent), rendered with its `vars` by the bounded template engine.
async fn resolve_template(spec: &mut Json, agents: &crate::agents::Agents) -> Result<(), String> {
    let Some(name) = spec["template"].as_str().map(str::to_owned) else {
        return Ok(());
    };
    if spec.get("prompt").is_some_and(|p| !p.is_null()) {
        return Err("an llm step takes a `prompt` or a `template`, not both".into());
    }
    if let Some((agent, _)) = name.split_once('/') {
        agents.knows_patiently(agent).await;
    }
    let content = agents
        .prompt_template(&name)
        .ok_or_else(|| format!("no registered agent offers the prompt template `{name}`"))?;
    let vars = match &spec["vars"] {
        Json::Null => json!({}),
        v => v.clone(),
    };
    let prompt =
        plexus_core::template::render_str(&content, &plexus_core::template::context_of(&vars))
            .map_err(|e| format!("the prompt template `{name}`: {e}"))?;
    spec["prompt"] = Json::String(prompt);
    Ok(())
}

/// A step's `fallbacks`: provider names.
pub(crate) fn fallbacks_of(spec: &Json) -> Result<Vec<String>, String> {
    let wrong = || "`fallbacks` is a list of provider names".to_owned();
    match &spec["fallbacks"] {
        Json::Null => Ok(Vec::new()),
        Json::Array(names) => names
            .iter()
            .map(|n| n.as_str().map(str::to_owned).ok_or_else(wrong))
            .collect(),
        _ => Err(wrong()),
    }
}

/// A step's `output_schema`, compiled.
pub(crate) struct Validator(jsonschema::Validator);

impl Validator {
    /// The step's validator, if it has an `output_schema`.
    pub fn of(spec: &Json) -> Result<Option<Validator>, String> {
        match spec.get("output_schema").filter(|s| !s.is_null()) {
            Some(s) => jsonschema::validator_for(s)
                .map(|v| Some(Validator(v)))
                .map_err(|e| format!("`output_schema` is not a valid JSON Schema: {e}")),
            None => Ok(None),
        }
    }

    /// The answer parsed, or what is wrong with it.
    pub fn check(&self, text: &str) -> Result<Json, String> {
        let value = parse_json(text)?;
        let errors: Vec<String> = self.0.iter_errors(&value).map(|e| e.to_string()).collect();
        if errors.is_empty() {
            Ok(value)
        } else {
            Err(errors.join("; "))
        }
    }
}

/// What the model is told when its answer does not fit the schema.
pub(crate) fn repair(problems: &str) -> Message {
    Message::new(
        "user",
        format!(
            "That answer does not fit the schema: {problems}. Answer again with only the JSON value."
        ),
    )
}

/// A reply as JSON: the text itself, or inside a ```json fence.
pub(crate) fn parse_json(text: &str) -> Result<Json, String> {
    let t = text.trim();
    let inner = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .and_then(|r| r.trim_end().strip_suffix("```"))
        .unwrap_or(t);
    serde_json::from_str(inner.trim()).map_err(|e| format!("the reply is not JSON ({e})"))
}

/// One reply as the journal keeps it.
fn reply_entry(round: usize, provider: &str, reply: &plexus_llm::ChatResponse) -> Json {
    json!({
        "type": "reply", "turn": round + 1, "provider": provider, "model": reply.model,
        "content": reply.content, "finish_reason": reply.finish_reason, "usage": reply.usage,
    })
}

/// A journaled reply read back.
fn reply_of(entry: &Json) -> plexus_llm::ChatResponse {
    plexus_llm::ChatResponse {
        content: entry["content"].as_str().unwrap_or_default().to_owned(),
        tool_calls: Vec::new(),
        model: entry["model"].as_str().unwrap_or_default().to_owned(),
        finish_reason: entry["finish_reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        usage: serde_json::from_value(entry["usage"].clone()).unwrap_or_default(),
    }
}

/// Asks the model (and again, with what was wrong, while the reply does not fit
/// `output_schema`). Each reply is a journal entry before it is used, so an attempt after
/// a crash reads the replies already made (`prior`) instead of asking again.
async fn call(
    providers: &Providers,
    accounts: &Accounts,
    journal: &super::Journal,
    prior: &[Json],
    spec: &Json,
    timeout: Duration,
) -> Result<(Json, Usage), String> {
    let prompt = spec["prompt"]
        .as_str()
        .filter(|p| !p.trim().is_empty())
        .ok_or("an llm step needs a `prompt` (or `llm: \"text\"`)")?;
    // Fails now, with a clear message, when there is no such provider.
    providers.pick(spec["provider"].as_str())?;
    let fallbacks = fallbacks_of(spec)?;
    let schema = spec.get("output_schema").filter(|s| !s.is_null());
    let validator = Validator::of(spec)?;
    let mut messages = Vec::new();
    if let Some(system) = spec["system"].as_str() {
        messages.push(Message::new("system", system));
    }
    let mut user = prompt.to_owned();
    if let Some(s) = schema {
        user.push_str(&format!(
            "\n\nAnswer with only a JSON value that fits this JSON Schema:\n{s}"
        ));
    }
    messages.push(Message::new("user", user));
    let mut usage = Usage::default();
    for round in 0..=REPAIRS {
        let request = ChatRequest {
            model: spec["model"].as_str().map(str::to_owned),
            messages: messages.clone(),
            max_tokens: spec["max_tokens"].as_u64().map(|n| n as u32),
            temperature: spec["temperature"].as_f64(),
            json: schema.is_some_and(|s| s["type"] == "object"),
            tools: Vec::new(),
            timeout,
        };
        let replies: Vec<&Json> = prior.iter().filter(|e| e["type"] == "reply").collect();
        let (name, reply) = match replies.get(round) {
            Some(entry) => (
                entry["provider"].as_str().unwrap_or_default().to_owned(),
                reply_of(entry),
            ),
            None => {
                let (name, reply) = providers
                    .chat_routed(spec["provider"].as_str(), &fallbacks, request)
                    .await?;
                accounts.record(providers, &name, &reply.model, reply.usage);
                journal.append(reply_entry(round, &name, &reply)).await?;
                (name, reply)
            }
        };
        usage += reply.usage;
        let Some(validator) = &validator else {
            let output = json!({
                "text": reply.content,
                "model": reply.model,
                "finish_reason": reply.finish_reason,
                "usage": reply.usage,
            });
            return Ok((output, usage));
        };
        let problems = match validator.check(&reply.content) {
            Ok(value) => return Ok((value, usage)),
            Err(problems) => problems,
        };
        tracing::info!(provider = %name, round, %problems, "the reply does not fit output_schema: asking again");
        if round == REPAIRS {
            return Err(format!(
                "the reply did not fit `output_schema` after {REPAIRS} repairs: {problems}"
            ));
        }
        messages.push(Message::new("assistant", reply.content));
        messages.push(repair(&problems));
    }
    unreachable!("the loop returns")
}

impl Executor for LlmCalls {
    fn name(&self) -> &'static str {
        "llm"
    }

    fn start(&self, task: Task, ctx: AttemptCtx, mut kill: oneshot::Receiver<()>) -> AttemptFuture {
        let providers = self.providers.clone();
        let agents = self.agents.clone();
        let accounts = Accounts {
            store: Some(self.store.clone()),
            run_id: ctx.run_id.to_string(),
            step_id: task.step_id.clone(),
        };
        Box::pin(async move {
            let Work::Llm(mut work) = task.work else {
                return AttemptResult::failed("not an llm step");
            };
            if let Err(e) = resolve_template(&mut work.spec, &agents).await {
                return AttemptResult::failed(e);
            }
            let timeout = task.timeout.unwrap_or(DEFAULT_TIMEOUT);
            if !work.spec["tools"].is_null() {
                let cx = super::llm_loop::LoopCtx {
                    providers: &providers,
                    agents: &agents,
                    journal: &ctx.journal,
                    accounts: &accounts,
                    timeout,
                };
                let answer = tokio::select! {
                    answer = super::llm_loop::run(cx, &work) => answer,
                    _ = &mut kill => return AttemptResult::failed("cancelled"),
                };
                let mut result = match answer {
                    Ok(output) => AttemptResult::of(Outcome::Success(output)),
                    Err((error, output)) => AttemptResult::of(Outcome::Failure { error, output }),
                };
                let (Outcome::Success(out) | Outcome::Failure { output: out, .. }) =
                    &result.outcome;
                result.usage = out["usage"].clone();
                return result;
            }
            let spec = work.spec;
            let answer = tokio::select! {
                answer = call(&providers, &accounts, &ctx.journal, &work.journal, &spec, timeout) => answer,
                _ = &mut kill => return AttemptResult::failed("cancelled"),
            };
            match answer {
                Ok((output, usage)) => {
                    let mut result = AttemptResult::of(Outcome::Success(output));
                    result.usage = serde_json::to_value(usage).unwrap_or(Json::Null);
                    result
                }
                Err(e) => AttemptResult::failed(e),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::Journal;
    use plexus_llm::{ChatResponse, Provider, Reply};
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// Answers from a script, one reply per call, and keeps what it was asked.
    struct Scripted {
        replies: Mutex<Vec<String>>,
        asked: Mutex<Vec<Vec<Message>>>,
    }

    impl Provider for Scripted {
        fn default_model(&self) -> &str {
            "scripted"
        }
        fn chat(&self, request: ChatRequest) -> Reply<'_> {
            self.asked.lock().unwrap().push(request.messages);
            let content = self.replies.lock().unwrap().remove(0);
            Box::pin(async move {
                Ok(ChatResponse {
                    content,
                    tool_calls: Vec::new(),
                    model: "scripted".into(),
                    finish_reason: "stop".into(),
                    usage: Usage {
                        prompt_tokens: 10,
                        completion_tokens: 5,
                        total_tokens: 15,
                    },
                })
            })
        }
    }

    fn no_accounts() -> Accounts {
        Accounts {
            store: None,
            run_id: "r".into(),
            step_id: "s".into(),
        }
    }

    fn providers(replies: &[&str]) -> (Providers, Arc<Scripted>) {
        let scripted = Arc::new(Scripted {
            replies: Mutex::new(replies.iter().map(|r| r.to_string()).collect()),
            asked: Mutex::default(),
        });
        let p = Providers::default();
        p.set(
            BTreeMap::from([("s".to_owned(), scripted.clone() as Arc<dyn Provider>)]),
            None,
        );
        (p, scripted)
    }

    #[tokio::test]
    async fn a_reply_is_the_text_or_the_value_that_fits_the_schema_after_repairs() {
        let (p, _) = providers(&["hello"]);
        let (out, usage) = call(
            &p,
            &no_accounts(),
            &Journal::memory(Default::default()),
            &[],
            &json!({"prompt": "hi", "system": "be brief"}),
            DEFAULT_TIMEOUT,
        )
        .await
        .unwrap();
        assert_eq!(out["text"], "hello");
        assert_eq!(usage.total_tokens, 15);

        let schema = json!({"type": "object", "required": ["action"], "properties": {"action": {"enum": ["restart", "none"]}}});
        let (p, s) = providers(&[
            "not json",
            "{\"action\": \"reboot\"}",
            "```json\n{\"action\": \"restart\"}\n```",
        ]);
        let (out, usage) = call(
            &p,
            &no_accounts(),
            &Journal::memory(Default::default()),
            &[],
            &json!({"prompt": "what now?", "output_schema": schema}),
            DEFAULT_TIMEOUT,
        )
        .await
        .unwrap();
        assert_eq!(out, json!({"action": "restart"}));
        assert_eq!(usage.total_tokens, 45, "every round counts");
        let last = s.asked.lock().unwrap().last().unwrap().clone();
        assert!(
            last.last()
                .unwrap()
                .content
                .contains("does not fit the schema")
        );

        let (p, _) = providers(&["x", "y", "z"]);
        let e = call(
            &p,
            &no_accounts(),
            &Journal::memory(Default::default()),
            &[],
            &json!({"prompt": "q", "output_schema": schema}),
            DEFAULT_TIMEOUT,
        )
        .await
        .unwrap_err();
        assert!(e.contains("after 2 repairs"), "{e}");
        let (p, _) = providers(&[]);
        assert!(
            call(
                &p,
                &no_accounts(),
                &Journal::memory(Default::default()),
                &[],
                &json!({}),
                DEFAULT_TIMEOUT
            )
            .await
            .unwrap_err()
            .contains("needs a `prompt`")
        );
    }

    #[tokio::test]
    async fn replies_in_the_journal_are_not_asked_for_again() {
        let schema = json!({"type": "object", "required": ["action"]});
        let spec = json!({"prompt": "what now?", "output_schema": schema});
        // The first reply was made before a crash and journaled; only the repair is asked.
        let (p, s) = providers(&["{\"action\": \"wait\"}"]);
        let first = ChatResponse {
            content: "not json".into(),
            tool_calls: Vec::new(),
            model: "scripted".into(),
            finish_reason: "stop".into(),
            usage: Usage {
                prompt_tokens: 1,
                completion_tokens: 1,
                total_tokens: 2,
            },
        };
        let prior = vec![reply_entry(0, "s", &first)];
        let entries = std::sync::Arc::new(Mutex::new(Vec::new()));
        let (out, usage) = call(
            &p,
            &no_accounts(),
            &Journal::memory(entries.clone()),
            &prior,
            &spec,
            DEFAULT_TIMEOUT,
        )
        .await
        .unwrap();
        assert_eq!(out, json!({"action": "wait"}));
        assert_eq!(usage.total_tokens, 2 + 15, "the replayed reply counts too");
        let asked = s.asked.lock().unwrap();
        assert_eq!(asked.len(), 1, "only the repair was asked");
        assert_eq!(
            asked[0][1].content, "not json",
            "the journaled reply is in the conversation"
        );
        let entries = entries.lock().unwrap();
        assert_eq!(entries.len(), 1, "the new reply is journaled");
        assert_eq!(entries[0]["turn"], 2);
    }
}
