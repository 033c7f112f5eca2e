//! Control from other processes (stored commands) and the leases of the runs this
//! engine drives.

use super::*;

impl Loop {
    /// Applies control commands other processes stored for runs this engine drives, each
    /// once; the command is marked consumed in the commit that holds its events.
    pub(super) fn apply_commands(&mut self, commands: Vec<plexus_store::Command>) {
        self.polling = false;
        for c in commands {
            if !self.seen_commands.insert(c.id) {
                continue;
            }
            let comment = c
                .data
                .get("comment")
                .and_then(Json::as_str)
                .map(str::to_owned);
            let step = c.step_id.clone().unwrap_or_default();
            let input = match c.kind {
                plexus_store::CommandKind::Signal => Input::Signal {
                    step_id: step,
                    data: c.data.get("data").cloned().unwrap_or(Json::Null),
                },
                plexus_store::CommandKind::Approve => Input::Approve {
                    step_id: step,
                    by: c.actor.clone(),
                    comment,
                },
                plexus_store::CommandKind::Reject => Input::Reject {
                    step_id: step,
                    by: c.actor.clone(),
                    comment,
                },
                plexus_store::CommandKind::Cancel => Input::Cancel {
                    reason: format!("cancelled by {}", c.actor),
                },
                plexus_store::CommandKind::Pause => Input::Pause {
                    by: c.actor.clone(),
                },
                plexus_store::CommandKind::Resume => Input::Resume {
                    by: c.actor.clone(),
                },
            };
            let result = match self.apply(&RunId::from(c.run_id.as_str()), input) {
                Some(Ok(())) => None,
                Some(Err(r)) => Some(r.to_string()),
                None => Some("the run is not active".to_owned()),
            };
            self.batch.consumed.push((c.id, result));
        }
    }

    pub(super) fn poll_commands(&mut self) {
        if self.polling || self.runs.is_empty() {
            return;
        }
        self.polling = true;
        let engine = self.engine.clone();
        tokio::spawn(async move {
            let commands = engine
                .store
                .pending_commands(&engine.config.owner)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "reading control commands failed");
                    Vec::new()
                });
            let _ = engine.tx.send(Msg::Commands(commands)).await;
        });
    }

    pub(super) fn renew_leases(&self) {
        if self.runs.is_empty() {
            return;
        }
        let engine = self.engine.clone();
        tokio::spawn(async move {
            let until = now_ms() + engine.config.lease.as_millis() as u64;
            let outcome = engine.store.renew_leases(&engine.config.owner, until).await;
            if let Err(e) = &outcome {
                tracing::warn!(error = %e, "renewing run leases failed");
            }
            engine.liveness.renewed(outcome.map_err(|e| e.to_string()));
        });
    }
}
