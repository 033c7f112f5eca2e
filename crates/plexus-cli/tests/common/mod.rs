//! Black-box helpers: every test drives the real `plexus` binary against its own data dir.
#![allow(dead_code)]

pub mod agents;
pub mod openai_stand_in;
pub mod replicas;
pub mod server;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Plexus {
    pub dir: tempfile::TempDir,
}

pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .canonicalize()
        .expect("examples dir")
}

impl Plexus {
    pub fn new() -> Self {
        Plexus {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_plexus"));
        c.env("PLEXUS_DATA_DIR", self.data_dir())
            .env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .env_remove("PLEXUS_CONFIG")
            .env_remove("PLEXUS_DATABASE_URL")
            .env_remove("PLEXUS_LOG")
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        // A test that panics must not leave servers behind: the child dies with the
        // test's thread.
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches only the child.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("plexus runs")
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.run(&[args, &["-o", "json"]].concat());
        assert!(
            out.status.success(),
            "plexus {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// Starts `plexus` in the background and returns it with the run id it announced.
    pub fn spawn(&self, args: &[&str]) -> (Child, String) {
        let mut child = self
            .cmd()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn plexus");
        let stderr = child.stderr.take().expect("stderr");
        let mut reader = BufReader::new(stderr);
        // The first line that starts with `run ` names the run (log lines may come first).
        let mut line = String::new();
        let id = loop {
            line.clear();
            if reader.read_line(&mut line).expect("stderr line") == 0 {
                panic!("plexus ended without announcing a run");
            }
            if let Some(rest) = line.strip_prefix("run ") {
                break rest.split_whitespace().next().expect("run id").to_owned();
            }
        };
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        (child, id)
    }

    /// Runs a workflow file to its end (plus `extra` arguments), checks the exit status
    /// and returns the run as JSON.
    pub fn run_file(&self, file: &Path, extra: &[&str], exit: i32) -> Value {
        let file = file.to_str().expect("a UTF-8 path");
        let out = self.run(&[&["run", file, "-o", "json"], extra].concat());
        assert_eq!(
            out.status.code(),
            Some(exit),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }

    pub fn run_json(&self, run: &str) -> Value {
        self.json(&["runs", "show", run])
    }

    pub fn step_status(&self, run: &str, step: &str) -> String {
        let v = self.run_json(run);
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step_id"] == step)
            .map(|s| s["status"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    /// Polls until `f` holds or the timeout passes.
    pub fn wait_until(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out waiting for {what}");
    }

    pub fn events(&self, run: &str) -> Vec<Value> {
        self.json(&["runs", "events", run])
            .as_array()
            .unwrap()
            .clone()
    }
}

pub fn wait_exit(child: &mut Child, timeout: Duration) -> i32 {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("plexus did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The Python of a venv under the build's target directory that has `package` (checked
/// by importing `module`): the test command makes it first; made here when missing,
/// under a lock, so tests running at once install once.
pub fn venv_python(module: &str, package: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let venv = target.join("agent-sdk-venv");
    let python = venv.join("bin/python");
    let has = |python: &Path| {
        Command::new(python)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has(&python) {
        return python;
    }
    let lock = std::fs::File::create(target.join("agent-sdk-venv.lock")).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file this test opened; released when it is closed.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    if !python.exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap()
            .success();
        assert!(ok, "making a venv");
    }
    if !has(&python) {
        // `python -m pip`: the venv's scripts name the path it was made at.
        let ok = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--ignore-requires-python",
                package,
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok, "installing {package} into the venv");
    }
    assert!(has(&python), "{module} imports after installing {package}");
    python
}
