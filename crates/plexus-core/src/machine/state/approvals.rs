//! Approval gates: what approvers are shown, and what their decisions do.

use super::*;

impl RunState {
    pub(super) fn request_approval(&mut self, t: &mut Transition, now: Millis, i: usize) {
        self.request_approval_with(t, now, i, None);
    }

    /// Asks for a decision; `changed` says why a step approved before is asked again.
    fn request_approval_with(
        &mut self,
        t: &mut Transition,
        now: Millis,
        i: usize,
        changed: Option<String>,
    ) {
        let step = self.plan.step(i);
        let (permission, expires_at) = match &step.kind {
            StepKind::Approval(a) => (
                step.permission,
                a.timeout.map(|d| now + d.as_millis() as u64),
            ),
            _ => (
                self.plan.nodes[i].gate.unwrap_or(step.permission),
                self.plan.nodes[i]
                    .approval_timeout
                    .map(|d| now + d.as_millis() as u64),
            ),
        };
        let mut detail = self.approval_detail(i);
        if let Some(why) = changed {
            detail["changed_since_approval"] = Json::String(why);
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

    /// Everything that decides what the step does, as an approver is shown it, with a
    /// `digest` of exactly that: the approval binds to the digest.
    pub(super) fn approval_detail(&self, i: usize) -> Json {
        let mut detail = self.preview(i);
        if let StepKind::Approval(a) = &self.plan.step(i).kind
            && let Some(m) = &a.message
        {
            let rendered =
                template::render_str(m, &self.context(i, None)).unwrap_or_else(|_| m.to_owned());
            detail["message"] = Json::String(rendered);
        }
        detail["digest"] = Json::String(digest_of(&detail));
        detail
    }

    /// What a step will do, rendered as it will run (the templates as written where they
    /// cannot be rendered yet, such as a foreach step's `item`): the command, script or
    /// parameters, the environment it adds (values of secret-named variables hidden), its
    /// directory, pool, resources, placement, timeout and blast radius.
    pub(super) fn preview(&self, i: usize) -> Json {
        let step = self.plan.step(i);
        let node = &self.plan.nodes[i];
        let ctx = self.context(i, None);
        let mut detail = json!({"kind": step.kind.name()});
        match super::render::render_work(step, &ctx, self.plan.mode, &self.plan.manifest.defaults) {
            Ok((work, rendered, env, workdir)) => {
                match work {
                    Work::Shell { command } => detail["command"] = Json::String(command),
                    Work::Python { script } => detail["script"] = Json::String(script),
                    Work::Echo(with) => detail["with"] = with,
                    Work::Workflow { path, inputs, .. } => {
                        detail["workflow"] = Json::String(path);
                        detail["inputs"] = inputs;
                    }
                    _ => {}
                }
                if let Json::Object(extra) = rendered {
                    for (k, v) in extra {
                        if detail.get(&k).is_none() {
                            detail[k.as_str()] = v;
                        }
                    }
                }
                if !env.is_empty() {
                    detail["env"] = masked(env.iter());
                }
                if let Some(w) = workdir {
                    detail["workdir"] = Json::String(w);
                }
            }
            Err(error) => {
                detail["not_rendered"] = Json::String(error);
                match &step.kind {
                    StepKind::Run(c) => detail["command"] = Json::String(c.clone()),
                    StepKind::Python(s) => detail["script"] = Json::String(s.clone()),
                    StepKind::Workflow(p) => detail["workflow"] = Json::String(p.clone()),
                    StepKind::Agent { agent, action } => {
                        detail["agent"] = Json::String(agent.clone());
                        detail["action"] = Json::String(action.clone());
                    }
                    _ => {}
                }
                if let Some(w) = &step.with {
                    detail["with"] = w.clone();
                }
                if !step.env.is_empty() {
                    detail["env"] = masked(step.env.iter());
                }
                if let Some(w) = &step.workdir {
                    detail["workdir"] = Json::String(w.clone());
                }
            }
        }
        if let Some(f) = &step.foreach {
            detail["foreach"] = Json::String(f.clone());
        }
        detail["pool"] = Json::String(node.pool.clone());
        detail["pool_slots"] = json!(step.pool_slots);
        if let Some(r) = &step.resources {
            detail["resources"] = serde_json::to_value(r).unwrap_or(Json::Null);
        }
        if !step.constraints.is_empty() {
            detail["constraints"] = json!(step.constraints);
        }
        if let Some(d) = step.timeout {
            detail["timeout"] = Json::String(crate::duration::format_duration(d));
        }
        if let Some(b) = &step.blast_radius {
            let rendered = template::render_str(b, &ctx).unwrap_or_else(|_| b.clone());
            detail["blast_radius"] = Json::String(rendered);
        }
        detail
    }

    /// An approved step is about to run: if what it will do is no longer what was
    /// approved (its digest differs), it is asked again instead. `true`: go ahead.
    pub(super) fn still_as_approved(&mut self, t: &mut Transition, now: Millis, i: usize) -> bool {
        let Some(approved) = self.steps[i].approved_digest.clone() else {
            return true;
        };
        let now_digest = self.approval_detail(i)["digest"]
            .as_str()
            .map(str::to_owned);
        if now_digest.as_deref() == Some(approved.as_str()) {
            return true;
        }
        self.request_approval_with(
            t,
            now,
            i,
            Some(format!(
                "what the step will do changed since it was approved (digest {approved}); decide again"
            )),
        );
        false
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
        } else if self.still_as_approved(t, now, i) {
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

/// Variables as approvers see them: values of names that say they are secret are hidden.
fn masked<'a>(env: impl Iterator<Item = (&'a String, &'a String)>) -> Json {
    Json::Object(
        env.map(|(k, v)| {
            let shown = if crate::secrets::names_secret(k) {
                "(hidden: the name says it is a secret)".to_owned()
            } else {
                v.clone()
            };
            (k.clone(), Json::String(shown))
        })
        .collect(),
    )
}

/// SHA-256 of a detail's JSON text (without its own `digest`).
fn digest_of(detail: &Json) -> String {
    use sha2::{Digest, Sha256};
    let mut without = detail.clone();
    if let Json::Object(m) = &mut without {
        m.remove("digest");
        m.remove("changed_since_approval");
    }
    let text = serde_json::to_string(&without).unwrap_or_default();
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
