//! MCP servers as agents against a real `plexus serve`: a small server built in the
//! workspace (`examples/mcp/notes_server.rs`) and the real `mcp-server-time` from PyPI,
//! started over stdio, their tools called from workflows with the permission their
//! annotations (or the configuration) give, restarted when they die, stopped on removal.

mod common;
use common::agents::*;
use common::server::*;
use common::*;
use serde_json::{Value, json};

use std::process::{Command, Stdio};

fn permissions(a: &Value) -> Vec<(String, String)> {
    a["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["id"].as_str().unwrap().to_owned(),
                x["permission"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The workspace's MCP server: tools as actions (READ by its read-only annotation,
/// MODIFY otherwise, waiting for approval), a tool's error as the step's, restarted
/// after kill -9, back after a server restart, gone after `plexus agent remove`.
#[test]
fn an_mcp_server_runs_as_an_agent() {
    let p = Plexus::new();
    let (mut server, addr) = start_server(&p);
    let notes = p.dir.path().join("notes.txt");
    let marker = format!("NOTES_FILE={}", notes.display());
    let out = cli(&p, &addr)
        .args(["agent", "add-mcp", "notes", "--env", &marker, "--"])
        .arg(example("notes_server"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("list_notes"),
        "add-mcp shows the tools: {shown}"
    );
    let a = agent(&p, &addr, "notes").expect("registered");
    assert_eq!(a["health"], "healthy");
    assert_eq!(
        permissions(&a),
        [
            ("add_note".to_owned(), "modify".to_owned()),
            ("list_notes".to_owned(), "read".to_owned())
        ]
    );

    let runner = spawn_run(
        &p,
        &addr,
        "notes",
        "version: plexus/v1\nname: notes\nsteps:\n- id: add\n  agent: notes\n  action: add_note\n  with: {text: deploy at noon}\n- id: list\n  needs: [add]\n  agent: notes\n  action: list_notes\n",
    );
    approve_when_asked(&p, &addr, Some("add"), None);
    let run = finish_run(runner, 0);
    assert_eq!(
        step(&run, "add")["output"],
        json!({"added": "deploy at noon"})
    );
    assert_eq!(
        step(&run, "list")["output"],
        json!({"notes": ["deploy at noon"], "count": 1})
    );

    // Parameters are checked against the tool's schema before the call.
    let out = cli(&p, &addr)
        .args(["action", "invoke", "notes", "add_note", "-p", "txt=x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"text\" is a required property"));

    // kill -9: started again, and back to work.
    let server_pids = children_running(server.id(), "examples/notes_server");
    assert_eq!(
        server_pids.len(),
        1,
        "one MCP server process: {server_pids:?}"
    );
    // SAFETY: signalling the MCP server process the engine started for this test.
    unsafe { libc::kill(server_pids[0], libc::SIGKILL) };
    wait_for("a new MCP server process", || {
        let now = children_running(server.id(), "examples/notes_server");
        now.len() == 1 && now != server_pids
    });
    wait_for("the agent again", || {
        agent(&p, &addr, "notes").is_some_and(|a| a["health"] == "healthy")
    });
    let run = cli_json(&p, &addr, &["action", "invoke", "notes", "list_notes"]);
    assert_eq!(step(&run, "invoke")["output"]["count"], 1);

    // A server restart starts it again from its setting.
    let last = children_running(server.id(), "examples/notes_server");
    stop(&mut server);
    wait_for("the MCP server to stop with the server", || {
        last.iter().all(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |s| s.contains(") Z "))
        })
    });
    let (mut server, addr) = start_server(&p);
    wait_for("the agent after a restart", || {
        agent(&p, &addr, "notes").is_some()
    });

    // Removal stops it and forgets it.
    let out = cli(&p, &addr)
        .args(["agent", "remove", "notes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(agent(&p, &addr, "notes").is_none());
    wait_for("the MCP server process to end", || {
        children_running(server.id(), "examples/notes_server").is_empty()
    });
    let (status, _) = http(&addr, "GET", "/api/v1/settings/mcp.notes", None);
    assert_eq!(status, 404, "its configuration is gone");
    stop(&mut server);
}

/// The real `mcp-server-time` from PyPI: its read-only tools are READ; one made MODIFY
/// by the configuration waits for approval; both feed a workflow.
#[test]
fn the_mcp_server_time_package_runs_in_a_workflow() {
    let python = venv_python("mcp_server_time", "mcp-server-time==2026.10.19");
    let p = Plexus::new();
    let (mut server, addr) = start_server(&p);
    let out = cli(&p, &addr)
        .args([
            "agent",
            "add-mcp",
            "time",
            "--permission",
            "convert_time=modify",
            "--",
        ])
        .arg(&python)
        .args(["-m", "mcp_server_time"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = agent(&p, &addr, "time").expect("registered");
    assert_eq!(
        permissions(&a),
        [
            ("convert_time".to_owned(), "modify".to_owned()),
            ("get_current_time".to_owned(), "read".to_owned())
        ]
    );
    let runner = spawn_run(
        &p,
        &addr,
        "time",
        r#"version: plexus/v1
name: time
steps:
  - id: now
    agent: time
    action: get_current_time
    with: {timezone: UTC}
  - id: tokyo
    needs: [now]
    agent: time
    action: convert_time
    with: {source_timezone: UTC, time: "12:00", target_timezone: Asia/Tokyo}
"#,
    );
    approve_when_asked(&p, &addr, Some("tokyo"), None);
    let run = finish_run(runner, 0);
    let now = &step(&run, "now")["output"];
    assert_eq!(now["timezone"], "UTC", "{now}");
    assert!(
        now["datetime"].as_str().unwrap().ends_with("+00:00"),
        "{now}"
    );
    let tokyo = &step(&run, "tokyo")["output"];
    assert_eq!(tokyo["target"]["timezone"], "Asia/Tokyo", "{tokyo}");
    assert!(
        tokyo["target"]["datetime"]
            .as_str()
            .unwrap()
            .contains("T21:00:00+09:00"),
        "{tokyo}"
    );
    stop(&mut server);
}

/// An MCP server reached over streamable HTTP (`--url`): the same tools, the same path.
#[test]
fn an_mcp_server_over_streamable_http_runs_as_an_agent() {
    use std::io::{BufRead, BufReader};
    let p = Plexus::new();
    let notes = p.dir.path().join("notes.txt");
    std::fs::write(&notes, "first\n").unwrap();
    let mut mcp = Command::new(example("notes_server"))
        .args(["--http", "127.0.0.1:0"])
        .env("NOTES_FILE", &notes)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(mcp.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mcp_addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    let (mut server, addr) = start_server(&p);
    let out = cli(&p, &addr)
        .args(["agent", "add-mcp", "remote-notes", "--url"])
        .arg(format!("http://{mcp_addr}/mcp"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = agent(&p, &addr, "remote-notes").expect("registered");
    assert_eq!(a["instances"][0]["addr"], format!("http://{mcp_addr}/mcp"));
    assert_eq!(
        permissions(&a),
        [
            ("add_note".to_owned(), "modify".to_owned()),
            ("list_notes".to_owned(), "read".to_owned())
        ]
    );
    let run = cli_json(
        &p,
        &addr,
        &["action", "invoke", "remote-notes", "list_notes"],
    );
    assert_eq!(
        step(&run, "invoke")["output"],
        json!({"notes": ["first"], "count": 1})
    );
    let out = cli(&p, &addr)
        .args(["agent", "remove", "remote-notes"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(agent(&p, &addr, "remote-notes").is_none());
    stop(&mut server);
    let _ = mcp.kill();
    let _ = mcp.wait();
}
