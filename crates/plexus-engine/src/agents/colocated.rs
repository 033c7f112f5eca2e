//! Co-located plugins: executables under `plugins.dir` that the engine starts, watches
//! and stops. Each gets the environment the public SDKs expect (the engine's address, a
//! loopback address to listen on, the tenant) and nothing else of the engine's; it says
//! its port on stdout (`MIRASTACK_PLUGIN_PORT=`) and registers itself — or, when it
//! does not within a few seconds, the engine dials it on that port. One that dies is
//! started again, waiting longer after each quick death (1 s doubling to a minute). On
//! shutdown each gets SIGTERM (the SDKs deregister), then its process group SIGKILL.

use super::Agents;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;

/// How long a started plugin may take to say its port.
const PORT_DEADLINE: Duration = Duration::from_secs(30);
/// How long it may take to register itself before the engine dials it.
const SELF_REGISTRATION: Duration = Duration::from_secs(3);
/// A plugin that ran this long is healthy again: its next death restarts it at once.
const STABLE: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long a plugin has to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A plugin found under `plugins.dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginFile {
    /// Its directory's name (or its own, for an executable directly under the dir).
    pub name: String,
    pub path: PathBuf,
}

fn executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The plugins under `dir`: `dir/<name>/<name>`, or the one executable in `dir/<name>/`,
/// or an executable directly in `dir`. Anything else is skipped with a warning.
pub fn discover(dir: &Path) -> std::io::Result<Vec<PluginFile>> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            let own = path.join(&name);
            let file = if executable(&own) {
                Some(own)
            } else {
                let mut found: Vec<PathBuf> = std::fs::read_dir(&path)?
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| executable(p))
                    .collect();
                if found.len() == 1 { found.pop() } else { None }
            };
            match file {
                Some(path) => out.push(PluginFile { name, path }),
                None => tracing::warn!(
                    dir = %path.display(),
                    "no plugin started from here: put one executable in it, or one named like the directory"
                ),
            }
        } else if executable(&path) {
            out.push(PluginFile { name, path });
        }
    }
    Ok(out)
}

/// What the supervisor shows of a plugin it runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChildView {
    pub name: String,
    pub path: PathBuf,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    pub restarts: u32,
    pub last_exit: Option<String>,
}

/// Starts and watches the co-located plugins.
#[derive(Clone)]
pub struct Supervisor {
    agents: Agents,
    engine_addr: String,
    children: Arc<Mutex<Vec<ChildView>>>,
    stop: watch::Sender<bool>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Supervisor {
    /// A supervisor whose plugins reach the engine at `engine_addr` (loopback).
    pub fn new(agents: Agents, engine_addr: String) -> Supervisor {
        Supervisor {
            agents,
            engine_addr,
            children: Arc::default(),
            stop: watch::channel(false).0,
            tasks: Arc::default(),
        }
    }

    /// Starts every plugin found under `dir`; how many.
    pub fn start_dir(&self, dir: &Path) -> std::io::Result<usize> {
        // Absolute: each plugin runs in its own directory.
        let found = discover(&std::path::absolute(dir)?)?;
        for plugin in &found {
            self.start(plugin.clone());
        }
        Ok(found.len())
    }

    /// Starts one plugin and keeps it running until [`Supervisor::shutdown`].
    pub fn start(&self, plugin: PluginFile) {
        let index = {
            let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
            children.push(ChildView {
                name: plugin.name.clone(),
                path: plugin.path.clone(),
                pid: None,
                port: None,
                restarts: 0,
                last_exit: None,
            });
            children.len() - 1
        };
        let me = self.clone();
        let task = tokio::spawn(async move { me.keep_running(plugin, index).await });
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
    }

    /// The plugins it runs.
    pub fn children(&self) -> Vec<ChildView> {
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn update(&self, index: usize, f: impl FnOnce(&mut ChildView)) {
        if let Some(c) = self
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(index)
        {
            f(c);
        }
    }

    async fn keep_running(&self, plugin: PluginFile, index: usize) {
        let mut backoff = Duration::from_secs(1);
        let mut stop = self.stop.subscribe();
        loop {
            if *stop.borrow() {
                return;
            }
            let started = Instant::now();
            let exit = self.run_once(&plugin, index, &mut stop).await;
            if *stop.borrow() {
                return;
            }
            tracing::warn!(plugin = %plugin.name, exit = %exit, restart_in = ?backoff, "co-located plugin ended");
            metrics::counter!("plexus_agent_restarts_total").increment(1);
            self.update(index, |c| {
                c.pid = None;
                c.port = None;
                c.restarts += 1;
                c.last_exit = Some(exit);
            });
            if started.elapsed() >= STABLE {
                backoff = Duration::from_secs(1);
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Runs the plugin until it exits (what ended it) or the supervisor stops.
    async fn run_once(
        &self,
        plugin: &PluginFile,
        index: usize,
        stop: &mut watch::Receiver<bool>,
    ) -> String {
        let mut cmd = tokio::process::Command::new(&plugin.path);
        cmd.env_clear()
            .envs(
                ["PATH", "HOME", "LANG", "TMPDIR"]
                    .iter()
                    .filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))),
            )
            .env("MIRASTACK_ENGINE_ADDR", &self.engine_addr)
            .env("MIRASTACK_PLUGIN_ADDR", "127.0.0.1:0")
            .env(
                "MIRASTACK_PLUGIN_TENANT_SLUG",
                plexus_agent::DEFAULT_TENANT_SLUG,
            )
            .env(
                "MIRASTACK_PLUGIN_TENANT_ID",
                plexus_agent::tenant_id(plexus_agent::DEFAULT_TENANT_SLUG),
            )
            .current_dir(plugin.path.parent().unwrap_or(Path::new("/")))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; the child dies with the engine.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return format!("cannot start {}: {e}", plugin.path.display()),
        };
        let pid = child.id();
        self.update(index, |c| c.pid = pid);
        let name = plugin.name.clone();
        if let Some(stderr) = child.stderr.take() {
            let name = name.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(plugin = %name, "{line}");
                }
            });
        }
        let (port_tx, port_rx) = tokio::sync::oneshot::channel();
        if let Some(stdout) = child.stdout.take() {
            let name = name.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                let mut port_tx = Some(port_tx);
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(port) = line
                        .trim()
                        .strip_prefix("MIRASTACK_PLUGIN_PORT=")
                        .and_then(|p| p.parse::<u16>().ok())
                        && let Some(tx) = port_tx.take()
                    {
                        let _ = tx.send(port);
                        continue;
                    }
                    tracing::debug!(plugin = %name, "{line}");
                }
            });
        }
        let watcher = {
            let me = self.clone();
            let name = name.clone();
            async move {
                let Ok(Ok(port)) = tokio::time::timeout(PORT_DEADLINE, port_rx).await else {
                    tracing::warn!(plugin = %name, "it did not say MIRASTACK_PLUGIN_PORT= on stdout in time");
                    return;
                };
                me.update(index, |c| c.port = Some(port));
                // The SDKs register themselves; a plugin that does not is dialled.
                let deadline = Instant::now() + SELF_REGISTRATION;
                while Instant::now() < deadline {
                    if me.agents.has_port(port) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if let Err(e) = me.agents.dial_any(&format!("127.0.0.1:{port}")).await {
                    tracing::warn!(plugin = %name, error = %e, "cannot take the plugin in");
                }
            }
        };
        let watcher = tokio::spawn(watcher);
        let exit = tokio::select! {
            status = child.wait() => match status {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            },
            _ = stop.changed() => {
                terminate(&mut child, pid).await;
                "stopped".to_owned()
            }
        };
        watcher.abort();
        // Whatever it registered is gone with it.
        if let Some(port) = self.children().get(index).and_then(|c| c.port) {
            self.agents.forget_port(port);
        }
        exit
    }

    /// Stops every plugin (SIGTERM, then SIGKILL to its process group after a grace).
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }
}

async fn terminate(child: &mut tokio::process::Child, pid: Option<u32>) {
    let Some(pid) = pid else {
        return;
    };
    // SAFETY: signalling a child this supervisor started (and its group).
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            pid,
            "plugin did not stop after SIGTERM: killing its process group"
        );
    }
    // Whatever it left in its group goes too.
    // SAFETY: as above; ESRCH when the group is already gone.
    unsafe { libc::killpg(pid as i32, libc::SIGKILL) };
    let _ = child.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn exe(path: &Path) {
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn plugins_are_found_by_directory_or_as_executables() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("metrics")).unwrap();
        exe(&d.join("metrics/metrics"));
        exe(&d.join("metrics/helper"));
        std::fs::create_dir(d.join("logs")).unwrap();
        exe(&d.join("logs/agent-logs"));
        std::fs::write(d.join("logs/README"), "").unwrap();
        std::fs::create_dir(d.join("ambiguous")).unwrap();
        exe(&d.join("ambiguous/a"));
        exe(&d.join("ambiguous/b"));
        exe(&d.join("standalone"));
        std::fs::write(d.join("notes.txt"), "").unwrap();
        let found = discover(d).unwrap();
        let names: Vec<(&str, String)> = found
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.path.file_name().unwrap().to_string_lossy().into_owned(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("logs", "agent-logs".to_owned()),
                ("metrics", "metrics".to_owned()),
                ("standalone", "standalone".to_owned())
            ]
        );
    }
}
