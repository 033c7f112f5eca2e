//! An OpenAI-compatible gateway on the HTTP port: `POST /v1/chat/completions` and `GET
//! /v1/models`, for clients such as the `openai` package, authenticated by Plexus API keys
//! or tokens (as a bearer), routed to the configured providers and audited (who, model,
//! tokens — never the prompt). Errors have OpenAI's shape: `{"error": {"message", "type",
//! "code"}}`.
//!
//! `model` picks the provider: `PROVIDER` (its model), `PROVIDER/MODEL`, or a model name
//! for the default provider.

use crate::auth::{Caller, audit};
use crate::body;
use crate::{AppState, now_ms};
use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use plexus_llm::ChatRequest;
use serde_json::{Value as Json, json};
use std::time::Duration;

/// An answer in OpenAI's error shape.
fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    let body = json!({"error": {"message": message.into(), "type": kind, "code": Json::Null, "param": Json::Null}});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Rewrites the server's own error answers (`{code, message, details}`: a missing key, a
/// role too low) on `/v1/` into OpenAI's shape, so that its clients read them.
pub async fn openai_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if !req.uri().path().starts_with("/v1/") {
        return next.run(req).await;
    }
    let res = next.run(req).await;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let (_, body) = res.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let v: Json = serde_json::from_slice(&bytes).unwrap_or(Json::Null);
    if v.get("error").is_some() {
        return (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response();
    }
    let message = v["message"].as_str().unwrap_or("error").to_owned();
    let kind = match status {
        StatusCode::UNAUTHORIZED => "authentication_error",
        StatusCode::FORBIDDEN => "permission_error",
        StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
        s if s.is_server_error() => "api_error",
        _ => "invalid_request_error",
    };
    error(status, kind, message)
}

/// `GET /v1/models`: each provider as `PROVIDER` and as `PROVIDER/MODEL`.
pub async fn models(State(state): State<AppState>) -> Response {
    let mut data = Vec::new();
    for name in state.engine.llm.names() {
        if let Ok((_, p)) = state.engine.llm.pick(Some(&name)) {
            for id in [name.clone(), format!("{name}/{}", p.default_model())] {
                data.push(json!({"id": id, "object": "model", "created": 0, "owned_by": "plexus"}));
            }
        }
    }
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// `GET /api/v1/providers`: each provider with its model, whether it is the default, and
/// its health (`unhealthy` while it is skipped after repeated failures).
pub async fn providers(State(state): State<AppState>) -> Response {
    let llm = &state.engine.llm;
    let default = llm.pick(None).ok().map(|(n, _)| n);
    let list: Vec<Json> = llm
        .names()
        .into_iter()
        .filter_map(|name| {
            let (_, p) = llm.pick(Some(&name)).ok()?;
            Some(json!({
                "name": name,
                "model": p.default_model(),
                "default": default.as_deref() == Some(name.as_str()),
                "health": if llm.breakers.is_open(&name) { "unhealthy" } else { "healthy" },
                "failures_in_a_row": llm.breakers.failures(&name),
            }))
        })
        .collect();
    axum::Json(json!({ "providers": list })).into_response()
}

/// The provider and model a request's `model` names.
fn route(state: &AppState, model: &str) -> Result<(Option<String>, Option<String>), String> {
    let names = state.engine.llm.names();
    if names.iter().any(|n| n == model) {
        return Ok((Some(model.to_owned()), None));
    }
    if let Some((p, m)) = model.split_once('/')
        && names.iter().any(|n| n == p)
    {
        return Ok((Some(p.to_owned()), Some(m.to_owned())));
    }
    Ok((None, (!model.is_empty()).then(|| model.to_owned())))
}

/// A gateway request's JSON body, once the caller is within its budget; else the answer.
async fn request_of(state: &AppState, caller: &Caller, body: Body) -> Result<Json, Response> {
    let bytes = body::read(body, state.config.body_limit)
        .await
        .map_err(|e| error(e.status, "invalid_request_error", e.message))?;
    let req: Json = serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("the body is not JSON: {e}"),
        )
    })?;
    within_budget(state, caller).await?;
    Ok(req)
}

/// `POST /v1/chat/completions` (`stream: true` answers server-sent events).
pub async fn chat(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Response {
    let req = match request_of(&state, &caller, body).await {
        Ok(r) => r,
        Err(refused) => return refused,
    };
    let Some(raw) = req["messages"].as_array() else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "`messages` is required",
        );
    };
    let messages = match raw.iter().map(plexus_llm::openai::read_message).collect() {
        Ok(m) => m,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_request_error", e),
    };
    let tools = match read_tools(&req["tools"]) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_request_error", e),
    };
    let model = req["model"].as_str().unwrap_or("");
    let (provider, model_override) = match route(&state, model) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_request_error", e),
    };
    let request = ChatRequest {
        model: model_override,
        messages,
        max_tokens: req["max_tokens"]
            .as_u64()
            .or_else(|| req["max_completion_tokens"].as_u64())
            .map(|n| n as u32),
        temperature: req["temperature"].as_f64(),
        json: req["response_format"]["type"] == "json_object",
        tools,
        timeout: Duration::from_secs(120),
    };
    let id = format!("chatcmpl-{}", now_ms());
    let created = now_ms() / 1000;
    if req["stream"] == true {
        let shown = model.to_owned();
        let asked = audited_prompt(&state, &req["messages"]).await;
        return stream(
            state,
            caller,
            provider,
            request,
            (id, created, shown),
            asked,
        )
        .await;
    }
    let routed = state
        .engine
        .llm
        .chat_routed(provider.as_deref(), &[], request)
        .await;
    let (name, reply) = match routed {
        Ok(r) => r,
        Err(e) => return routing_error(e),
    };
    let asked = audited_prompt(&state, &req["messages"]).await;
    metered(&state, &caller, &name, &reply.model, reply.usage, asked).await;
    let mut message = json!({"role": "assistant", "content": reply.content});
    if !reply.tool_calls.is_empty() {
        message["tool_calls"] = tool_calls_json(&reply.tool_calls, false);
    }
    axum::Json(json!({
        "id": id, "object": "chat.completion", "created": created, "model": reply.model,
        "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason}],
        "usage": usage_json(reply.usage),
    }))
    .into_response()
}

fn routing_error(e: String) -> Response {
    if e.contains("no LLM provider") {
        return error(StatusCode::NOT_FOUND, "invalid_request_error", e);
    }
    error(StatusCode::BAD_GATEWAY, "api_error", e)
}

fn usage_json(u: plexus_llm::Usage) -> Json {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    })
}

/// Refuses a call (OpenAI's 429) when the caller has used `budgets.gateway_max_tokens_per_day`
/// tokens through the gateway and steps since midnight UTC.
async fn within_budget(state: &AppState, caller: &Caller) -> Result<(), Response> {
    let Some(limit) = crate::settings::value(state, "budgets.gateway_max_tokens_per_day")
        .await
        .ok()
        .flatten()
        .and_then(|v| v.as_u64())
    else {
        return Ok(());
    };
    let day = now_ms() - now_ms() % 86_400_000;
    let used = match state.store.tokens_used(&caller.actor(), day).await {
        Ok(n) => n,
        Err(e) => {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "api_error",
                e.to_string(),
            ));
        }
    };
    if used >= limit {
        return Err(error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!(
                "{} has used {used} of its {limit} tokens today (budgets.gateway_max_tokens_per_day)",
                caller.actor()
            ),
        ));
    }
    Ok(())
}

/// What was asked, for the audit record, when `llm.audit_prompts` is on (off by default:
/// prompts may hold what the audit log should not).
async fn audited_prompt(state: &AppState, asked: &Json) -> Option<Json> {
    let on = crate::settings::value(state, "llm.audit_prompts")
        .await
        .ok()
        .flatten()
        == Some(json!(true));
    on.then(|| asked.clone())
}

/// Counts a call in the metrics, the accounts (tokens and cost, per user and key) and
/// the audit log (never its prompt).
async fn metered(
    state: &AppState,
    caller: &Caller,
    provider: &str,
    model: &str,
    usage: plexus_llm::Usage,
    asked: Option<Json>,
) {
    let cost = state.engine.llm.cost(provider, model, usage);
    let record = plexus_store::LlmUsage {
        time: now_ms(),
        actor: Some(caller.actor()),
        api_key: match &caller.via {
            crate::auth::Via::ApiKey(id) => Some(id.clone()),
            crate::auth::Via::Session(_) => None,
        },
        run_id: None,
        step_id: None,
        source: "gateway".into(),
        provider: provider.to_owned(),
        model: model.to_owned(),
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        cost_usd: cost,
    };
    metrics::counter!("plexus_llm_requests_total", "provider" => provider.to_owned(), "source" => "gateway").increment(1);
    metrics::counter!("plexus_llm_tokens_total", "provider" => provider.to_owned(), "source" => "gateway")
        .increment(usage.total_tokens);
    metrics::counter!("plexus_llm_cost_microdollars_total", "provider" => provider.to_owned(), "source" => "gateway")
        .increment((cost * 1e6).round() as u64);
    // Both writes at once, so that the store's writer can commit them together.
    let (actor, target) = (caller.actor(), format!("provider:{provider}"));
    let mut details = json!({"model": model, "usage": usage, "cost_usd": cost});
    if let Some(asked) = asked {
        details["prompt"] = asked;
    }
    let usage_written = state.store.record_llm_usage(record);
    let audited = audit(state.store.as_ref(), &actor, "llm.chat", &target, details);
    let (written, ()) = tokio::join!(usage_written, audited);
    if let Err(e) = written {
        tracing::warn!(error = %e, "a model call could not be accounted");
    }
}

#[derive(serde::Deserialize)]
pub struct UsageQuery {
    by: Option<String>,
    /// Calls at or after this time (ms since the epoch); all when absent.
    since: Option<u64>,
}

/// `GET /api/v1/llm/usage?by=user|key|run|provider|model&since=MS`: tokens and cost of
/// model calls (steps' and the gateway's), summed by what `by` names.
pub async fn usage(
    State(state): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<UsageQuery>,
) -> Result<axum::Json<Json>, crate::error::ApiError> {
    let by = match q.by.as_deref().unwrap_or("user") {
        "user" => plexus_store::UsageGroup::User,
        "key" => plexus_store::UsageGroup::Key,
        "run" => plexus_store::UsageGroup::Run,
        "provider" => plexus_store::UsageGroup::Provider,
        "model" => plexus_store::UsageGroup::Model,
        other => {
            return Err(crate::error::ApiError::bad_request(format!(
                "`by` is one of user, key, run, provider, model, not `{other}`"
            )));
        }
    };
    let rows = state.store.llm_usage(by, q.since.unwrap_or(0)).await?;
    Ok(axum::Json(
        json!({"by": q.by.as_deref().unwrap_or("user"), "usage": rows}),
    ))
}

/// `stream: true`: the provider's pieces passed on as they come, as chunks of server-sent
/// events, then the end (with the usage) and `[DONE]`.
async fn stream(
    state: AppState,
    caller: Caller,
    provider: Option<String>,
    request: ChatRequest,
    (id, created, shown): (String, u64, String),
    asked: Option<Json>,
) -> Response {
    use futures_util::StreamExt;
    let (name, deltas) = match state
        .engine
        .llm
        .stream_routed(provider.as_deref(), &[], request)
        .await
    {
        Ok(r) => r,
        Err(e) => return routing_error(e),
    };
    let chunk = move |model: &str, delta: Json, finish: Json, usage: Option<Json>| {
        let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        if let Some(u) = usage {
            c["usage"] = u;
        }
        format!("data: {c}\n\n")
    };
    let mut first = true;
    let body = deltas.map(move |piece| {
        let text = match piece {
            Ok(plexus_llm::stream::Delta::Text(t)) => {
                let mut delta = json!({"content": t});
                if std::mem::take(&mut first) {
                    delta["role"] = json!("assistant");
                }
                chunk(&shown, delta, Json::Null, None)
            }
            Ok(plexus_llm::stream::Delta::ToolCall {
                index,
                id,
                name,
                arguments,
            }) => {
                let mut call = json!({"index": index, "function": {"arguments": arguments}});
                if !id.is_empty() {
                    call["id"] = json!(id);
                    call["type"] = json!("function");
                }
                if !name.is_empty() {
                    call["function"]["name"] = json!(name);
                }
                let mut delta = json!({"tool_calls": [call]});
                if std::mem::take(&mut first) {
                    delta["role"] = json!("assistant");
                }
                chunk(&shown, delta, Json::Null, None)
            }
            Ok(plexus_llm::stream::Delta::End {
                finish_reason,
                usage,
                model,
            }) => {
                let (state, caller, name, m) =
                    (state.clone(), caller.clone(), name.clone(), model.clone());
                let asked = asked.clone();
                tokio::spawn(
                    async move { metered(&state, &caller, &name, &m, usage, asked).await },
                );
                let end = chunk(
                    &model,
                    json!({}),
                    json!(finish_reason),
                    Some(usage_json(usage)),
                );
                format!("{end}data: [DONE]\n\n")
            }
            Err(e) => {
                // The stream broke after it began: say so in the stream, OpenAI's way.
                let err = json!({"error": {"message": e.to_string(), "type": "api_error"}});
                format!("data: {err}\n\n")
            }
        };
        Ok::<_, std::convert::Infallible>(text)
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// A request's `tools` (functions only, as OpenAI's API has them).
fn read_tools(v: &Json) -> Result<Vec<plexus_llm::Tool>, String> {
    let Some(list) = v.as_array() else {
        return match v {
            Json::Null => Ok(Vec::new()),
            _ => Err("`tools` is a list".into()),
        };
    };
    list.iter()
        .map(|t| {
            if t["type"] != "function" {
                return Err("only tools of `type: function` are supported".to_owned());
            }
            let f = &t["function"];
            Ok(plexus_llm::Tool {
                name: f["name"]
                    .as_str()
                    .ok_or("each tool's function needs a `name`")?
                    .to_owned(),
                description: f["description"].as_str().unwrap_or_default().to_owned(),
                parameters: match &f["parameters"] {
                    Json::Null => json!({"type": "object", "properties": {}}),
                    p => p.clone(),
                },
            })
        })
        .collect()
}

/// Tool calls as the API answers them (a stream's deltas carry an `index` each).
fn tool_calls_json(calls: &[plexus_llm::ToolCall], indexed: bool) -> Json {
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut v = json!({"id": c.id, "type": "function",
                               "function": {"name": c.name, "arguments": c.arguments}});
            if indexed {
                v["index"] = json!(i);
            }
            v
        })
        .collect()
}

/// `POST /v1/embeddings`: vectors for `input` (a text or a list of texts), routed and
/// accounted as chat calls are; `encoding_format: base64` (what the `openai` package asks
/// for) gives little-endian f32s in base64.
pub async fn embeddings(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Response {
    let req = match request_of(&state, &caller, body).await {
        Ok(r) => r,
        Err(refused) => return refused,
    };
    let inputs: Vec<String> = match &req["input"] {
        Json::String(s) => vec![s.clone()],
        Json::Array(items) if items.iter().all(Json::is_string) && !items.is_empty() => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect(),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "`input` is a text or a non-empty list of texts (token arrays are not supported)",
            );
        }
    };
    let base64 = match req["encoding_format"].as_str() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("`encoding_format` is float or base64, not `{other}`"),
            );
        }
    };
    let model = req["model"].as_str().unwrap_or("");
    let (provider, model_override) = match route(&state, model) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_request_error", e),
    };
    let routed = state
        .engine
        .llm
        .embed_routed(
            provider.as_deref(),
            model_override,
            inputs,
            Duration::from_secs(60),
        )
        .await;
    let (name, got) = match routed {
        Ok(r) => r,
        Err(e) => return routing_error(e),
    };
    let asked = audited_prompt(&state, &req["input"]).await;
    metered(&state, &caller, &name, &got.model, got.usage, asked).await;
    let data: Vec<Json> = got
        .vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                use base64::Engine;
                let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(raw))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    axum::Json(json!({
        "object": "list", "data": data, "model": got.model,
        "usage": {"prompt_tokens": got.usage.prompt_tokens, "total_tokens": got.usage.total_tokens},
    }))
    .into_response()
}
