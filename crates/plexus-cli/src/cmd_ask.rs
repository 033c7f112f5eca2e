//! `plexus ask "QUESTION"`: the server matches the question to a workflow or an agent's
//! action and runs it with the inputs the question names (asking on a terminal for the
//! ones it lacks), or starts an agentic loop when nothing matches well enough.

use crate::http_client::Client;
use crate::output::{self, Format};
use anyhow::{Result, bail};
use serde_json::{Map, Value as Json, json};
use std::io::IsTerminal;

pub struct AskArgs {
    pub question: String,
    pub inputs: Map<String, Json>,
    /// Only show what would run.
    pub dry_run: bool,
    /// Never start an agentic loop.
    pub no_loop: bool,
    pub limit: usize,
}

fn candidates_table(answer: &Json) {
    let rows: Vec<Vec<String>> = answer["candidates"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let inputs: Vec<String> = c["inputs"]
                        .as_object()
                        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", plain(v))).collect())
                        .unwrap_or_default();
                    vec![
                        c["kind"].as_str().unwrap_or("").to_owned(),
                        c["name"].as_str().unwrap_or("").to_owned(),
                        format!("{:.2}", c["score"].as_f64().unwrap_or(0.0)),
                        c["lane"].as_str().unwrap_or("").to_owned(),
                        inputs.join(" "),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        output::remark("no workflow or action in the catalogue resembles the question");
    } else {
        output::table(&["KIND", "NAME", "SCORE", "LANE", "INPUTS"], &rows);
    }
}

fn plain(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Reads a value for each missing input from the terminal.
fn prompt_for(missing: &[String], chosen: &str) -> Result<Map<String, Json>> {
    eprintln!("`{chosen}` needs more than the question says:");
    let mut out = Map::new();
    for name in missing {
        eprint!("  {name}: ");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let value = line.trim();
        if value.is_empty() {
            bail!("no value for `{name}`: nothing was run");
        }
        out.insert(name.clone(), Json::String(value.to_owned()));
    }
    Ok(out)
}

pub async fn ask(c: &Client, mut args: AskArgs, format: Format) -> Result<i32> {
    let answer = loop {
        let body = json!({
            "question": args.question,
            "inputs": args.inputs,
            "run": !args.dry_run,
            "loop": !args.no_loop,
            "limit": args.limit,
        });
        let (status, answer) = c
            .request("POST", "/api/v1/ask", Some(&body.to_string()))
            .await?;
        if status == 422 && answer["code"] == "missing_inputs" {
            let missing: Vec<String> = answer["details"]["missing"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let chosen = answer["details"]["chosen"]["name"]
                .as_str()
                .unwrap_or("?")
                .to_owned();
            if format.is_data() || !std::io::stdin().is_terminal() {
                if format.is_data() {
                    output::data(format, &answer);
                }
                eprintln!(
                    "error: `{chosen}` needs {}: give {} with --input NAME=VALUE",
                    missing.join(", "),
                    if missing.len() == 1 { "it" } else { "them" }
                );
                return Ok(2);
            }
            args.inputs.extend(prompt_for(&missing, &chosen)?);
            continue;
        }
        if !(200..300).contains(&status) {
            bail!(
                "the server answered {status}: {}",
                answer["message"].as_str().unwrap_or("")
            );
        }
        break answer;
    };
    let action = answer["action"].as_str().unwrap_or("none").to_owned();
    let action = action.as_str();
    let run_id = answer["run"]["id"].as_str().map(str::to_owned);
    if format.is_data() {
        let mut answer = answer;
        if let Some(id) = &run_id {
            answer["run"] = crate::remote::wait_for_end(c, id).await?;
        }
        output::data(format, &answer);
        return Ok(match (&run_id, action) {
            (Some(_), _) => crate::remote::exit_code(&answer["run"]),
            (None, "suggest") => 0,
            _ => 1,
        });
    }
    candidates_table(&answer);
    match (action, run_id) {
        ("run", Some(id)) => {
            let chosen = &answer["chosen"];
            output::remark(&format!(
                "\n-> {} {} ({} lane, score {:.2}): run {id}",
                chosen["kind"].as_str().unwrap_or(""),
                chosen["name"].as_str().unwrap_or(""),
                chosen["lane"].as_str().unwrap_or(""),
                chosen["score"].as_f64().unwrap_or(0.0),
            ));
            crate::remote::watch(c, &id, format).await
        }
        ("agentic", Some(id)) => {
            output::remark(&format!(
                "\n-> nothing matches well enough: an agentic loop answers (run {id}); its tool calls that change things wait for `plexus approve`"
            ));
            let code = crate::remote::watch(c, &id, format).await?;
            let run = c.call("GET", &format!("/api/v1/runs/{id}"), None).await?;
            if let Some(text) = run["outputs"]["answer"].as_str() {
                println!("\n{text}");
            }
            Ok(code)
        }
        ("suggest", _) => {
            let chosen = &answer["chosen"];
            println!(
                "\nwould run {} {} with {}",
                chosen["kind"].as_str().unwrap_or(""),
                chosen["name"].as_str().unwrap_or(""),
                chosen["inputs"]
            );
            Ok(0)
        }
        _ => {
            eprintln!(
                "\n{}",
                answer["message"].as_str().unwrap_or("nothing was run")
            );
            Ok(1)
        }
    }
}
