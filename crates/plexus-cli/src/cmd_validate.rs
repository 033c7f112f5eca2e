//! `plexus validate` and `plexus plan`.

use crate::http_client::Client;
use crate::output::{self, Format};
use anyhow::{Context, Result};
use plexus_core::manifest::StepKind;
use plexus_core::{CompileOptions, Diagnostic, Plan};
use serde_json::{Value as Json, json};
use std::path::Path;

/// Reads and compiles a manifest file: `Ok(Err(diagnostics))` when it is invalid.
pub fn load_file(
    path: &Path,
    opts: &CompileOptions,
) -> Result<(std::result::Result<Plan, Vec<Diagnostic>>, String)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok((
        plexus_core::load(&text, &path.to_string_lossy(), opts),
        text,
    ))
}

pub fn print_diagnostics(diags: &[Diagnostic]) {
    for d in diags {
        eprintln!("{d}");
    }
    eprintln!(
        "{} problem{} found",
        diags.len(),
        if diags.len() == 1 { "" } else { "s" }
    );
}

/// Problems and warnings the server finds in a manifest, as if found in `file`.
async fn server_check(
    c: &Client,
    file: &Path,
    text: &str,
) -> Result<(Vec<Diagnostic>, Vec<Diagnostic>)> {
    let answer = c.call("POST", "/api/v1/validate", Some(text)).await?;
    let read = |key: &str| -> Vec<Diagnostic> {
        answer[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| diagnostic_from(d, file))
            .collect()
    };
    Ok((read("problems"), read("warnings")))
}

/// A diagnostic as the server sent it, placed in `file`.
fn diagnostic_from(d: &Json, file: &Path) -> Option<Diagnostic> {
    let code: &'static str = match d["code"].as_str()? {
        "unknown-agent" => "unknown-agent",
        "unknown-action" => "unknown-action",
        "bad-params" => "bad-params",
        "not-executed" => "not-executed",
        "unquoted-input" => "unquoted-input",
        _ => "server",
    };
    let loc = plexus_core::Loc {
        line: d["line"].as_u64().unwrap_or(0) as u32,
        column: d["column"].as_u64().unwrap_or(0) as u32,
    };
    let mut out = Diagnostic::new(code, loc, d["message"].as_str().unwrap_or(""))
        .with_step(d["step"].as_str());
    if let Some(h) = d["hint"].as_str() {
        out = out.with_hint(h);
    }
    if d["severity"] == "warning" {
        out = out.warning();
    }
    out.file = file.to_string_lossy().into_owned();
    Some(out)
}

/// Without a server, agent steps cannot be checked: say so.
fn agents_unchecked(plan: &Plan, file: &Path) -> Vec<Diagnostic> {
    plan.manifest
        .steps
        .iter()
        .filter_map(|s| match &s.kind {
            StepKind::Agent { agent, .. } => {
                let mut d = Diagnostic::new(
                    "agent-unchecked",
                    s.locs.field("agent"),
                    format!("agent `{agent}` is not checked: agents register with a server"),
                )
                .with_step(Some(&s.id))
                .with_hint("`plexus validate --server URL` checks agent steps against the agents registered there")
                .warning();
                d.file = file.to_string_lossy().into_owned();
                Some(d)
            }
            _ => None,
        })
        .collect()
}

/// Exit code 0 when every file is valid, 2 otherwise.
pub async fn validate(
    files: &[std::path::PathBuf],
    opts: &CompileOptions,
    format: Format,
    server: Option<&Client>,
) -> Result<i32> {
    let mut all = Vec::new();
    let mut warnings = Vec::new();
    let mut results = Vec::new();
    for file in files {
        let (result, text) = load_file(file, opts)?;
        match result {
            Ok(plan) => {
                let mut w = plexus_engine::exec::warnings(&plan, &file.to_string_lossy());
                let problems = match server {
                    Some(c) => {
                        let (problems, _) = server_check(c, file, &text).await?;
                        problems
                    }
                    None => {
                        w.extend(agents_unchecked(&plan, file));
                        Vec::new()
                    }
                };
                if !problems.is_empty() {
                    results.push(
                        json!({"file": file, "valid": false, "problems": problems, "warnings": w}),
                    );
                    warnings.extend(w);
                    all.extend(problems);
                    continue;
                }
                results.push(json!({"file": file, "valid": true, "workflow": plan.manifest.name, "steps": plan.len(), "warnings": w}));
                warnings.extend(w);
            }
            Err(d) => {
                results.push(json!({"file": file, "valid": false, "problems": d}));
                all.extend(d);
            }
        }
    }
    match format {
        Format::Json | Format::Yaml => output::data(
            format,
            &json!({"valid": all.is_empty(), "files": results, "problems": all, "warnings": warnings}),
        ),
        Format::Table => {
            for w in &warnings {
                eprintln!("{w}");
            }
            if all.is_empty() {
                for r in &results {
                    println!(
                        "{}: ok ({} steps)",
                        r["file"].as_str().unwrap_or(""),
                        r["steps"]
                    );
                }
            } else {
                print_diagnostics(&all);
            }
        }
    }
    Ok(if all.is_empty() { 0 } else { 2 })
}

pub async fn plan(
    file: &Path,
    opts: &CompileOptions,
    format: Format,
    server: Option<&Client>,
) -> Result<i32> {
    let (result, text) = load_file(file, opts)?;
    let mut plan = match result {
        Ok(p) => p,
        Err(d) => {
            print_diagnostics(&d);
            return Ok(2);
        }
    };
    if let Some(c) = server {
        let (problems, _) = server_check(c, file, &text).await?;
        if !problems.is_empty() {
            print_diagnostics(&problems);
            return Ok(2);
        }
        // Gated as the server will gate them: at least at their actions' permission.
        let agents = c.call("GET", "/api/v1/agents", None).await?;
        let mut floors = std::collections::BTreeMap::new();
        for (agent, action) in plan.agent_actions() {
            let permission = agents["agents"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["name"] == agent.as_str())
                .flat_map(|a| a["actions"].as_array().into_iter().flatten())
                .find(|x| x["id"] == action.as_str())
                .and_then(|x| serde_json::from_value(x["permission"].clone()).ok());
            if let Some(p) = permission {
                floors.insert(plexus_core::plan::action_key(&agent, &action), p);
            }
        }
        if !floors.is_empty() {
            let opts = CompileOptions {
                action_floors: floors,
                ..opts.clone()
            };
            plan = plexus_core::load(&text, &file.to_string_lossy(), &opts)
                .map_err(|_| anyhow::anyhow!("the manifest no longer compiles"))?;
        }
    }
    let step_json = |i: usize| {
        let s = plan.step(i);
        let n = &plan.nodes[i];
        let uses_pool = matches!(s.kind, StepKind::Run(_) | StepKind::Python(_));
        json!({
            "id": s.id,
            "kind": s.kind.name(),
            "needs": s.needs,
            "pool": uses_pool.then(|| n.pool.clone()),
            "pool_slots": uses_pool.then_some(s.pool_slots),
            "approval": n.gate.map(plexus_core::machine::permission_name).or(matches!(s.kind, StepKind::Approval(_)).then_some("explicit")),
            "foreach": s.foreach,
            "retry": n.retry.max_attempts,
        })
    };
    let layers: Vec<Vec<serde_json::Value>> = plan
        .layers
        .iter()
        .map(|l| l.iter().map(|&i| step_json(i)).collect())
        .collect();
    if format.is_data() {
        output::data(
            format,
            &json!({"workflow": plan.manifest.name, "mode": plan.mode, "layers": layers, "pools": opts.pools}),
        );
        return Ok(0);
    }
    println!(
        "workflow {} ({} steps, {} layers, mode {:?})",
        plan.manifest.name,
        plan.len(),
        plan.layers.len(),
        plan.mode
    );
    for (k, layer) in layers.iter().enumerate() {
        let parallel = if layer.len() > 1 {
            format!(" — {} in parallel", layer.len())
        } else {
            String::new()
        };
        println!("\nlayer {}{parallel}", k + 1);
        for s in layer {
            let mut notes = Vec::new();
            if let Some(p) = s["pool"].as_str() {
                notes.push(format!("pool {p}×{}", s["pool_slots"]));
            }
            if let Some(a) = s["approval"].as_str() {
                notes.push(format!("waits for approval ({a})"));
            }
            if let Some(f) = s["foreach"].as_str() {
                notes.push(format!("foreach {f}"));
            }
            if s["retry"].as_u64().unwrap_or(1) > 1 {
                notes.push(format!("up to {} attempts", s["retry"]));
            }
            let needs = s["needs"].as_array().filter(|n| !n.is_empty()).map(|n| {
                format!(
                    " ← {}",
                    n.iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            });
            println!(
                "  {:<24} {:<9}{}{}",
                s["id"].as_str().unwrap_or(""),
                s["kind"].as_str().unwrap_or(""),
                needs.unwrap_or_default(),
                if notes.is_empty() {
                    String::new()
                } else {
                    format!("  [{}]", notes.join("; "))
                }
            );
        }
    }
    println!(
        "\npools: {}",
        opts.pools
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(0)
}
