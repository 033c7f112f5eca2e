//! Lane 3: a model picks, among the lexical lane's best entries, the one a question asks
//! for, and names its inputs. Used only when a provider is configured and lanes 1 and 2
//! did not decide.

use super::{Candidate, Entry, Lane, typed};
use plexus_llm::{ChatRequest, Message, Providers};
use serde_json::{Value as Json, json};
use std::time::Duration;

const SYSTEM: &str = "You route an operator's question to one of the automations listed. \
Answer with only a JSON object: {\"choice\": NAME or null, \"inputs\": {INPUT: VALUE}, \
\"confidence\": 0 to 1}. Choose null unless an automation clearly does what is asked. \
Take input values only from the question.";

/// The model's pick among `entries`, if it made one that is among them.
pub async fn classify(
    providers: &Providers,
    question: &str,
    entries: &[&Entry],
    timeout: Duration,
) -> Result<Option<Candidate>, String> {
    if entries.is_empty() {
        return Ok(None);
    }
    let listed: Vec<Json> = entries
        .iter()
        .map(|e| {
            json!({"name": e.name, "kind": e.kind, "description": e.description,
                   "phrases": e.phrases, "inputs": e.inputs})
        })
        .collect();
    let request = ChatRequest {
        messages: vec![
            Message::new("system", SYSTEM),
            Message::new(
                "user",
                format!(
                    "Automations:\n{}\n\nQuestion: {question}",
                    Json::Array(listed)
                ),
            ),
        ],
        max_tokens: Some(300),
        temperature: Some(0.0),
        json: true,
        timeout,
        ..ChatRequest::default()
    };
    let (_, reply) = providers.chat_routed(None, &[], request).await?;
    let answer: Json = crate::exec::llm::parse_json(&reply.content)?;
    let Some(choice) = answer["choice"].as_str() else {
        return Ok(None);
    };
    let Some(entry) = entries.iter().find(|e| e.name == choice) else {
        tracing::info!(choice, "the classifier chose something not listed");
        return Ok(None);
    };
    let words: Vec<(String, String)> = answer["inputs"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| entry.inputs.iter().any(|i| &i.name == *k))
                .map(|(k, v)| {
                    let text = match v {
                        Json::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), text)
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Some(Candidate {
        kind: entry.kind,
        name: entry.name.clone(),
        description: entry.description.clone(),
        score: answer["confidence"].as_f64().unwrap_or(0.8).clamp(0.0, 1.0),
        lane: Lane::Llm,
        inputs: typed(entry, words),
        phrase: None,
    }))
}
