//! Sub-workflow steps: a child run per attempt, found again after a crash, reporting
//! its end to the parent.

use super::*;

impl Loop {
    pub(super) fn child_ended(&mut self, parent: ParentRef, outcome: Outcome) {
        let parent_run: RunId = parent.run_id.as_str().into();
        let Some(p) = self.runs.get(&parent_run) else {
            return;
        };
        if let Some(&step) = p.state.plan.index.get(&parent.step_id) {
            let unit = Unit {
                step,
                item: parent.item,
            };
            let _ = self.apply(
                &parent_run,
                Input::AttemptFinished {
                    unit,
                    attempt: parent.attempt,
                    outcome,
                },
            );
        }
    }

    pub(super) fn start_child(
        &mut self,
        run: RunId,
        unit: Unit,
        attempt: u32,
        key: String,
        path: String,
        inputs: Json,
    ) {
        let child_id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, key.as_bytes()).to_string();
        if self.runs.contains_key(child_id.as_str()) {
            return; // already running here; it reports back when it ends
        }
        let Some(active) = self.runs.get(&run) else {
            return;
        };
        let step_id = active.state.plan.step(unit.step).id.clone();
        let mode = active.state.plan.mode;
        let file = active.base_dir.join(&path);
        let engine = self.engine.clone();
        let parent = ParentRef {
            run_id: run.to_string(),
            step_id,
            item: unit.item,
            attempt,
        };
        tokio::spawn(async move {
            let fail = |error: String| Msg::Input {
                run_id: run.to_string(),
                input: Input::AttemptFinished {
                    unit,
                    attempt,
                    outcome: Outcome::Failure {
                        error,
                        output: Json::Null,
                    },
                },
                reply: None,
            };
            let msg = match prepare_child(&engine, &file, inputs, child_id, parent, mode).await {
                Ok(Some(msg)) => msg,
                Ok(None) => return,
                Err(error) => fail(error),
            };
            let _ = engine.tx.send(msg).await;
        });
    }
}

pub(super) fn child_outcome(state: &RunState, status: RunStatus) -> Outcome {
    match status {
        RunStatus::Succeeded => Outcome::Success(state.outputs.clone()),
        _ => Outcome::Failure {
            error: format!(
                "sub-workflow `{}` (run {}) {}: {}",
                state.plan.manifest.name,
                state.run_id,
                status.as_str(),
                state.error.clone().unwrap_or_default()
            ),
            output: json!({"run_id": state.run_id, "outputs": state.outputs}),
        },
    }
}

/// Loads, checks and records a child run; returns the message that starts (or reports) it.
async fn prepare_child(
    engine: &Engine,
    file: &std::path::Path,
    inputs: Json,
    child_id: String,
    parent: ParentRef,
    mode: plexus_core::manifest::Mode,
) -> Result<Option<Msg>, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read sub-workflow {}: {e}", file.display()))?;
    // A sub-workflow that sets no mode runs in its parent's.
    let opts = plexus_core::CompileOptions {
        default_mode: Some(mode),
        ..engine.config.compile_options()
    };
    let plan = plexus_core::load(&text, &file.to_string_lossy(), &opts).map_err(|d| {
        format!(
            "sub-workflow {} is invalid: {}",
            file.display(),
            d.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    let given = match inputs {
        Json::Object(m) => m,
        Json::Null => serde_json::Map::new(),
        other => {
            return Err(format!(
                "`with` of a workflow step must be a mapping of inputs, got {other}"
            ));
        }
    };
    let inputs = plexus_core::parse::resolve_inputs(&plan.manifest, &given)
        .map_err(|e| format!("sub-workflow inputs: {}", e.join("; ")))?;
    let inputs = Json::Object(inputs);
    let now = now_ms();
    let base_dir = file
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let created = engine
        .store
        .create_run(NewRun {
            id: child_id.clone(),
            workflow: plan.manifest.name.clone(),
            manifest: text,
            base_dir: Some(base_dir.to_string_lossy().into_owned()),
            inputs: inputs.clone(),
            step_ids: plan.manifest.steps.iter().map(|s| s.id.clone()).collect(),
            parent: Some(parent.clone()),
            owner: Some(engine.config.owner.clone()),
            lease_until: Some(now + engine.config.lease.as_millis() as u64),
            created_at: now,
            idempotency_key: None,
            workflow_version: None,
            started_by: None,
            mode: Some(plan.mode.as_str().to_owned()),
            plan: Some(plan.options.to_stored()),
        })
        .await
        .map_err(|e| e.to_string())?;
    if created {
        let state = RunState::new(child_id, Arc::new(plan), inputs);
        return Ok(Some(Msg::Adopt {
            state: Box::new(state),
            base_dir,
            parent: Some(parent),
            reply: None,
            first: None,
        }));
    }
    // The child exists from before a restart: report its end, or take it over.
    let row = engine
        .store
        .get_run(&child_id)
        .await
        .map_err(|e| e.to_string())?;
    match RunStatus::parse(&row.status).filter(|s| s.is_terminal()) {
        Some(status) => {
            let events = engine
                .store
                .events(&child_id, 0, 0)
                .await
                .map_err(|e| e.to_string())?;
            // The child's own stored plan: the file may have changed since it started.
            let plan = crate::stored_plan(&*engine.store, &row, &engine.config.compile_options())
                .await
                .map_err(|e| e.to_string())?;
            let state = RunState::restore(child_id, Arc::new(plan), row.inputs, &events)
                .map_err(|e| e.to_string())?;
            Ok(Some(Msg::ChildEnded {
                parent,
                outcome: child_outcome(&state, status),
            }))
        }
        None => {
            engine.resume(&child_id).await.map_err(|e| e.to_string())?;
            Ok(None)
        }
    }
}
