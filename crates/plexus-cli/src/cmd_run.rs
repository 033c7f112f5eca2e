//! `plexus run` and `plexus resume`: drive a run in this process with the embedded store.

use crate::cmd_runs;
use crate::cmd_validate::{load_file, print_diagnostics};
use crate::config::Settings;
use crate::output::{Format, one_line};
use crate::progress::Progress;
use anyhow::{Context, Result, bail};
use plexus_core::machine::{EventKind, Input, RunStatus};
use plexus_engine::{Engine, EngineConfig, Notice, Submission};
use serde_json::Value as Json;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};

pub struct RunArgs {
    pub file: PathBuf,
    pub inputs: Vec<String>,
    pub inputs_file: Option<PathBuf>,
    pub follow_logs: bool,
    pub format: Format,
}

/// `key=value` flags and an optional JSON file, merged (flags win).
pub fn given_inputs(
    flags: &[String],
    file: Option<&Path>,
) -> Result<serde_json::Map<String, Json>> {
    let mut map = serde_json::Map::new();
    if let Some(f) = file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        match serde_json::from_str::<Json>(&text)
            .with_context(|| format!("{} is not valid JSON", f.display()))?
        {
            Json::Object(m) => map.extend(m),
            _ => bail!("{} must hold a JSON object of inputs", f.display()),
        }
    }
    for flag in flags {
        let (k, v) = flag
            .split_once('=')
            .with_context(|| format!("`--input {flag}`: write KEY=VALUE"))?;
        map.insert(k.trim().to_owned(), Json::String(v.to_owned()));
    }
    Ok(map)
}

pub(crate) fn engine_config(settings: &Settings) -> EngineConfig {
    EngineConfig {
        lease: settings.lease,
        renew_every: settings.renew_every,
        ..EngineConfig::new(settings.data_dir.clone(), settings.pools.clone())
    }
}

pub async fn run(settings: &Settings, args: RunArgs) -> Result<i32> {
    let opts = plexus_core::CompileOptions {
        pools: settings.pools.clone(),
        default_mode: None,
        action_floors: Default::default(),
    };
    let (result, text) = load_file(&args.file, &opts)?;
    let plan = match result {
        Ok(p) => p,
        Err(d) => {
            print_diagnostics(&d);
            return Ok(2);
        }
    };
    for w in plexus_engine::exec::warnings(&plan, &args.file.to_string_lossy()) {
        eprintln!("{w}");
    }
    let given = given_inputs(&args.inputs, args.inputs_file.as_deref())?;
    let inputs = match plexus_core::parse::resolve_inputs(&plan.manifest, &given) {
        Ok(i) => i,
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            return Ok(2);
        }
    };
    let store = settings.open_store().await?;
    let engine = Engine::start(store, engine_config(settings));
    let notices = engine.subscribe();
    let logs = args.follow_logs.then(|| engine.logs());
    let base_dir = args
        .file
        .canonicalize()?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let total = plan.len();
    let name = plan.manifest.name.clone();
    let run_id = engine
        .submit(Submission {
            plan: Arc::new(plan),
            manifest_text: text,
            base_dir,
            inputs: Json::Object(inputs),
            idempotency_key: None,
            workflow_version: None,
            newest_version: false,
            started_by: Some(local_user()),
            responsible: vec![local_user()],
        })
        .await?;
    crate::output::remark(&format!(
        "run {run_id} started: workflow {name}, {total} steps"
    ));
    follow(&engine, &run_id, total, 0, notices, logs, args.format).await
}

pub async fn resume(
    settings: &Settings,
    run: &str,
    follow_logs: bool,
    format: Format,
) -> Result<i32> {
    let store = settings.open_store().await?;
    let engine = Engine::start(store.clone(), engine_config(settings));
    let notices = engine.subscribe();
    let logs = follow_logs.then(|| engine.logs());
    let row = plexus_store::RunStore::get_run(&*store, run).await?;
    let steps = plexus_store::RunStore::steps(&*store, &row.id).await?;
    let done = steps
        .iter()
        .filter(|s| {
            matches!(
                s.status.as_str(),
                "succeeded" | "failed" | "skipped" | "cancelled"
            )
        })
        .count();
    let run_id = engine.resume(&row.id).await?;
    crate::output::remark(&format!(
        "run {run_id} resumed: workflow {}, {}/{} steps already done",
        row.workflow,
        done,
        steps.len()
    ));
    follow(&engine, &run_id, steps.len(), done, notices, logs, format).await
}

/// Shows progress until the run ends; answers approvals on a terminal; Ctrl-C cancels.
async fn follow(
    engine: &Engine,
    run_id: &str,
    total: usize,
    done: usize,
    mut notices: broadcast::Receiver<Notice>,
    mut logs: Option<broadcast::Receiver<plexus_engine::LogChunk>>,
    format: Format,
) -> Result<i32> {
    let mut progress = Progress::new(total, done);
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let (answers_tx, mut answers) = mpsc::channel::<(String, bool)>(8);
    // The step a prompt is open for; gates that come meanwhile are asked one at a time,
    // in the order they came.
    let mut prompting: Option<String> = None;
    let mut waiting_approval: std::collections::VecDeque<(String, String)> = Default::default();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    let mut cancelling = false;
    let mut fatal = None;
    let status = loop {
        if interactive
            && prompting.is_none()
            && let Some((step, what)) = waiting_approval.pop_front()
        {
            // The prompt owns the terminal until it is answered: no redraw over it.
            progress.pause();
            prompting = Some(step.clone());
            ask_approval(step, what, answers_tx.clone());
        }
        tokio::select! {
            n = notices.recv() => match n {
                Ok(Notice::Event { run_id: r, event }) if &*r == run_id => {
                    progress.on_event(&event);
                    if let EventKind::StepAwaitingApproval { step_id, detail, permission, .. } = &event.kind {
                        let what = describe_approval(detail, *permission);
                        if interactive {
                            waiting_approval.push_back((step_id.clone(), what));
                        } else {
                            progress.say(&format!("⏸ {step_id} waits for approval ({what}): plexus approve {run_id} {step_id}"));
                        }
                    }
                }
                Ok(Notice::Finished { run_id: r, status }) if &*r == run_id => break Some(status),
                Ok(Notice::Fatal { error }) => { fatal = Some(error); break None; }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => progress.say(&format!("({n} progress events skipped)")),
                Err(broadcast::error::RecvError::Closed) => break None,
            },
            chunk = async { logs.as_mut().expect("guarded").recv().await }, if logs.is_some() => {
                if let Ok(c) = chunk
                    && &*c.run_id == run_id
                {
                    let tag = match c.item { Some(k) => format!("{}[{k}]", c.step_id), None => c.step_id.clone() };
                    for line in c.text.lines() {
                        progress.say(&format!("  {tag} {} {line}", if c.stderr { "!" } else { "|" }));
                    }
                }
            }
            Some((step, yes)) = answers.recv() => {
                prompting = None;
                progress.resume();
                let input = if yes {
                    Input::Approve { step_id: step.clone(), by: local_user(), comment: None }
                } else {
                    Input::Reject { step_id: step.clone(), by: local_user(), comment: Some("rejected at the prompt".into()) }
                };
                if let Err(e) = engine.input(run_id, input).await {
                    progress.say(&format!("(answer for {step} not applied: {e})"));
                }
            }
            _ = tokio::signal::ctrl_c() => {
                // At a prompt, Ctrl-C means "not now", not "cancel the run": it stays
                // waiting for its decision.
                if let Some(step) = &prompting {
                    progress.finish();
                    let mut gates = vec![step.clone()];
                    gates.extend(waiting_approval.iter().map(|(s, _)| s.clone()));
                    eprintln!("\nleft run {run_id} waiting for approval ({}). Later, from any shell:", gates.join(", "));
                    for gate in &gates {
                        eprintln!("  plexus approve {run_id} {gate}     (or: plexus reject {run_id} {gate})");
                    }
                    eprintln!("  plexus resume {run_id}     continues the run here (and asks again what is still undecided)");
                    engine.shutdown().await;
                    return Ok(130);
                }
                if cancelling {
                    progress.finish();
                    eprintln!("interrupted again: leaving without waiting; `plexus resume {run_id}` continues the run");
                    return Ok(130);
                }
                cancelling = true;
                progress.say("cancelling the run (Ctrl-C again to leave at once)…");
                if let Err(e) = engine.input(run_id, Input::Cancel { reason: "cancelled with Ctrl-C".into() }).await {
                    progress.say(&format!("could not cancel: {e}"));
                }
            }
            _ = tick.tick() => progress.redraw(),
        }
    };
    progress.finish();
    engine.shutdown().await;
    if let Some(error) = fatal {
        eprintln!(
            "error: {error}\nthe run stopped at its last durable step; fix the problem and run `plexus resume {run_id}`"
        );
        return Ok(1);
    }
    let Some(status) = status else {
        bail!(
            "the engine stopped before run {run_id} finished; `plexus resume {run_id}` continues it"
        );
    };
    cmd_runs::show_run(&**engine.store(), run_id, format).await?;
    Ok(match status {
        RunStatus::Succeeded => 0,
        RunStatus::Cancelled => 130,
        _ => 1,
    })
}

fn describe_approval(detail: &Json, permission: plexus_core::manifest::Permission) -> String {
    let what = detail
        .get("command")
        .or_else(|| detail.get("message"))
        .and_then(Json::as_str)
        .map(|c| one_line(c, 120))
        .unwrap_or_else(|| {
            detail
                .get("kind")
                .and_then(Json::as_str)
                .unwrap_or("step")
                .to_owned()
        });
    let mut text = format!(
        "{} permission: {what}",
        plexus_core::machine::permission_name(permission)
    );
    // Everything else that decides what runs, so `sh -c "$X"` is judged with its `X`.
    if let Some(env) = detail.get("env").and_then(Json::as_object) {
        for (k, v) in env {
            text.push_str(&format!("\n  env {k}={}", v.as_str().unwrap_or_default()));
        }
    }
    for key in ["workdir", "pool", "timeout", "blast_radius"] {
        if let Some(v) = detail.get(key).and_then(Json::as_str) {
            text.push_str(&format!("\n  {key}: {v}"));
        }
    }
    text
}

pub fn local_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .map(|u| format!("local:{u}"))
        .unwrap_or_else(|_| "local".into())
}

/// Asks on the terminal in a plain thread (a pending read must not keep the process alive).
fn ask_approval(step: String, what: String, answers: mpsc::Sender<(String, bool)>) {
    std::thread::spawn(move || {
        eprint!("step `{step}` needs approval: {what}\napprove? [y/N] ");
        let mut line = String::new();
        let yes = std::io::stdin().read_line(&mut line).is_ok()
            && matches!(line.trim(), "y" | "Y" | "yes");
        let _ = answers.blocking_send((step, yes));
    });
}
