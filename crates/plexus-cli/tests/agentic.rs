//! The agentic loop: `llm` steps with `tools`, against a real `plexus serve`, the example
//! agent built with the Rust SDK, and a scripted OpenAI-compatible stand-in for the model
//! (a paid API cannot run here). Tool calls are checked against their schemas, MODIFY
//! calls wait for approval in the run's inbox, budgets stop the loop, and a loop killed
//! with the server takes up where its journal ends.

mod common;
use common::agents::*;
use common::openai_stand_in::{self as model, Seen};
use common::server::*;
use common::*;
use serde_json::Value;

/// The agentic example: an `llm` step with the `ops` agent's actions as its tools.
fn tidy() -> String {
    std::fs::read_to_string(examples().join("llm/agentic.yaml")).unwrap()
}

/// A server with the `ops` agent registered, its root at `root/` with two reports.
/// The gRPC address is fixed, so that the agent finds a restarted server again.
fn server_with_ops(p: &Plexus, grpc: &str) -> (std::process::Child, String, std::process::Child) {
    // A restarted server waits for the agent before it takes up the loop.
    write_plugins_toml(p, "30s", "");
    let (server, addr) = start_server_on(p, grpc);
    let agent = start_ops_agent(grpc);
    wait_for("the agent to register", || {
        agent_health(p, &addr, "ops").as_deref() == Some("healthy")
    });
    let root = p.dir.path().join("root");
    std::fs::create_dir_all(root.join("reports")).unwrap();
    std::fs::write(root.join("reports/a.txt"), "12345").unwrap();
    let out = cli(p, &addr)
        .args(["agent", "config-set", "ops", "root", root.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    (server, addr, agent)
}

/// The model's side of the conversation: inspect twice (once with arguments that do
/// not fit), write a note (approved), write another (rejected), then answer.
fn tidy_script(body: &Value, _n: usize) -> model::Answer {
    match model::tool_results(body).len() {
        0 => model::tool_calls(&[
            ("c1", "ops__inspect", r#"{"path": "reports"}"#),
            ("c2", "ops__inspect", r#"{"path": 5}"#),
        ]),
        2 => model::tool_calls(&[(
            "c3",
            "ops__write_note",
            r#"{"path": "note.txt", "text": "hello"}"#,
        )]),
        3 => model::tool_calls(&[(
            "c4",
            "ops__write_note",
            r#"{"path": "other.txt", "text": "x"}"#,
        )]),
        _ => model::text("Done: one report of 5 bytes, a note left."),
    }
}

#[test]
fn an_llm_step_with_tools_checks_gates_and_records_every_call() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen: Seen = Default::default();
    let api = model::serve(&rt, seen.clone(), tidy_script);
    let p = Plexus::new();
    let (mut server, addr, mut agent) = server_with_ops(&p, &free_addr());
    model::add_provider(&p, &addr, "standin", &api);

    let runner = spawn_run(&p, &addr, "tidy", &tidy());
    decide_when_asked(&p, &addr, Some("agent"), Some("tool_call"), "approve", None);
    decide_when_asked(
        &p,
        &addr,
        Some("agent"),
        Some("tool_call"),
        "reject",
        Some("one note is enough"),
    );
    let run = finish_run(runner, 0);
    let out = &step(&run, "agent")["output"];
    assert_eq!(out["text"], "Done: one report of 5 bytes, a note left.");
    assert_eq!(out["iterations"], 4);
    assert_eq!(out["usage"]["total_tokens"], 40 * 3 + 25);
    let calls = out["tool_calls"].as_array().unwrap();
    let statuses: Vec<&str> = calls
        .iter()
        .map(|c| c["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["ok", "invalid", "ok", "rejected"], "{out}");
    assert_eq!(calls[0]["result"]["bytes"], 5, "{out}");
    assert!(
        calls[1]["error"]
            .as_str()
            .unwrap()
            .contains("do not fit the tool's schema"),
        "{out}"
    );
    assert_eq!(calls[2]["approved_by"], "user:admin", "{out}");
    assert!(
        calls[3]["error"]
            .as_str()
            .unwrap()
            .contains("rejected by user:admin: one note is enough"),
        "{out}"
    );
    let root = p.dir.path().join("root");
    assert_eq!(
        std::fs::read_to_string(root.join("note.txt")).unwrap(),
        "hello"
    );
    assert!(
        !root.join("other.txt").exists(),
        "the rejected call was not made"
    );

    // What the model was sent: the tools (with their schemas), then each result.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    let tools: Vec<&str> = seen[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert!(tools.contains(&"ops__inspect") && tools.contains(&"ops__write_note"));
    let inspect = seen[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == "ops__inspect")
        .unwrap();
    assert_eq!(
        inspect["function"]["parameters"]["properties"]["path"]["type"],
        "string"
    );
    let last = model::tool_results(&seen[3]);
    assert_eq!(last.len(), 4);
    assert_eq!(last[1]["tool_call_id"], "c2");
    assert!(
        last[3]["content"]
            .as_str()
            .unwrap()
            .starts_with("error: the call was not made: rejected by user:admin"),
        "{last:?}"
    );

    // The trace is in the run's events, and the approvals and calls in the audit log.
    let run_id = run["id"].as_str().unwrap();
    let events = cli_json(&p, &addr, &["runs", "events", run_id]);
    let journal: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "step_progress")
        .map(|e| e["entry"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        journal,
        [
            "reply",
            "tool",
            "tool",
            "reply",
            "approval_requested",
            "approval",
            "tool",
            "reply",
            "approval_requested",
            "approval",
            "tool",
            "reply"
        ]
    );
    let audit = cli_json(&p, &addr, &["audit", "list", "--domain", "workflow"]);
    let actions: Vec<String> = audit
        .as_array()
        .or_else(|| audit["records"].as_array())
        .unwrap()
        .iter()
        .filter(|a| a["target"] == format!("run:{run_id}/agent"))
        .map(|a| a["action"].as_str().unwrap().to_owned())
        .collect();
    for wanted in [
        "approval.requested",
        "approval.granted",
        "approval.rejected",
        "tool.called",
    ] {
        assert!(
            actions.iter().any(|a| a == wanted),
            "{wanted} in {actions:?}"
        );
    }
    let shown = cli(&p, &addr)
        .args(["runs", "show", run_id])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("ops/write_note"), "{shown}");

    // Promoted: a workflow that makes the calls that succeeded again, validated against
    // the server's agents, its MODIFY call approved like any step.
    let promoted = p.dir.path().join("promoted.yaml");
    let out = cli(&p, &addr)
        .args(["runs", "promote", run_id, "--name", "tidy-again", "-f"])
        .arg(&promoted)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&p, &addr)
        .args(["validate", promoted.to_str().unwrap(), "--server"])
        .arg(format!("http://{addr}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(root.join("note.txt")).unwrap();
    let runner = spawn_run(
        &p,
        &addr,
        "again",
        &std::fs::read_to_string(&promoted).unwrap(),
    );
    approve_when_asked(&p, &addr, Some("call_2_write_note"), None);
    let again = finish_run(runner, 0);
    assert_eq!(
        step(&again, "call_1_inspect")["output"]["bytes"],
        5,
        "{again}"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("note.txt")).unwrap(),
        "hello",
        "the same call made again"
    );
    let _ = agent.kill();
    stop(&mut server);
}

#[test]
fn budgets_stop_a_loop_with_a_clear_message() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen: Seen = Default::default();
    // A model that never stops calling tools.
    let api = model::serve(&rt, seen.clone(), |_, n| {
        let id = format!("c{n}");
        model::tool_calls(&[(&id, "ops__inspect", r#"{"path": "reports"}"#)])
    });
    let p = Plexus::new();
    let (mut server, addr, mut agent) = server_with_ops(&p, &free_addr());
    model::add_provider(&p, &addr, "standin", &api);
    set_setting(&p, &addr, "budgets.agentic_max_iterations", Some("3"));
    let runner = spawn_run(&p, &addr, "tidy", &tidy());
    let run = finish_run(runner, 1);
    let s = step(&run, "agent");
    assert_eq!(
        s["error"],
        "the agentic loop stopped: it has used 3 of its 3 model calls (budgets.agentic_max_iterations) without a final answer",
        "{s}"
    );
    assert_eq!(s["output"]["tool_calls"].as_array().unwrap().len(), 3);
    assert_eq!(seen.lock().unwrap().len(), 3);
    // A workflow may lower a budget, never raise it.
    let runner = spawn_run(
        &p,
        &addr,
        "lowered",
        &tidy().replace(
            "tools: [ops]",
            "tools: [ops]\n      budget: {max_iterations: 50, max_tool_calls: 1}",
        ),
    );
    let run = finish_run(runner, 1);
    assert_eq!(
        step(&run, "agent")["error"],
        "the agentic loop stopped: it has used 1 of its 1 tool calls (budgets.agentic_max_tool_calls) without a final answer"
    );
    let _ = agent.kill();
    stop(&mut server);
}

#[test]
fn a_loop_killed_with_its_server_takes_up_where_its_journal_ends() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen: Seen = Default::default();
    let api = model::serve(&rt, seen.clone(), tidy_script);
    let p = Plexus::new();
    let grpc = free_addr();
    let (mut server, addr, mut agent) = server_with_ops(&p, &grpc);
    model::add_provider(&p, &addr, "standin", &api);
    let mut runner = spawn_run(&p, &addr, "tidy", &tidy());
    // The note is written (approved), then the server dies while the second write waits.
    approve_when_asked(&p, &addr, Some("agent"), Some("tool_call"));
    let note = p.dir.path().join("root/note.txt");
    wait_for("the note", || note.exists());
    let mut run_id = String::new();
    wait_for("the second approval", || {
        let list = cli_json(&p, &addr, &["approval", "list"]);
        match list["approvals"].as_array().unwrap().first() {
            Some(a) => {
                run_id = a["run_id"].as_str().unwrap().to_owned();
                true
            }
            None => false,
        }
    });
    std::fs::write(&note, "changed by hand").unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    let _ = runner.kill();
    let _ = runner.wait();
    let asked_before = seen.lock().unwrap().len();
    assert_eq!(asked_before, 3);

    let (mut server, addr2) = start_server_on(&p, &grpc);
    wait_for("the agent to register again", || {
        agent_health(&p, &addr2, "ops").as_deref() == Some("healthy")
    });
    decide_when_asked(&p, &addr2, Some("agent"), Some("tool_call"), "reject", None);
    wait_for("the run to end", || {
        cli_json(&p, &addr2, &["runs", "show", &run_id])["state"] == "succeeded"
    });
    let run = cli_json(&p, &addr2, &["runs", "show", &run_id]);
    let out = &step(&run, "agent")["output"];
    let statuses: Vec<&str> = out["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["ok", "invalid", "ok", "rejected"], "{out}");
    assert_eq!(
        std::fs::read_to_string(&note).unwrap(),
        "changed by hand",
        "the completed write was not made again"
    );
    // Model calls: three before the crash, one after; none repeated.
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 4, "completed model calls are not repeated");
    assert_eq!(model::tool_results(&seen[3]).len(), 4);
    let _ = agent.kill();
    stop(&mut server);
}

#[test]
fn agents_contribute_intents_and_prompt_templates() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen: Seen = Default::default();
    let api = model::serve(&rt, seen.clone(), |body, _| {
        let last = body["messages"].as_array().unwrap().last().unwrap();
        model::text(&format!("echo: {}", last["content"].as_str().unwrap_or("")))
    });
    let p = Plexus::new();
    let (mut server, addr, mut agent) = server_with_ops(&p, &free_addr());
    model::add_provider(&p, &addr, "standin", &api);

    // The action's own phrase: `plexus ask` runs it with the placeholder as a parameter.
    let out = cli(&p, &addr)
        .args(["ask", "count the files in reports", "-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["chosen"]["kind"], "action", "{v}");
    assert_eq!(v["chosen"]["name"], "ops/inspect");
    assert_eq!(v["chosen"]["lane"], "pattern");
    assert_eq!(step(&v["run"], "invoke")["output"]["bytes"], 5, "{v}");

    // The agent's prompt template, rendered with the step's vars.
    let runner = spawn_run(
        &p,
        &addr,
        "summary",
        "version: plexus/v1\nname: summary\nsteps:\n  - id: say\n    llm: {template: ops/summarize, vars: {path: reports, files: 1}}\n",
    );
    let run = finish_run(runner, 0);
    assert_eq!(
        step(&run, "say")["output"]["text"],
        "echo: In one line: the directory reports holds 1 files."
    );
    let runner = spawn_run(
        &p,
        &addr,
        "nosuch",
        "version: plexus/v1\nname: nosuch\nsteps:\n  - {id: say, llm: {template: ops/nope}}\n",
    );
    let run = finish_run(runner, 1);
    assert_eq!(
        step(&run, "say")["error"],
        "no registered agent offers the prompt template `ops/nope`"
    );

    // Tools are checked against the server's agents before a run.
    let file = p.dir.path().join("tools.yaml");
    std::fs::write(
        &file,
        "version: plexus/v1\nname: tools\nsteps:\n  - id: a\n    llm: {prompt: hi, tools: [opz, ops.nope, ops.inspect]}\n",
    )
    .unwrap();
    let out = cli(&p, &addr)
        .args(["validate", file.to_str().unwrap(), "--server"])
        .arg(format!("http://{addr}"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error[unknown-agent]") && err.contains("did you mean `ops`?"),
        "{err}"
    );
    assert!(
        err.contains("error[unknown-action]") && err.contains("`ops.nope`"),
        "{err}"
    );
    let _ = agent.kill();
    stop(&mut server);
}

#[test]
fn in_manual_mode_every_tool_call_waits_for_approval() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen: Seen = Default::default();
    let api = model::serve(&rt, seen.clone(), |body, _| {
        if model::tool_results(body).is_empty() {
            model::tool_calls(&[("r1", "ops__inspect", r#"{"path": "reports"}"#)])
        } else {
            model::text("5 bytes.")
        }
    });
    let p = Plexus::new();
    let (mut server, addr, mut agent) = server_with_ops(&p, &free_addr());
    model::add_provider(&p, &addr, "standin", &api);
    let runner = spawn_run(
        &p,
        &addr,
        "careful",
        "version: plexus/v1\nname: careful\nmode: manual\nsteps:\n  - id: look\n    llm: {prompt: how big are the reports?, tools: [ops.inspect]}\n",
    );
    // Manual mode gates the step itself, then every call it makes: a READ action too.
    approve_when_asked(&p, &addr, Some("look"), None);
    decide_when_asked(&p, &addr, Some("look"), Some("tool_call"), "approve", None);
    let run = finish_run(runner, 0);
    let out = &step(&run, "look")["output"];
    assert_eq!(out["text"], "5 bytes.");
    assert_eq!(out["tool_calls"][0]["status"], "ok", "{out}");
    assert_eq!(out["tool_calls"][0]["approved_by"], "user:admin", "{out}");
    let _ = agent.kill();
    stop(&mut server);
}
