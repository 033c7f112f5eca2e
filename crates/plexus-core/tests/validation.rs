//! Validation reports every problem at once, each with a location, a code and a hint.

use plexus_core::{CompileOptions, Diagnostic, load};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn opts() -> CompileOptions {
    CompileOptions {
        pools: BTreeMap::from([("default".into(), 2), ("gpu".into(), 1)]),
        default_mode: None,
        action_floors: Default::default(),
    }
}

fn problems(yaml: &str) -> Vec<Diagnostic> {
    load(yaml, "flow.yaml", &opts()).err().unwrap_or_default()
}

fn codes(yaml: &str) -> Vec<&'static str> {
    problems(yaml).into_iter().map(|d| d.code).collect()
}

fn has(diags: &[Diagnostic], code: &str, line: u32, step: Option<&str>) -> bool {
    diags.iter().any(|d| {
        d.code == code && d.line == line && d.step.as_deref() == step && d.file == "flow.yaml"
    })
}

#[test]
fn a_broken_manifest_reports_every_problem_with_its_place() {
    let yaml = "\
version: plexus/v1
name: demo
inputs:
  service: {type: string}
steps:
  - id: a
    run: echo {{ inputs.servce }}
    neds: [b]
  - id: b
    needs: [c]
    run: echo b
    builtin: noop
  - id: c
    needs: [b]
    run: echo {{ steps.d.output }}
    timeout: 5 minutes
  - id: d
    needs: [a, x]
    trigger: {quorum: 3}
    run: echo
  - id: d
    trigger: al_done
    pool_slots: 9
    wait: {}
  - id: e
    schedule: nope
  - id: f
    needs: [a]
    pool: gpu
    pool_slots: 2
    run: train
";
    let d = problems(yaml);
    assert!(has(&d, "unknown-input", 7, Some("a")), "{d:#?}");
    assert!(has(&d, "unknown-key", 8, Some("a")));
    assert_eq!(
        d.iter()
            .find(|x| x.code == "unknown-key" && x.line == 8)
            .unwrap()
            .hint
            .as_deref(),
        Some("did you mean `needs`?")
    );
    assert!(has(&d, "two-kinds", 9, Some("b")));
    assert!(
        d.iter()
            .any(|x| x.code == "cycle" && x.message.contains("c -> b -> c"))
    );
    assert!(has(&d, "not-ancestor", 15, Some("c")));
    assert!(has(&d, "bad-duration", 16, Some("c")));
    assert!(has(&d, "unknown-need", 18, Some("d")));
    assert!(has(&d, "bad-trigger", 19, Some("d")));
    assert!(has(&d, "duplicate-id", 21, Some("d")));
    assert!(has(&d, "bad-trigger", 22, Some("d")));
    assert!(has(&d, "pool-slots", 23, Some("d")));
    assert!(has(&d, "bad-wait", 24, Some("d")));
    assert!(has(&d, "no-kind", 25, Some("e")));
    assert!(has(&d, "unknown-key", 26, Some("e")));
    assert!(has(&d, "pool-slots", 30, Some("f")));
    // Sorted by place, columns filled in.
    assert!(
        d.windows(2)
            .all(|w| (w[0].line, w[0].column) <= (w[1].line, w[1].column))
    );
    assert!(d.iter().all(|x| x.column > 0));
}

#[test]
fn steps_behind_a_cycle_are_unreachable() {
    let c = codes(
        "version: plexus/v1\nname: x\nsteps:\n- {id: a, needs: [b], run: a}\n- {id: b, needs: [a], run: b}\n- {id: c, needs: [b], run: c}\n",
    );
    assert_eq!(c, vec!["cycle", "unreachable"]);
    let c = codes("version: plexus/v1\nname: x\nsteps:\n- {id: a, run: a, when: false}\n");
    assert_eq!(c, vec!["unreachable"]);
}

#[test]
fn top_level_problems() {
    assert_eq!(codes(""), vec!["empty"]);
    assert_eq!(
        codes("version: plexus/v2\nname: x\nsteps: [{id: a, run: a}]\n"),
        vec!["bad-version"]
    );
    assert_eq!(
        codes("version: plexus/v1\nname: x\nschedule: '61 * * * *'\nsteps: [{id: a, run: a}]\n"),
        vec!["bad-cron"]
    );
    assert_eq!(
        codes("version: plexus/v1\nname: x\nstepz: []\n"),
        vec!["missing-key", "unknown-key"]
    );
    assert_eq!(
        codes("version: plexus/v1\nname: x\nsteps: [{id: a, run: a, trigger: one_failed}]\n"),
        vec!["bad-trigger"]
    );
    assert_eq!(
        codes("version: plexus/v1\nname: x\nsteps: [{id: a, run: '{{ oops'}]\n"),
        vec!["bad-template"]
    );
    assert_eq!(
        codes("version: plexus/v1\nname: x\nsteps: [{id: a, run: a, pool: gpus}]\n"),
        vec!["unknown-pool"]
    );
    assert_eq!(codes("a: [1, 2\nb: 3"), vec!["syntax"]);
}

#[test]
fn a_yaml_alias_bomb_is_refused_quickly() {
    let mut doc =
        String::from("version: plexus/v1\nname: bomb\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        doc.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    doc.push_str("steps: [{id: a, run: a}]\n");
    let started = std::time::Instant::now();
    assert_eq!(codes(&doc), vec!["syntax"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn json_manifests_are_accepted() {
    let json = r#"{"version": "plexus/v1", "name": "j", "steps": [{"id": "a", "builtin": "noop"}, {"id": "b", "needs": ["a"], "run": "echo"}]}"#;
    let plan = load(json, "flow.json", &opts()).unwrap();
    assert_eq!(plan.layers, vec![vec![0], vec![1]]);
    let bad = r#"{"version": "plexus/v1", "name": "j", "steps": [{"id": "a", "bultin": "noop"}]}"#;
    let d = load(bad, "flow.json", &opts()).unwrap_err();
    assert!(d.iter().any(|x| x.code == "unknown-key" && x.line == 1));
}

#[test]
fn modify_and_admin_steps_are_gated_in_every_mode() {
    for mode in ["manual", "guided", "autonomous"] {
        let yaml = format!(
            "version: plexus/v1\nname: x\nmode: {mode}\nsteps:\n- {{id: a, run: a, permission: modify}}\n- {{id: b, run: b, permission: admin}}\n- {{id: c, run: c}}\n"
        );
        let plan = load(&yaml, "f", &opts()).unwrap();
        assert!(plan.nodes[0].gate.is_some(), "{mode}");
        assert!(plan.nodes[1].gate.is_some(), "{mode}");
        assert_eq!(plan.nodes[2].gate.is_some(), mode == "manual", "{mode}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    /// Arbitrary text never panics the parser or the validator.
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        let _ = load(&text, "fuzz.yaml", &opts());
    }

    /// Manifest-shaped input with random keys, values and references never panics.
    #[test]
    fn manifest_shaped_input_never_panics(
        steps in proptest::collection::vec((
            "[a-e]{1,2}",
            prop_oneof![Just("run"), Just("python"), Just("builtin"), Just("wait"), Just("approval"), Just("bogus")],
            "[ -~]{0,20}",
            proptest::collection::vec("[a-e]{1,2}", 0..3),
            prop_oneof![Just("all_done"), Just("{quorum: 2}"), Just("nope"), Just("one_success")],
        ), 0..8)
    ) {
        let mut y = String::from("version: plexus/v1\nname: fuzz\nsteps:\n");
        for (id, kind, value, needs, trigger) in steps {
            y.push_str(&format!("  - id: {id}\n    {kind}: {value:?}\n    needs: {needs:?}\n    trigger: {trigger}\n"));
        }
        let _ = load(&y, "fuzz.yaml", &opts());
    }
}

/// A wrong value is named in the message, not only its type (`found -1`, not `found an
/// integer`); long strings are cut, lists and mappings are named by type.
#[test]
fn wrong_values_are_named_in_the_message() {
    let yaml = "version: plexus/v1\nname: x\nsteps:\n- {id: a, run: 'true', retry: {max_attempts: -1}}\n- {id: b, run: 'true', concurrency: many}\n- {id: c, run: 'true', timeout: [1]}\n";
    let messages: Vec<String> = problems(yaml).into_iter().map(|d| d.message).collect();
    let all = messages.join("\n");
    assert!(
        all.contains("max_attempts must be a non-negative integer, found -1"),
        "{all}"
    );
    assert!(all.contains("found the string \"many\""), "{all}");
    assert!(all.contains("found a list"), "{all}");
    let long = "x".repeat(100);
    let yaml = format!(
        "version: plexus/v1\nname: x\nsteps:\n- {{id: a, run: 'true', concurrency: {long}}}\n"
    );
    let all: Vec<String> = problems(&yaml).into_iter().map(|d| d.message).collect();
    assert!(
        all[0].ends_with(&format!("\"{}\"…", "x".repeat(40))),
        "{all:?}"
    );
}

#[test]
fn an_llm_mapping_is_checked_key_by_key() {
    let yaml = "\
version: plexus/v1
name: ask
steps:
  - id: a
    llm:
      promt: hi
      tools: {ops: yes}
      max_tokens: lots
      budget: {max_iterations: -1, max_loops: 3}
      output_schema: [object]
  - id: b
    llm: {prompt: hi, tools: [ops, ops.inspect], budget: {max_tool_calls: 3}, approval_timeout: 10m}
  - id: c
    llm: short form
";
    let diags = problems(yaml);
    let unknown: Vec<&Diagnostic> = diags.iter().filter(|d| d.code == "unknown-key").collect();
    assert_eq!(unknown.len(), 2, "{diags:#?}");
    assert!(has(&diags, "unknown-key", 6, Some("a")));
    assert_eq!(unknown[0].hint.as_deref(), Some("did you mean `prompt`?"));
    assert!(has(&diags, "unknown-key", 9, Some("a")), "{diags:#?}");
    assert!(has(&diags, "missing-key", 6, Some("a")), "{diags:#?}");
    assert!(has(&diags, "wrong-type", 7, Some("a")), "{diags:#?}");
    assert!(has(&diags, "wrong-type", 8, Some("a")), "{diags:#?}");
    assert!(has(&diags, "wrong-type", 10, Some("a")), "{diags:#?}");
    assert!(
        diags.iter().all(|d| d.step.as_deref() == Some("a")),
        "{diags:#?}"
    );
}

#[test]
fn a_workflow_sets_llm_defaults_with_the_keys_of_a_step() {
    let yaml = "\
version: plexus/v1
name: ask
defaults:
  llm: {provider: local, model: small, tools: [ops], max_tokens: many}
steps:
  - id: a
    llm: hi
";
    let diags = problems(yaml);
    assert_eq!(diags.len(), 2, "{diags:#?}");
    assert!(has(&diags, "unknown-key", 4, None), "{diags:#?}");
    assert!(has(&diags, "wrong-type", 4, None), "{diags:#?}");
    let ok = "version: plexus/v1\nname: ask\ndefaults:\n  llm: {provider: local, fallbacks: [cloud], budget: {max_tokens: 1000}}\nsteps:\n  - {id: a, llm: hi}\n";
    assert!(problems(ok).is_empty(), "{:#?}", problems(ok));
}

#[test]
fn an_llm_steps_templates_are_checked_and_their_steps_known() {
    let yaml = "\
version: plexus/v1
name: ask
steps:
  - id: a
    run: echo hi
  - id: b
    needs: [a]
    llm: {prompt: \"{{ steps.a.output.stdout }} and {{ steps.nope.output.text }}\"}
";
    let diags = problems(yaml);
    assert_eq!(diags.len(), 1, "{diags:#?}");
    assert_eq!(diags[0].step.as_deref(), Some("b"));
    assert!(diags[0].message.contains("nope"), "{diags:#?}");
}
