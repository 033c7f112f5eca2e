use super::*;

fn entry(
    kind: Kind,
    name: &str,
    description: &str,
    phrases: &[&str],
    inputs: &[(&str, &str, bool)],
) -> Entry {
    Entry {
        kind,
        name: name.into(),
        description: description.into(),
        phrases: phrases.iter().map(|p| p.to_string()).collect(),
        keywords: Vec::new(),
        inputs: inputs
            .iter()
            .map(|(n, t, r)| Input {
                name: n.to_string(),
                ty: t.to_string(),
                required: *r,
            })
            .collect(),
    }
}

fn catalogue() -> Index {
    Index::new(vec![
        entry(
            Kind::Workflow,
            "latency-triage",
            "Find out why a service is slow",
            &["why is {service} slow", "{service} is slow"],
            &[("service", "string", true)],
        ),
        entry(
            Kind::Workflow,
            "scale",
            "Scale a deployment",
            &["scale {service} to {replicas} replicas"],
            &[("service", "string", true), ("replicas", "integer", true)],
        ),
        entry(
            Kind::Action,
            "ops/inspect",
            "Counts the files and bytes of a directory",
            &["how big is {path}"],
            &[("path", "string", true)],
        ),
    ])
}

#[test]
fn a_pattern_match_is_certain_and_fills_typed_inputs() {
    let index = catalogue();
    let best = &index.rank("Scale web to 3 replicas", 5)[0];
    assert_eq!(best.name, "scale");
    assert_eq!(best.lane, Lane::Pattern);
    assert_eq!(best.score, 1.0);
    assert_eq!(best.inputs["replicas"], 3, "an integer input gets a number");
    assert_eq!(best.inputs["service"], "web");
    let best = &index.rank("why is checkout slow?", 5)[0];
    assert_eq!(
        (best.name.as_str(), best.inputs["service"].as_str()),
        ("latency-triage", Some("checkout"))
    );
}

#[test]
fn the_lexical_lane_ranks_by_words_and_scores_by_coverage() {
    let index = catalogue();
    let ranked = index.rank("the checkout service feels slow", 5);
    assert_eq!(ranked[0].name, "latency-triage");
    assert_eq!(ranked[0].lane, Lane::Lexical);
    assert!(ranked[0].score > 0.5, "{ranked:?}");
    let ranked = index.rank("order a pizza with anchovies", 5);
    assert!(ranked.iter().all(|c| c.score < 0.3), "{ranked:?}");
    assert!(Index::new(Vec::new()).rank("anything", 5).is_empty());
}

#[test]
fn missing_required_inputs_are_named() {
    let index = catalogue();
    let e = &index.entries()[1];
    let mut given = Map::new();
    given.insert("service".into(), Json::from("web"));
    assert_eq!(missing(e, &given), ["replicas"]);
}

#[test]
fn embeddings_find_what_the_words_miss() {
    let index = catalogue();
    // Toy vectors: the question means what the first entry does, in other words.
    let vectors = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![0.0, 1.0]];
    let ranked = index.rank("the shop crawls", 5);
    assert!(
        ranked.iter().all(|c| c.name != "latency-triage"),
        "{ranked:?}"
    );
    let ranked = index.with_similarity(ranked, &[0.9, 0.1], &vectors, 5);
    assert_eq!(ranked[0].name, "latency-triage", "{ranked:?}");
    assert!(
        ranked[0].score > 0.45 && ranked[0].score < 0.5,
        "{ranked:?}"
    );
}
