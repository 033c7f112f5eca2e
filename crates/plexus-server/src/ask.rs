//! `POST /api/v1/ask`: a question in plain words, matched to a stored workflow or an
//! agent action (see `plexus_engine::intents`) and run with the inputs it names — or,
//! when nothing matches well enough and a model is configured, answered by an agentic
//! loop: a run of its own whose one step calls the registered actions as tools, every
//! MODIFY/ADMIN call approved in the inbox.

use crate::AppState;
use crate::auth::{Caller, audit};
use crate::body;
use crate::error::{ApiError, ApiResult};
use crate::runs::WaitQuery;
use crate::runs::{Origin, answer_after, start_run};
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use plexus_engine::intents::{self, Candidate, Index, Kind, Lane};
use serde::Deserialize;
use serde_json::{Map, Value as Json_, json};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The name of the workflow an agentic loop runs as.
pub const AGENTIC: &str = "agentic";
/// The longest question, in bytes.
const MAX_QUESTION: usize = 4096;
/// How many entries the model classifier chooses among.
const CLASSIFY_AT_MOST: usize = 20;
/// The score from which the best candidate is run (setting `intents.min_score`).
pub const MIN_SCORE: f64 = 0.6;

/// An index and what it was built from: (workflow changes, agents' generation).
type Built = ((u64, u64), Arc<Index>);

/// The intent index, built again when the workflows or the agents change.
#[derive(Default)]
pub struct IntentCache {
    /// Bumped when a workflow is applied or deleted.
    pub workflows: AtomicU64,
    built: Mutex<Option<Built>>,
    /// The entries' embeddings: (the index they are of, the provider, the vectors).
    vectors: Mutex<Option<Vectors>>,
}

type Vectors = (usize, String, Arc<Vec<Vec<f32>>>);

impl IntentCache {
    pub fn workflows_changed(&self) {
        self.workflows.fetch_add(1, Ordering::Relaxed);
    }
}

/// The index of what a question can ask for now.
pub async fn index(state: &AppState) -> ApiResult<Arc<Index>> {
    let key = (
        state.intents.workflows.load(Ordering::Relaxed),
        state.engine.agents.generation(),
    );
    if let Ok(built) = state.intents.built.lock()
        && let Some((k, index)) = built.as_ref()
        && *k == key
    {
        return Ok(index.clone());
    }
    let mut entries = Vec::new();
    for row in state.store.list_workflows().await? {
        match crate::workflows::compile(state, &row.manifest, &row.name) {
            Ok(plan) => entries.push(intents::workflow_entry(&plan.manifest)),
            Err(_) => {
                tracing::warn!(workflow = %row.name, "a stored workflow does not parse: left out of intents")
            }
        }
    }
    entries.extend(state.engine.agents.intent_entries());
    let index = Arc::new(Index::new(entries));
    if let Ok(mut built) = state.intents.built.lock() {
        *built = Some((key, index.clone()));
    }
    Ok(index)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ask {
    question: String,
    /// Inputs to add to (or correct) those taken from the question.
    #[serde(default)]
    inputs: Map<String, Json_>,
    /// `false`: only say what would run.
    #[serde(default = "yes")]
    run: bool,
    /// `false`: never start an agentic loop.
    #[serde(default = "yes", rename = "loop")]
    agentic: bool,
    #[serde(default)]
    limit: Option<usize>,
}

fn yes() -> bool {
    true
}

/// The manifest of an agentic loop: one `llm` step over every registered action; the
/// question is an input (data, never a template).
fn agentic_manifest() -> String {
    r#"version: plexus/v1
name: agentic
description: An agentic loop over the registered agents' actions
inputs:
  question: {type: string}
steps:
  - id: loop
    llm:
      system: >-
        You are Plexus, an operations assistant. Answer the question, using the tools
        when they help. Tools that change things wait for a person's approval; if one
        is rejected, do not try to get around it. When you have the answer, give it
        plainly without calling more tools.
      prompt: "{{ inputs.question }}"
      tools: ["*"]
outputs:
  answer: "{{ steps.loop.output.text }}"
"#
    .to_owned()
}

/// The provider whose embeddings the lexical lane uses (`intents.embeddings`), if any.
async fn embeddings_provider(state: &AppState) -> Option<String> {
    crate::settings::value(state, "intents.embeddings")
        .await
        .ok()
        .flatten()
        .and_then(|v| v.as_str().map(str::to_owned))
}

/// The question's vector and the entries' (made once per index and provider).
async fn vectors(
    state: &AppState,
    index: &Arc<Index>,
    provider: &str,
    question: &str,
) -> Result<(Vec<f32>, Arc<Vec<Vec<f32>>>), String> {
    let id = Arc::as_ptr(index) as usize;
    let known = state.intents.vectors.lock().ok().and_then(|v| {
        v.as_ref()
            .filter(|(i, p, _)| *i == id && p == provider)
            .map(|(_, _, vectors)| vectors.clone())
    });
    let llm = &state.engine.llm;
    let timeout = Duration::from_secs(30);
    let entries = match known {
        Some(v) => v,
        None => {
            let docs = index.documents();
            let (_, got) = llm
                .embed_routed(Some(provider), None, docs, timeout)
                .await?;
            let v = Arc::new(got.vectors);
            if let Ok(mut cache) = state.intents.vectors.lock() {
                *cache = Some((id, provider.to_owned(), v.clone()));
            }
            v
        }
    };
    let (_, q) = llm
        .embed_routed(Some(provider), None, vec![question.to_owned()], timeout)
        .await?;
    let q = q.vectors.into_iter().next().unwrap_or_default();
    Ok((q, entries))
}

async fn min_score(state: &AppState) -> f64 {
    crate::settings::value(state, "intents.min_score")
        .await
        .ok()
        .flatten()
        .and_then(|v| v.as_f64())
        .unwrap_or(MIN_SCORE)
}

pub async fn ask(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<WaitQuery>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Json_>)> {
    let wait = q.duration()?;
    let bytes = body::read(body, state.config.body_limit).await?;
    let req: Ask = body::json(&bytes)?;
    let question = req.question.trim();
    if question.is_empty() {
        return Err(ApiError::bad_request("`question` is empty"));
    }
    if question.len() > MAX_QUESTION {
        return Err(ApiError::bad_request(format!(
            "the question is {} bytes long; ask in at most {MAX_QUESTION}",
            question.len()
        )));
    }
    let index = index(&state).await?;
    let limit = req.limit.unwrap_or(5).clamp(1, 50);
    let mut candidates = index.rank(question, limit.max(10));
    // Lane 2 with meaning as well as words, when a provider makes embeddings for it.
    if let Some(provider) = embeddings_provider(&state).await {
        match vectors(&state, &index, &provider, question).await {
            Ok((q, v)) => candidates = index.with_similarity(candidates, &q, &v, limit.max(10)),
            Err(e) => tracing::warn!(error = %e, "intent embeddings failed; words only"),
        }
    }
    let threshold = min_score(&state).await;
    let mut chosen: Option<Candidate> = candidates
        .first()
        .filter(|c| c.lane == Lane::Pattern || c.score >= threshold)
        .cloned();
    // Lane 3: a model picks among the best when the first two lanes did not decide.
    if chosen.is_none() && !state.engine.llm.names().is_empty() {
        // The lexical lane's best; when it found few, the rest of a small catalogue too
        // (a model knows words the catalogue does not use).
        let mut listed: Vec<&intents::Entry> = candidates
            .iter()
            .filter_map(|c| {
                index
                    .entries()
                    .iter()
                    .find(|e| e.name == c.name && e.kind == c.kind)
            })
            .collect();
        for e in index.entries() {
            if listed.len() >= CLASSIFY_AT_MOST {
                break;
            }
            if !listed.iter().any(|l| l.name == e.name && l.kind == e.kind) {
                listed.push(e);
            }
        }
        match intents::classify::classify(
            &state.engine.llm,
            question,
            &listed,
            Duration::from_secs(30),
        )
        .await
        {
            Ok(Some(c)) => {
                candidates.retain(|x| !(x.name == c.name && x.kind == c.kind));
                candidates.insert(0, c.clone());
                chosen = Some(c);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the intent classifier failed; going on without it")
            }
        }
    }
    candidates.truncate(limit);
    let mut answer = json!({
        "question": question,
        "candidates": candidates,
        "threshold": threshold,
    });
    let Some(mut chosen) = chosen else {
        let can_loop = req.agentic && !state.engine.llm.names().is_empty();
        if !req.run || !can_loop {
            answer["action"] = json!("none");
            answer["message"] = json!(if !can_loop && req.agentic {
                "no workflow or action matches well enough, and no LLM provider is configured for an agentic loop"
            } else {
                "no workflow or action matches well enough"
            });
            return Ok((StatusCode::OK, Json(answer)));
        }
        let mut inputs = Map::new();
        inputs.insert("question".into(), json!(question));
        let id = start_run(
            &state,
            agentic_manifest(),
            None,
            &inputs,
            None,
            Origin::caller(&caller),
        )
        .await?;
        audit_ask(&state, &caller, "agentic", None, &id).await;
        answer["action"] = json!("agentic");
        return finish(&state, answer, &id, wait, &q).await;
    };
    for (k, v) in req.inputs {
        chosen.inputs.insert(k, v);
    }
    let entry = index
        .entries()
        .iter()
        .find(|e| e.name == chosen.name && e.kind == chosen.kind)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the chosen entry left the index",
            )
        })?;
    let missing = intents::missing(entry, &chosen.inputs);
    answer["chosen"] = json!(chosen);
    if !missing.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_inputs",
            format!(
                "`{}` needs {}: give {} with `inputs`",
                chosen.name,
                missing.join(", "),
                if missing.len() == 1 { "it" } else { "them" }
            ),
        )
        .with_details(json!({"chosen": chosen, "missing": missing})));
    }
    if !req.run {
        answer["action"] = json!("suggest");
        return Ok((StatusCode::OK, Json(answer)));
    }
    let id = match chosen.kind {
        Kind::Workflow => {
            let row = crate::runs::stored_workflow(&state, &chosen.name, None).await?;
            start_run(
                &state,
                row.manifest,
                Some(row.version),
                &chosen.inputs,
                None,
                Origin::caller(&caller),
            )
            .await?
        }
        Kind::Action => {
            let (agent, action) = chosen.name.split_once('/').unwrap_or((&chosen.name, ""));
            let text = crate::agents_api::invoke_manifest(agent, action, &chosen.inputs);
            start_run(
                &state,
                text,
                None,
                &Map::new(),
                None,
                Origin::caller(&caller),
            )
            .await?
        }
    };
    audit_ask(&state, &caller, "run", Some(&chosen), &id).await;
    answer["action"] = json!("run");
    finish(&state, answer, &id, wait, &q).await
}

async fn audit_ask(
    state: &AppState,
    caller: &Caller,
    action: &str,
    chosen: Option<&Candidate>,
    run: &str,
) {
    audit(
        state.store.as_ref(),
        &caller.actor(),
        "intent.asked",
        &format!("run:{run}"),
        json!({"action": action, "chosen": chosen.map(|c| &c.name), "lane": chosen.map(|c| c.lane), "score": chosen.map(|c| c.score)}),
    )
    .await;
}

/// The answer with the run started (after the wait, when one was asked for).
async fn finish(
    state: &AppState,
    mut answer: Json_,
    id: &str,
    wait: Option<Duration>,
    q: &WaitQuery,
) -> ApiResult<(StatusCode, Json<Json_>)> {
    let (status, Json(run)) =
        answer_after(state, id, wait, StatusCode::CREATED, q.view(wait), None).await?;
    answer["run"] = run;
    Ok((status, Json(answer)))
}
