//! The Anthropic Messages API (`POST {base_url}/messages`, `x-api-key`,
//! `anthropic-version`): the system prompt apart from the messages, `max_tokens` required.

use crate::stream::{Delta, Deltas, Opening};
use crate::{ChatRequest, ChatResponse, Message, Provider, ProviderError, Reply, ToolCall, Usage};
use serde_json::{Value as Json, json};

/// The API version this client speaks.
const VERSION: &str = "2023-06-01";
/// `max_tokens` when a request sets none (the API requires one).
const DEFAULT_MAX_TOKENS: u32 = 1024;

pub struct Anthropic {
    endpoint: String,
    model: String,
    api_key: Option<String>,
    http: reqwest::Client,
}

impl Anthropic {
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
        Ok(Anthropic {
            endpoint: format!("{}/messages", base_url.trim_end_matches('/')),
            model: model.to_owned(),
            api_key,
            http: crate::openai::http_client()?,
        })
    }

    /// The request's body as the API takes it.
    fn body(&self, request: &ChatRequest) -> Json {
        let system: Vec<&str> = request
            .messages
            .iter()
            .filter(|m| m.role == "system")
            .map(|m| m.content.as_str())
            .collect();
        let messages = wire_messages(&request.messages);
        let mut body = json!({
            "model": request.model.as_deref().unwrap_or(&self.model),
            "max_tokens": request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            "messages": messages,
        });
        if !system.is_empty() {
            body["system"] = json!(system.join("\n\n"));
        }
        if let Some(t) = request.temperature {
            body["temperature"] = json!(t);
        }
        if !request.tools.is_empty() {
            body["tools"] = request
                .tools
                .iter()
                .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}))
                .collect();
        }
        body
    }

    fn post(&self, body: &Json) -> reqwest::RequestBuilder {
        let call = self
            .http
            .post(&self.endpoint)
            .header("anthropic-version", VERSION)
            .json(body);
        match &self.api_key {
            Some(key) => call.header("x-api-key", key),
            None => call,
        }
    }

    async fn call(&self, request: ChatRequest) -> Result<ChatResponse, ProviderError> {
        let body = self.body(&request);
        let call = self.post(&body).timeout(request.timeout);
        let v = crate::openai::send(call, request.timeout).await?;
        let blocks = v["content"]
            .as_array()
            .ok_or_else(|| ProviderError::Malformed("no `content`".into()))?;
        let content: String = blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect();
        let tool_calls = blocks
            .iter()
            .filter(|b| b["type"] == "tool_use")
            .map(|b| ToolCall {
                id: b["id"].as_str().unwrap_or_default().to_owned(),
                name: b["name"].as_str().unwrap_or_default().to_owned(),
                arguments: b["input"].to_string(),
            })
            .collect();
        let n = |k: &str| v["usage"][k].as_u64().unwrap_or(0);
        Ok(ChatResponse {
            content,
            tool_calls,
            model: v["model"].as_str().unwrap_or(&self.model).to_owned(),
            finish_reason: finish_reason(v["stop_reason"].as_str().unwrap_or("")),
            usage: Usage {
                prompt_tokens: n("input_tokens"),
                completion_tokens: n("output_tokens"),
                total_tokens: n("input_tokens") + n("output_tokens"),
            },
        })
    }
}

/// A stop reason in the chat completions API's words.
fn finish_reason(stop: &str) -> String {
    match stop {
        "end_turn" | "stop_sequence" => "stop".to_owned(),
        "max_tokens" => "length".to_owned(),
        "tool_use" => "tool_calls".to_owned(),
        other => other.to_owned(),
    }
}

/// What a stream has said so far.
#[derive(Default)]
struct Said {
    model: String,
    finish: String,
    usage: Usage,
    /// Content block index -> tool call index.
    tools: std::collections::HashMap<u64, usize>,
}

/// The pieces of a streamed message (`message_start`, `content_block_start|delta`,
/// `message_delta`, `message_stop`); a stream silent for `idle` fails, and one that ends
/// before `message_stop` is an error.
fn read_stream(answer: reqwest::Response, idle: std::time::Duration, model: String) -> Deltas {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;
    let events = Box::pin(answer.bytes_stream().eventsource());
    let said = Said {
        model,
        ..Said::default()
    };
    Box::pin(
        futures_util::stream::unfold(
            (events, said, false),
            move |(mut events, mut said, done)| async move {
                if done {
                    return None;
                }
                let end =
                    |e: ProviderError, events, said| Some((vec![Err(e)], (events, said, true)));
                loop {
                    let event = match tokio::time::timeout(idle, events.next()).await {
                        Err(_) => return end(ProviderError::Timeout(idle), events, said),
                        Ok(None) => {
                            let e = ProviderError::Transport(
                                "the stream ended before the message did".into(),
                            );
                            return end(e, events, said);
                        }
                        Ok(Some(Err(e))) => {
                            return end(ProviderError::Transport(e.to_string()), events, said);
                        }
                        Ok(Some(Ok(event))) => event,
                    };
                    let v: Json = serde_json::from_str(&event.data).unwrap_or(Json::Null);
                    let mut out = Vec::new();
                    match v["type"].as_str().unwrap_or(event.event.as_str()) {
                        "message_start" => {
                            if let Some(m) = v["message"]["model"].as_str() {
                                said.model = m.to_owned();
                            }
                            said.usage.prompt_tokens =
                                v["message"]["usage"]["input_tokens"].as_u64().unwrap_or(0);
                        }
                        "content_block_start" if v["content_block"]["type"] == "tool_use" => {
                            let index = said.tools.len();
                            said.tools.insert(v["index"].as_u64().unwrap_or(0), index);
                            out.push(Ok(Delta::ToolCall {
                                index,
                                id: v["content_block"]["id"]
                                    .as_str()
                                    .unwrap_or_default()
                                    .to_owned(),
                                name: v["content_block"]["name"]
                                    .as_str()
                                    .unwrap_or_default()
                                    .to_owned(),
                                arguments: String::new(),
                            }));
                        }
                        "content_block_delta" => {
                            let d = &v["delta"];
                            match d["type"].as_str() {
                                Some("text_delta") => {
                                    let t = d["text"].as_str().unwrap_or_default();
                                    if !t.is_empty() {
                                        out.push(Ok(Delta::Text(t.to_owned())));
                                    }
                                }
                                Some("input_json_delta") => {
                                    let block = v["index"].as_u64().unwrap_or(0);
                                    if let Some(&index) = said.tools.get(&block) {
                                        out.push(Ok(Delta::ToolCall {
                                            index,
                                            id: String::new(),
                                            name: String::new(),
                                            arguments: d["partial_json"]
                                                .as_str()
                                                .unwrap_or_default()
                                                .to_owned(),
                                        }));
                                    }
                                }
                                _ => {}
                            }
                        }
                        "message_delta" => {
                            if let Some(stop) = v["delta"]["stop_reason"].as_str() {
                                said.finish = finish_reason(stop);
                            }
                            if let Some(n) = v["usage"]["output_tokens"].as_u64() {
                                said.usage.completion_tokens = n;
                            }
                        }
                        "message_stop" => {
                            said.usage.total_tokens =
                                said.usage.prompt_tokens + said.usage.completion_tokens;
                            let end = Delta::End {
                                finish_reason: said.finish.clone(),
                                usage: said.usage,
                                model: said.model.clone(),
                            };
                            return Some((vec![Ok(end)], (events, said, true)));
                        }
                        "error" => {
                            let message = v["error"]["message"]
                                .as_str()
                                .unwrap_or("the stream failed")
                                .to_owned();
                            let e = ProviderError::Http {
                                status: 500,
                                message,
                                retry_after: None,
                            };
                            return end(e, events, said);
                        }
                        _ => {}
                    }
                    if !out.is_empty() {
                        return Some((out, (events, said, false)));
                    }
                }
            },
        )
        .flat_map(futures_util::stream::iter),
    )
}

/// The conversation as the Messages API takes it: tool calls as `tool_use` blocks of the
/// assistant's message, tool results as `tool_result` blocks of one user message (the API
/// wants the results of one turn together), the system prompt left out (it goes apart).
fn wire_messages(messages: &[Message]) -> Vec<Json> {
    let mut out: Vec<Json> = Vec::new();
    for m in messages.iter().filter(|m| m.role != "system") {
        if m.role == "tool" {
            let block = json!({"type": "tool_result",
                "tool_use_id": m.tool_call_id.as_deref().unwrap_or_default(),
                "content": m.content});
            match out.last_mut() {
                Some(last) if last["role"] == "user" && last["content"].is_array() => {
                    if let Some(blocks) = last["content"].as_array_mut() {
                        blocks.push(block);
                    }
                }
                _ => out.push(json!({"role": "user", "content": [block]})),
            }
        } else if !m.tool_calls.is_empty() {
            let mut blocks = Vec::new();
            if !m.content.is_empty() {
                blocks.push(json!({"type": "text", "text": m.content}));
            }
            for c in &m.tool_calls {
                let input: Json = serde_json::from_str(&c.arguments).unwrap_or_else(|_| json!({}));
                blocks
                    .push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input}));
            }
            out.push(json!({"role": "assistant", "content": blocks}));
        } else {
            out.push(json!({"role": m.role, "content": m.content}));
        }
    }
    out
}

impl Provider for Anthropic {
    fn default_model(&self) -> &str {
        &self.model
    }

    fn chat(&self, request: ChatRequest) -> Reply<'_> {
        Box::pin(self.call(request))
    }

    fn chat_stream(&self, request: ChatRequest) -> Opening<'_> {
        Box::pin(async move {
            let mut body = self.body(&request);
            body["stream"] = json!(true);
            let answer = crate::openai::open(self.post(&body), request.timeout).await?;
            Ok(read_stream(answer, request.timeout, self.model.clone()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot HTTP server: answers `reply` and hands back the request it got.
    async fn stub(status: &'static str, reply: Json) -> (String, tokio::task::JoinHandle<String>) {
        stub_raw(status, "application/json", reply.to_string()).await
    }

    /// A one-shot HTTP server answering `body` as `content_type`.
    async fn stub_raw(
        status: &'static str,
        content_type: &'static str,
        body: String,
    ) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 65536];
            let mut got = Vec::new();
            loop {
                let n = sock.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
            }
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            sock.write_all(response.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&got).to_string()
        });
        (format!("http://{addr}/v1"), task)
    }

    #[tokio::test]
    async fn a_message_goes_with_the_system_apart_and_the_key_in_its_header() {
        let (url, request) = stub(
            "200 OK",
            json!({"content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
                   "model": "claude-x", "stop_reason": "end_turn",
                   "usage": {"input_tokens": 9, "output_tokens": 3}}),
        )
        .await;
        let a = Anthropic::new(&url, "claude-x", Some("sk-ant".into())).unwrap();
        let reply = a
            .chat(ChatRequest {
                messages: vec![
                    Message::new("system", "be brief"),
                    Message::new("user", "hello"),
                ],
                timeout: Duration::from_secs(5),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(reply.content, "Hi there");
        assert_eq!(reply.finish_reason, "stop");
        assert_eq!(reply.usage.total_tokens, 12);
        let request = request.await.unwrap();
        assert!(request.starts_with("POST /v1/messages"), "{request}");
        assert!(request.to_ascii_lowercase().contains("x-api-key: sk-ant"));
        assert!(
            request
                .to_ascii_lowercase()
                .contains("anthropic-version: 2023-06-01")
        );
        let body: Json = serde_json::from_str(request.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(body["system"], "be brief");
        assert_eq!(
            body["messages"],
            json!([{"role": "user", "content": "hello"}])
        );
        assert_eq!(body["max_tokens"], 1024);
    }

    #[tokio::test]
    async fn tools_go_as_input_schemas_and_calls_come_back_as_tool_use_blocks() {
        let (url, request) = stub(
            "200 OK",
            json!({"content": [{"type": "text", "text": "Looking."},
                               {"type": "tool_use", "id": "tu_2", "name": "ops__hosts", "input": {"env": "prod"}}],
                   "model": "claude-x", "stop_reason": "tool_use",
                   "usage": {"input_tokens": 20, "output_tokens": 8}}),
        )
        .await;
        let a = Anthropic::new(&url, "claude-x", None).unwrap();
        let earlier = crate::ToolCall {
            id: "tu_1".into(),
            name: "ops__status".into(),
            arguments: "{\"service\":\"db\"}".into(),
        };
        let reply = a
            .chat(ChatRequest {
                messages: vec![
                    Message::new("user", "why is db slow?"),
                    Message {
                        role: "assistant".into(),
                        tool_calls: vec![earlier],
                        ..Message::default()
                    },
                    Message::tool_result("tu_1", "{\"ok\":true}"),
                ],
                tools: vec![crate::Tool {
                    name: "ops__hosts".into(),
                    description: "list hosts".into(),
                    parameters: json!({"type": "object"}),
                }],
                timeout: Duration::from_secs(5),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(reply.finish_reason, "tool_calls");
        assert_eq!(reply.tool_calls.len(), 1);
        assert_eq!(reply.tool_calls[0].name, "ops__hosts");
        assert_eq!(
            serde_json::from_str::<Json>(&reply.tool_calls[0].arguments).unwrap(),
            json!({"env": "prod"})
        );
        let request = request.await.unwrap();
        let body: Json = serde_json::from_str(request.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(body["tools"][0]["input_schema"], json!({"type": "object"}));
        assert_eq!(
            body["messages"][1]["content"][0],
            json!({"type": "tool_use", "id": "tu_1", "name": "ops__status", "input": {"service": "db"}})
        );
        assert_eq!(
            body["messages"][2],
            json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_1", "content": "{\"ok\":true}"}]})
        );
    }

    #[tokio::test]
    async fn a_streamed_message_comes_in_pieces_of_text_and_tool_input() {
        let events = [
            json!({"type": "message_start", "message": {"model": "claude-x", "usage": {"input_tokens": 11}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me "}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "look."}}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "tu_9", "name": "ops__inspect"}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"path\": "}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"reports\"}"}}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 7}}),
            json!({"type": "message_stop"}),
        ];
        let body: String = events
            .iter()
            .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
            .collect();
        let (url, request) = stub_raw("200 OK", "text/event-stream", body).await;
        let a = Anthropic::new(&url, "claude-x", None).unwrap();
        let mut deltas = a
            .chat_stream(ChatRequest {
                messages: vec![Message::new("user", "how big?")],
                timeout: Duration::from_secs(5),
                ..Default::default()
            })
            .await
            .unwrap();
        use futures_util::StreamExt;
        let mut got = crate::stream::Assembled::default();
        let mut pieces = 0;
        while let Some(d) = deltas.next().await {
            got.add(&d.unwrap());
            pieces += 1;
        }
        assert_eq!(pieces, 6, "two texts, a call and two pieces of it, the end");
        assert_eq!(got.content, "Let me look.");
        assert_eq!(got.tool_calls[0].id, "tu_9");
        assert_eq!(got.tool_calls[0].arguments, "{\"path\": \"reports\"}");
        assert_eq!(got.finish_reason, "tool_calls");
        assert_eq!(
            (
                got.usage.prompt_tokens,
                got.usage.completion_tokens,
                got.usage.total_tokens
            ),
            (11, 7, 18)
        );
        let sent: Json =
            serde_json::from_str(request.await.unwrap().split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(sent["stream"], true);
    }

    #[tokio::test]
    async fn an_error_says_what_the_api_said() {
        let (url, _) = stub(
            "529 Overloaded",
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        )
        .await;
        let a = Anthropic::new(&url, "claude-x", None).unwrap();
        let e = a
            .chat(ChatRequest {
                messages: vec![Message::new("user", "hello")],
                timeout: Duration::from_secs(5),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            e,
            ProviderError::Http {
                status: 529,
                message: "Overloaded".into(),
                retry_after: None
            }
        );
    }
}
