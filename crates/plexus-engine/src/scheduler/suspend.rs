//! Losing the store and getting it back. When a commit fails because the database
//! cannot be reached, nothing the engine holds beyond its last durable commit can be
//! trusted: it drops every run from memory, stops their attempts, answers waiting inputs
//! with the failure, and stops taking work (`/healthz` says `suspended`). A watcher
//! probes the store; once it answers, and every stopped attempt has reported, the engine
//! takes its own runs up again from their events — each with a new claim, so a run
//! another replica took over meanwhile stays with it.

use super::*;

/// How often the store is probed while it is away.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long stopped attempts may take to report before the engine goes on without them.
const ABANDON_WAIT: Duration = Duration::from_secs(30);

impl Loop {
    pub(super) fn suspend(&mut self, e: StoreError) {
        tracing::error!(
            error = %e,
            "the store cannot be reached: dropping what is not durable and waiting for it"
        );
        self.engine.liveness.set_suspended(Some(e.to_string()));
        let waiting = self.inflight.drain(..).flat_map(|f| f.replies);
        for r in waiting.chain(self.replies.drain(..)) {
            let _ = r.send(Err(crate::InputError::NotPersisted(e.to_string())));
        }
        for (key, kill) in self.running.drain() {
            let _ = kill.send(());
            self.abandoned.insert(key);
        }
        self.abandoned_since = Some(Instant::now());
        self.runs.clear();
        self.pools = Pools::new(&self.engine.config.pools);
        self.timers = Timers::default();
        self.batch = Batch::default();
        self.fenced.clear();
        self.actions.clear();
        self.notices.clear();
        self.chain = Default::default();
        self.seen_commands.clear();
        self.step_starts.clear();
        self.gates.clear();
        self.attempt_times.clear();
        self.lazy_since = None;
        self.engine.liveness.set_commit_since(None);
        let engine = self.engine.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                if engine.store.health().await.is_ok() {
                    let _ = engine.tx.send(Msg::StoreBack).await;
                    return;
                }
            }
        });
    }

    /// The store answers again: once the stopped attempts have reported (or after
    /// [`ABANDON_WAIT`]), this engine's runs are taken up again.
    pub(super) fn store_back(&mut self) {
        let waited_enough = self
            .abandoned_since
            .is_some_and(|since| since.elapsed() >= ABANDON_WAIT);
        if !self.abandoned.is_empty() && !waited_enough {
            let tx = self.engine.tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = tx.send(Msg::StoreBack).await;
            });
            return;
        }
        if !self.abandoned.is_empty() {
            tracing::warn!(
                attempts = self.abandoned.len(),
                "stopped attempts did not report; going on without them"
            );
            self.abandoned.clear();
        }
        self.abandoned_since = None;
        self.engine.liveness.set_suspended(None);
        tracing::info!("the store answers again; taking this engine's runs up again");
        let engine = self.engine.clone();
        tokio::spawn(async move { engine.resume_own_runs().await });
    }

    /// Whether an attempt's report belongs to one stopped when the store was lost (and
    /// so to nothing any more).
    pub(super) fn was_abandoned(&mut self, run: &RunId, unit: Unit) -> bool {
        self.abandoned.remove(&(run.clone(), unit))
    }
}
