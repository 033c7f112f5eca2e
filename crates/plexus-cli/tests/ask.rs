//! `plexus ask` against a real server holding the examples' intent catalogue: questions
//! matched by pattern and by words without any model, inputs taken from the question or
//! asked for, then with a model (a scripted stand-in for a paid API): the classifier
//! lane, and an agentic loop when nothing matches.

mod common;
use common::agents::*;
use common::openai_stand_in::{self as model, Seen};
use common::server::*;
use common::*;
use serde_json::{Value, json};

fn apply_catalogue(p: &Plexus, addr: &str) {
    for entry in std::fs::read_dir(examples().join("intents")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue; // the phrasings, in their own folder
        }
        let out = cli(p, addr)
            .args(["workflow", "apply", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn ask(p: &Plexus, addr: &str, args: &[&str]) -> (i32, Value, String) {
    let out = cli(p, addr)
        .arg("ask")
        .args(args)
        .args(["-o", "json"])
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        v,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_question_runs_the_workflow_it_names_without_a_model() {
    let p = Plexus::new();
    let (mut server, addr) = start_server(&p);
    apply_catalogue(&p, &addr);

    // Lane 1: the phrase fits; its placeholder is the input.
    let (code, v, err) = ask(&p, &addr, &["why is checkout slow?"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["action"], "run");
    assert_eq!(v["chosen"]["name"], "latency-triage");
    assert_eq!(v["chosen"]["lane"], "pattern");
    assert_eq!(v["chosen"]["phrase"], "why is {service} slow");
    assert_eq!(v["run"]["state"], "succeeded", "{v}");
    assert_eq!(v["run"]["inputs"]["service"], "checkout");
    assert_eq!(v["run"]["kind"], "workflow");

    // Typed inputs: `replicas` is an integer. A MODIFY workflow is only suggested here.
    let (code, v, _) = ask(&p, &addr, &["scale web to 3 replicas", "--dry-run"]);
    assert_eq!(code, 0);
    assert_eq!(v["action"], "suggest");
    assert_eq!(
        v["chosen"]["inputs"],
        json!({"service": "web", "replicas": 3})
    );

    // Lane 2: the words, not a phrase.
    let (code, v, err) = ask(&p, &addr, &["show the memory usage of this machine"]);
    assert_eq!(code, 0, "{err} {v}");
    assert_eq!(v["chosen"]["name"], "memory-usage", "{v}");
    assert_eq!(v["chosen"]["lane"], "lexical");
    assert!(v["chosen"]["score"].as_f64().unwrap() >= 0.6, "{v}");

    // A required input the question does not name: 422 over the API, exit 2 here.
    let (status, body) = http(
        &addr,
        "POST",
        "/api/v1/ask",
        Some(&json!({"question": "investigate latency", "run": false})),
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "missing_inputs");
    assert_eq!(body["details"]["missing"], json!(["service"]));
    let (code, _, err) = ask(&p, &addr, &["investigate latency"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("`latency-triage` needs service: give it with --input"),
        "{err}"
    );
    let (code, v, err) = ask(
        &p,
        &addr,
        &["investigate latency", "--input", "service=search"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["run"]["inputs"]["service"], "search");

    // A question too long to be one is refused, as a bad request.
    let (status, body) = http(
        &addr,
        "POST",
        "/api/v1/ask",
        Some(&json!({"question": "why ".repeat(2_000)})),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("at most 4096"),
        "{body}"
    );

    // Nothing close, and no model to ask: nothing runs, and it says why.
    let (code, v, _) = ask(&p, &addr, &["order a pizza with anchovies"]);
    assert_eq!(code, 1);
    assert_eq!(v["action"], "none");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("no LLM provider is configured"),
        "{v}"
    );
    // The index follows the catalogue: a deleted workflow is no longer chosen.
    let out = cli(&p, &addr)
        .args(["workflow", "delete", "memory-usage"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let (_, v, _) = ask(&p, &addr, &["show memory usage", "--dry-run"]);
    assert_ne!(v["chosen"]["name"], "memory-usage", "{v}");
    stop(&mut server);
}

#[test]
fn with_a_model_it_classifies_and_otherwise_runs_an_agentic_loop() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen: Seen = Default::default();
    let api = model::serve(&rt, seen.clone(), |body, _| {
        let system = body["messages"][0]["content"].as_str().unwrap_or("");
        let question = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .and_then(|m| m["content"].as_str())
            .unwrap_or("")
            .to_owned();
        if system.starts_with("You route") {
            // The classifier: what a model would say.
            let pick = if question.contains("tidy") {
                json!({"choice": "disk-usage", "inputs": {"path": "/tmp"}, "confidence": 0.9})
            } else {
                json!({"choice": null})
            };
            return model::text(&pick.to_string());
        }
        model::text("The answer is 42.")
    });
    let p = Plexus::new();
    let (mut server, addr) = start_server(&p);
    apply_catalogue(&p, &addr);
    model::add_provider(&p, &addr, "standin", &api);

    // Lane 3: the words alone are not enough; the model picks and names the input.
    let (code, v, err) = ask(&p, &addr, &["is /tmp tidy enough"]);
    assert_eq!(code, 0, "{err} {v}");
    assert_eq!(v["chosen"]["name"], "disk-usage", "{v}");
    assert_eq!(v["chosen"]["lane"], "llm");
    assert_eq!(v["run"]["inputs"]["path"], "/tmp");

    // Lane 2 with embeddings: the meaning finds what the words miss (`ram` is memory).
    set_setting(&p, &addr, "intents.embeddings", Some("standin"));
    let (code, v, err) = ask(&p, &addr, &["show ram usage", "--dry-run"]);
    assert_eq!(code, 0, "{err} {v}");
    assert_eq!(v["chosen"]["name"], "memory-usage", "{v}");
    assert_eq!(v["chosen"]["lane"], "lexical");
    set_setting(&p, &addr, "intents.embeddings", None);

    // Nothing matches: an agentic loop answers, as a run of its own kind.
    let (code, v, err) = ask(&p, &addr, &["what is the meaning of life?"]);
    assert_eq!(code, 0, "{err} {v}");
    assert_eq!(v["action"], "agentic");
    assert_eq!(v["run"]["kind"], "agentic");
    assert_eq!(v["run"]["outputs"]["answer"], "The answer is 42.");
    assert_eq!(
        v["run"]["inputs"]["question"],
        "what is the meaning of life?"
    );
    let listed = cli(&p, &addr).args(["runs", "list"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed
            .lines()
            .any(|l| l.contains("agentic") && l.contains("succeeded")),
        "{listed}"
    );
    // The loop's model request carried the question as data and every registered tool
    // (none here).
    let seen = seen.lock().unwrap();
    let last = seen.last().unwrap();
    assert!(last["tools"].is_null(), "no agents, no tools: {last}");
    stop(&mut server);
}
