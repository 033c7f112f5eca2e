//! `plexus replica list`: the `plexus serve` replicas sharing a store, their heartbeats
//! and how many runs each drives — from the store, or from a server.

use crate::output::Format;
use crate::target::Target;
use anyhow::Result;
use clap::Subcommand;
use serde_json::{Value as Json, json};

#[derive(Subcommand)]
pub enum ReplicaCommand {
    /// The replicas, their last heartbeat, whether they are alive, the runs each drives
    ///
    /// A replica is alive while its last heartbeat is younger than a lease (15 s by
    /// default): one silent longer has died or lost the database, and the runs it drove
    /// are taken over by the others.
    List,
}

pub async fn run(cmd: ReplicaCommand, target: &Target<'_>, format: Format) -> Result<i32> {
    match cmd {
        ReplicaCommand::List => list(target, format).await,
    }
}

async fn list(target: &Target<'_>, format: Format) -> Result<i32> {
    let listed = match target {
        Target::Local(settings) => {
            let store = settings.open_store().await?;
            let now = plexus_engine::now_ms();
            let replicas: Vec<Json> = store
                .replicas()
                .await?
                .iter()
                .map(|r| {
                    let mut v = serde_json::to_value(r).unwrap_or_default();
                    v["alive"] = json!(plexus_server::replicas::alive(r, settings.lease, now));
                    v
                })
                .collect();
            json!({
                "lease_ms": settings.lease.as_millis() as u64,
                "renew_every_ms": settings.renew_every.as_millis() as u64,
                "replicas": replicas,
            })
        }
        Target::Remote(c) => c.call("GET", "/api/v1/replicas", None).await?,
    };
    if format.is_data() {
        crate::output::data(format, &listed);
        return Ok(0);
    }
    let me = listed["self"].as_str().unwrap_or_default();
    let rows: Vec<Vec<String>> = listed["replicas"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let id = r["id"].as_str().unwrap_or_default();
            let text = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            let time = |k: &str| crate::output::ago(r[k].as_u64().unwrap_or(0));
            let state = if r["alive"] == true {
                "alive"
            } else {
                "silent"
            };
            vec![
                if id == me {
                    format!("{id} (this one)")
                } else {
                    id.to_owned()
                },
                text("host"),
                text("address"),
                text("version"),
                time("started_at"),
                time("heartbeat_at"),
                r["runs"].as_u64().unwrap_or(0).to_string(),
                state.to_owned(),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no replicas: no `plexus serve` has used this store");
        return Ok(0);
    }
    crate::output::table(
        &[
            "REPLICA",
            "HOST",
            "ADDRESS",
            "VERSION",
            "STARTED",
            "HEARTBEAT",
            "RUNS",
            "STATE",
        ],
        &rows,
    );
    Ok(0)
}
