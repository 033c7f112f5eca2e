//! `plexus bench --scenario intents`: how often a question over the examples' intent
//! catalogue (`examples/intents/`) chooses the right workflow without any model (lanes 1
//! and 2), and how long matching takes with 1,000 workflows in the catalogue.

use anyhow::{Context, Result};
use plexus_engine::intents::{Entry, Index, Lane, workflow_entry};
use serde_json::{Value as Json, json};
use std::time::{Duration, Instant};

/// The catalogue's workflows, as the binary was built with them.
const CATALOGUE: [&str; 9] = [
    include_str!("../../../examples/intents/check-certificate.yaml"),
    include_str!("../../../examples/intents/disk-usage.yaml"),
    include_str!("../../../examples/intents/free-space.yaml"),
    include_str!("../../../examples/intents/latency-triage.yaml"),
    include_str!("../../../examples/intents/memory-usage.yaml"),
    include_str!("../../../examples/intents/restart-service.yaml"),
    include_str!("../../../examples/intents/scale-service.yaml"),
    include_str!("../../../examples/intents/tail-logs.yaml"),
    include_str!("../../../examples/intents/top-processes.yaml"),
];
const QUESTIONS: &str = include_str!("../../../examples/intents/questions/phrasings.yaml");

/// The examples' catalogue as intent entries.
pub fn catalogue() -> Result<Vec<Entry>> {
    CATALOGUE
        .iter()
        .map(|text| {
            let node = plexus_core::node::parse_document(text)
                .map_err(|e| anyhow::anyhow!("an example of the intent catalogue: {e:?}"))?;
            let mut problems = Vec::new();
            plexus_core::parse::manifest_from_node(&node, &mut problems)
                .filter(|_| problems.is_empty())
                .map(|m| workflow_entry(&m))
                .with_context(|| {
                    format!("an example of the intent catalogue is invalid: {problems:?}")
                })
        })
        .collect()
}

/// The phrasings and what each should choose: `(question, workflow, inputs)`.
pub fn questions() -> Result<Vec<(String, String, Json)>> {
    let node = plexus_core::node::parse_document(QUESTIONS)
        .map_err(|e| anyhow::anyhow!("phrasings.yaml: {e:?}"))?;
    let list = node.to_json();
    list.as_array()
        .context("phrasings.yaml is a list")?
        .iter()
        .map(|q| {
            Ok((
                q["q"].as_str().context("each question has `q`")?.to_owned(),
                q["want"]
                    .as_str()
                    .context("each question has `want`")?
                    .to_owned(),
                q["inputs"].clone(),
            ))
        })
        .collect()
}

/// How the catalogue answers the phrasings: (right, right with the inputs expected,
/// chosen by the pattern lane, total), and the wrong ones.
pub fn accuracy(
    index: &Index,
    questions: &[(String, String, Json)],
) -> (usize, usize, usize, Vec<String>) {
    let (mut right, mut inputs_right, mut by_pattern) = (0, 0, 0);
    let mut wrong = Vec::new();
    for (q, want, inputs) in questions {
        let best = index.rank(q, 1);
        match best.first() {
            Some(c) if c.name == *want => {
                right += 1;
                if c.lane == Lane::Pattern {
                    by_pattern += 1;
                }
                let expected = inputs.as_object().cloned().unwrap_or_default();
                if expected.iter().all(|(k, v)| c.inputs.get(k) == Some(v)) {
                    inputs_right += 1;
                } else {
                    wrong.push(format!(
                        "{q:?}: inputs {:?}, expected {expected:?}",
                        c.inputs
                    ));
                }
            }
            other => wrong.push(format!(
                "{q:?}: chose {:?}, expected {want}",
                other.map(|c| (&c.name, c.score))
            )),
        }
    }
    (right, inputs_right, by_pattern, wrong)
}

/// A catalogue of `n` made-up workflows (deterministic), for timing.
fn filler(n: usize) -> Vec<Entry> {
    const NOUNS: [&str; 16] = [
        "queue", "cache", "bucket", "cluster", "database", "index", "topic", "pipeline", "volume",
        "tenant", "invoice", "report", "backup", "mirror", "shard", "gateway",
    ];
    const VERBS: [&str; 12] = [
        "rotate", "compact", "verify", "export", "archive", "drain", "rebuild", "sync", "audit",
        "purge", "snapshot", "migrate",
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |m: usize| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as usize % m
    };
    (0..n)
        .map(|i| {
            let (v, o, o2) = (VERBS[next(12)], NOUNS[next(16)], NOUNS[next(16)]);
            Entry {
                kind: plexus_engine::intents::Kind::Workflow,
                name: format!("{v}-{o}-{i}"),
                description: format!("{v} the {o} of a {o2} ({i})"),
                phrases: vec![
                    format!("{v} the {o} of {{{o2}}}"),
                    format!("{v} {o} {i} now"),
                ],
                keywords: Vec::new(),
                inputs: vec![plexus_engine::intents::Input {
                    name: o2.to_owned(),
                    ty: "string".into(),
                    required: true,
                }],
            }
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

pub fn run(workflows: usize, rounds: usize) -> Result<Json> {
    let started = Instant::now();
    let catalogue = catalogue()?;
    let questions = questions()?;
    let index = Index::new(catalogue.clone());
    let (right, inputs_right, by_pattern, wrong) = accuracy(&index, &questions);
    let accuracy = right as f64 / questions.len() as f64;

    let mut big = catalogue;
    big.extend(filler(workflows.saturating_sub(big.len())));
    let built = Instant::now();
    let index = Index::new(big.clone());
    let build_ms = built.elapsed().as_secs_f64() * 1000.0;
    // The same questions, over the big catalogue: lanes 1 and 2 as `ask` runs them.
    let mut times = Vec::new();
    let mut scan = Vec::new();
    for _ in 0..rounds {
        for (q, _, _) in &questions {
            let t = Instant::now();
            std::hint::black_box(index.rank(q, 5));
            times.push(t.elapsed());
            // Baseline: a plain scan of every phrase for the question's words.
            let t = Instant::now();
            let lower = q.to_lowercase();
            let words: Vec<&str> = lower.split_whitespace().collect();
            let hits = big
                .iter()
                .filter(|e| {
                    e.phrases
                        .iter()
                        .any(|p| words.iter().any(|w| p.contains(w)))
                })
                .count();
            std::hint::black_box(hits);
            scan.push(t.elapsed());
        }
    }
    times.sort();
    scan.sort();
    let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
    let (s50, s99) = (percentile(&scan, 0.5), percentile(&scan, 0.99));
    Ok(json!({
        "seconds": started.elapsed().as_secs_f64(),
        "questions": questions.len(),
        "top1_right": right,
        "top1_accuracy": accuracy,
        "inputs_right": inputs_right,
        "chosen_by_pattern": by_pattern,
        "wrong": wrong,
        "workflows": big.len(),
        "index_build_ms": build_ms,
        "match_p50_ms": p50,
        "match_p99_ms": p99,
        "result": format!(
            "top-1 {right}/{} ({:.0}%, {by_pattern} by pattern, inputs right in {inputs_right}); matching over {} workflows p50 {p50:.3} ms, p99 {p99:.3} ms",
            questions.len(), accuracy * 100.0, big.len()
        ),
        "target": "ask lanes 1+2 under 5 ms at 1,000 workflows",
        "target_met": p99 < 5.0,
        "baseline": format!("a plain scan of every phrase for the question's words: p50 {s50:.3} ms, p99 {s99:.3} ms"),
        "ratio": format!("{:.1}x the plain scan at p50", p50 / s50.max(1e-9)),
        "where_time_goes": format!("tokenizing and stemming the question, the BM25 search over the index, and the coverage of its best hits; the index is built once per catalogue ({build_ms:.1} ms at {} workflows)", big.len()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_examples_catalogue_answers_its_questions() {
        let questions = questions().unwrap();
        assert!(questions.len() >= 30);
        let index = Index::new(catalogue().unwrap());
        let (right, inputs_right, by_pattern, wrong) = accuracy(&index, &questions);
        // A floor, so that a change to matching that loses ground shows here.
        assert!(
            right * 10 >= questions.len() * 9,
            "{right}/{}: {wrong:#?}",
            questions.len()
        );
        assert!(inputs_right * 10 >= right * 9, "{wrong:#?}");
        assert!(by_pattern >= 15, "{by_pattern}");
    }
}
