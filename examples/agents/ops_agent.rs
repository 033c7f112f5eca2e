//! An agent written with the Plexus Rust SDK (`plexus-agent`): three actions on files
//! under a directory it is configured with, one of which changes things.
//!
//! Run it beside `plexus serve` (it registers itself on the engine's gRPC address):
//!
//! ```sh
//! cargo build --release -p plexus-cli --example ops_agent
//! MIRASTACK_ENGINE_ADDR=127.0.0.1:9090 target/release/examples/ops_agent
//! plexus agent config-set ops root /srv/reports
//! ```
//!
//! - `inspect` (READ): how many files and bytes a directory under the root holds;
//! - `write_note` (MODIFY: the engine asks a person first): writes a file under the root;
//! - `remember` (READ): keeps a value in the engine's cache and reads it back;
//! - `wait` (READ): takes a while (a slow backend, for trying timeouts and crashes).

use plexus_agent::{Action, ActionError, Agent, ConfigKey, Permission, Request, Stage};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};

#[derive(Deserialize, JsonSchema)]
struct Inspect {
    /// A directory, relative to the configured root.
    path: String,
}

#[derive(Serialize, JsonSchema)]
struct Usage {
    files: u64,
    bytes: u64,
}

#[derive(Deserialize, JsonSchema)]
struct Note {
    /// A file name, relative to the configured root.
    path: String,
    text: String,
}

#[derive(Serialize, JsonSchema)]
struct Written {
    path: String,
    bytes: usize,
}

#[derive(Deserialize, JsonSchema)]
struct Wait {
    /// How long to take, in seconds
    seconds: u64,
}

#[derive(Deserialize, JsonSchema)]
struct Remember {
    key: String,
    value: String,
}

/// The configured root (`plexus agent config-set ops root DIR`).
async fn root(req: &Request) -> Result<PathBuf, ActionError> {
    let engine = req
        .engine
        .as_ref()
        .ok_or_else(|| ActionError("not connected to an engine".into()))?;
    let config = engine.config().await?;
    let root = config
        .get("root")
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            ActionError("`root` is not configured: plexus agent config-set ops root DIR".into())
        })?;
    Ok(PathBuf::from(root))
}

/// `rel` under `root`, refusing anything that would leave it.
fn under(root: &Path, rel: &str) -> Result<PathBuf, ActionError> {
    let rel = Path::new(rel);
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(ActionError(format!(
            "`{}` is not a path under the root",
            rel.display()
        )));
    }
    Ok(root.join(rel))
}

fn usage(dir: &Path) -> std::io::Result<Usage> {
    let mut out = Usage { files: 0, bytes: 0 };
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                out.files += 1;
                out.bytes += meta.len();
            }
        }
    }
    Ok(out)
}

#[tokio::main]
async fn main() {
    let agent = Agent::new(
        "ops",
        "0.1.0",
        "Inspects and writes files under a configured root",
    )
    .stage(Stage::Operate)
    .config_key(ConfigKey {
        key: "root".into(),
        description: "The directory the agent works in".into(),
        required: true,
        secret: false,
        default: String::new(),
    })
    .action(
        Action::new(
            "inspect",
            "Counts the files and bytes of a directory",
            Permission::Read,
            |req: Request, p: Inspect| async move {
                let dir = under(&root(&req).await?, &p.path)?;
                Ok(usage(&dir)?)
            },
        )
        .intent("count the files in {path}"),
    )
    .prompt_template(
        "summarize",
        "Asks for a one-line summary of a directory's size",
        "In one line: the directory {{ path }} holds {{ files }} files.",
    )
    .action(Action::new(
        "write_note",
        "Writes a text file",
        Permission::Modify,
        |req: Request, p: Note| async move {
            let file = under(&root(&req).await?, &p.path)?;
            std::fs::write(&file, &p.text)?;
            Ok(Written {
                path: p.path,
                bytes: p.text.len(),
            })
        },
    ))
    .action(Action::new(
        "remember",
        "Keeps a value in the engine's cache for a minute and reads it back",
        Permission::Read,
        |req: Request, p: Remember| async move {
            let engine = req.engine.ok_or_else(|| ActionError("no engine".into()))?;
            engine
                .cache_set(
                    &p.key,
                    p.value.as_bytes(),
                    Some(std::time::Duration::from_secs(60)),
                )
                .await?;
            let back = engine.cache_get(&p.key).await?.unwrap_or_default();
            Ok(serde_json::json!({"key": p.key, "value": String::from_utf8_lossy(&back)}))
        },
    ));
    let agent = agent.action(Action::new(
        "wait",
        "Answers after the given number of seconds",
        Permission::Read,
        |_req: Request, p: Wait| async move {
            tokio::time::sleep(std::time::Duration::from_secs(p.seconds)).await;
            Ok(serde_json::json!({ "waited": p.seconds }))
        },
    ));
    if let Err(e) = plexus_agent::serve(agent).await {
        eprintln!("ops agent: {e}");
        std::process::exit(1);
    }
}
