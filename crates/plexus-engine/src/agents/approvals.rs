//! Approvals an agent asks for while it runs an action (RequestApproval), and the calls
//! in flight they belong to.
//!
//! They live in memory, beside the call that waits for them: if the engine stops, the
//! call fails with it, its attempt is retried (see the agent executor), and the agent
//! asks again. Requests and decisions go into the audit log.

use plexus_core::manifest::Permission;
use serde::Serialize;
use serde_json::Value as Json;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A call to an agent's action in flight: the step it performs.
#[derive(Debug, Clone)]
pub(crate) struct InFlight {
    pub id: u64,
    pub run_id: String,
    pub step_id: String,
    pub agent: String,
    pub deadline: Instant,
}

/// What a person decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub approved: bool,
    pub by: String,
    pub comment: String,
}

/// An approval an agent waits for, as the inbox shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AgentApproval {
    pub id: String,
    pub run_id: String,
    /// The step whose action asked (or the approval's id when the agent asked outside
    /// any call the engine made).
    pub step_id: String,
    pub agent: String,
    pub description: String,
    pub permission: Permission,
    pub context: Json,
    pub requested_at: u64,
    pub expires_at: u64,
}

struct Waiting {
    view: AgentApproval,
    decide: oneshot::Sender<Decision>,
}

#[derive(Default)]
pub(crate) struct Book {
    next: u64,
    calls: Vec<InFlight>,
    waiting: Vec<Waiting>,
}

/// Approvals and calls in flight; shared by the registry.
#[derive(Default)]
pub struct Approvals {
    book: Mutex<Book>,
}

/// Removes a waiting approval from the inbox when its request ends, however it ends.
struct Leaves<'a> {
    approvals: &'a Approvals,
    id: String,
}

impl Drop for Leaves<'_> {
    fn drop(&mut self) {
        self.approvals
            .lock()
            .waiting
            .retain(|w| w.view.id != self.id);
    }
}

/// Removes its call from the book when the call ends, however it ends.
pub struct CallGuard<'a> {
    approvals: &'a Approvals,
    id: u64,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        let mut book = self.approvals.lock();
        book.calls.retain(|c| c.id != self.id);
    }
}

impl Approvals {
    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a call in flight until the guard is dropped.
    pub(crate) fn calling(
        &self,
        run_id: &str,
        step_id: &str,
        agent: &str,
        deadline: Instant,
    ) -> CallGuard<'_> {
        let mut book = self.lock();
        book.next += 1;
        let id = book.next;
        book.calls.push(InFlight {
            id,
            run_id: run_id.to_owned(),
            step_id: step_id.to_owned(),
            agent: agent.to_owned(),
            deadline,
        });
        CallGuard {
            approvals: self,
            id,
        }
    }

    /// Asks for a decision on behalf of `agent` in run `run_id`; waits up to `wait`
    /// (never past the deadline of the call that asks). `None` when the wait ran out.
    #[allow(clippy::too_many_arguments)]
    pub async fn request(
        &self,
        run_id: &str,
        agent: &str,
        description: &str,
        permission: Permission,
        context: Json,
        wait: Duration,
        now_ms: u64,
    ) -> (AgentApproval, Option<Decision>) {
        let (tx, rx) = oneshot::channel();
        let view = {
            let mut book = self.lock();
            // The call asking: by run and agent; a caller that does not say who it is
            // (the Python SDK sends no name) is the agent called in that run.
            let call = book
                .calls
                .iter()
                .find(|c| c.run_id == run_id && c.agent == agent)
                .or_else(|| book.calls.iter().find(|c| c.run_id == run_id))
                .cloned();
            let agent = call.as_ref().map_or(agent, |c| c.agent.as_str()).to_owned();
            book.next += 1;
            let id = format!("agent-approval-{}", book.next);
            let wait = match &call {
                Some(c) => wait.min(c.deadline.saturating_duration_since(Instant::now())),
                None => wait,
            };
            let view = AgentApproval {
                step_id: call.map_or_else(|| id.clone(), |c| c.step_id),
                id,
                run_id: run_id.to_owned(),
                agent,
                description: description.to_owned(),
                permission,
                context,
                requested_at: now_ms,
                expires_at: now_ms + wait.as_millis() as u64,
            };
            book.waiting.push(Waiting {
                view: view.clone(),
                decide: tx,
            });
            view
        };
        let wait = Duration::from_millis(view.expires_at.saturating_sub(now_ms));
        // Leaves the inbox however the wait ends: decided, timed out, or given up by
        // its caller (a cancelled step, a plugin that hung up).
        let _leaves = Leaves {
            approvals: self,
            id: view.id.clone(),
        };
        let decision = tokio::time::timeout(wait, rx)
            .await
            .ok()
            .and_then(Result::ok);
        (view, decision)
    }

    /// The run and step in which `agent` is being called now, if it is.
    pub fn call_of_agent(&self, agent: &str) -> Option<(String, String)> {
        self.lock()
            .calls
            .iter()
            .find(|c| c.agent == agent)
            .map(|c| (c.run_id.clone(), c.step_id.clone()))
    }

    /// The agent called in run `run_id` now, if one is.
    pub fn agent_in_run(&self, run_id: &str) -> Option<String> {
        self.lock()
            .calls
            .iter()
            .find(|c| c.run_id == run_id)
            .map(|c| c.agent.clone())
    }

    /// The approvals agents wait for.
    pub fn pending(&self) -> Vec<AgentApproval> {
        self.lock().waiting.iter().map(|w| w.view.clone()).collect()
    }

    /// The approval waiting for run `run_id` at `step` (a step id or an approval id).
    pub fn find(&self, run_id: &str, step: &str) -> Option<AgentApproval> {
        self.lock()
            .waiting
            .iter()
            .find(|w| w.view.run_id == run_id && (w.view.step_id == step || w.view.id == step))
            .map(|w| w.view.clone())
    }

    /// Decides the approval `id`; whether it was still waiting.
    pub fn decide(&self, id: &str, decision: Decision) -> bool {
        let waiting = {
            let mut book = self.lock();
            match book.waiting.iter().position(|w| w.view.id == id) {
                Some(i) => book.waiting.remove(i),
                None => return false,
            }
        };
        waiting.decide.send(decision).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_request_waits_for_its_decision_and_names_the_step_in_flight() {
        let approvals = Arc::new(Approvals::default());
        let guard = approvals.calling(
            "run1",
            "restart",
            "ops",
            Instant::now() + Duration::from_secs(60),
        );
        let asking = approvals.clone();
        let waiter = tokio::spawn(async move {
            asking
                .request(
                    "run1",
                    "ops",
                    "restart web",
                    Permission::Modify,
                    json!({}),
                    Duration::from_secs(30),
                    1000,
                )
                .await
        });
        let mut found = None;
        for _ in 0..100 {
            found = approvals.find("run1", "restart");
            if found.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let found = found.expect("the request is in the inbox");
        assert_eq!(found.expires_at, 31_000);
        let decision = Decision {
            approved: true,
            by: "user:ann".into(),
            comment: "ok".into(),
        };
        assert!(approvals.decide(&found.id, decision.clone()));
        let (_, got) = waiter.await.unwrap();
        assert_eq!(got, Some(decision));
        assert!(approvals.pending().is_empty());
        drop(guard);
        assert!(approvals.lock().calls.is_empty());
    }

    #[tokio::test]
    async fn an_unanswered_request_times_out_within_its_calls_deadline() {
        let approvals = Approvals::default();
        let _guard = approvals.calling(
            "run1",
            "s",
            "ops",
            Instant::now() + Duration::from_millis(50),
        );
        let started = Instant::now();
        let (view, decision) = approvals
            .request(
                "run1",
                "ops",
                "x",
                Permission::Admin,
                json!(null),
                Duration::from_secs(600),
                0,
            )
            .await;
        assert_eq!(decision, None);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(view.expires_at <= 50);
        assert!(
            approvals.pending().is_empty(),
            "a timed-out request leaves the inbox"
        );
    }

    #[tokio::test]
    async fn a_request_given_up_leaves_the_inbox() {
        let approvals = Arc::new(Approvals::default());
        let asking = approvals.clone();
        let waiter = tokio::spawn(async move {
            asking
                .request(
                    "run2",
                    "ops",
                    "write",
                    Permission::Modify,
                    json!({}),
                    Duration::from_secs(30),
                    1000,
                )
                .await
        });
        while approvals.pending().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        waiter.abort();
        let _ = waiter.await;
        assert!(
            approvals.pending().is_empty(),
            "a cancelled wait is not left in the inbox"
        );
    }
}
