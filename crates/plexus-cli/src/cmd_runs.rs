//! `plexus runs list|show|events|cancel`, `plexus signal`, `plexus approve|reject`: read and
//! control runs through the store, whichever process drives them.

use crate::output::{self, Format, ago, millis, one_line};
use anyhow::{Result, bail};
use plexus_core::machine::{Input, RunState, RunStatus};
use plexus_engine::{now_ms, owner_alive};
use plexus_store::{Batch, CommandKind, RunFilter, RunRow, Store};
use serde_json::{Value as Json, json};
use std::sync::Arc;
use std::time::Duration;

/// Whether some live process is driving the run right now.
pub fn is_driven(row: &RunRow) -> bool {
    match (&row.owner, row.lease_until) {
        (Some(owner), Some(until)) => until >= now_ms() && owner_alive(owner) != Some(false),
        _ => false,
    }
}

fn interrupted(row: &RunRow) -> bool {
    !RunStatus::parse(&row.status).is_some_and(|s| s.is_terminal()) && !is_driven(row)
}

fn shown_status(row: &RunRow) -> String {
    if interrupted(row) {
        format!("{} (interrupted)", row.status)
    } else {
        row.status.clone()
    }
}

fn run_json(row: &RunRow) -> Json {
    let mut v = serde_json::to_value(row).unwrap_or(Json::Null);
    v["interrupted"] = json!(interrupted(row));
    v
}

pub async fn list(
    store: &dyn Store,
    filter: RunFilter,
    only_interrupted: bool,
    format: Format,
) -> Result<i32> {
    let mut rows = store.list_runs(filter).await?;
    if only_interrupted {
        rows.retain(interrupted);
    }
    if format.is_data() {
        output::data(format, &rows.iter().map(run_json).collect::<Vec<_>>());
        return Ok(0);
    }
    if rows.is_empty() {
        println!("no runs");
        return Ok(0);
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let took = r
                .finished_at
                .map(|f| millis(f.saturating_sub(r.created_at)))
                .unwrap_or_else(|| "-".into());
            vec![
                r.id.clone(),
                r.workflow.clone(),
                shown_status(r),
                ago(r.created_at),
                took,
            ]
        })
        .collect();
    output::table(&["RUN", "WORKFLOW", "STATUS", "STARTED", "TOOK"], &table);
    if rows.iter().any(interrupted) {
        println!("\nresume an interrupted run with `plexus resume RUN`");
    }
    Ok(0)
}

pub async fn show_run(store: &dyn Store, run: &str, format: Format) -> Result<()> {
    let row = store.get_run(run).await?;
    let steps = store.steps(&row.id).await?;
    if format.is_data() {
        let mut v = run_json(&row);
        v["steps"] = serde_json::to_value(&steps)?;
        v["artifacts"] = serde_json::to_value(store.artifacts(&row.id).await?)?;
        output::data(format, &v);
        return Ok(());
    }
    let took = row
        .finished_at
        .map(|f| format!(" in {}", millis(f.saturating_sub(row.created_at))))
        .unwrap_or_default();
    println!(
        "run {}  {}{took}  (workflow {})",
        row.id,
        shown_status(&row),
        row.workflow
    );
    if let Some(e) = &row.error {
        println!("error: {e}");
    }
    let table: Vec<Vec<String>> = steps
        .iter()
        .map(|s| {
            let took = match (s.started_at, s.finished_at) {
                (Some(a), Some(b)) => millis(b.saturating_sub(a)),
                _ => "-".into(),
            };
            let detail = s
                .error
                .clone()
                .map(|e| one_line(&e, 80))
                .unwrap_or_else(|| match &s.output {
                    Json::Null => String::new(),
                    Json::Object(o) if o.contains_key("stdout") => {
                        one_line(o["stdout"].as_str().unwrap_or(""), 80)
                    }
                    other => one_line(&other.to_string(), 80),
                });
            vec![
                s.step_id.clone(),
                s.status.clone(),
                s.attempt.to_string(),
                took,
                detail,
            ]
        })
        .collect();
    println!();
    output::table(&["STEP", "STATUS", "ATTEMPT", "TOOK", "DETAIL"], &table);
    output::tool_calls(steps.iter().map(|s| (s.step_id.as_str(), &s.output)));
    if !row.outputs.is_null() && row.outputs != json!({}) {
        println!("\noutputs: {}", serde_json::to_string_pretty(&row.outputs)?);
    }
    Ok(())
}

pub async fn events(store: &dyn Store, run: &str, after: u64, format: Format) -> Result<i32> {
    let row = store.get_run(run).await?;
    let events = store.events(&row.id, after, 0).await?;
    if format.is_data() {
        output::data(format, &events);
        return Ok(0);
    }
    let table: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            let detail = match &e.kind {
                plexus_core::machine::EventKind::StepFailed { error, .. } => one_line(error, 70),
                plexus_core::machine::EventKind::StepSkipped {
                    reason,
                    by,
                    comment,
                    ..
                } => one_line(
                    &plexus_core::machine::skip_text(reason, by.as_deref(), comment.as_deref()),
                    70,
                ),
                plexus_core::machine::EventKind::RunFailed { error, .. } => one_line(error, 70),
                _ => String::new(),
            };
            vec![
                e.seq.to_string(),
                millis(e.time.saturating_sub(row.created_at)),
                e.kind.type_name().to_owned(),
                e.kind.step_id().unwrap_or("").to_owned(),
                e.kind.item().map(|i| i.to_string()).unwrap_or_default(),
                e.kind.attempt().map(|a| a.to_string()).unwrap_or_default(),
                detail,
            ]
        })
        .collect();
    output::table(
        &["SEQ", "AT", "TYPE", "STEP", "ITEM", "ATTEMPT", "DETAIL"],
        &table,
    );
    Ok(0)
}

/// The answer of a control command, for people or for scripts.
fn report(
    format: Format,
    run: &str,
    kind: CommandKind,
    step: Option<&str>,
    outcome: &str,
    text: &str,
) {
    match format {
        Format::Json | Format::Yaml => output::data(
            format,
            &json!({"run": run, "action": kind.as_str(), "step": step, "outcome": outcome}),
        ),
        Format::Table => println!("{text}"),
    }
}

/// Sends a control command. A live engine applies it within a moment and the answer is
/// shown; for an interrupted run it is kept and applied by `plexus resume`.
#[allow(clippy::too_many_arguments)]
pub async fn control(
    store: Arc<dyn Store>,
    run: &str,
    kind: CommandKind,
    step: Option<&str>,
    data: Json,
    actor: &str,
    opts: &crate::config::Settings,
    format: Format,
) -> Result<i32> {
    let row = store.get_run(run).await?;
    if RunStatus::parse(&row.status).is_some_and(|s| s.is_terminal()) {
        bail!("run {} is already {}", row.id, row.status);
    }
    if let Some(step) = step {
        let steps = store.steps(&row.id).await?;
        let Some(s) = steps.iter().find(|s| s.step_id == step) else {
            let names: Vec<&str> = steps.iter().map(|s| s.step_id.as_str()).collect();
            bail!(
                "run {} has no step `{step}` (steps: {})",
                row.id,
                names.join(", ")
            );
        };
        let expected = match kind {
            CommandKind::Signal => Some(("waiting", "waiting for a signal")),
            CommandKind::Approve | CommandKind::Reject => {
                Some(("awaiting_approval", "awaiting approval"))
            }
            CommandKind::Cancel | CommandKind::Pause | CommandKind::Resume => None,
        };
        if let Some((status, what)) = expected
            && s.status != status
        {
            bail!("step `{step}` is {}, not {what}", s.status);
        }
    }
    if kind == CommandKind::Cancel && !is_driven(&row) {
        cancel_interrupted(store, &row, actor, opts).await?;
        report(
            format,
            &row.id,
            kind,
            step,
            "applied",
            &format!("run {} cancelled", row.id),
        );
        return Ok(0);
    }
    let id = store
        .add_command(&row.id, kind, step, data, actor, now_ms())
        .await?;
    if !is_driven(&row) {
        let text = format!(
            "recorded; run {} is interrupted, so this applies when you run `plexus resume {}`",
            row.id, row.id
        );
        report(format, &row.id, kind, step, "recorded", &text);
        return Ok(0);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        if let Some(c) = store.command(id).await?
            && c.consumed_at.is_some()
        {
            return match c.result {
                None => {
                    let text = format!("{} applied to run {}", kind.as_str(), row.id);
                    report(format, &row.id, kind, step, "applied", &text);
                    Ok(0)
                }
                Some(err) => bail!("{} refused: {err}", kind.as_str()),
            };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = format!(
        "recorded; the engine driving run {} has not applied it yet",
        row.id
    );
    report(format, &row.id, kind, step, "recorded", &text);
    Ok(0)
}

/// Nobody drives the run: apply the cancellation to its state directly.
async fn cancel_interrupted(
    store: Arc<dyn Store>,
    row: &RunRow,
    actor: &str,
    settings: &crate::config::Settings,
) -> Result<()> {
    let me = plexus_engine::new_owner_id();
    let now = now_ms();
    let Some(fence) = store
        .claim_run(&row.id, &me, now + 10_000, now, true)
        .await?
    else {
        bail!("run {} could not be claimed", row.id);
    };
    let opts = plexus_core::CompileOptions {
        pools: settings.pools.clone(),
        default_mode: None,
        action_floors: Default::default(),
    };
    let plan = plexus_engine::stored_plan(&*store, row, &opts).await?;
    let events = store.events(&row.id, 0, 0).await?;
    let mut state = RunState::restore(row.id.clone(), Arc::new(plan), row.inputs.clone(), &events)?;
    let t = state.handle(
        Input::Cancel {
            reason: format!("cancelled by {actor}"),
        },
        now,
    )?;
    let batch = Batch {
        events: t.events.into_iter().map(|e| (row.id.clone(), e)).collect(),
        // Should an engine take the run over meanwhile, this cancel writes nothing.
        fences: vec![(row.id.clone(), fence)],
        ..Default::default()
    };
    store.commit(batch).await?;
    store.release_runs(&me).await?;
    Ok(())
}

/// Follows a run in the local store live (one another `plexus run` or `plexus serve`
/// drives), from its first event, until it ends; Ctrl-C detaches and leaves the run
/// alone. Exit status as `plexus run`.
pub async fn watch(store: &dyn Store, run: &str, format: Format) -> Result<i32> {
    use plexus_core::machine::RunStatus;
    let row = store.get_run(run).await?;
    let total = store.steps(&row.id).await?.len();
    let mut progress = crate::progress::Progress::new(total, 0);
    let mut after = 0;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => {
                progress.finish();
                eprintln!("detached; run {} goes on (`plexus runs watch {}` to follow it again)", row.id, row.id);
                return Ok(130);
            }
        }
        for e in store.events(&row.id, after, 1000).await? {
            after = e.seq;
            progress.on_event(&e);
        }
        progress.redraw();
        let now = store.get_run(&row.id).await?;
        if RunStatus::parse(&now.status).is_some_and(|s| s.is_terminal()) {
            // Events committed with the end are in by now: the end is the last commit.
            for e in store.events(&row.id, after, 0).await? {
                progress.on_event(&e);
            }
            progress.finish();
            show_run(store, &row.id, format).await?;
            return Ok(match now.status.as_str() {
                "succeeded" => 0,
                "cancelled" => 130,
                _ => 1,
            });
        }
        if !is_driven(&now) && now.status != "queued" {
            progress.finish();
            eprintln!(
                "run {} is interrupted: no process drives it; `plexus resume {}` continues it",
                now.id, now.id
            );
            return Ok(1);
        }
    }
}
