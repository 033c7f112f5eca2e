//! The command line itself: help, validate/plan output for people and scripts, run
//! inspection in JSON.

mod common;
use common::*;

#[test]
fn help_teaches_the_commands() {
    let p = Plexus::new();
    let out = p.run(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "run",
        "resume",
        "validate",
        "plan",
        "runs",
        "signal",
        "approve",
        "reject",
        "--data-dir",
    ] {
        assert!(text.contains(word), "help lacks {word}:\n{text}");
    }
    let out = p.run(&["run", "--help"]);
    let run = String::from_utf8_lossy(&out.stdout);
    assert!(run.contains("Exit status: 0 succeeded, 1 failed, 2 invalid"));
    // A command's own options come first, the global ones under their own heading, and
    // an example closes the help.
    let own = run.find("--follow-logs").unwrap();
    let pool = run.find("--pool").unwrap();
    let global = run.find("Global options:").unwrap();
    assert!(own < global && pool < global && global < run.find("--data-dir").unwrap());
    assert!(run.contains("Examples:\n  plexus run flow.yaml"), "{run}");
    // Options that do nothing for a command are not offered there.
    let audit = p.run(&["audit", "list", "--help"]);
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(!audit.contains("--pool"), "{audit}");
    assert!(
        audit.contains("--domain") && audit.contains("Examples:"),
        "{audit}"
    );
    let refused = p.run(&["audit", "list", "--pool", "gpu=1"]);
    assert_eq!(refused.status.code(), Some(2));
    // The store does not matter to checking a file (a server does: it knows the agents),
    // nor to user management on this machine's store: not offered.
    let validate = p.run(&["validate", "--help"]);
    let validate = String::from_utf8_lossy(&validate.stdout);
    assert!(
        validate.contains("--server") && !validate.contains("--data-dir"),
        "{validate}"
    );
    let users = p.run(&["user", "list", "--help"]);
    let users = String::from_utf8_lossy(&users.stdout);
    assert!(
        users.contains("--server") && !users.contains("--data-dir"),
        "{users}"
    );
    // Before the command, both are accepted for any command.
    let flow = examples().join("hello.yaml");
    let dir = p.data_dir();
    let out = p.run(&[
        "--data-dir",
        dir.to_str().unwrap(),
        "validate",
        flow.to_str().unwrap(),
    ]);
    assert!(out.status.success());
}

#[test]
fn validate_reports_all_problems_as_json_and_exits_2() {
    let p = Plexus::new();
    let bad = p.dir.path().join("bad.yaml");
    std::fs::write(&bad, "version: plexus/v1\nname: bad\nsteps:\n- id: a\n  rn: echo\n- id: b\n  needs: [z]\n  run: echo\n").unwrap();
    let out = p.run(&["validate", bad.to_str().unwrap(), "-o", "json"]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    let problems = v["problems"].as_array().unwrap();
    let codes: Vec<&str> = problems
        .iter()
        .map(|d| d["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, vec!["no-kind", "unknown-key", "unknown-need"]);
    assert_eq!(problems[1]["line"], 5);
    assert_eq!(problems[1]["column"], 3);
    assert_eq!(problems[1]["step"], "a");
    assert_eq!(problems[1]["hint"], "did you mean `run`?");
    let human = p.run(&["validate", bad.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&human.stderr);
    assert!(
        text.contains("bad.yaml:5:3: error[unknown-key] in step `a`: unknown key `rn` in a step"),
        "{text}"
    );
    assert!(text.contains("3 problems found"));
    let good = p.run(&["validate", examples().join("hello.yaml").to_str().unwrap()]);
    assert_eq!(good.status.code(), Some(0));
}

/// What parses but is not carried out yet (or, offline, cannot be checked) is a warning
/// naming the step, not silence: the file is still valid (exit 0).
#[test]
fn validate_warns_about_what_is_not_executed_yet() {
    let p = Plexus::new();
    let file = p.dir.path().join("later.yaml");
    std::fs::write(
        &file,
        "version: plexus/v1\nname: later\nsteps:\n- id: ask\n  agent: vmetrics\n  action: query\n- id: think\n  llm: {prompt: hi}\n- id: big\n  run: echo\n  resources: {cpu: 2}\n",
    )
    .unwrap();
    let out = p.run(&["validate", file.to_str().unwrap(), "-o", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], true);
    let steps: Vec<&str> = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            assert_eq!(w["severity"], "warning");
            let code = if w["step"] == "ask" {
                "agent-unchecked"
            } else {
                "not-executed"
            };
            assert_eq!(w["code"], code, "{w}");
            w["step"].as_str().unwrap()
        })
        .collect();
    // `llm` steps run now: no warning for `think`.
    assert_eq!(steps, ["big", "ask"]);
    let human = p.run(&["validate", file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&human.stderr);
    assert!(
        text.contains(
            "later.yaml:5:10: warning[agent-unchecked] in step `ask`: agent `vmetrics` is not checked: agents register with a server"
        ),
        "{text}"
    );
    assert!(text.contains("`resources` are not enforced yet"), "{text}");
}

/// Values are quoted for the shell by default; `| safe` over an input turns that off, and
/// validation says so (the manifest stays valid).
#[test]
fn validate_warns_about_inputs_put_into_commands_unquoted() {
    let p = Plexus::new();
    let file = p.dir.path().join("raw.yaml");
    std::fs::write(
        &file,
        "version: plexus/v1\nname: raw\ninputs: {svc: {type: string}}\nsteps:\n- {id: quoted, run: 'echo {{ inputs.svc }}'}\n- {id: raw, run: 'echo {{ inputs.svc | safe }}'}\n",
    )
    .unwrap();
    let out = p.run(&["validate", file.to_str().unwrap(), "-o", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let warnings = v["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{v}");
    assert_eq!(warnings[0]["code"], "unquoted-input");
    assert_eq!(warnings[0]["step"], "raw");

    // The attack as found: the input's `;` adds a command only where `| safe` says so.
    let marker = p.dir.path().join("pwned");
    let svc = format!("api; touch {}; echo", marker.display());
    let input = format!("svc={svc}");
    let run = p.run_file(&file, &["-i", &input], 0);
    assert_eq!(
        run["steps"][0]["output"]["stdout"].as_str().unwrap().trim(),
        svc
    );
    assert!(marker.exists(), "`| safe` did run it, as the warning said");
    std::fs::remove_file(&marker).unwrap();
    std::fs::write(
        &file,
        "version: plexus/v1\nname: raw\ninputs: {svc: {type: string}}\nsteps:\n- {id: quoted, run: 'echo checking {{ inputs.svc }}'}\n- id: py\n  python: |\n    print({{ inputs.svc }})\n",
    )
    .unwrap();
    let run = p.run_file(&file, &["-i", &input], 0);
    assert!(!marker.exists(), "no input added a command");
    assert_eq!(
        run["steps"][1]["output"]["stdout"].as_str().unwrap().trim(),
        svc
    );
}

#[test]
fn plan_shows_layers_pools_and_gates() {
    let p = Plexus::new();
    let file = examples().join("approval-gate.yaml");
    let v = p.json(&["plan", file.to_str().unwrap()]);
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 4);
    assert_eq!(layers[1][0]["id"], "restart");
    assert_eq!(layers[1][0]["approval"], "modify");
    assert_eq!(layers[2][0]["approval"], "explicit");
    let fan = p.json(&[
        "plan",
        examples().join("fan-out-fan-in.yaml").to_str().unwrap(),
        "--pool",
        "default=3",
    ]);
    assert_eq!(fan["layers"][0].as_array().unwrap().len(), 3);
    assert_eq!(fan["pools"]["default"], 3);
    let text = p.run(&[
        "plan",
        examples().join("fan-out-fan-in.yaml").to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("3 in parallel"));
}

#[test]
fn events_carry_seq_time_type_step_and_attempt() {
    let p = Plexus::new();
    let out = p.run(&[
        "run",
        examples().join("hello.yaml").to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert!(out.status.success());
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = run["id"].as_str().unwrap();
    let events = p.events(id);
    assert_eq!(events[0]["type"], "run_started");
    let started = events.iter().find(|e| e["type"] == "step_started").unwrap();
    for key in ["seq", "time", "type", "step_id", "attempt", "key"] {
        assert!(!started[key].is_null(), "{key} missing in {started}");
    }
    assert_eq!(started["key"], format!("{id}/greet/-/1"));
    // A unique prefix of the id is enough.
    let short = p.json(&["runs", "show", &id[..13]]);
    assert_eq!(short["id"], id);
    let after = p.json(&["runs", "events", id, "--after", "3"]);
    assert_eq!(after[0]["seq"], 4);
    let listed = p.json(&["runs", "list", "--workflow", "hello"]);
    assert_eq!(listed[0]["id"], id);
    assert_eq!(listed[0]["interrupted"], false);
    let missing = p.run(&["runs", "show", "ffffffff"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("run `ffffffff` not found"));
}

#[test]
fn config_show_names_every_value_and_its_source() {
    let p = Plexus::new();
    let file = p.dir.path().join("plexus.toml");
    std::fs::write(
        &file,
        "listen_addr = \"127.0.0.1:9999\"\nshutdown_grace = \"5s\"\n[pools]\ngpu = 1\n",
    )
    .unwrap();
    let out = p
        .cmd()
        .args(["config", "show", "-o", "json"])
        .env("PLEXUS_BODY_LIMIT", "1024")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["listen_addr"],
        serde_json::json!({"value": "127.0.0.1:9999", "source": "file"})
    );
    assert_eq!(
        v["body_limit"],
        serde_json::json!({"value": 1024, "source": "flag or environment"})
    );
    assert_eq!(v["shutdown_grace"]["value"], "5s");
    assert_eq!(v["pools"]["value"]["gpu"], 1);
    assert_eq!(v["fsync"]["source"], "default");
    std::fs::write(&file, "listen_adr = \"x\"\n").unwrap();
    let bad = p.run(&["config", "show"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown field `listen_adr`"));
    let bad_env = p
        .cmd()
        .args(["config", "show"])
        .env("PLEXUS_SHUTDOWN_GRACE", "soon")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bad_env.stderr).contains("PLEXUS_SHUTDOWN_GRACE"));
}

#[test]
fn yaml_output_for_scripts() {
    let p = Plexus::new();
    let out = p.run(&[
        "run",
        examples().join("fan-out-fan-in.yaml").to_str().unwrap(),
        "-o",
        "yaml",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: serde_json::Value =
        serde_saphyr::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["outputs"]["total"], 15);
    let listed = p.run(&["runs", "list", "-o", "yaml"]);
    let runs: serde_json::Value =
        serde_saphyr::from_str(&String::from_utf8_lossy(&listed.stdout)).unwrap();
    assert_eq!(runs[0]["id"], run["id"]);
}

/// `plexus ... -o json | head`: a reader that went away ends the command quietly, never
/// with a panic.
#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    use std::os::fd::FromRawFd;
    let p = Plexus::new();
    let mut fds = [0; 2];
    // SAFETY: pipe fills the two descriptors it is given.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just made and are owned here; the read end is closed
    // at once, so every write to the other end fails with EPIPE.
    let (read, write) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    drop(read);
    let file = examples().join("hello.yaml");
    let out = p
        .cmd()
        .args(["validate", file.to_str().unwrap(), "-o", "json"])
        .stdout(write)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

/// Completions for each shell and the manual pages come from the parser's own
/// definitions; a closed pipe ends them quietly.
#[test]
fn completions_and_manual_pages() {
    let p = Plexus::new();
    for (shell, marker) in [
        ("bash", "_plexus()"),
        ("zsh", "#compdef plexus"),
        ("fish", "complete -c plexus"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let out = p.run(&["completion", shell]);
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains(marker),
            "{shell}: {}",
            &script[..200.min(script.len())]
        );
        // Subcommands and their options are in it.
        assert!(
            script.contains("watch") && script.contains("follow-logs"),
            "{shell}"
        );
    }
    let out = p.run(&["man"]);
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.contains(".TH plexus 1") && page.contains("Durable workflows"),
        "{page}"
    );
    let dir = p.dir.path().join("man1");
    assert!(
        p.run(&["man", "--dir", dir.to_str().unwrap()])
            .status
            .success()
    );
    let run_page = std::fs::read_to_string(dir.join("plexus-run.1")).unwrap();
    assert!(run_page.contains("\\-\\-follow\\-logs"), "{run_page}");
    assert!(dir.join("plexus-runs-watch.1").exists());
}

/// `--quiet` keeps stderr free of progress and remarks; the result is still printed.
#[test]
fn quiet_runs_say_nothing_but_the_result() {
    let p = Plexus::new();
    let hello = examples().join("hello.yaml");
    let out = p.run(&["run", hello.to_str().unwrap(), "-i", "who=q", "--quiet"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello, q"));
    let out = p.run(&["run", hello.to_str().unwrap(), "-i", "who=q"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("started"));
}
