//! What earlier versions stored stays readable: a run stored in event schema 1 with its
//! plan in format 1 (`fixtures/run-schema1.json`, made by a real `plexus run`) is folded
//! back into the same state. When the event schema or the plan format changes, add a
//! fixture of the new version beside this one and keep this test.

use plexus_core::Plan;
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
    let plan = Plan::from_stored(f["plan"].as_str().unwrap()).expect("plan format 1 reads");
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
fn the_stored_plan_round_trips_and_refuses_other_formats() {
    let f = fixture();
    let text = f["plan"].as_str().unwrap();
    let plan = Plan::from_stored(text).unwrap();
    assert_eq!(
        Plan::from_stored(&plan.to_stored()).unwrap().to_stored(),
        plan.to_stored()
    );
    let newer = text.replacen("\"format\":1", "\"format\":99", 1);
    let err = Plan::from_stored(&newer).unwrap_err().to_string();
    assert!(err.contains("format 99"), "{err}");
}
