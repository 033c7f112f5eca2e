//! `llm` steps against a real `plexus serve` and an OpenAI-compatible stand-in (a paid
//! API cannot run here): providers set with `plexus provider`, the key sealed and sent as
//! a bearer token, prompts rendered from templates, `output_schema` repaired.

mod common;
use common::agents::*;
use common::server::*;
use common::*;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

/// What the stand-in saw: the authorization header and the messages of each call.
type Seen = Arc<Mutex<Vec<(String, Value)>>>;

/// An OpenAI-compatible chat completions endpoint: echoes the prompt, answers JSON
/// prompts wrongly once (to be repaired), and refuses keys other than `sk-test`.
fn stand_in(rt: &tokio::runtime::Runtime, seen: Seen) -> String {
    use axum::Json;
    use axum::http::{HeaderMap, StatusCode};
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |headers: HeaderMap, Json(body): Json<Value>| {
            let seen = seen.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let calls = {
                    let mut s = seen.lock().unwrap();
                    s.push((auth.clone(), body["messages"].clone()));
                    s.len()
                };
                use axum::response::IntoResponse;
                if auth != "Bearer sk-test" {
                    return (
                        StatusCode::UNAUTHORIZED,
                        Json(json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})),
                    )
                        .into_response();
                }
                // Asked with tools and no result yet: call the first tool.
                if let Some(tool) = body["tools"][0]["function"]["name"].as_str()
                    && !body["messages"].as_array().unwrap().iter().any(|m| m["role"] == "tool")
                {
                    let call = json!({"id": "call_1", "type": "function",
                        "function": {"name": tool, "arguments": "{\"city\": \"Oslo\"}"}});
                    return Json(json!({
                        "id": "chatcmpl-t", "object": "chat.completion", "model": body["model"],
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [call]}, "finish_reason": "tool_calls"}],
                        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
                    }))
                    .into_response();
                }
                let messages = body["messages"].as_array().unwrap();
                let prompt = messages.last().unwrap()["content"].as_str().unwrap().to_owned();
                let content = if prompt.contains("JSON Schema") {
                    "I think we should restart it.".to_owned() // not JSON: repaired next
                } else if prompt.contains("does not fit the schema") {
                    "{\"action\": \"restart\", \"why\": \"error rate\"}".to_owned()
                } else {
                    format!("echo: {prompt}")
                };
                if body["stream"] == true {
                    // Word by word, as a streaming API writes, the usage at the end.
                    let mut events = String::new();
                    for (i, word) in content.split_inclusive(' ').enumerate() {
                        let mut delta = json!({"content": word});
                        if i == 0 {
                            delta["role"] = json!("assistant");
                        }
                        let chunk = json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "model": body["model"],
                            "choices": [{"index": 0, "delta": delta, "finish_reason": null}]});
                        events.push_str(&format!("data: {chunk}\n\n"));
                    }
                    let end = json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "model": body["model"],
                        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}});
                    events.push_str(&format!("data: {end}\n\ndata: [DONE]\n\n"));
                    return ([("content-type", "text/event-stream")], events).into_response();
                }
                Json(json!({
                    "id": format!("chatcmpl-{calls}"), "object": "chat.completion",
                    "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
                }))
                .into_response()
            }
        }),
    )
    // Embeddings: [length of the text, 1, 0.5] for each input.
    .route(
        "/v1/embeddings",
        axum::routing::post(|Json(body): Json<Value>| async move {
            let data: Vec<Value> = body["input"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
                .map(|(i, t)| json!({"object": "embedding", "index": i,
                    "embedding": [t.as_str().unwrap().len() as f64, 1.0, 0.5]}))
                .collect();
            Json(json!({"object": "list", "data": data, "model": body["model"],
                "usage": {"prompt_tokens": 4, "total_tokens": 4}}))
        }),
    );
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    })
}

#[test]
fn llm_steps_call_the_configured_provider() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen: Seen = Arc::default();
    let api = stand_in(&rt, seen.clone());
    let p = Plexus::new();
    let (mut server, addr) = start_server(&p);
    let add = |name: &str, key: &str| {
        let mut child = cli(&p, &addr)
            .args(["provider", "add", name, "--base-url"])
            .arg(format!("http://{api}/v1"))
            .args(["--model", "stand-in-1", "--api-key-stdin"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(key.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
    };
    add("standin", "sk-test");
    let listed = cli_json(&p, &addr, &["provider", "list"]);
    assert_eq!(
        listed,
        json!([{"name": "standin", "kind": "openai", "model": "stand-in-1",
                "base_url": format!("http://{api}/v1"), "api_key": true, "default": true,
                "health": "healthy"}])
    );
    assert!(!listed.to_string().contains("sk-test"));
    let tested = cli(&p, &addr)
        .args(["provider", "test", "standin", "-o", "json"])
        .output()
        .unwrap();
    assert!(
        tested.status.success(),
        "{}",
        String::from_utf8_lossy(&tested.stderr)
    );
    let tested: Value = serde_json::from_slice(&tested.stdout).unwrap();
    assert_eq!(
        step(&tested, "ask")["output"]["text"],
        "echo: Reply with the single word OK."
    );
    seen.lock().unwrap().clear();

    let runner = spawn_run(
        &p,
        &addr,
        "triage",
        r#"version: plexus/v1
name: triage
inputs:
  service: {type: string, default: checkout}
steps:
  - id: greet
    llm: "Say hello to {{ inputs.service }}"
  - id: decide
    needs: [greet]
    llm:
      system: You are an SRE.
      prompt: "The error rate of {{ inputs.service }} doubled. What now?"
      output_schema: {type: object, required: [action], properties: {action: {enum: [restart, wait]}}}
  - id: act
    needs: [decide]
    builtin: echo
    with: {do: "{{ steps.decide.output.action }}"}
"#,
    );
    let run = finish_run(runner, 0);
    let greet = &step(&run, "greet")["output"];
    assert_eq!(greet["text"], "echo: Say hello to checkout", "{greet}");
    assert_eq!(greet["model"], "stand-in-1");
    assert_eq!(greet["usage"]["total_tokens"], 19);
    assert_eq!(
        step(&run, "decide")["output"],
        json!({"action": "restart", "why": "error rate"}),
        "the reply that did not fit was repaired"
    );
    assert_eq!(step(&run, "act")["output"], json!({"do": "restart"}));
    // The run's three model calls are accounted to it.
    let run_id = run["id"].as_str().unwrap();
    let mut by_run = Value::Null;
    wait_for("the run's calls to be accounted", || {
        by_run = cli_json(&p, &addr, &["provider", "usage", "--by", "run"]);
        by_run
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["group"] == run_id && u["calls"] == 3)
    });
    let mine = by_run
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["group"] == run_id)
        .unwrap();
    assert_eq!(mine["prompt_tokens"], 36, "{by_run}");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3, "one call, then one and its repair");
        assert!(seen.iter().all(|(auth, _)| auth == "Bearer sk-test"));
        assert_eq!(
            seen[1].1[0],
            json!({"role": "system", "content": "You are an SRE."})
        );
    }

    // A wrong key: the step fails with the provider's own message, the key is not in it.
    add("standin", "sk-wrong");
    let runner = spawn_run(
        &p,
        &addr,
        "bad",
        "version: plexus/v1\nname: bad\nsteps:\n- {id: ask, llm: hi}\n",
    );
    let run = finish_run(runner, 1);
    let error = step(&run, "ask")["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("provider `standin`: the provider answered 401: Incorrect API key provided"),
        "{error}"
    );
    assert!(!error.contains("sk-wrong"));
    // Fallbacks: a provider that fails (not retried: a bad key) gives way to the next.
    add("backup", "sk-test");
    let runner = spawn_run(
        &p,
        &addr,
        "fallback",
        // The workflow's defaults name the provider and its fallback for every step.
        "version: plexus/v1\nname: fallback\ndefaults:\n  llm: {provider: standin, fallbacks: [backup]}\nsteps:\n- {id: ask, llm: hi}\n",
    );
    let run = finish_run(runner, 0);
    assert_eq!(step(&run, "ask")["output"]["text"], "echo: hi");
    let out = cli(&p, &addr)
        .args(["provider", "remove", "backup"])
        .output()
        .unwrap();
    assert!(out.status.success());
    // No provider: a clear error.
    let out = cli(&p, &addr)
        .args(["provider", "remove", "standin"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let runner = spawn_run(
        &p,
        &addr,
        "none",
        "version: plexus/v1\nname: none\nsteps:\n- {id: ask, llm: hi}\n",
    );
    let run = finish_run(runner, 1);
    assert!(
        step(&run, "ask")["error"]
            .as_str()
            .unwrap()
            .contains("no LLM provider is configured"),
        "{run}"
    );
    stop(&mut server);
}

/// The gateway driven by the real `openai` package from PyPI: models, a completion, a
/// stream, a bad key (OpenAI's error shape, so the client raises AuthenticationError);
/// the call is audited without its prompt.
#[test]
fn the_openai_package_talks_to_the_gateway() {
    let python = venv_python("openai", "openai==3.57.0");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen: Seen = Arc::default();
    let api = stand_in(&rt, seen.clone());
    let p = Plexus::new();
    let (mut server, addr) = start_server(&p);
    let mut child = cli(&p, &addr)
        .args(["provider", "add", "standin", "--base-url"])
        .arg(format!("http://{api}/v1"))
        .args(["--model", "stand-in-1", "--api-key-stdin"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"sk-test").unwrap();
    assert!(child.wait().unwrap().success());
    // USD per million tokens: what each call costs is accounted per user and key.
    set_setting(
        &p,
        &addr,
        "llm.prices",
        Some(r#"{"stand-in-1": {"prompt": 2.0, "completion": 8.0}}"#),
    );
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/llm_python/openai_client.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(format!("http://{addr}/v1"))
        .arg(admin_key(&addr))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        got,
        json!({
            "models": ["standin", "standin/stand-in-1"],
            "text": "echo: ping",
            "tokens": 19,
            "streamed": "echo: stream me",
            "stream_chunks": 3,
            "stream_tokens": 19,
            "tool_call": {"name": "weather", "arguments": {"city": "Oslo"}},
            "after_tool": "echo: 3 degrees",
            "embeddings": [[5.0, 1.0, 0.5], [2.0, 1.0, 0.5]],
            "bad_key": 401
        })
    );
    let models: Vec<Value> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(_, m)| m.clone())
        .collect();
    assert_eq!(models.len(), 4, "the bad key never reached the provider");
    let (_, audit) = http(&addr, "GET", "/api/v1/audit?limit=1000", None);
    let text = audit.to_string();
    assert!(text.contains("\"llm.chat\""), "{text}");
    assert!(
        !text.contains("stream me"),
        "the prompt is not in the audit log"
    );
    // Four chat calls answered (the bad key's never reached a provider), 12 + 7 tokens
    // each, and the embeddings' 4.
    let by_key = cli_json(&p, &addr, &["provider", "usage", "--by", "key"]);
    assert_eq!(by_key.as_array().unwrap().len(), 1, "{by_key}");
    assert_eq!(by_key[0]["calls"], 5, "{by_key}");
    assert_eq!(by_key[0]["prompt_tokens"], 52);
    assert_eq!(by_key[0]["completion_tokens"], 28);
    // Priced by model: the stream asked for `other-model`, which has no price.
    let cost = by_key[0]["cost_usd"].as_f64().unwrap();
    let priced = 3.0 * (12.0 * 2.0 + 7.0 * 8.0) + 4.0 * 2.0;
    assert!((cost - priced / 1e6).abs() < 1e-12, "{cost}");
    let by_model = cli_json(&p, &addr, &["provider", "usage", "--by", "model"]);
    assert_eq!(by_model[0]["group"], "standin/stand-in-1", "{by_model}");
    assert_eq!(by_model[1]["group"], "standin/other-model", "{by_model}");
    let by_user = cli_json(&p, &addr, &["provider", "usage", "--by", "user"]);
    assert_eq!(by_user[0]["group"], "user:admin");
    // With llm.audit_prompts on, the audit record holds what was asked.
    set_setting(&p, &addr, "llm.audit_prompts", Some("true"));
    let (status, _) = http(
        &addr,
        "POST",
        "/v1/chat/completions",
        Some(&json!({"model": "standin", "messages": [{"role": "user", "content": "audit me"}]})),
    );
    assert_eq!(status, 200);
    let (_, audit) = http(&addr, "GET", "/api/v1/audit?limit=1000", None);
    assert!(audit.to_string().contains("audit me"), "{audit}");
    // A daily token budget per user: spent, the next call is refused OpenAI's way.
    set_setting(&p, &addr, "budgets.gateway_max_tokens_per_day", Some("50"));
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/chat/completions",
        Some(&json!({"model": "standin", "messages": [{"role": "user", "content": "more"}]})),
    );
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tokens today (budgets.gateway_max_tokens_per_day)"),
        "{body}"
    );
    stop(&mut server);
}

/// A provider plugin (the example `echo_provider`, written with the Rust SDK) behind
/// `plexus provider add --kind plugin`: steps and the gateway reach it over the agent
/// protocol, chat and embeddings alike.
#[test]
fn a_provider_plugin_answers_steps_and_the_gateway() {
    let p = Plexus::new();
    write_plugins_toml(&p, "30s", "");
    let grpc = free_addr();
    let (mut server, addr) = start_server_on(&p, &grpc);
    let mut plugin = start_example_agent("echo_provider", &grpc);
    wait_for("the provider plugin to register", || {
        agent_health(&p, &addr, "echo-llm").as_deref() == Some("healthy")
    });
    let out = cli(&p, &addr)
        .args([
            "provider", "add", "local", "--kind", "plugin", "--plugin", "echo-llm", "--model",
            "echo-1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = cli_json(&p, &addr, &["provider", "list"]);
    assert_eq!(listed[0]["kind"], "plugin");
    assert_eq!(listed[0]["plugin"], "echo-llm");
    let runner = spawn_run(
        &p,
        &addr,
        "plugged",
        "version: plexus/v1\nname: plugged\nsteps:\n- {id: ask, llm: {prompt: hello there, system: be brief}}\n",
    );
    let run = finish_run(runner, 0);
    let out = &step(&run, "ask")["output"];
    assert_eq!(out["text"], "echo: hello there", "{run}");
    assert_eq!(out["model"], "echo-1");
    assert_eq!(out["usage"]["total_tokens"], 5);
    let (status, v) = http(
        &addr,
        "POST",
        "/v1/embeddings",
        Some(&json!({"model": "local", "input": ["a b", "c"]})),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"][0]["embedding"], json!([3.0, 2.0, 1.0]));
    assert_eq!(v["data"][1]["embedding"], json!([1.0, 1.0, 1.0]));
    // Streamed through ChatStream: one piece per word, then the end and [DONE].
    let body = json!({"model": "local", "stream": true,
        "messages": [{"role": "user", "content": "three small words"}]})
    .to_string();
    let text = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            admin_key(&addr),
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let chunks: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let pieces: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(pieces, ["echo: ", "three ", "small ", "words"], "{text}");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    assert!(text.contains("data: [DONE]"));
    let _ = plugin.kill();
    let _ = plugin.wait();
    stop(&mut server);
}

/// A provider's 429 is waited out as its `Retry-After` says, then the call is made again.
#[test]
fn a_rate_limited_call_waits_as_the_provider_asks() {
    use common::openai_stand_in as model;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen: model::Seen = Default::default();
    let times: Arc<Mutex<Vec<std::time::Instant>>> = Arc::default();
    let api = {
        let times = times.clone();
        model::serve(&rt, seen.clone(), move |_, n| {
            times.lock().unwrap().push(std::time::Instant::now());
            if n == 0 {
                (
                    429,
                    vec![("retry-after", "1".to_owned())],
                    json!({"error": {"message": "Rate limit reached", "type": "rate_limit_error"}}),
                )
            } else {
                model::text("fine")
            }
        })
    };
    let p = Plexus::new();
    let (mut server, addr) = start_server(&p);
    model::add_provider(&p, &addr, "standin", &api);
    let runner = spawn_run(
        &p,
        &addr,
        "limited",
        "version: plexus/v1\nname: limited\nsteps:\n- {id: ask, llm: hi}\n",
    );
    let run = finish_run(runner, 0);
    assert_eq!(step(&run, "ask")["output"]["text"], "fine");
    let times = times.lock().unwrap();
    assert_eq!(times.len(), 2);
    assert!(
        times[1] - times[0] >= std::time::Duration::from_secs(1),
        "waited {:?}",
        times[1] - times[0]
    );
    stop(&mut server);
}

/// The `llm` example runs end to end against an OpenAI-compatible server (here a
/// scripted one): a summary, then a verdict that fits its schema.
#[test]
fn the_llm_example_runs_against_an_openai_compatible_server() {
    use common::openai_stand_in as model;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen: model::Seen = Default::default();
    let api = model::serve(&rt, seen.clone(), |body, _| {
        let last = body["messages"].as_array().unwrap().last().unwrap()["content"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        if last.contains("JSON Schema") {
            model::text(r#"{"level": "low"}"#)
        } else {
            model::text("Not much: a few kilobytes.")
        }
    });
    let p = Plexus::new();
    let (mut server, addr) = start_server(&p);
    model::add_provider(&p, &addr, "local", &api);
    let file = examples().join("llm/summarize.yaml");
    let out = cli(&p, &addr)
        .args(["run", file.to_str().unwrap(), "-i", "path=.", "-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let run: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        run["outputs"],
        json!({"summary": "Not much: a few kilobytes.", "level": "low"})
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0]["max_tokens"], 60);
    assert_eq!(seen[1]["response_format"]["type"], "json_object");
    stop(&mut server);
}
