//! Provider plugins (plugin type PROVIDER): a model served over the agent protocol.
//! Chat calls are its `Execute` of the action `chat` (parameters `messages` — a JSON
//! string of the conversation in the chat completions API's shape —, `tools`, `model`,
//! `max_tokens`, `temperature`; result `content`, `model`, `finish_reason`,
//! `tool_calls` — a JSON string or a list —, `usage`); embeddings its `Embed`.

use super::{ActionCall, Agents};
use plexus_agent::wire;
use plexus_core::machine::Outcome;
use plexus_llm::stream::{Delta, Deltas, Opening};
use plexus_llm::{
    ChatRequest, ChatResponse, EmbedReply, Embeddings, Provider, ProviderError, Reply, Usage,
};
use serde_json::{Map, Value as Json, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// The action a provider plugin answers chat calls with.
pub const CHAT_ACTION: &str = "chat";

pub struct PluginProvider {
    agents: Agents,
    plugin: String,
    model: String,
}

impl PluginProvider {
    pub fn new(agents: Agents, plugin: &str, model: &str) -> PluginProvider {
        PluginProvider {
            agents,
            plugin: plugin.to_owned(),
            model: model.to_owned(),
        }
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> ProviderError {
        ProviderError::Transport(format!("provider plugin `{}`: {e}", self.plugin))
    }

    /// The `chat` parameters of a request (only those the action declares, when it does).
    fn params(&self, request: &ChatRequest, spec: &super::ActionSpec) -> Map<String, Json> {
        let messages: Vec<Json> = request
            .messages
            .iter()
            .map(plexus_llm::openai::wire_message)
            .collect();
        let model = request.model.clone().unwrap_or_else(|| self.model.clone());
        let mut params = Map::new();
        params.insert("messages".into(), json!(Json::Array(messages).to_string()));
        params.insert("model".into(), json!(model));
        if !request.tools.is_empty() {
            params.insert(
                "tools".into(),
                json!(serde_json::to_string(&request.tools).unwrap_or_default()),
            );
        }
        if let Some(m) = request.max_tokens {
            params.insert("max_tokens".into(), json!(m));
        }
        if let Some(t) = request.temperature {
            params.insert("temperature".into(), json!(t));
        }
        // Only what the action declares: a plugin's schema may not know every key.
        let declared: Vec<String> = spec.params.schema["properties"]
            .as_object()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        if !declared.is_empty() {
            params.retain(|k, _| declared.contains(k));
        }
        params
    }

    async fn chat_call(&self, request: ChatRequest) -> Result<ChatResponse, ProviderError> {
        let (instance, spec) = self
            .agents
            .pick_patiently(&self.plugin, CHAT_ACTION)
            .await
            .map_err(|e| self.unavailable(e))?;
        let model = request.model.clone().unwrap_or_else(|| self.model.clone());
        let params = self.params(&request, &spec);
        let call = ActionCall {
            execution_id: String::new(),
            step_id: String::new(),
            params,
            mode: wire::mode::AUTONOMOUS,
            context: BTreeMap::new(),
            time_range: None,
            tenant_id: plexus_agent::tenant_id(plexus_agent::DEFAULT_TENANT_SLUG),
            deadline: request.timeout,
        };
        let v = match self.agents.execute(&instance, &spec, call).await {
            Outcome::Success(v) => v,
            Outcome::Failure { error, .. } => return Err(self.unavailable(error)),
        };
        let content = v["content"].as_str().unwrap_or_default().to_owned();
        let calls = match &v["tool_calls"] {
            Json::String(s) if !s.trim().is_empty() => serde_json::from_str(s)
                .map_err(|e| ProviderError::Malformed(format!("`tool_calls` is not JSON: {e}")))?,
            other => other.clone(),
        };
        let tool_calls = plexus_llm::openai::read_tool_calls(&calls)?;
        let n = |k: &str| v["usage"][k].as_u64().unwrap_or(0);
        Ok(ChatResponse {
            content,
            tool_calls,
            model: v["model"].as_str().unwrap_or(&model).to_owned(),
            finish_reason: v["finish_reason"].as_str().unwrap_or("stop").to_owned(),
            usage: Usage {
                prompt_tokens: n("prompt_tokens"),
                completion_tokens: n("completion_tokens"),
                total_tokens: n("prompt_tokens") + n("completion_tokens"),
            },
        })
    }

    async fn embed_call(
        &self,
        model: Option<String>,
        inputs: Vec<String>,
        timeout: Duration,
    ) -> Result<Embeddings, ProviderError> {
        let (instance, _) = self
            .agents
            .pick_patiently(&self.plugin, CHAT_ACTION)
            .await
            .map_err(|e| self.unavailable(e))?;
        let super::Link::Plugin(peer) = &instance.link else {
            return Err(ProviderError::Config(format!(
                "`{}` is not a provider plugin",
                self.plugin
            )));
        };
        let model = model.unwrap_or_else(|| self.model.clone());
        let request = wire::EmbedRequest {
            model: model.clone(),
            inputs,
            tenant_id: plexus_agent::tenant_id(plexus_agent::DEFAULT_TENANT_SLUG),
        };
        let answer = peer
            .call("Embed", wire::encode(&request), timeout)
            .await
            .map_err(|e| self.unavailable(e))?;
        let answer: wire::EmbedResponse = wire::decode(answer)
            .map_err(|e| ProviderError::Malformed(format!("an Embed answer: {e}")))?;
        if !answer.error.is_empty() {
            return Err(self.unavailable(answer.error));
        }
        Ok(Embeddings {
            vectors: answer.vectors,
            model: if answer.model.is_empty() {
                model
            } else {
                answer.model
            },
            usage: Usage::default(),
        })
    }
}

impl Provider for PluginProvider {
    fn default_model(&self) -> &str {
        &self.model
    }

    fn chat(&self, request: ChatRequest) -> Reply<'_> {
        Box::pin(self.chat_call(request))
    }

    fn embed(
        &self,
        model: Option<String>,
        inputs: Vec<String>,
        timeout: Duration,
    ) -> EmbedReply<'_> {
        Box::pin(self.embed_call(model, inputs, timeout))
    }

    /// `ChatStream`: the plugin's pieces as they come. It says nothing of tool calls or
    /// usage, so a request with tools is answered whole (by `chat`).
    fn chat_stream(&self, request: ChatRequest) -> Opening<'_> {
        Box::pin(self.stream_call(request))
    }
}

impl PluginProvider {
    async fn stream_call(&self, request: ChatRequest) -> Result<Deltas, ProviderError> {
        if !request.tools.is_empty() {
            return self
                .chat_call(request)
                .await
                .map(plexus_llm::stream::of_reply);
        }
        let (instance, spec) = self
            .agents
            .pick_patiently(&self.plugin, CHAT_ACTION)
            .await
            .map_err(|e| self.unavailable(e))?;
        let super::Link::Plugin(peer) = &instance.link else {
            return Err(ProviderError::Config(format!(
                "`{}` is not a provider plugin",
                self.plugin
            )));
        };
        let model = request.model.clone().unwrap_or_else(|| self.model.clone());
        let params = self.params(&request, &spec);
        let body = wire::encode(&wire::ChatStreamRequest {
            params_json: wire::Blob::json(&Json::Object(params), instance.style),
            tenant_id: plexus_agent::tenant_id(plexus_agent::DEFAULT_TENANT_SLUG),
        });
        let pieces = peer
            .call_stream("ChatStream", body, request.timeout)
            .await
            .map_err(|e| self.unavailable(e))?;
        let plugin = self.plugin.clone();
        let idle = request.timeout;
        let failed =
            move |e: String| ProviderError::Transport(format!("provider plugin `{plugin}`: {e}"));
        let stream = futures_util::stream::unfold(Some(pieces), move |pieces| {
            let (failed, model) = (failed.clone(), model.clone());
            async move {
                let mut pieces = pieces?;
                let next = match tokio::time::timeout(idle, pieces.message()).await {
                    Err(_) => return Some((Err(failed(format!("no piece in {idle:?}"))), None)),
                    Ok(Err(status)) => return Some((Err(failed(status.to_string())), None)),
                    Ok(Ok(None)) => {
                        let e = failed("the stream ended before its last piece".into());
                        return Some((Err(e), None));
                    }
                    Ok(Ok(Some(v))) => v,
                };
                let piece: wire::ChatStreamResponse = match wire::decode(next) {
                    Ok(p) => p,
                    Err(e) => return Some((Err(failed(format!("a piece is garbled: {e}"))), None)),
                };
                if !piece.error.is_empty() {
                    return Some((Err(failed(piece.error)), None));
                }
                if piece.is_final {
                    let end = Delta::End {
                        finish_reason: "stop".into(),
                        usage: Usage::default(),
                        model,
                    };
                    return Some((Ok(end), None));
                }
                Some((Ok(Delta::Text(piece.token)), Some(pieces)))
            }
        });
        Ok(Box::pin(stream))
    }
}
