//! Where a command acts: the local store in `--data-dir`, or a `plexus serve`. The
//! commands that exist in both places are one method each here, so `main` dispatches
//! every command through one table and each method says what happens on either side.

use crate::config::Settings;
use crate::http_client::Client;
use crate::output::Format;
use crate::{cmd_admin, cmd_run, cmd_runs, remote};
use anyhow::{Result, bail};
use plexus_store::{CommandKind, RunFilter, Store};
use serde_json::{Value as Json, json};
use std::sync::Arc;

pub enum Target<'a> {
    Local(&'a Settings),
    Remote(&'a Client),
}

/// An input a person sends to a run.
pub enum Control {
    Cancel,
    Signal {
        step: String,
        data: Json,
    },
    Approve {
        step: String,
        comment: Option<String>,
    },
    Reject {
        step: String,
        comment: Option<String>,
    },
}

/// What `runs list` filters by.
pub struct RunsQuery {
    pub status: Option<String>,
    pub workflow: Option<String>,
    pub interrupted: bool,
    pub limit: usize,
}

impl Target<'_> {
    /// The server, for commands that only exist on one.
    pub fn server(&self, what: &str) -> Result<&Client> {
        match self {
            Target::Remote(c) => Ok(c),
            Target::Local(_) => bail!(
                "`plexus {what}` talks to a server: pass --server URL, set PLEXUS_SERVER, or run `plexus init --server URL`"
            ),
        }
    }

    /// The server, for the commands that manage its users and settings.
    pub fn admin_server(&self, what: &str) -> Result<&Client> {
        match self {
            Target::Remote(c) => Ok(c),
            Target::Local(_) => Err(cmd_admin::needs_server(what)),
        }
    }

    pub async fn run(&self, args: cmd_run::RunArgs) -> Result<i32> {
        match self {
            Target::Local(settings) => cmd_run::run(settings, args).await,
            Target::Remote(c) => {
                let given = cmd_run::given_inputs(&args.inputs, args.inputs_file.as_deref())?;
                remote::run(c, &args.file, given, args.format).await
            }
        }
    }

    pub async fn resume(&self, run: &str, follow_logs: bool, format: Format) -> Result<i32> {
        match self {
            Target::Local(settings) => cmd_run::resume(settings, run, follow_logs, format).await,
            Target::Remote(_) => bail!(
                "a server resumes its interrupted runs itself when it starts; `plexus resume` continues a run of the local store (add --server local)"
            ),
        }
    }

    pub async fn runs_list(&self, q: RunsQuery, format: Format) -> Result<i32> {
        match self {
            Target::Local(settings) => {
                let store = settings.open_store().await?;
                let filter = RunFilter {
                    status: q.status,
                    workflow: q.workflow,
                    active: q.interrupted,
                    limit: q.limit,
                    ..Default::default()
                };
                cmd_runs::list(&*store, filter, q.interrupted, format).await
            }
            Target::Remote(c) => {
                if q.interrupted {
                    bail!(
                        "--interrupted lists runs of the local store that no process drives; a server drives all of its runs (add --server local)"
                    );
                }
                let (workflow, status) = (q.workflow.as_deref(), q.status.as_deref());
                remote::runs_list(c, workflow, status, q.limit, format).await
            }
        }
    }

    pub async fn runs_show(&self, run: &str, format: Format) -> Result<i32> {
        match self {
            Target::Local(settings) => {
                let store = settings.open_store().await?;
                cmd_runs::show_run(&*store, run, format).await.map(|_| 0)
            }
            Target::Remote(c) => remote::runs_show(c, run, format).await,
        }
    }

    pub async fn runs_events(&self, run: &str, after: u64, format: Format) -> Result<i32> {
        match self {
            Target::Local(settings) => {
                let store = settings.open_store().await?;
                cmd_runs::events(&*store, run, after, format).await
            }
            Target::Remote(c) => remote::runs_events(c, run, after, format).await,
        }
    }

    pub async fn runs_watch(&self, run: &str, format: Format) -> Result<i32> {
        match self {
            Target::Local(settings) => {
                let store: Arc<dyn Store> = settings.open_store().await?;
                cmd_runs::watch(store.as_ref(), run, format).await
            }
            Target::Remote(c) => remote::watch(c, run, format).await,
        }
    }

    /// Cancels a run, or signals, approves or rejects one of its steps.
    pub async fn control(&self, run: &str, control: Control, format: Format) -> Result<i32> {
        match self {
            Target::Local(settings) => {
                let (kind, step, data) = match control {
                    Control::Cancel => (CommandKind::Cancel, None, Json::Null),
                    Control::Signal { step, data } => {
                        (CommandKind::Signal, Some(step), json!({ "data": data }))
                    }
                    Control::Approve { step, comment } => (
                        CommandKind::Approve,
                        Some(step),
                        json!({ "comment": comment }),
                    ),
                    Control::Reject { step, comment } => (
                        CommandKind::Reject,
                        Some(step),
                        json!({ "comment": comment }),
                    ),
                };
                let store: Arc<dyn Store> = settings.open_store().await?;
                let actor = cmd_run::local_user();
                let step = step.as_deref();
                cmd_runs::control(store, run, kind, step, data, &actor, settings, format).await
            }
            Target::Remote(c) => {
                let (tail, body) = match control {
                    Control::Cancel => ("cancel".to_owned(), json!({})),
                    Control::Signal { step, data } => {
                        (format!("steps/{step}/signal"), json!({ "data": data }))
                    }
                    Control::Approve { step, comment } => (
                        format!("steps/{step}/approve"),
                        json!({ "comment": comment }),
                    ),
                    Control::Reject { step, comment } => (
                        format!("steps/{step}/reject"),
                        json!({ "comment": comment }),
                    ),
                };
                remote::control(c, run, &tail, body, format).await
            }
        }
    }

    pub async fn approvals_list(&self, format: Format) -> Result<i32> {
        match self {
            Target::Local(settings) => {
                let store = settings.open_store().await?;
                cmd_admin::approvals_local(&*store, format).await
            }
            Target::Remote(c) => cmd_admin::approvals_remote(c, format).await,
        }
    }

    pub async fn audit(&self, cmd: &cmd_admin::AuditCommand, format: Format) -> Result<i32> {
        match self {
            Target::Local(settings) => {
                let store = settings.open_store().await?;
                cmd_admin::audit_local(&*store, cmd, format).await
            }
            Target::Remote(c) => cmd_admin::audit_remote(c, cmd, format).await,
        }
    }
}
