//! LLM providers behind one trait, and the set of them an engine knows.
//!
//! [`Provider::chat`] sends messages and answers the model's reply with its usage.
//! [`openai::OpenAiCompatible`] speaks the OpenAI chat completions API, which OpenAI,
//! Ollama's `/v1`, vLLM, llama.cpp's server, LM Studio and OpenRouter all serve;
//! [`anthropic::Anthropic`] the Anthropic Messages API. [`route`] retries, falls back
//! and skips providers that keep failing.
//! Providers are configured at run time (settings `providers.<name>`, see
//! [`ProviderConfig`]) and held in [`Providers`].

pub mod anthropic;
pub mod openai;
pub mod route;
pub mod stream;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool` (a tool's result).
    pub role: String,
    #[serde(default)]
    pub content: String,
    /// The tools an `assistant` message asks to call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Message {
        Message {
            role: role.to_owned(),
            content: content.into(),
            ..Message::default()
        }
    }

    /// A tool's result, answering the call `id`.
    pub fn tool_result(id: &str, content: impl Into<String>) -> Message {
        Message {
            role: "tool".to_owned(),
            content: content.into(),
            tool_call_id: Some(id.to_owned()),
            ..Message::default()
        }
    }
}

/// A tool a model may call: a name, what it does, and its parameters as JSON Schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub parameters: serde_json::Value,
}

/// A call a model asks for. `arguments` is the model's text, which should be a JSON
/// object but need not be: callers check it before acting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// What to ask a model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatRequest {
    /// The model; the provider's own when `None`.
    pub model: Option<String>,
    pub messages: Vec<Message>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    /// Ask for a JSON object as the answer (where the provider supports it).
    pub json: bool,
    /// Tools the model may call; its reply's `tool_calls` name them.
    pub tools: Vec<Tool>,
    pub timeout: Duration,
}

/// Tokens a call consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
    }
}

/// The limits of a tool-calling loop: the settings `budgets.agentic_max_iterations`,
/// `budgets.agentic_max_tool_calls` and `budgets.agentic_max_tokens`. A step or a
/// workflow may set lower ones, never higher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// Model calls.
    pub max_iterations: u32,
    /// Tool calls, including refused and invalid ones.
    pub max_tool_calls: u32,
    /// Tokens, prompt and completion, over every model call.
    pub max_tokens: u64,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_iterations: 10,
            max_tool_calls: 15,
            max_tokens: 50_000,
        }
    }
}

impl Budget {
    /// This budget lowered (never raised) by `max_iterations`, `max_tool_calls` and
    /// `max_tokens` in `overrides` (a step's or a workflow's `budget:`).
    pub fn lowered_by(self, overrides: &serde_json::Value) -> Budget {
        let n = |k: &str| overrides.get(k).and_then(serde_json::Value::as_u64);
        Budget {
            max_iterations: n("max_iterations")
                .map_or(self.max_iterations, |v| self.max_iterations.min(v as u32)),
            max_tool_calls: n("max_tool_calls")
                .map_or(self.max_tool_calls, |v| self.max_tool_calls.min(v as u32)),
            max_tokens: n("max_tokens").map_or(self.max_tokens, |v| self.max_tokens.min(v)),
        }
    }
}

/// What models cost: USD per million prompt and completion tokens, by `provider/model`
/// or by model (the setting `llm.prices`: `{"gpt-4o-mini": {"prompt": 0.15,
/// "completion": 0.6}}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Prices(pub BTreeMap<String, Price>);

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    #[serde(default)]
    pub prompt: f64,
    #[serde(default)]
    pub completion: f64,
}

impl Prices {
    /// What `usage` of `provider`'s `model` cost; 0 when the table has no price for it.
    pub fn cost(&self, provider: &str, model: &str, usage: Usage) -> f64 {
        let price = self
            .0
            .get(&format!("{provider}/{model}"))
            .or_else(|| self.0.get(model))
            .copied()
            .unwrap_or_default();
        (usage.prompt_tokens as f64 * price.prompt
            + usage.completion_tokens as f64 * price.completion)
            / 1_000_000.0
    }
}

/// A model's reply.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    pub content: String,
    /// Tools the model asks to call (`finish_reason` is then `tool_calls`).
    pub tool_calls: Vec<ToolCall>,
    pub model: String,
    pub finish_reason: String,
    pub usage: Usage,
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    #[error("the provider answered {status}: {message}")]
    Http {
        status: u16,
        message: String,
        /// What `Retry-After` said, when it did.
        retry_after: Option<Duration>,
    },
    #[error("no answer in {0:?}")]
    Timeout(Duration),
    #[error("cannot reach the provider: {0}")]
    Transport(String),
    #[error("the provider's answer is not what the API describes: {0}")]
    Malformed(String),
    #[error("{0}")]
    Config(String),
}

/// Vectors for texts, in their order, with the tokens they took.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub model: String,
    pub usage: Usage,
}

/// A future of embeddings.
pub type EmbedReply<'a> =
    Pin<Box<dyn Future<Output = Result<Embeddings, ProviderError>> + Send + 'a>>;

/// A future of a call's result.
pub type Reply<'a> = Pin<Box<dyn Future<Output = Result<ChatResponse, ProviderError>> + Send + 'a>>;

/// A source of completions.
pub trait Provider: Send + Sync {
    /// The model used when a request names none.
    fn default_model(&self) -> &str;
    fn chat(&self, request: ChatRequest) -> Reply<'_>;
    /// Vectors for `inputs` (with `model`, else the provider's own).
    fn embed(
        &self,
        model: Option<String>,
        inputs: Vec<String>,
        timeout: Duration,
    ) -> EmbedReply<'_> {
        let _ = (model, inputs, timeout);
        Box::pin(async {
            Err(ProviderError::Config(
                "this provider does not make embeddings".into(),
            ))
        })
    }

    /// The reply as it is written; by default, the whole reply at once.
    fn chat_stream(&self, request: ChatRequest) -> stream::Opening<'_> {
        Box::pin(async move { self.chat(request).await.map(stream::of_reply) })
    }
}

/// A provider as configured (the setting `providers.<name>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// `openai` (any OpenAI-compatible API), `anthropic` (the Messages API) or `plugin`
    /// (a provider plugin over the agent protocol, built by the engine).
    pub kind: String,
    /// The API's base, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:11434/v1`
    /// (not for `plugin`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub base_url: String,
    /// The provider plugin's name (`plugin` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    pub model: String,
    /// Sealed in the store (its name says secret); absent for local servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

impl ProviderConfig {
    /// The provider this describes.
    pub fn build(&self) -> Result<Arc<dyn Provider>, ProviderError> {
        match self.kind.as_str() {
            "openai" => Ok(Arc::new(openai::OpenAiCompatible::new(
                &self.base_url,
                &self.model,
                self.api_key.clone(),
            )?)),
            "anthropic" => Ok(Arc::new(anthropic::Anthropic::new(
                &self.base_url,
                &self.model,
                self.api_key.clone(),
            )?)),
            "plugin" => Err(ProviderError::Config(
                "a provider plugin is reached through the engine's agents".into(),
            )),
            other => Err(ProviderError::Config(format!(
                "unknown provider kind `{other}`: kinds are `openai` (any OpenAI-compatible API), `anthropic` and `plugin`"
            ))),
        }
    }
}

/// The providers an engine knows, and which one is the default.
#[derive(Default)]
pub struct Providers {
    known: RwLock<BTreeMap<String, Arc<dyn Provider>>>,
    default: RwLock<Option<String>>,
    /// Which providers are skipped for now after repeated failures.
    pub breakers: route::Breakers,
    budget: RwLock<Budget>,
    prices: RwLock<Prices>,
}

impl Providers {
    /// Replaces every provider (from the settings) and the default.
    pub fn set(&self, providers: BTreeMap<String, Arc<dyn Provider>>, default: Option<String>) {
        if let Ok(mut k) = self.known.write() {
            *k = providers;
        }
        if let Ok(mut d) = self.default.write() {
            *d = default;
        }
    }

    /// Sets the limits of tool-calling loops (from the settings).
    pub fn set_budget(&self, budget: Budget) {
        if let Ok(mut b) = self.budget.write() {
            *b = budget;
        }
    }

    /// Sets the price table (from the settings).
    pub fn set_prices(&self, prices: Prices) {
        if let Ok(mut p) = self.prices.write() {
            *p = prices;
        }
    }

    /// What `usage` of `provider`'s `model` cost by the price table.
    pub fn cost(&self, provider: &str, model: &str, usage: Usage) -> f64 {
        self.prices
            .read()
            .map(|p| p.cost(provider, model, usage))
            .unwrap_or(0.0)
    }

    pub fn budget(&self) -> Budget {
        self.budget.read().map(|b| *b).unwrap_or_default()
    }

    pub fn names(&self) -> Vec<String> {
        self.known
            .read()
            .map(|k| k.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The provider `name`, or the default: the one named by `llm.default_provider`, or
    /// the only one there is.
    pub fn pick(&self, name: Option<&str>) -> Result<(String, Arc<dyn Provider>), String> {
        let known = self
            .known
            .read()
            .map_err(|_| "providers unavailable".to_owned())?;
        let name = match name {
            Some(n) => n.to_owned(),
            None => match self.default.read().ok().and_then(|d| d.clone()) {
                Some(d) => d,
                None if known.len() == 1 => known.keys().next().cloned().unwrap_or_default(),
                None if known.is_empty() => {
                    return Err(
                        "no LLM provider is configured: plexus provider add NAME --kind openai --base-url URL --model MODEL"
                            .to_owned(),
                    );
                }
                None => {
                    return Err(format!(
                        "several providers are configured ({}) and none is the default: name one with `provider:` or set llm.default_provider",
                        known.keys().cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
            },
        };
        known
            .get(&name)
            .map(|p| (name.clone(), p.clone()))
            .ok_or_else(|| {
                format!(
                    "no LLM provider `{name}` is configured (configured: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl Provider for Fixed {
        fn default_model(&self) -> &str {
            "m"
        }
        fn chat(&self, _r: ChatRequest) -> Reply<'_> {
            Box::pin(async { Err(ProviderError::Config("not used".into())) })
        }
    }

    #[test]
    fn the_default_is_the_named_one_or_the_only_one() {
        let p = Providers::default();
        assert!(
            p.pick(None)
                .err()
                .unwrap()
                .contains("no LLM provider is configured")
        );
        let one: Arc<dyn Provider> = Arc::new(Fixed);
        p.set(BTreeMap::from([("a".to_owned(), one.clone())]), None);
        assert_eq!(p.pick(None).unwrap().0, "a");
        p.set(
            BTreeMap::from([("a".to_owned(), one.clone()), ("b".to_owned(), one.clone())]),
            None,
        );
        assert!(p.pick(None).err().unwrap().contains("none is the default"));
        p.set(
            BTreeMap::from([("a".to_owned(), one.clone()), ("b".to_owned(), one)]),
            Some("b".into()),
        );
        assert_eq!(p.pick(None).unwrap().0, "b");
        assert_eq!(p.pick(Some("a")).unwrap().0, "a");
        assert!(
            p.pick(Some("c"))
                .err()
                .unwrap()
                .contains("no LLM provider `c`")
        );
    }
}
