//! Helpers of the agent tests: the CLI against a server as its admin, the agent list,
//! approvals, the processes a server started.

use super::Plexus;
use super::server::admin_key;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// An example binary of this package (`cargo build --example NAME`), built when missing.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    if !path.exists() {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-p", "plexus-cli", "--example", name])
            .status()
            .unwrap();
        assert!(status.success(), "building the example {name}");
    }
    path
}

/// `plexus` against the server at `addr`, as its admin.
pub fn cli(p: &Plexus, addr: &str) -> Command {
    let mut c = p.cmd();
    c.env("PLEXUS_SERVER", format!("http://{addr}"))
        .env("PLEXUS_API_KEY", admin_key(addr));
    c
}

/// `plexus ARGS -o json` against the server, which must succeed.
pub fn cli_json(p: &Plexus, addr: &str, args: &[&str]) -> Value {
    let out = cli(p, addr)
        .args(args)
        .args(["-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "plexus {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The agent `name` as `plexus agent list` shows it, if it is registered.
pub fn agent(p: &Plexus, addr: &str, name: &str) -> Option<Value> {
    cli_json(p, addr, &["agent", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .cloned()
}

/// Its health, if it is registered.
pub fn agent_health(p: &Plexus, addr: &str, name: &str) -> Option<String> {
    agent(p, addr, name).map(|a| a["health"].as_str().unwrap().to_owned())
}

/// Polls until `f` holds (40 s at most).
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

/// Waits for an approval at `step` (any step: `None`) whose `detail.kind` is `kind`
/// (any: `None`), and approves it.
pub fn approve_when_asked(p: &Plexus, addr: &str, step: Option<&str>, kind: Option<&str>) {
    decide_when_asked(p, addr, step, kind, "approve", None);
}

/// Waits as [`approve_when_asked`] does, then decides with `plexus approve|reject`
/// (`verb`) and `comment`.
pub fn decide_when_asked(
    p: &Plexus,
    addr: &str,
    step: Option<&str>,
    kind: Option<&str>,
    verb: &str,
    comment: Option<&str>,
) {
    let mut found = None;
    wait_for(&format!("an approval at {step:?} ({kind:?})"), || {
        let list = cli_json(p, addr, &["approval", "list"]);
        found = list["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| {
                step.is_none_or(|s| a["step_id"] == s)
                    && kind.is_none_or(|k| a["detail"]["kind"] == k)
            })
            .map(|a| {
                (
                    a["run_id"].as_str().unwrap().to_owned(),
                    a["step_id"].as_str().unwrap().to_owned(),
                )
            });
        found.is_some()
    });
    let (run, step) = found.unwrap();
    let mut decide = cli(p, addr);
    decide.args([verb, &run, &step]);
    if let Some(c) = comment {
        decide.args(["--comment", c]);
    }
    let out = decide.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A step of a run as `-o json` shows it.
pub fn step<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id || s["step_id"] == id)
        .unwrap_or_else(|| panic!("no step {id} in {run}"))
}

/// The pids of the live children of `parent` whose command line contains `needle`.
pub fn children_running(parent: u32, needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let (Ok(cmdline), Ok(stat)) = (
            std::fs::read(entry.path().join("cmdline")),
            std::fs::read_to_string(entry.path().join("stat")),
        ) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        // pid (comm) state ppid ...
        let Some((_, tail)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = tail.split_whitespace();
        let state = fields.next().unwrap_or("");
        let ppid: u32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == parent && state != "Z" && cmdline.contains(needle) {
            out.push(pid);
        }
    }
    out
}

/// Whether the process `pid` has ended (gone, or a zombie not reaped yet).
pub fn ended(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
}

/// `plexus.toml` for agent tests: health checked every second; steps wait `grace` for
/// their agents after a start; `extra` lines added to `[plugins]`.
pub fn write_plugins_toml(p: &Plexus, grace: &str, extra: &str) {
    std::fs::write(
        p.dir.path().join("plexus.toml"),
        format!(
            "[plugins]\nhealth_check_interval = \"1s\"\nregistration_grace = \"{grace}\"\n{extra}"
        ),
    )
    .unwrap();
}

/// Writes `yaml` as NAME.yaml in the test's directory and starts `plexus run -o json`
/// of it against the server, in the background (approve what it waits for, then
/// [`finish_run`]).
pub fn spawn_run(p: &Plexus, addr: &str, name: &str, yaml: &str) -> std::process::Child {
    let file = p.dir.path().join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    cli(p, addr)
        .args(["run", file.to_str().unwrap(), "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a [`spawn_run`] to end with `exit`; the run.
pub fn finish_run(runner: std::process::Child, exit: i32) -> Value {
    let done = runner.wait_with_output().unwrap();
    assert_eq!(
        done.status.code(),
        Some(exit),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    serde_json::from_slice(&done.stdout).unwrap()
}

/// The example agent `ops` (built with the Rust SDK), registering with the engine at
/// `grpc` and beating every second; killed with the test.
pub fn start_ops_agent(grpc: &str) -> std::process::Child {
    start_example_agent("ops_agent", grpc)
}

/// An example plugin of this package (see [`start_ops_agent`]).
pub fn start_example_agent(name: &str, grpc: &str) -> std::process::Child {
    let mut cmd = Command::new(example(name));
    cmd.env_clear()
        .env("MIRASTACK_ENGINE_ADDR", grpc)
        .env("MIRASTACK_PLUGIN_TENANT_SLUG", "default")
        // Beat every second, so that an engine restart is noticed at once.
        .env("MIRASTACK_HEARTBEAT_INTERVAL_SECONDS", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl only marks the child to die with the test's thread.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("the example agent starts");
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("MIRASTACK_PLUGIN_PORT="), "{line}");
    child
}

/// `plexus settings set KEY VALUE` (or `unset` when `value` is `None`), which must
/// succeed.
pub fn set_setting(p: &Plexus, addr: &str, key: &str, value: Option<&str>) {
    let mut c = cli(p, addr);
    match value {
        Some(v) => c.args(["settings", "set", key, v]),
        None => c.args(["settings", "unset", key]),
    };
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "settings {key}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
