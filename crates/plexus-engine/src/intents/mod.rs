//! Intent recognition: which workflow or agent action a question in plain words asks
//! for, and the inputs it names.
//!
//! The catalogue is every stored workflow (its `intents`, name and description) and every
//! registered agent action (its intents, description and routing semantics). A question
//! is matched in lanes, the first that decides wins:
//!
//! 1. **pattern**: an intent phrase with placeholders (`why is {service} slow`) matches
//!    the whole question, ignoring case and punctuation; the placeholders' words become
//!    inputs. Certain (score 1).
//! 2. **lexical**: BM25 ranks the entries by their phrases, names and descriptions; the
//!    score is how much of the question's weight (IDF) the best entry covers, 0 to 1.
//! 3. **llm** (when a provider is configured, see [`classify`]): a model picks among the
//!    lexical lane's best entries and names the inputs.
//!
//! Lanes 1 and 2 need nothing but the catalogue; the index is built once per catalogue
//! and answers in microseconds.

pub mod classify;
mod pattern;

use bm25::{DefaultTokenizer, Language, SearchEngine, SearchEngineBuilder, Tokenizer};
use serde::Serialize;
use serde_json::{Map, Value as Json};
use std::collections::HashMap;

pub use pattern::{Pattern, Slots};

/// What an entry starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Workflow,
    Action,
}

/// An input an entry takes (a workflow input, an action parameter).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Input {
    pub name: String,
    /// `string`, `integer`, `number`, `boolean` (others are left as text).
    #[serde(rename = "type")]
    pub ty: String,
    pub required: bool,
}

/// One thing a question can ask for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub kind: Kind,
    /// A workflow's name, or `agent/action`.
    pub name: String,
    pub description: String,
    /// Intent phrases, with `{placeholders}`.
    pub phrases: Vec<String>,
    /// More words that describe it (use cases, domains), for the lexical lane only.
    #[serde(skip)]
    pub keywords: Vec<String>,
    pub inputs: Vec<Input>,
}

/// Which lane chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    Pattern,
    Lexical,
    Llm,
}

/// An entry as a question matched it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub kind: Kind,
    pub name: String,
    pub description: String,
    /// 0 to 1.
    pub score: f64,
    pub lane: Lane,
    /// Inputs taken from the question, typed as the entry declares them.
    pub inputs: Map<String, Json>,
    /// The phrase that matched (pattern lane).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phrase: Option<String>,
}

/// The catalogue, indexed for matching.
pub struct Index {
    entries: Vec<Entry>,
    /// Every phrase of every entry: (entry, pattern).
    patterns: Vec<(usize, Pattern)>,
    engine: Option<SearchEngine<u32>>,
    tokenizer: DefaultTokenizer,
    /// How many entries' documents hold each token.
    document_frequency: HashMap<String, u32>,
    /// Each entry's distinct tokens, made once (coverage reads them per question).
    tokens: Vec<std::collections::HashSet<String>>,
}

fn english() -> DefaultTokenizer {
    DefaultTokenizer::new(Language::English)
}

/// The text the lexical lane reads for an entry: its name (words of it), description,
/// phrases (placeholders as words) and keywords.
fn document(e: &Entry) -> String {
    let name = e.name.replace(['-', '_', '/', '.'], " ");
    let phrases: Vec<String> = e
        .phrases
        .iter()
        .map(|p| p.replace(['{', '}'], " "))
        .collect();
    format!(
        "{name} {} {} {}",
        e.description,
        phrases.join(" "),
        e.keywords.join(" ")
    )
}

impl Index {
    pub fn new(entries: Vec<Entry>) -> Index {
        let patterns = entries
            .iter()
            .enumerate()
            .flat_map(|(i, e)| e.phrases.iter().map(move |p| (i, Pattern::new(p))))
            .collect();
        let tokenizer = english();
        let docs: Vec<String> = entries.iter().map(document).collect();
        let mut document_frequency: HashMap<String, u32> = HashMap::new();
        let tokens: Vec<std::collections::HashSet<String>> = docs
            .iter()
            .map(|d| tokenizer.tokenize(d).into_iter().collect())
            .collect();
        for set in &tokens {
            for t in set {
                *document_frequency.entry(t.clone()).or_default() += 1;
            }
        }
        let engine = (!docs.is_empty()).then(|| {
            SearchEngineBuilder::<u32>::with_tokenizer_and_corpus(english(), docs).build()
        });
        Index {
            entries,
            patterns,
            engine,
            tokenizer,
            document_frequency,
            tokens,
        }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The text each entry is known by (for embeddings), in entry order.
    pub fn documents(&self) -> Vec<String> {
        self.entries.iter().map(document).collect()
    }

    /// Lane 2 with embeddings: each lexical candidate's score becomes the mean of its
    /// coverage and its similarity to the question (cosine, 0 to 1); entries the words
    /// missed but the meaning finds join in. `vectors` are the entries' (see
    /// [`Index::documents`]), `question` the question's.
    pub fn with_similarity(
        &self,
        mut ranked: Vec<Candidate>,
        question: &[f32],
        vectors: &[Vec<f32>],
        limit: usize,
    ) -> Vec<Candidate> {
        let similarity = |i: usize| {
            vectors
                .get(i)
                .map_or(0.0, |v| cosine(question, v).clamp(0.0, 1.0))
        };
        let index_of = |c: &Candidate| {
            self.entries
                .iter()
                .position(|e| e.name == c.name && e.kind == c.kind)
        };
        for c in ranked.iter_mut().filter(|c| c.lane == Lane::Lexical) {
            if let Some(i) = index_of(c) {
                c.score = (c.score + similarity(i)) / 2.0;
            }
        }
        for (i, e) in self.entries.iter().enumerate() {
            if ranked.iter().any(|c| c.name == e.name && c.kind == e.kind) {
                continue;
            }
            let s = similarity(i) / 2.0;
            if s > 0.0 {
                ranked.push(Candidate {
                    kind: e.kind,
                    name: e.name.clone(),
                    description: e.description.clone(),
                    score: s,
                    lane: Lane::Lexical,
                    inputs: Map::new(),
                    phrase: None,
                });
            }
        }
        ranked.sort_by(|a, b| {
            (b.lane == Lane::Pattern)
                .cmp(&(a.lane == Lane::Pattern))
                .then(b.score.total_cmp(&a.score))
        });
        ranked.truncate(limit);
        ranked
    }

    /// Lanes 1 and 2: every entry that matches, best first (at most `limit`).
    pub fn rank(&self, question: &str, limit: usize) -> Vec<Candidate> {
        // Every phrase that fits, the most specific first: more placeholders filled
        // (`restart {service} in {env}` before `restart {service}`), then more words of
        // its own (`restart the {service} service` before `restart {service}`); one
        // candidate per entry.
        let mut fits: Vec<(usize, &Pattern, Slots)> = self
            .patterns
            .iter()
            .filter_map(|(i, p)| p.matches(question).map(|w| (*i, p, w)))
            .collect();
        fits.sort_by_key(|(_, p, w)| std::cmp::Reverse((w.len(), p.words())));
        let mut out: Vec<Candidate> = Vec::new();
        for (i, pattern, words) in fits {
            let e = &self.entries[i];
            if out.iter().any(|c| c.name == e.name && c.kind == e.kind) {
                continue;
            }
            out.push(Candidate {
                kind: e.kind,
                name: e.name.clone(),
                description: e.description.clone(),
                score: 1.0,
                lane: Lane::Pattern,
                inputs: typed(e, words),
                phrase: Some(pattern.text().to_owned()),
            });
        }
        if let Some(engine) = &self.engine {
            let weights = self.weights(question);
            let total: f64 = weights.values().sum();
            for hit in engine.search(question, limit.max(1) * 2) {
                let e = &self.entries[hit.document.id as usize];
                if out.iter().any(|c| c.name == e.name && c.kind == e.kind) {
                    continue;
                }
                let doc = &self.tokens[hit.document.id as usize];
                let (known, unknown): (Vec<_>, Vec<_>) = weights
                    .iter()
                    .filter(|(t, _)| doc.contains(*t) || !self.document_frequency.contains_key(*t))
                    .partition(|(t, _)| doc.contains(*t));
                let mut covered: f64 = known.iter().map(|(_, w)| **w).sum();
                // Words no entry has may be what placeholders take (the service in
                // `{service} is slow`): each placeholder explains one, once some word of
                // the entry's own matched. A word another entry has is no such value.
                if covered > 0.0 {
                    let slots = e
                        .phrases
                        .iter()
                        .map(|p| p.matches('{').count())
                        .max()
                        .unwrap_or(0);
                    let mut rest: Vec<f64> = unknown.iter().map(|(_, w)| **w).collect();
                    rest.sort_by(|a, b| b.total_cmp(a));
                    covered += rest.iter().take(slots).sum::<f64>();
                }
                out.push(Candidate {
                    kind: e.kind,
                    name: e.name.clone(),
                    description: e.description.clone(),
                    score: if total > 0.0 { covered / total } else { 0.0 },
                    lane: Lane::Lexical,
                    inputs: Map::new(),
                    phrase: None,
                });
            }
            // Pattern matches first, then by coverage (BM25's order among equals).
            out.sort_by(|a, b| {
                (b.lane == Lane::Pattern)
                    .cmp(&(a.lane == Lane::Pattern))
                    .then(b.score.total_cmp(&a.score))
            });
        }
        out.truncate(limit);
        out
    }

    /// Each distinct token of the question with its weight: its inverse document
    /// frequency; a word no entry has weighs as much as the rarest known one, so that a
    /// question about something else scores low.
    fn weights(&self, question: &str) -> HashMap<String, f64> {
        let n = self.entries.len().max(1) as f64;
        let idf = |df: f64| ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
        self.tokenizer
            .tokenize(question)
            .into_iter()
            .map(|t| {
                let df = self.document_frequency.get(&t).copied().unwrap_or(0) as f64;
                let w = idf(df.max(1.0));
                (t, w)
            })
            .collect()
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let n = norm(a) * norm(b);
    if n == 0.0 { 0.0 } else { dot / n }
}

/// Placeholder words as the entry's typed inputs: a number where it takes a number, a
/// flag where it takes one; text otherwise (and when the words are not of the type).
fn typed(e: &Entry, words: Vec<(String, String)>) -> Map<String, Json> {
    words
        .into_iter()
        .map(|(name, text)| {
            let ty = e
                .inputs
                .iter()
                .find(|i| i.name == name)
                .map_or("string", |i| i.ty.as_str());
            let value = match ty {
                "integer" => text.parse::<i64>().map(Json::from).ok(),
                "number" => text.parse::<f64>().ok().map(Json::from),
                "boolean" => match text.to_ascii_lowercase().as_str() {
                    "true" | "yes" | "on" => Some(Json::Bool(true)),
                    "false" | "no" | "off" => Some(Json::Bool(false)),
                    _ => None,
                },
                _ => None,
            }
            .unwrap_or(Json::String(text));
            (name, value)
        })
        .collect()
}

/// The inputs an entry requires that `given` lacks.
pub fn missing(entry: &Entry, given: &Map<String, Json>) -> Vec<String> {
    entry
        .inputs
        .iter()
        .filter(|i| i.required && !given.contains_key(&i.name))
        .map(|i| i.name.clone())
        .collect()
}

/// A workflow as an entry.
pub fn workflow_entry(m: &plexus_core::manifest::Manifest) -> Entry {
    Entry {
        kind: Kind::Workflow,
        name: m.name.clone(),
        description: m.description.clone().unwrap_or_default(),
        phrases: m.intents.clone(),
        keywords: Vec::new(),
        inputs: m
            .inputs
            .iter()
            .map(|i| Input {
                name: i.name.clone(),
                ty: serde_json::to_value(i.ty)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| "string".into()),
                required: i.required && i.default.is_none(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests;
