//! The OpenAI chat completions API (`POST {base_url}/chat/completions`), as OpenAI,
//! Ollama's `/v1`, vLLM, llama.cpp's server, LM Studio and OpenRouter serve it.

use crate::stream::{Delta, Deltas, Opening};
use crate::{
    ChatRequest, ChatResponse, EmbedReply, Embeddings, Message, Provider, ProviderError, Reply,
    ToolCall, Usage,
};
use serde_json::{Value as Json, json};
use std::sync::Arc;
use std::time::Duration;

pub struct OpenAiCompatible {
    base: String,
    endpoint: String,
    model: String,
    api_key: Option<String>,
    http: reqwest::Client,
}

fn tls() -> Result<rustls::ClientConfig, ProviderError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ProviderError::Config(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// Sends a request and reads its JSON answer; an error status becomes
/// [`ProviderError::Http`] with the API's own message (`error.message`, which OpenAI and
/// Anthropic both use) and what `Retry-After` said.
pub(crate) async fn send(
    call: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<Json, ProviderError> {
    let answer = open(call, timeout).await?;
    let text = answer
        .text()
        .await
        .map_err(|e| ProviderError::Transport(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| ProviderError::Malformed(format!("not JSON: {e}")))
}

/// Sends a request and waits (up to `timeout`) for its answer's head; an error status
/// becomes [`ProviderError::Http`] as [`send`] says. The body is left to be read.
pub(crate) async fn open(
    call: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<reqwest::Response, ProviderError> {
    let answer = tokio::time::timeout(timeout, call.send())
        .await
        .map_err(|_| ProviderError::Timeout(timeout))?
        .map_err(|e| {
            if e.is_timeout() {
                ProviderError::Timeout(timeout)
            } else {
                ProviderError::Transport(e.to_string())
            }
        })?;
    let status = answer.status();
    let retry_after = answer
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    if !status.is_success() {
        let text = answer.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Json>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| text.chars().take(300).collect());
        return Err(ProviderError::Http {
            status: status.as_u16(),
            message,
            retry_after,
        });
    }
    Ok(answer)
}

/// An HTTP client on the workspace's one TLS configuration (ring, the system's roots).
pub fn http_client() -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls()?)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| ProviderError::Config(e.to_string()))
}

impl OpenAiCompatible {
    pub fn new(
        base_url: &str,
        model: &str,
        api_key: Option<String>,
    ) -> Result<Self, ProviderError> {
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(ProviderError::Config(format!(
                "base_url `{base_url}` is not an http:// or https:// URL"
            )));
        }
        let http = http_client()?;
        Ok(OpenAiCompatible {
            base: base_url.trim_end_matches('/').to_owned(),
            endpoint: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            model: model.to_owned(),
            api_key,
            http,
        })
    }

    /// The request's body as the API takes it.
    fn body(&self, request: &ChatRequest) -> Json {
        let mut body = json!({
            "model": request.model.as_deref().unwrap_or(&self.model),
            "messages": request.messages.iter().map(wire_message).collect::<Vec<_>>(),
        });
        if !request.tools.is_empty() {
            body["tools"] = request
                .tools
                .iter()
                .map(|t| {
                    json!({"type": "function", "function": {
                        "name": t.name, "description": t.description, "parameters": t.parameters,
                    }})
                })
                .collect();
        }
        if let Some(m) = request.max_tokens {
            body["max_tokens"] = json!(m);
        }
        if let Some(t) = request.temperature {
            body["temperature"] = json!(t);
        }
        if request.json {
            body["response_format"] = json!({"type": "json_object"});
        }
        body
    }

    fn post(&self, body: &Json) -> reqwest::RequestBuilder {
        let call = self.http.post(&self.endpoint).json(body);
        match &self.api_key {
            Some(key) => call.bearer_auth(key),
            None => call,
        }
    }

    async fn call(&self, request: ChatRequest) -> Result<ChatResponse, ProviderError> {
        let body = self.body(&request);
        let call = self.post(&body).timeout(request.timeout);
        let v = send(call, request.timeout).await?;
        let choice = &v["choices"][0];
        let message = &choice["message"];
        let tool_calls = read_tool_calls(&message["tool_calls"])?;
        // A reply that only calls tools has a null content.
        let content = match &message["content"] {
            Json::String(s) => s.clone(),
            Json::Null if !tool_calls.is_empty() => String::new(),
            _ => {
                return Err(ProviderError::Malformed(
                    "no choices[0].message.content".into(),
                ));
            }
        };
        let usage = &v["usage"];
        let n = |k: &str| usage[k].as_u64().unwrap_or(0);
        Ok(ChatResponse {
            content,
            tool_calls,
            model: v["model"].as_str().unwrap_or(&self.model).to_owned(),
            finish_reason: choice["finish_reason"].as_str().unwrap_or("").to_owned(),
            usage: Usage {
                prompt_tokens: n("prompt_tokens"),
                completion_tokens: n("completion_tokens"),
                total_tokens: n("total_tokens"),
            },
        })
    }
}

impl Provider for OpenAiCompatible {
    fn default_model(&self) -> &str {
        &self.model
    }

    fn chat(&self, request: ChatRequest) -> Reply<'_> {
        Box::pin(self.call(request))
    }

    fn embed(
        &self,
        model: Option<String>,
        inputs: Vec<String>,
        timeout: Duration,
    ) -> EmbedReply<'_> {
        Box::pin(async move {
            let model = model.unwrap_or_else(|| self.model.clone());
            let mut call = self
                .http
                .post(format!("{}/embeddings", self.base))
                .json(&json!({"model": model, "input": inputs, "encoding_format": "float"}))
                .timeout(timeout);
            if let Some(key) = &self.api_key {
                call = call.bearer_auth(key);
            }
            let v = send(call, timeout).await?;
            let mut data: Vec<&Json> = v["data"]
                .as_array()
                .ok_or_else(|| ProviderError::Malformed("no `data`".into()))?
                .iter()
                .collect();
            data.sort_by_key(|d| d["index"].as_u64().unwrap_or(0));
            let vectors = data
                .iter()
                .map(|d| {
                    d["embedding"]
                        .as_array()
                        .map(|e| e.iter().map(|x| x.as_f64().unwrap_or(0.0) as f32).collect())
                        .ok_or_else(|| {
                            ProviderError::Malformed("an embedding is not a list".into())
                        })
                })
                .collect::<Result<Vec<Vec<f32>>, _>>()?;
            let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
            Ok(Embeddings {
                vectors,
                model: v["model"].as_str().unwrap_or(&model).to_owned(),
                usage: Usage {
                    prompt_tokens: prompt,
                    completion_tokens: 0,
                    total_tokens: v["usage"]["total_tokens"].as_u64().unwrap_or(prompt),
                },
            })
        })
    }

    fn chat_stream(&self, request: ChatRequest) -> Opening<'_> {
        Box::pin(async move {
            let mut body = self.body(&request);
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
            let answer = open(self.post(&body), request.timeout).await?;
            Ok(read_stream(answer, request.timeout, self.model.clone()))
        })
    }
}

/// The pieces of a streamed chat completion (server-sent events of chunks, then
/// `[DONE]`); a stream silent for `idle` fails.
fn read_stream(answer: reqwest::Response, idle: Duration, model: String) -> Deltas {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;
    let events = answer.bytes_stream().eventsource();
    let state = (
        Box::pin(events),
        model,
        String::new(),
        Usage::default(),
        false,
    );
    Box::pin(
        futures_util::stream::unfold(
            state,
            move |(mut events, mut model, mut finish, mut usage, done)| async move {
                if done {
                    return None;
                }
                loop {
                    let next = match tokio::time::timeout(idle, events.next()).await {
                        Err(_) => {
                            let e = ProviderError::Timeout(idle);
                            return Some((vec![Err(e)], (events, model, finish, usage, true)));
                        }
                        Ok(n) => n,
                    };
                    let event = match next {
                        None => None,
                        Some(Err(e)) => {
                            let e = ProviderError::Transport(e.to_string());
                            return Some((vec![Err(e)], (events, model, finish, usage, true)));
                        }
                        Some(Ok(event)) if event.data.trim() == "[DONE]" => None,
                        Some(Ok(event)) => Some(event),
                    };
                    let Some(event) = event else {
                        let end = Delta::End {
                            finish_reason: finish.clone(),
                            usage,
                            model: model.clone(),
                        };
                        return Some((vec![Ok(end)], (events, model, finish, usage, true)));
                    };
                    let chunk: Json = match serde_json::from_str(&event.data) {
                        Ok(v) => v,
                        Err(e) => {
                            let e = ProviderError::Malformed(format!("a chunk is not JSON: {e}"));
                            return Some((vec![Err(e)], (events, model, finish, usage, true)));
                        }
                    };
                    if let Some(m) = chunk["model"].as_str() {
                        model = m.to_owned();
                    }
                    if chunk["usage"].is_object() {
                        let n = |k: &str| chunk["usage"][k].as_u64().unwrap_or(0);
                        usage = Usage {
                            prompt_tokens: n("prompt_tokens"),
                            completion_tokens: n("completion_tokens"),
                            total_tokens: n("total_tokens"),
                        };
                    }
                    let choice = &chunk["choices"][0];
                    if let Some(f) = choice["finish_reason"].as_str() {
                        finish = f.to_owned();
                    }
                    let mut out = Vec::new();
                    if let Some(t) = choice["delta"]["content"]
                        .as_str()
                        .filter(|t| !t.is_empty())
                    {
                        out.push(Ok(Delta::Text(t.to_owned())));
                    }
                    for (i, c) in choice["delta"]["tool_calls"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .enumerate()
                    {
                        out.push(Ok(Delta::ToolCall {
                            index: c["index"].as_u64().map_or(i, |n| n as usize),
                            id: c["id"].as_str().unwrap_or_default().to_owned(),
                            name: c["function"]["name"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                            arguments: c["function"]["arguments"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                        }));
                    }
                    if !out.is_empty() {
                        return Some((out, (events, model, finish, usage, false)));
                    }
                }
            },
        )
        .flat_map(futures_util::stream::iter),
    )
}

/// A message as the chat completions API writes it (tool calls as functions whose
/// arguments are a JSON string).
pub fn wire_message(m: &Message) -> Json {
    let mut v = json!({"role": m.role, "content": m.content});
    if !m.tool_calls.is_empty() {
        v["tool_calls"] = m
            .tool_calls
            .iter()
            .map(|c| {
                json!({"id": c.id, "type": "function",
                       "function": {"name": c.name, "arguments": c.arguments}})
            })
            .collect();
        if m.content.is_empty() {
            v["content"] = Json::Null;
        }
    }
    if let Some(id) = &m.tool_call_id {
        v["tool_call_id"] = json!(id);
    }
    v
}

/// A message as a client of the chat completions API sent it.
pub fn read_message(v: &Json) -> Result<Message, String> {
    let role = v["role"]
        .as_str()
        .ok_or("each message needs a `role`")?
        .to_owned();
    let content = match &v["content"] {
        Json::String(s) => s.clone(),
        Json::Null => String::new(),
        // Content parts: the text ones, joined.
        Json::Array(parts) => parts
            .iter()
            .filter(|p| p["type"] == "text")
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => return Err("a message's `content` is a string or a list of parts".into()),
    };
    Ok(Message {
        role,
        content,
        tool_calls: read_tool_calls(&v["tool_calls"]).map_err(|e| e.to_string())?,
        tool_call_id: v["tool_call_id"].as_str().map(str::to_owned),
    })
}

/// `tool_calls` as the API writes them (absent or null: none).
pub fn read_tool_calls(v: &Json) -> Result<Vec<ToolCall>, ProviderError> {
    let Some(calls) = v.as_array() else {
        return Ok(Vec::new());
    };
    calls
        .iter()
        .map(|c| {
            let f = &c["function"];
            let name = f["name"]
                .as_str()
                .ok_or_else(|| ProviderError::Malformed("a tool call without a name".into()))?;
            Ok(ToolCall {
                id: c["id"].as_str().unwrap_or_default().to_owned(),
                name: name.to_owned(),
                arguments: match &f["arguments"] {
                    Json::String(s) => s.clone(),
                    Json::Null => "{}".to_owned(),
                    other => other.to_string(),
                },
            })
        })
        .collect()
}
