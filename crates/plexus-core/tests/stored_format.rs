//! What earlier versions stored stays readable: a run stored in event schema 1 with its
//! compile options in plan format 1 (`fixtures/run-schema1.json`, made by a real
//! `plexus run`) compiles to its plan again and is folded back into the same state. When
//! the event schema or the plan format changes, add a fixture of the new version beside
//! this one and keep this test.

use plexus_core::CompileOptions;
use plexus_core::machine::{Event, RunState, RunStatus};
use serde_json::Value;
use std::sync::Arc;

fn fixture() -> Value {
    let text = include_str!("fixtures/run-schema1.json");
    serde_json::from_str(text).expect("the fixture is JSON")
}

#[test]
fn a_run_stored_in_event_schema_1_restores_to_the_same_state() {
    let f = fixture();
    let opts = CompileOptions::from_stored(f["plan"].as_str().unwrap()).expect("format 1 reads");
    let plan = plexus_core::load(f["manifest"].as_str().unwrap(), "fixture.yaml", &opts)
        .expect("the stored manifest compiles with its stored options");
    assert_eq!(plan.manifest.name, "fixture");
    let events: Vec<Event> =
        serde_json::from_value(f["events"].clone()).expect("schema 1 events read");
    let state = RunState::restore("fixture-run", Arc::new(plan), f["inputs"].clone(), &events)
        .expect("contiguous history");
    assert_eq!(state.status, RunStatus::Succeeded);
    assert_eq!(state.seq, events.len() as u64);
    for i in 0..state.plan.len() {
        let view = state.step_view(i);
        assert_eq!(
            view.status.as_str(),
            f["step_status"][&view.id].as_str().unwrap(),
            "step {}",
            view.id
        );
    }
    let each = state.step_view(state.plan.index["each"]);
    assert_eq!(each.output.as_array().unwrap().len(), 3);
    assert_eq!(state.outputs["n"], 3);
}

#[test]
fn stored_options_round_trip_and_other_formats_are_refused() {
    let f = fixture();
    let text = f["plan"].as_str().unwrap();
    let opts = CompileOptions::from_stored(text).unwrap();
    assert_eq!(
        CompileOptions::from_stored(&opts.to_stored()).unwrap(),
        opts
    );
    let newer = text.replacen("\"format\":1", "\"format\":99", 1);
    let err = CompileOptions::from_stored(&newer).unwrap_err().to_string();
    assert!(err.contains("format 99"), "{err}");
}
