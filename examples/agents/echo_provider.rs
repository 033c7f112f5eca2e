//! A model provider plugin written with the Plexus Rust SDK: it "answers" by echoing the
//! last user message and makes toy embeddings. Register it, then
//! `plexus provider add local --kind plugin --plugin echo-llm --model echo-1`.
//!
//! A real one would call a model here; the protocol is the same: the action `chat`
//! takes the conversation (`messages`, a JSON string in the chat completions API's
//! shape) and answers `content`, `model`, `finish_reason`, `tool_calls` and `usage`.

use plexus_agent::{Action, Agent, Permission, Request, Stage};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, JsonSchema)]
struct Chat {
    /// The conversation, as JSON text.
    messages: String,
    #[serde(default)]
    model: Option<String>,
}

#[derive(Serialize, JsonSchema)]
struct Reply {
    content: String,
    model: String,
    finish_reason: String,
    usage: Tokens,
}

#[derive(Serialize, JsonSchema)]
struct Tokens {
    prompt_tokens: u64,
    completion_tokens: u64,
}

#[tokio::main]
async fn main() {
    let agent = Agent::new(
        "echo-llm",
        "0.1.0",
        "A model that echoes (an example provider plugin)",
    )
    .stage(Stage::Operate)
    .action(Action::new(
        "chat",
        "Answers a conversation",
        Permission::Read,
        |_req: Request, c: Chat| async move {
            let messages: Vec<serde_json::Value> = serde_json::from_str(&c.messages)
                .map_err(|e| plexus_agent::ActionError(format!("messages: {e}")))?;
            let last = messages
                .iter()
                .rev()
                .find(|m| m["role"] == "user")
                .and_then(|m| m["content"].as_str())
                .unwrap_or("");
            let words = |s: &str| s.split_whitespace().count() as u64;
            Ok(Reply {
                content: format!("echo: {last}"),
                model: c.model.unwrap_or_else(|| "echo-1".into()),
                finish_reason: "stop".into(),
                usage: Tokens {
                    prompt_tokens: words(last),
                    completion_tokens: words(last) + 1,
                },
            })
        },
    ))
    .provider(|req| async move {
        // Toy vectors: length, words, and a constant.
        Ok(req
            .inputs
            .iter()
            .map(|t| vec![t.len() as f32, t.split_whitespace().count() as f32, 1.0])
            .collect())
    });
    if let Err(e) = plexus_agent::serve(agent).await {
        eprintln!("echo provider: {e}");
        std::process::exit(1);
    }
}
