//! Approval gates: what approvers are shown, and what their decisions do.

use super::*;

impl RunState {
    pub(super) fn request_approval(&mut self, t: &mut Transition, now: Millis, i: usize) {
        let step = self.plan.step(i);
        let (permission, expires_at, message) = match &step.kind {
            StepKind::Approval(a) => (
                step.permission,
                a.timeout.map(|d| now + d.as_millis() as u64),
                a.message.as_deref().map(|m| {
                    template::render_str(m, &self.context(i, None)).unwrap_or_else(|_| m.to_owned())
                }),
            ),
            _ => (
                self.plan.nodes[i].gate.unwrap_or(step.permission),
                self.plan.nodes[i]
                    .approval_timeout
                    .map(|d| now + d.as_millis() as u64),
                None,
            ),
        };
        let mut detail = self.preview(i);
        if let Some(m) = message {
            detail["message"] = Json::String(m);
        }
        let step_id = step.id.clone();
        self.emit(
            t,
            now,
            EventKind::StepAwaitingApproval {
                step_id,
                permission,
                detail,
                expires_at,
            },
        );
        if let Some(at) = expires_at {
            t.actions.push(Action::SetTimer {
                at,
                unit: Unit {
                    step: i,
                    item: None,
                },
                attempt: 0,
                purpose: TimerPurpose::Timeout,
            });
        }
    }

    /// What a step will do, rendered as far as possible, for approvers.
    pub(super) fn preview(&self, i: usize) -> Json {
        let step = self.plan.step(i);
        let ctx = self.context(i, None);
        let render = |s: &str| template::render_str(s, &ctx).unwrap_or_else(|_| s.to_owned());
        let mut detail = match &step.kind {
            StepKind::Run(c) => json!({"kind": "run", "command": render(c)}),
            StepKind::Python(s) => json!({"kind": "python", "script": render(s)}),
            StepKind::Agent { agent, action } => {
                json!({"kind": "agent", "agent": agent, "action": action, "with": step.with.as_ref().map(|w| template::render_value(w, &ctx).unwrap_or_else(|_| w.clone()))})
            }
            other => json!({"kind": other.name()}),
        };
        if let Some(b) = &step.blast_radius {
            detail["blast_radius"] = Json::String(render(b));
        }
        detail
    }

    pub(super) fn after_approval(
        &mut self,
        t: &mut Transition,
        now: Millis,
        i: usize,
        by: String,
        comment: Option<String>,
    ) {
        if let StepKind::Approval(_) = self.plan.step(i).kind {
            let u = Unit {
                step: i,
                item: None,
            };
            self.succeed_unit(t, now, u, 1, json!({"approved_by": by, "comment": comment}));
        } else {
            self.launch(t, now, i);
        }
    }

    pub(super) fn awaiting_approval(&self, step_id: &str) -> Result<usize, Rejected> {
        let i = self
            .index_of(step_id)
            .ok_or_else(|| Rejected::UnknownStep(step_id.to_owned()))?;
        let status = self.steps[i].unit.status;
        if status != StepStatus::AwaitingApproval {
            return Err(Rejected::WrongState {
                step: step_id.to_owned(),
                status: status.as_str(),
                expected: "awaiting approval",
            });
        }
        Ok(i)
    }
}
