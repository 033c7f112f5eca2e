//! `GET /ws`: live run events over a WebSocket.
//!
//! `?run=ID&after=SEQ` replays the run's stored events after `SEQ`, then follows it live,
//! with no gap and no duplicate (the live feed is joined before the backlog is read, and
//! anything at or below the last sequence sent is dropped). Without `run`, every run's
//! events are followed live. A heartbeat message goes out every `heartbeat_ms` (default
//! 15 s). A client too slow for the feed is closed with a reason that says where to pick
//! up, so it never slows the engine down.
//!
//! Runs another replica drives are followed too: the store announces every replica's
//! commits (PostgreSQL's LISTEN/NOTIFY), and their events are read from the store in
//! order. A gap in any feed is filled from the store before what comes after it.

use crate::auth::{Caller, audit};
use crate::{ApiError, AppState};
use axum::Extension;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use plexus_engine::Notice;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

#[derive(Deserialize)]
pub struct Subscribe {
    run: Option<String>,
    #[serde(default)]
    after: u64,
    heartbeat_ms: Option<u64>,
}

pub async fn upgrade(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Query(sub): Query<Subscribe>,
    ws: WebSocketUpgrade,
) -> Response {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(origin) = origin
        && !origin_allowed(origin, host, &state.config.allowed_origins)
    {
        audit(
            state.store.as_ref(),
            &caller.actor(),
            "websocket.refused",
            "/ws",
            json!({"origin": origin}),
        )
        .await;
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            format!("origin `{origin}` may not open the WebSocket; allow it with --allowed-origin"),
        )
        .into_response();
    }
    ws.on_upgrade(move |socket| follow(state, caller, sub, socket))
}

/// A browser says which page opened a WebSocket in `Origin`, and a WebSocket is not held
/// back by CORS: a page on any site could follow runs with a credential the browser
/// holds (an `access_token` it saw). So a request that has an `Origin` must come from
/// the server's own origin (its host as the client addressed it) or from one the operator
/// allowed. Clients that are not browsers send no `Origin` and are not affected.
pub fn origin_allowed(origin: &str, host: Option<&str>, allowed: &[String]) -> bool {
    let origin = origin.trim_end_matches('/');
    if allowed
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let authority = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
}

/// Ends a run's stream: the `finished` message, then a normal close.
async fn finish(
    tx: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    run: &str,
    state: &str,
) {
    let msg = json!({"type": "finished", "run_id": run, "state": state});
    if tx.send(Message::Text(msg.to_string().into())).await.is_ok() {
        let frame = CloseFrame {
            code: 1000,
            reason: "the run ended".into(),
        };
        let _ = tx.send(Message::Close(Some(frame))).await;
    }
}

/// Close code 1008 (policy violation) is what a lagging client gets, 1011 a server error.
const TOO_SLOW: u16 = 1008;

/// Close code for a credential that stopped working while the socket was open.
const CREDENTIAL_ENDED: u16 = 1008;

async fn follow(state: AppState, caller: Caller, sub: Subscribe, socket: WebSocket) {
    let (mut tx, mut rx) = socket.split();
    let mut credentials = state.auth.credentials.subscribe();
    let mut recheck = tokio::time::interval(crate::auth::RECHECK_EVERY);
    recheck.tick().await; // the first tick is now: it was checked to get here
    // Join the live feeds first, so nothing committed from now on can be missed: this
    // replica's engine, and the announcements of every replica's commits.
    let mut live = state.engine.subscribe();
    let mut elsewhere = state.store.committed_events();
    // Runs whose `finished` went out (a follower of every run hears it once).
    let mut ended: std::collections::HashSet<String> = Default::default();
    let mut last: HashMap<String, u64> = HashMap::new();
    let run = match &sub.run {
        Some(id) => match state.store.get_run(id).await {
            Ok(row) => Some(row.id),
            Err(e) => {
                let frame = CloseFrame {
                    code: 1008,
                    reason: e.to_string().into(),
                };
                let _ = tx.send(Message::Close(Some(frame))).await;
                return;
            }
        },
        None => None,
    };
    if let Some(run) = &run {
        // Whether the run had ended, read before its backlog: then the backlog holds
        // every event up to its end. (Read after, an end between the two reads would
        // close the stream without the events that led to it.)
        let ended = match state.store.get_run(run).await {
            Ok(row) => {
                plexus_core::machine::RunStatus::parse(&row.status).filter(|s| s.is_terminal())
            }
            Err(_) => None,
        };
        let mut after = sub.after;
        loop {
            let backlog = match state.store.events(run, after, 1000).await {
                Ok(b) => b,
                Err(e) => {
                    let frame = CloseFrame {
                        code: 1011,
                        reason: e.to_string().into(),
                    };
                    let _ = tx.send(Message::Close(Some(frame))).await;
                    return;
                }
            };
            let Some(end) = backlog.last().map(|e| e.seq) else {
                break;
            };
            for e in backlog {
                let msg = json!({"type": "event", "run_id": run, "event": e});
                if tx
                    .send(Message::Text(msg.to_string().into()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            after = end;
        }
        last.insert(run.clone(), after);
        // A run that ended before the live feed was joined sends no `finished` notice any
        // more: its stored state says so, and the stream ends like any other. One that
        // ends later does: the live feed was joined before its state was read.
        if let Some(status) = ended {
            finish(&mut tx, run, status.as_str()).await;
            return;
        }
    }
    let beat = Duration::from_millis(sub.heartbeat_ms.unwrap_or(15_000).max(10));
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
    // Agents registering, leaving and changing health, for followers of everything.
    let mut agents = state.engine.agents.subscribe();
    loop {
        tokio::select! {
            change = agents.recv(), if run.is_none() => {
                let msg = match change {
                    Ok(c) => json!({"type": "agent", "change": c}),
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                };
                if tx.send(Message::Text(msg.to_string().into())).await.is_err() {
                    return;
                }
            }
            announced = async {
                match &mut elsewhere {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let (run_id, from, upto) = match announced {
                    Ok(c) => {
                        if run.as_deref().is_some_and(|r| r != &*c.run_id) {
                            continue;
                        }
                        (c.run_id.to_string(), c.first_seq.saturating_sub(1), Some(c.last_seq))
                    }
                    // Announcements were missed: a followed run is read up to date.
                    Err(RecvError::Lagged(_)) => match &run {
                        Some(r) => (r.clone(), last.get(r).copied().unwrap_or(0), None),
                        None => {
                            let reason = "too slow: announcements of other replicas' events were missed; reconnect";
                            let _ = tx.send(Message::Close(Some(CloseFrame { code: TOO_SLOW, reason: reason.into() }))).await;
                            return;
                        }
                    },
                    Err(RecvError::Closed) => {
                        elsewhere = None;
                        continue;
                    }
                };
                let after = last.get(&run_id).copied().unwrap_or(from);
                if upto.is_some_and(|u| u <= after) {
                    continue; // sent already (from this replica's own feed)
                }
                match send_stored(&state, &mut tx, &run_id, after, &mut last).await {
                    Err(()) => return,
                    Ok(Some(status)) => {
                        if run.is_some() {
                            finish(&mut tx, &run_id, status).await;
                            return;
                        }
                        if ended.insert(run_id.clone()) {
                            let msg = json!({"type": "finished", "run_id": run_id, "state": status});
                            if tx.send(Message::Text(msg.to_string().into())).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => {}
                }
            }
            notice = live.recv() => {
                let msg = match notice {
                    Ok(Notice::Event { run_id, event }) => {
                        if run.as_deref().is_some_and(|r| r != &*run_id) {
                            continue;
                        }
                        // A gap (events committed by the run's previous owner, not yet
                        // announced here) is filled from the store first.
                        if let Some(&seen) = last.get(&*run_id)
                            && event.seq > seen + 1
                            && send_stored(&state, &mut tx, &run_id, seen, &mut last).await.is_err()
                        {
                            return;
                        }
                        let seen = last.entry(run_id.to_string()).or_insert(0);
                        if event.seq <= *seen {
                            continue; // already sent from the backlog
                        }
                        *seen = event.seq;
                        json!({"type": "event", "run_id": &*run_id, "event": &*event})
                    }
                    Ok(Notice::Finished { run_id, status }) => {
                        match run.as_deref() {
                            Some(r) if r != &*run_id => continue,
                            // The followed run ended: `finished`, then the stream ends.
                            Some(r) => {
                                finish(&mut tx, r, status.as_str()).await;
                                return;
                            }
                            None if !ended.insert(run_id.to_string()) => continue,
                            None => json!({"type": "finished", "run_id": &*run_id, "state": status.as_str()}),
                        }
                    }
                    Ok(Notice::Fatal { error }) => json!({"type": "error", "message": error}),
                    Err(RecvError::Lagged(missed)) => {
                        let resume = match &run {
                            Some(r) => format!("; reconnect with run={r}&after={}", last.get(r).copied().unwrap_or(0)),
                            None => String::new(),
                        };
                        let reason = format!("too slow: {missed} events missed{resume}");
                        let _ = tx.send(Message::Close(Some(CloseFrame { code: TOO_SLOW, reason: reason.into() }))).await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                };
                if tx.send(Message::Text(msg.to_string().into())).await.is_err() {
                    return;
                }
            }
            _ = heartbeat.tick() => {
                let msg = json!({"type": "heartbeat", "time": plexus_engine::now_ms()});
                if tx.send(Message::Text(msg.to_string().into())).await.is_err() {
                    return;
                }
            }
            incoming = rx.next() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {} // pings are answered by the protocol layer
            },
            // A revoked key, an ended session or a deactivated user stops the feed.
            _ = async {
                tokio::select! {
                    _ = credentials.changed() => {}
                    _ = recheck.tick() => {}
                }
            } => {
                if let Err(crate::auth::Refused(reason)) = crate::auth::still_valid(&state, &caller).await {
                    tracing::info!(user = %caller.username, %reason, "closing a WebSocket whose credential ended");
                    let frame = CloseFrame { code: CREDENTIAL_ENDED, reason: reason.into() };
                    let _ = tx.send(Message::Close(Some(frame))).await;
                    return;
                }
            }
        }
    }
}

/// Sends a run's stored events after `after`, in order, and notes the last one sent.
/// Returns the run's end state if one of them ended it; `Err` when the client is gone.
async fn send_stored(
    state: &AppState,
    tx: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    run_id: &str,
    mut after: u64,
    last: &mut HashMap<String, u64>,
) -> Result<Option<&'static str>, ()> {
    use plexus_core::machine::EventKind;
    let mut ended = None;
    loop {
        let events = match state.store.events(run_id, after, 1000).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(run = run_id, error = %e, "reading a run's events for a follower failed");
                return Ok(ended);
            }
        };
        let Some(end) = events.last().map(|e| e.seq) else {
            return Ok(ended);
        };
        for e in events {
            ended = match &e.kind {
                EventKind::RunSucceeded { .. } => Some("succeeded"),
                EventKind::RunFailed { .. } => Some("failed"),
                EventKind::RunCancelled { .. } => Some("cancelled"),
                EventKind::RunRetried { .. } => None,
                _ => ended,
            };
            let msg = json!({"type": "event", "run_id": run_id, "event": e});
            tx.send(Message::Text(msg.to_string().into()))
                .await
                .map_err(|_| ())?;
        }
        after = end;
        let seen = last.entry(run_id.to_owned()).or_insert(0);
        *seen = (*seen).max(end);
    }
}
