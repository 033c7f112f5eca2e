//! A scripted OpenAI-compatible chat completions server, started by a test: the stand-in
//! for a paid model API (the clients' real HTTP paths are exercised). The script sees
//! each request's body and how many came before, and answers a status, headers and a
//! body.

use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

/// The bodies of the requests the stand-in got, in order.
pub type Seen = Arc<Mutex<Vec<Value>>>;

/// An answer: status, extra headers, body.
pub type Answer = (u16, Vec<(&'static str, String)>, Value);

/// Groups of words that mean one thing, for [`toy_embedding`].
const CONCEPTS: [&[&str]; 8] = [
    &["memory", "ram", "swap"],
    &["disk", "space", "storage", "full"],
    &["cpu", "process", "processes", "busy", "load"],
    &["slow", "latency", "crawls", "sluggish"],
    &["restart", "bounce", "reboot"],
    &["scale", "replicas"],
    &["log", "logs", "tail"],
    &["certificate", "cert", "tls", "ssl"],
];

/// A stand-in for an embedding model: how often a text uses each concept's words.
pub fn toy_embedding(text: &str) -> Vec<f32> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .map(str::to_lowercase)
        .collect();
    CONCEPTS
        .iter()
        .map(|group| words.iter().filter(|w| group.contains(&w.as_str())).count() as f32)
        .collect()
}

/// Serves `POST /v1/chat/completions` on a loopback port with `script` (and `POST
/// /v1/embeddings` with [`toy_embedding`]); its address.
pub fn serve(
    rt: &tokio::runtime::Runtime,
    seen: Seen,
    script: impl Fn(&Value, usize) -> Answer + Send + Sync + 'static,
) -> String {
    let script = Arc::new(script);
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let (seen, script) = (seen.clone(), script.clone());
            async move {
                let n = {
                    let mut s = seen.lock().unwrap();
                    s.push(body.clone());
                    s.len() - 1
                };
                let (status, headers, reply) = script(&body, n);
                let mut res = axum::response::IntoResponse::into_response((
                    axum::http::StatusCode::from_u16(status).unwrap(),
                    axum::Json(reply),
                ));
                for (k, v) in headers {
                    res.headers_mut().insert(k, v.parse().unwrap());
                }
                res
            }
        }),
    )
    .route(
        "/v1/embeddings",
        axum::routing::post(|axum::Json(body): axum::Json<Value>| async move {
            let data: Vec<Value> = body["input"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .enumerate()
                .map(|(i, t)| json!({"object": "embedding", "index": i, "embedding": toy_embedding(t.as_str().unwrap_or(""))}))
                .collect();
            axum::Json(json!({"object": "list", "data": data, "model": "toy-embed",
                "usage": {"prompt_tokens": 1, "total_tokens": 1}}))
        }),
    );
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    })
}

/// A reply whose message is `text`.
pub fn text(text: &str) -> Answer {
    (
        200,
        Vec::new(),
        json!({
            "id": "chatcmpl-s", "object": "chat.completion", "model": "stand-in-1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}
        }),
    )
}

/// A reply that calls tools: `(id, name, arguments as JSON text)`.
pub fn tool_calls(calls: &[(&str, &str, &str)]) -> Answer {
    let calls: Vec<Value> = calls
        .iter()
        .map(|(id, name, args)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}))
        .collect();
    (
        200,
        Vec::new(),
        json!({
            "id": "chatcmpl-s", "object": "chat.completion", "model": "stand-in-1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": calls}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 10, "total_tokens": 40}
        }),
    )
}

/// The tool results (`role: tool` messages) a request carries.
pub fn tool_results(body: &Value) -> Vec<Value> {
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .cloned()
        .collect()
}

/// Adds a provider `name` at the stand-in `api` through the CLI.
pub fn add_provider(p: &super::Plexus, addr: &str, name: &str, api: &str) {
    let out = super::agents::cli(p, addr)
        .args(["provider", "add", name, "--base-url"])
        .arg(format!("http://{api}/v1"))
        .args(["--model", "stand-in-1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
