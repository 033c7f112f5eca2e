//! gRPC `plexus.v1.JobService` (proto in `proto/plexus/v1/jobs.proto`), the same runs as
//! the REST API, plus the standard gRPC health service.

use crate::AppState;
use crate::auth::{Access, Caller, Refused, Role, audit, authenticate};
use crate::error::ApiError;
use crate::runs::{control, start_run, stored_workflow};
use axum::http::StatusCode;
use plexus_core::machine::Input;
use plexus_engine::Notice;
use plexus_store::{CommandKind, RunFilter, RunRow};
use std::pin::Pin;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub mod pb {
    tonic::include_proto!("plexus.v1");
}

use pb::job_service_server::{JobService, JobServiceServer};

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let message = e.message;
        match e.status {
            StatusCode::NOT_FOUND => Status::not_found(message),
            StatusCode::CONFLICT => Status::failed_precondition(message),
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::INSUFFICIENT_STORAGE => {
                Status::resource_exhausted(message)
            }
            StatusCode::SERVICE_UNAVAILABLE => Status::unavailable(message),
            s if s.is_client_error() => Status::invalid_argument(message),
            _ => Status::internal(message),
        }
    }
}

fn to_status(e: impl Into<ApiError>) -> Status {
    e.into().into()
}

pub struct Jobs {
    state: AppState,
}

/// Who may call each JobService method (the same rules as the matching REST routes).
/// A test calls every method of the proto with every role.
pub const METHODS: &[(&str, Access)] = &[
    ("Submit", Access::Role(Role::Engineer)),
    ("Get", Access::Role(Role::Operator)),
    ("List", Access::Role(Role::Operator)),
    ("Cancel", Access::Role(Role::Engineer)),
    ("Pause", Access::Role(Role::Engineer)),
    ("Resume", Access::Role(Role::Engineer)),
    ("StreamEvents", Access::Role(Role::Operator)),
];

impl Jobs {
    /// The caller of a method, from `authorization: Bearer ...` metadata, if the method's
    /// rule lets them in.
    async fn authorize<T>(&self, req: &Request<T>, method: &str) -> Result<Caller, Status> {
        let access = METHODS
            .iter()
            .find(|(m, _)| *m == method)
            .map(|(_, a)| *a)
            .ok_or_else(|| Status::internal(format!("no access rule for {method}")))?;
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("send `authorization: Bearer <token or API key>`")
            })?;
        let caller = authenticate(&self.state, token.trim())
            .await
            .map_err(|Refused(m)| Status::unauthenticated(m))?;
        if !access.allows(Some(caller.role)) {
            let target = format!("grpc JobService/{method}");
            audit(
                self.state.store.as_ref(),
                &caller.actor(),
                "permission.denied",
                &target,
                serde_json::json!({"role": caller.role.as_str(), "needs": access.describe()}),
            )
            .await;
            return Err(Status::permission_denied(format!(
                "{target} needs {}; you have the {} role",
                access.describe(),
                caller.role.as_str()
            )));
        }
        Ok(caller)
    }
}

/// The JobService and the health service, ready to be served.
pub fn services(
    state: AppState,
) -> (
    JobServiceServer<Jobs>,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(async move { reporter.set_serving::<JobServiceServer<Jobs>>().await });
    (JobServiceServer::new(Jobs { state }), health)
}

async fn run_message(state: &AppState, row: RunRow) -> Result<pb::Run, Status> {
    let steps = state.store.steps(&row.id).await.map_err(to_status)?;
    Ok(pb::Run {
        id: row.id,
        workflow: row.workflow,
        state: row.status,
        error: row.error.unwrap_or_default(),
        inputs_json: row.inputs.to_string(),
        outputs_json: row.outputs.to_string(),
        created_at: row.created_at,
        finished_at: row.finished_at.unwrap_or(0),
        steps: steps
            .into_iter()
            .map(|s| pb::Step {
                id: s.step_id,
                state: s.status,
                attempt: s.attempt,
                error: s.error.unwrap_or_default(),
                output_json: s.output.to_string(),
            })
            .collect(),
    })
}

fn event_message(run_id: &str, e: &plexus_core::machine::Event) -> pb::RunEvent {
    pb::RunEvent {
        run_id: run_id.to_owned(),
        seq: e.seq,
        r#type: e.kind.type_name().to_owned(),
        step_id: e.kind.step_id().unwrap_or("").to_owned(),
        event_json: serde_json::to_string(e).unwrap_or_default(),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::RunEvent, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for Jobs {
    async fn submit(&self, req: Request<pb::SubmitRequest>) -> Result<Response<pb::Run>, Status> {
        let caller = self.authorize(&req, "Submit").await?;
        let r = req.into_inner();
        let key = (!r.idempotency_key.is_empty()).then_some(r.idempotency_key);
        if let Some(k) = &key
            && let Some(existing) = self
                .state
                .store
                .find_run_by_key(k)
                .await
                .map_err(to_status)?
        {
            return Ok(Response::new(run_message(&self.state, existing).await?));
        }
        let inputs = if r.inputs_json.trim().is_empty() {
            serde_json::Map::new()
        } else {
            serde_json::from_str(&r.inputs_json).map_err(|e| {
                Status::invalid_argument(format!("inputs_json must be a JSON object: {e}"))
            })?
        };
        let (text, version) = match (r.workflow.is_empty(), r.manifest.is_empty()) {
            (false, true) => {
                let w = stored_workflow(
                    &self.state,
                    &r.workflow,
                    (r.version > 0).then_some(r.version),
                )
                .await?;
                (w.manifest, Some(w.version))
            }
            (true, false) => (r.manifest, None),
            _ => {
                return Err(Status::invalid_argument(
                    "give exactly one of `workflow` and `manifest`",
                ));
            }
        };
        let origin = crate::runs::Origin::caller(&caller);
        let id = start_run(&self.state, text, version, &inputs, key, origin).await?;
        let row = self.state.store.get_run(&id).await.map_err(to_status)?;
        Ok(Response::new(run_message(&self.state, row).await?))
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::Run>, Status> {
        self.authorize(&req, "Get").await?;
        let row = self
            .state
            .store
            .get_run(&req.into_inner().id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(run_message(&self.state, row).await?))
    }

    async fn list(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        self.authorize(&req, "List").await?;
        let r = req.into_inner();
        let limit = if r.limit == 0 {
            50
        } else {
            r.limit.min(500) as usize
        };
        let filter = RunFilter {
            workflow: (!r.workflow.is_empty()).then_some(r.workflow),
            status: (!r.state.is_empty()).then_some(r.state),
            before: (!r.cursor.is_empty()).then_some(r.cursor),
            limit,
            ..Default::default()
        };
        let rows = self
            .state
            .store
            .list_runs(filter)
            .await
            .map_err(to_status)?;
        let next_cursor = if rows.len() == limit {
            rows.last().map(|r| r.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        let mut runs = Vec::with_capacity(rows.len());
        for row in rows {
            runs.push(run_message(&self.state, row).await?);
        }
        Ok(Response::new(pb::ListResponse { runs, next_cursor }))
    }

    async fn cancel(
        &self,
        req: Request<pb::RunRef>,
    ) -> Result<Response<pb::ControlResponse>, Status> {
        let caller = self.authorize(&req, "Cancel").await?;
        let input = Input::Cancel {
            reason: format!("cancelled by {} through gRPC", caller.actor()),
        };
        self.control(req.into_inner().id, input, CommandKind::Cancel, &caller)
            .await
    }

    async fn pause(
        &self,
        req: Request<pb::RunRef>,
    ) -> Result<Response<pb::ControlResponse>, Status> {
        let caller = self.authorize(&req, "Pause").await?;
        self.control(
            req.into_inner().id,
            Input::Pause { by: caller.actor() },
            CommandKind::Pause,
            &caller,
        )
        .await
    }

    async fn resume(
        &self,
        req: Request<pb::RunRef>,
    ) -> Result<Response<pb::ControlResponse>, Status> {
        let caller = self.authorize(&req, "Resume").await?;
        self.control(
            req.into_inner().id,
            Input::Resume { by: caller.actor() },
            CommandKind::Resume,
            &caller,
        )
        .await
    }

    type StreamEventsStream = EventStream;

    async fn stream_events(
        &self,
        req: Request<pb::StreamEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let caller = self.authorize(&req, "StreamEvents").await?;
        let r = req.into_inner();
        let state = self.state.clone();
        let mut credentials = state.auth.credentials.subscribe();
        let mut recheck = tokio::time::interval(crate::auth::RECHECK_EVERY);
        // Join the live feed before reading the backlog: nothing falls between the two.
        let mut live = self.state.engine.subscribe();
        let row = self
            .state
            .store
            .get_run(&r.run_id)
            .await
            .map_err(to_status)?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let store = self.state.store.clone();
        tokio::spawn(async move {
            let id = row.id.clone();
            let mut last = r.after;
            loop {
                let backlog = match store.events(&id, last, 1000).await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(to_status(e))).await;
                        return;
                    }
                };
                let Some(end) = backlog.last().map(|e| e.seq) else {
                    break;
                };
                for e in &backlog {
                    if tx.send(Ok(event_message(&id, e))).await.is_err() {
                        return;
                    }
                }
                last = end;
            }
            if plexus_core::machine::RunStatus::parse(&row.status).is_some_and(|s| s.is_terminal())
            {
                return;
            }
            recheck.tick().await; // the first tick is now: it was checked to get here
            loop {
                let notice = tokio::select! {
                    notice = live.recv() => notice,
                    // A revoked key, an ended session or a deactivated user ends the stream.
                    _ = async {
                        tokio::select! {
                            _ = credentials.changed() => {}
                            _ = recheck.tick() => {}
                        }
                    } => {
                        if let Err(Refused(reason)) = crate::auth::still_valid(&state, &caller).await {
                            let _ = tx.send(Err(Status::unauthenticated(reason))).await;
                            return;
                        }
                        continue;
                    }
                };
                match notice {
                    Ok(Notice::Event { run_id, event }) if *run_id == *id && event.seq > last => {
                        last = event.seq;
                        if tx.send(Ok(event_message(&id, &event))).await.is_err() {
                            return;
                        }
                    }
                    Ok(Notice::Finished { run_id, .. }) if *run_id == *id => return,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let msg =
                            format!("too slow: {n} events missed; call again with after={last}");
                        let _ = tx.send(Err(Status::resource_exhausted(msg))).await;
                        return;
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

impl Jobs {
    async fn control(
        &self,
        id: String,
        input: Input,
        kind: CommandKind,
        caller: &Caller,
    ) -> Result<Response<pb::ControlResponse>, Status> {
        let actor = caller.actor();
        let (_, answer) = control(
            &self.state,
            &id,
            input,
            kind,
            None,
            serde_json::Value::Null,
            &actor,
        )
        .await?;
        Ok(Response::new(pb::ControlResponse {
            outcome: answer["outcome"].as_str().unwrap_or("").to_owned(),
        }))
    }
}
