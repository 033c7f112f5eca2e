//! Shell and python attempts as subprocesses: own process group (killed as a group on
//! timeout or cancel), a clean environment, capped output, `$PLEXUS_OUTPUT` and
//! `$PLEXUS_ARTIFACTS`.

use super::artifacts;
use super::held::{self, HeldGate, WarmShells};
use super::scratch::{Scratch, ScratchPool};
use plexus_core::machine::{Outcome, Task, Work};
use serde_json::{Value as Json, json};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::{broadcast, oneshot};

/// Variables passed through from the engine's environment; everything else is dropped,
/// so credentials in the engine's environment never reach a step that did not ask.
pub const PASSED_THROUGH: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR", "TERM",
];

/// An attempt's process: started by tokio, or isolated (see [`super::spawn`]).
pub enum StepChild {
    Plain(tokio::process::Child),
    Isolated(super::spawn::IsolatedChild),
}

type Stream = Box<dyn tokio::io::AsyncRead + Unpin + Send>;

impl StepChild {
    pub fn id(&self) -> Option<u32> {
        match self {
            StepChild::Plain(c) => c.id(),
            StepChild::Isolated(c) => Some(c.id()),
        }
    }

    /// Its stdout and stderr, once.
    fn take_output(&mut self) -> Option<(Stream, Stream)> {
        Some(match self {
            StepChild::Plain(c) => (Box::new(c.stdout.take()?), Box::new(c.stderr.take()?)),
            StepChild::Isolated(c) => (Box::new(c.stdout.take()?), Box::new(c.stderr.take()?)),
        })
    }

    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match self {
            StepChild::Plain(c) => c.wait().await,
            StepChild::Isolated(c) => c.wait().await,
        }
    }
}

/// The environment of an attempt's process: [`PASSED_THROUGH`] from the engine's, then
/// `vars`.
pub(super) fn clean_env<'a>(
    vars: impl IntoIterator<Item = (&'a str, &'a OsStr)>,
) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    let mut env: Vec<(std::ffi::OsString, std::ffi::OsString)> = PASSED_THROUGH
        .iter()
        .filter_map(|name| std::env::var_os(name).map(|v| ((*name).into(), v)))
        .collect();
    for (k, v) in vars {
        env.retain(|(name, _)| name != k);
        env.push((k.into(), v.into()));
    }
    env
}

/// A command for an attempt's process, held or not: a clean environment (only
/// [`PASSED_THROUGH`]), its own process group (killed as one), stdout and stderr piped to
/// the engine, killed if the engine lets go of it.
pub(super) fn clean_command(program: impl AsRef<OsStr>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.env_clear();
    for name in PASSED_THROUGH {
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, v);
        }
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    cmd
}

#[derive(Debug, Clone)]
pub struct ProcessSettings {
    /// Scratch directories of attempts.
    pub scratch: Arc<ScratchPool>,
    pub artifact_root: PathBuf,
    /// Bytes kept of each of stdout and stderr.
    pub output_cap: usize,
    pub python: String,
    /// Shell steps' shells started ahead of them (only when steps are not isolated: an
    /// isolated shell is made for its attempt's scratch directory, when the attempt is).
    pub warm: Arc<WarmShells>,
    pub isolation: Arc<super::isolation::Isolation>,
    pub require_isolation: Arc<std::sync::atomic::AtomicBool>,
    /// Isolated shells started ahead of their steps (see [`held::WarmIsolated`]).
    pub warm_isolated: Arc<held::WarmIsolated>,
}

/// A chunk of a step's output, for `--follow-logs`.
#[derive(Debug, Clone)]
pub struct LogChunk {
    pub run_id: std::sync::Arc<str>,
    pub step_id: String,
    pub item: Option<u32>,
    pub stderr: bool,
    pub text: String,
}

/// What a process attempt produced: `recorded` says whether a process was started (and
/// so recorded in the store); `logs` holds stdout/stderr of a process whose
/// `$PLEXUS_OUTPUT` became its output.
pub type Finished = super::AttemptResult;
use super::AttemptLogs as Logs;

struct Captured {
    kept: Vec<u8>,
    total: usize,
}

async fn capture<R: tokio::io::AsyncRead + Unpin>(
    mut reader: R,
    cap: usize,
    logs: Option<(broadcast::Sender<LogChunk>, LogChunk)>,
) -> Captured {
    let mut kept = Vec::new();
    let mut total = 0usize;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        total += n;
        if kept.len() < cap {
            let take = n.min(cap - kept.len());
            kept.extend_from_slice(&buf[..take]);
        }
        if let Some((tx, template)) = &logs
            && tx.receiver_count() > 0
        {
            let _ = tx.send(LogChunk {
                text: String::from_utf8_lossy(&buf[..n]).into_owned(),
                ..template.clone()
            });
        }
    }
    Captured { kept, total }
}

pub fn kill_group(pgid: i32) {
    if pgid > 0 {
        // SAFETY: killpg only sends a signal; a stale pgid at worst fails with ESRCH.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
    }
}

fn text(c: &Captured) -> String {
    let mut s = String::from_utf8_lossy(&c.kept).into_owned();
    if c.total > c.kept.len() {
        s.push_str(&format!(
            "\n[plexus: output truncated, {} of {} bytes kept]",
            c.kept.len(),
            c.total
        ));
    }
    s
}

/// How the engine steers an attempt it started.
pub struct Controls {
    /// Stops the attempt (and its whole process group) early.
    pub kill: oneshot::Receiver<()>,
    /// For a held shell step: its end of the gate.
    pub gate: Option<HeldGate>,
}

/// Runs one attempt to the end. `kill` stops it (and its whole process group) early;
/// `on_spawn` learns the process group as soon as it exists.
///
/// With a `gate` (shell steps), the shell is one already started and held (see
/// [`super::held`]): it gets its script when the gate opens (the start is durable). If
/// the engine goes away first, the held shell reads end-of-file and exits without
/// running anything: nothing happens before it is recorded.
pub async fn run(
    task: &Task,
    run_id: std::sync::Arc<str>,
    base_dir: &Path,
    settings: &ProcessSettings,
    logs: Option<broadcast::Sender<LogChunk>>,
    controls: Controls,
    on_spawn: impl FnOnce(i32, u64) + Send,
) -> Finished {
    let Controls { kill, gate } = controls;
    let mut spawned = false;
    // A held, isolated shell step takes a shell made ahead for its directory, with the
    // scratch directory that shell was made for.
    let warm = if gate.is_some() && task.isolate && settings.isolation.is_on() {
        workdir_of(task, base_dir).and_then(|cwd| settings.warm_isolated.take(&cwd))
    } else {
        None
    };
    let (scratch, ready) = match warm {
        Some((scratch, shell)) => (Ok(scratch), Some(shell)),
        None => (settings.scratch.take(), None),
    };
    let result = match scratch {
        Ok(scratch) => {
            let result = run_inner(
                task,
                run_id,
                base_dir,
                (settings, &scratch, ready),
                logs,
                (kill, gate.as_ref()),
                |pgid, ticks| {
                    spawned = true;
                    on_spawn(pgid, ticks)
                },
            )
            .await;
            settings.scratch.give_back(scratch);
            result
        }
        Err(e) => Err(format!("cannot create a scratch directory: {e}")),
    };
    // The end of a held attempt is reported only once its gate was decided (its start
    // durable), so it never overtakes its start. A gate that never opened ran nothing,
    // whatever the process did.
    let result = match gate {
        Some(gate) => match gate.opened.await {
            Ok(()) => result,
            Err(_) => Err("cancelled before it started".into()),
        },
        None => result,
    };
    match result {
        Ok(f) => Finished {
            recorded: spawned,
            ..f
        },
        Err(e) => Finished {
            recorded: spawned,
            ..Finished::failed(e)
        },
    }
}

/// The absolute working directory of an attempt, as its held shell enters it.
fn workdir_of(task: &Task, base_dir: &Path) -> Option<PathBuf> {
    let cwd = match &task.workdir {
        Some(w) => base_dir.join(w),
        None => base_dir.to_path_buf(),
    };
    std::path::absolute(cwd).ok()
}

/// The variables an attempt's process gets on top of [`PASSED_THROUGH`].
fn attempt_vars<'a>(
    task: &'a Task,
    run_id: &'a str,
    scratch: &'a Scratch,
    numbers: &'a (String, Option<String>),
) -> impl Iterator<Item = (&'a str, &'a OsStr)> {
    let fixed = [
        ("PLEXUS_RUN_ID", OsStr::new(run_id)),
        ("PLEXUS_STEP_ID", OsStr::new(&task.step_id)),
        ("PLEXUS_ATTEMPT", OsStr::new(&numbers.0)),
        ("PLEXUS_IDEMPOTENCY_KEY", OsStr::new(&task.key)),
        ("PLEXUS_OUTPUT", scratch.output.as_os_str()),
        ("PLEXUS_ARTIFACTS", scratch.artifacts.as_os_str()),
    ];
    let item = numbers
        .1
        .as_deref()
        .map(|i| ("PLEXUS_ITEM_INDEX", OsStr::new(i)));
    fixed.into_iter().chain(item).chain(step_vars(task))
}

/// The variables the step itself names.
fn step_vars(task: &Task) -> impl Iterator<Item = (&str, &OsStr)> {
    task.env.iter().map(|(k, v)| (k.as_str(), OsStr::new(v)))
}

/// Whether a task's shell can be held (see [`held::can_hold`]). The variables Plexus
/// adds always can: ids, numbers and paths in the data directory.
pub fn can_hold(task: &Task) -> bool {
    matches!(task.work, Work::Shell { .. }) && held::can_hold(step_vars(task))
}

async fn run_inner(
    task: &Task,
    run_id: std::sync::Arc<str>,
    base_dir: &Path,
    (settings, scratch, ready): (&ProcessSettings, &Scratch, Option<held::HeldShell>),
    logs: Option<broadcast::Sender<LogChunk>>,
    (mut kill, gate): (oneshot::Receiver<()>, Option<&HeldGate>),
    on_spawn: impl FnOnce(i32, u64),
) -> Result<Finished, String> {
    let cwd = match &task.workdir {
        Some(w) => base_dir.join(w),
        None => base_dir.to_path_buf(),
    };
    let numbers = (
        task.attempt.to_string(),
        task.unit.item.map(|i| i.to_string()),
    );
    let vars = attempt_vars(task, &run_id, scratch, &numbers);
    let unisolated;
    let isolation = if task.isolate {
        &settings.isolation
    } else {
        // The workflow says `isolation: none` (an admin's decision, audited).
        unisolated = std::sync::Arc::new(super::isolation::Isolation::disabled(
            "the workflow says `isolation: none`",
        ));
        &unisolated
    };
    if task.isolate
        && !isolation.is_on()
        && settings
            .require_isolation
            .load(std::sync::atomic::Ordering::Relaxed)
        && let super::isolation::Availability::Off { reason } = isolation.availability()
    {
        return Err(format!(
            "steps.require_isolation is on and steps cannot be isolated here ({reason}); nothing was started"
        ));
    }
    let mut child = match (&task.work, gate) {
        (Work::Shell { command }, Some(gate)) => {
            let cannot_start =
                |e: std::io::Error| format!("cannot start the command in {}: {e}", cwd.display());
            let cwd = std::path::absolute(&cwd).map_err(cannot_start)?;
            // As an exec into a missing directory would have failed, before anything ran.
            match std::fs::metadata(&cwd) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(cannot_start(std::io::Error::from(
                        std::io::ErrorKind::NotADirectory,
                    )));
                }
                Err(e) => return Err(cannot_start(e)),
            }
            let isolated = isolation.is_on();
            let shell = if let Some(shell) = ready {
                shell
            } else if isolated {
                let setup = isolation
                    .setup_for(&scratch.dir, &cwd)
                    .map_err(|e| format!("cannot isolate the step: {e}"))?
                    .ok_or("isolation went away")?;
                // Made for this attempt's directory; it still loads while the start is
                // made durable.
                held::start_isolated(&setup).map_err(cannot_start)?
            } else {
                settings.warm.take().map_err(cannot_start)?
            };
            if let Some(ticks) = shell.start_ticks {
                on_spawn(shell.pgid, ticks);
            }
            gate.provide(shell.stdin, held::script(vars, &cwd, command));
            // The next shell step's shell loads while this one's start is made durable.
            if isolated {
                settings
                    .warm_isolated
                    .refill(&cwd, &settings.scratch, isolation);
            } else {
                settings.warm.refill();
            }
            shell.child
        }
        (work, _) => {
            let setup = isolation
                .setup_for(&scratch.dir, &cwd)
                .map_err(|e| format!("cannot isolate the step: {e}"))?;
            if let Some(setup) = setup {
                let (program, args): (std::ffi::OsString, Vec<&OsStr>) = match work {
                    Work::Shell { command } => (
                        "/bin/sh".into(),
                        vec![OsStr::new("-c"), OsStr::new(command)],
                    ),
                    Work::Python { script } => {
                        std::fs::write(&scratch.script, script)
                            .map_err(|e| format!("cannot write the python script: {e}"))?;
                        (
                            settings.python.clone().into(),
                            vec![scratch.script.as_os_str()],
                        )
                    }
                    other => return Err(format!("not a subprocess: {other:?}")),
                };
                let env = clean_env(vars);
                let cannot = |e: std::io::Error| match &task.work {
                    Work::Python { .. } => format!(
                        "cannot start `{}`: {e} (set PLEXUS_PYTHON to your python)",
                        settings.python
                    ),
                    _ => format!("cannot start the command in {}: {e}", cwd.display()),
                };
                let program = super::spawn::resolve(&program, &env).map_err(cannot)?;
                let request = super::spawn::Request {
                    program: &program,
                    args: &args,
                    env: &env,
                    cwd: &cwd,
                    stdin: None,
                };
                let child = super::spawn::spawn(request, &setup).map_err(cannot)?;
                let pgid = child.id() as i32;
                if let Some(ticks) = super::leftovers::start_ticks(pgid) {
                    on_spawn(pgid, ticks);
                }
                StepChild::Isolated(child)
            } else {
                let mut cmd = match work {
                    Work::Shell { command } => {
                        let mut c = clean_command("/bin/sh");
                        c.arg("-c").arg(command);
                        c
                    }
                    Work::Python { script } => {
                        std::fs::write(&scratch.script, script)
                            .map_err(|e| format!("cannot write the python script: {e}"))?;
                        let mut c = clean_command(&settings.python);
                        c.arg(&scratch.script);
                        c
                    }
                    other => return Err(format!("not a subprocess: {other:?}")),
                };
                cmd.envs(vars).current_dir(&cwd).stdin(Stdio::null());
                let child = cmd.spawn().map_err(|e| match &task.work {
                    Work::Python { .. } => format!(
                        "cannot start `{}`: {e} (set PLEXUS_PYTHON to your python)",
                        settings.python
                    ),
                    _ => format!("cannot start the command in {}: {e}", cwd.display()),
                })?;
                let pgid = child.id().map_or(0, |p| p as i32);
                if let Some(ticks) = super::leftovers::start_ticks(pgid) {
                    on_spawn(pgid, ticks);
                }
                StepChild::Plain(child)
            }
        }
    };
    let pgid = child.id().map_or(0, |p| p as i32);
    let log = |stderr: bool| {
        logs.clone().map(|tx| {
            (
                tx,
                LogChunk {
                    run_id: run_id.clone(),
                    step_id: task.step_id.clone(),
                    item: task.unit.item,
                    stderr,
                    text: String::new(),
                },
            )
        })
    };
    // Both streams are read in this task while the process runs: no task of their own,
    // so an attempt's end wakes one task, not three.
    let (out, err) = child.take_output().expect("piped once");
    let reading = async {
        tokio::join!(
            capture(out, settings.output_cap, log(false)),
            capture(err, settings.output_cap, log(true)),
        )
    };
    tokio::pin!(reading);
    let mut captured = None;
    let timeout = task.timeout.unwrap_or(Duration::from_secs(u64::MAX / 4));
    let mut stopped: Option<String> = None;
    let status = {
        let exited = child.wait();
        tokio::pin!(exited);
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                s = &mut exited => break s.ok(),
                both = &mut reading, if captured.is_none() => captured = Some(both),
                _ = &mut deadline => {
                    stopped = Some(format!("timed out after {}", plexus_core::duration::format_duration(timeout)));
                    break None;
                }
                _ = &mut kill => {
                    stopped = Some("cancelled".into());
                    break None;
                }
            }
        }
    };
    // Background children of the step die with it, so its pipes close and nothing lingers.
    kill_group(pgid);
    let status = match status {
        Some(s) => Some(s),
        None => child.wait().await.ok(),
    };
    let (stdout, stderr) = match captured {
        Some(both) => both,
        None => reading.await,
    };

    if matches!(task.work, Work::Python { .. }) {
        let _ = std::fs::remove_file(&scratch.script);
    }
    let written = std::fs::read(&scratch.output).ok();
    if written.is_some() {
        let _ = std::fs::remove_file(&scratch.output);
    }
    let collected = artifacts::collect(&scratch.artifacts, &settings.artifact_root)
        .map_err(|e| format!("collecting artifacts failed: {e}"))?;
    let custom_output = written.filter(|b| !b.iter().all(u8::is_ascii_whitespace));

    let exit_code = status.and_then(|s| s.code());
    let mut output =
        json!({"stdout": text(&stdout), "stderr": text(&stderr), "exit_code": exit_code});
    if !collected.is_empty() {
        output["artifacts"] = serde_json::to_value(&collected).unwrap_or(Json::Null);
    }
    if let Some(reason) = stopped {
        return Ok(Finished {
            outcome: Outcome::Failure {
                error: reason,
                output,
            },
            artifacts: collected,
            usage: Json::Null,
            recorded: true,
            logs: None,
        });
    }
    let status = status.ok_or("the process could not be waited for")?;
    if !status.success() {
        let error = match status.code() {
            Some(code) => {
                let last = String::from_utf8_lossy(&stderr.kept)
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map(str::to_owned);
                match last {
                    Some(l) => format!("exit code {code}: {l}"),
                    None => format!("exit code {code}"),
                }
            }
            None => {
                use std::os::unix::process::ExitStatusExt;
                format!("killed by signal {}", status.signal().unwrap_or(0))
            }
        };
        return Ok(Finished {
            outcome: Outcome::Failure { error, output },
            artifacts: collected,
            usage: Json::Null,
            recorded: true,
            logs: None,
        });
    }
    if let Some(bytes) = custom_output {
        return Ok(match serde_json::from_slice::<Json>(&bytes) {
            Ok(v) => Finished {
                outcome: Outcome::Success(v),
                artifacts: collected,
                usage: Json::Null,
                recorded: true,
                logs: Some(Logs {
                    stdout: text(&stdout),
                    stderr: text(&stderr),
                    exit_code,
                }),
            },
            Err(e) => Finished {
                outcome: Outcome::Failure {
                    error: format!("$PLEXUS_OUTPUT does not hold valid JSON: {e}"),
                    output,
                },
                artifacts: collected,
                usage: Json::Null,
                recorded: true,
                logs: None,
            },
        });
    }
    Ok(Finished {
        outcome: Outcome::Success(output),
        artifacts: collected,
        usage: Json::Null,
        recorded: true,
        logs: None,
    })
}
