//! The WebSocket feed over a real TCP socket: replay then live with no gap and no
//! duplicate across reconnects, heartbeats, and slow clients cut off with a reason.

mod common;
use common::Api;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

async fn serve(api: &Api) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let router = api.router.clone();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the feed with the API's credential in the `Authorization` header.
async fn connect(api: &Api, addr: &str, query: &str) -> Socket {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}/ws?{query}")
        .into_client_request()
        .unwrap();
    let bearer = format!("Bearer {}", api.bearer.as_deref().unwrap());
    req.headers_mut()
        .insert("authorization", bearer.parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws
}

async fn next_json(ws: &mut Socket) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
        {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(Message::Close(frame))) => {
                return json!({"type": "closed", "frame": frame.map(|f| (u16::from(f.code), f.reason.to_string()))});
            }
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    }
}

#[tokio::test]
async fn replay_then_live_with_no_gap_across_a_reconnect() {
    let api = Api::new().await;
    let addr = serve(&api).await;
    let flow = "version: plexus/v1\nname: w\nsteps:\n- {id: hold, wait: {signal: go}}\n- {id: a, needs: [hold], builtin: noop}\n- {id: b, needs: [a], builtin: noop}\n";
    api.call("POST", "/api/v1/workflows", flow, &[]).await;
    let (_, run) = api.post("/api/v1/runs", json!({"workflow": "w"})).await;
    let id = run["id"].as_str().unwrap().to_owned();
    api.wait_step(&id, "hold", "waiting").await;

    let mut seqs = Vec::new();
    let mut ws = connect(&api, &addr, &format!("run={id}&after=0")).await;
    for _ in 0..2 {
        let m = next_json(&mut ws).await;
        assert_eq!(m["type"], "event", "{m}");
        seqs.push(m["event"]["seq"].as_u64().unwrap());
    }
    ws.close(None).await.unwrap();
    // Events happen while nobody listens...
    api.post(&format!("/api/v1/runs/{id}/steps/hold/signal"), json!({}))
        .await;
    api.wait_state(&id, "succeeded").await;
    // ...and the next connection picks up right after the last one it saw.
    let mut ws = connect(
        &api,
        &addr,
        &format!("run={id}&after={}", seqs.last().unwrap()),
    )
    .await;
    loop {
        let m = next_json(&mut ws).await;
        if m["type"] == "event" {
            seqs.push(m["event"]["seq"].as_u64().unwrap());
            if m["event"]["type"] == "run_succeeded" {
                break;
            }
        }
    }
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "every event once, in order");
}

#[tokio::test]
async fn live_events_and_heartbeats() {
    let api = Api::new().await;
    let addr = serve(&api).await;
    let mut ws = connect(&api, &addr, "heartbeat_ms=50").await;
    let beat = next_json(&mut ws).await;
    assert_eq!(beat["type"], "heartbeat");
    let (_, run) = api.post("/api/v1/runs", json!({"manifest": {"version": "plexus/v1", "name": "l", "steps": [{"id": "a", "builtin": "noop"}]}})).await;
    let mut saw_finished = false;
    for _ in 0..50 {
        let m = next_json(&mut ws).await;
        if m["type"] == "finished" {
            assert_eq!(
                (m["run_id"].clone(), m["state"].clone()),
                (run["id"].clone(), json!("succeeded"))
            );
            saw_finished = true;
            break;
        }
    }
    assert!(saw_finished);
    let mut missing = connect(&api, &addr, "run=ffffffff").await;
    let closed = next_json(&mut missing).await;
    assert_eq!(closed["type"], "closed");
}

#[tokio::test]
async fn a_client_too_slow_is_cut_off_with_a_reason() {
    let api = Api::new().await;
    let addr = serve(&api).await;
    let mut ws = connect(&api, &addr, "").await;
    // 40,000 steps make 80,000 events, more than the feed holds for a reader that stalls.
    // (Submitted to the engine directly: the manifest is larger than the test's body limit.)
    let steps: Vec<Value> = (0..40_000)
        .map(|i| json!({"id": format!("s{i}"), "builtin": "noop"}))
        .collect();
    let text = json!({"version": "plexus/v1", "name": "flood", "steps": steps}).to_string();
    let plan = plexus_core::load(&text, "flood", &api.state.compile).unwrap();
    let id = api
        .state
        .engine
        .submit(plexus_engine::Submission {
            plan: std::sync::Arc::new(plan),
            manifest_text: text,
            base_dir: api.dir.path().to_path_buf(),
            inputs: json!({}),
            idempotency_key: None,
            workflow_version: None,
            newest_version: false,
            started_by: None,
            responsible: Vec::new(),
        })
        .await
        .unwrap();
    api.wait_state(&id, "succeeded").await;
    let mut closed = None;
    for _ in 0..200_000 {
        let m = next_json(&mut ws).await;
        if m["type"] == "closed" {
            closed = Some(m);
            break;
        }
    }
    let closed = closed.expect("the slow client is closed");
    assert_eq!(closed["frame"][0], 1008);
    assert!(
        closed["frame"][1].as_str().unwrap().starts_with("too slow"),
        "{closed}"
    );
}

/// The feed needs a signed-in operator: refused without a credential, accepted with the
/// `access_token` query parameter (what a browser can send) as well as the header.
#[tokio::test]
async fn the_feed_needs_a_credential() {
    let api = Api::new().await;
    let addr = serve(&api).await;
    let err = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(res) => assert_eq!(res.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    let token = api.bearer.clone().unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{addr}/ws?heartbeat_ms=50&access_token={token}"
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "heartbeat");
}

/// Approvers learn of a waiting step from the all-runs feed: the request (what will run,
/// its permission) arrives as it is made, and the decision follows.
#[tokio::test]
async fn approval_requests_and_decisions_reach_the_feed() {
    let api = Api::new().await;
    let addr = serve(&api).await;
    // The feed of every run is live only: its first heartbeat says the server follows
    // the engine, so the run started next cannot be missed.
    let mut ws = connect(&api, &addr, "heartbeat_ms=20").await;
    assert_eq!(next_json(&mut ws).await["type"], "heartbeat");
    let manifest = json!({"version": "plexus/v1", "name": "gate", "steps": [
        {"id": "change", "permission": "modify", "run": "echo change"}]});
    let (_, run) = api
        .post("/api/v1/runs", json!({"manifest": manifest}))
        .await;
    let id = run["id"].as_str().unwrap().to_owned();
    let request = loop {
        let m = next_json(&mut ws).await;
        if m["type"] == "event" && m["event"]["type"] == "step_awaiting_approval" {
            break m;
        }
    };
    assert_eq!(request["run_id"], id.as_str());
    assert_eq!(request["event"]["permission"], "modify");
    assert_eq!(request["event"]["detail"]["command"], "echo change");
    api.post(
        &format!("/api/v1/runs/{id}/steps/change/approve"),
        json!({"comment": "go"}),
    )
    .await;
    loop {
        let m = next_json(&mut ws).await;
        if m["type"] == "event" && m["event"]["type"] == "step_approved" {
            assert_eq!(m["event"]["by"], "user:admin");
            break;
        }
    }
}

/// A page on another site cannot follow runs with a credential the browser holds: a
/// WebSocket request whose `Origin` is neither the server's own nor an allowed one is
/// refused (and audited); clients without `Origin` (scripts, the CLI) are not affected.
#[tokio::test]
async fn the_websocket_checks_the_browsers_origin() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let api = Api::new().await;
    let addr = serve(&api).await;
    let open = |origin: Option<String>| {
        let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
        let bearer = format!("Bearer {}", api.bearer.as_deref().unwrap());
        req.headers_mut()
            .insert("authorization", bearer.parse().unwrap());
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        tokio_tungstenite::connect_async(req)
    };
    let refused = open(Some("https://evil.example".into())).await.unwrap_err();
    match refused {
        tokio_tungstenite::tungstenite::Error::Http(res) => assert_eq!(res.status(), 403),
        other => panic!("{other:?}"),
    }
    assert!(open(None).await.is_ok(), "no Origin: not a browser");
    assert!(
        open(Some(format!("http://{addr}"))).await.is_ok(),
        "its own origin"
    );
    assert!(
        open(Some("https://dash.example.com".into())).await.is_ok(),
        "an allowed origin"
    );
    assert_eq!(api.audit_count("websocket.refused").await, 1);
}

/// Reads messages until the server closes the socket; the close frame's code and reason.
async fn closed_with(ws: &mut Socket) -> (u16, String) {
    loop {
        let m = next_json(ws).await;
        if m["type"] == "closed" {
            let frame = &m["frame"];
            return (
                frame[0].as_u64().unwrap() as u16,
                frame[1].as_str().unwrap().to_owned(),
            );
        }
    }
}

/// The attack as found: a session opened with an API key (the bootstrap flow: log in
/// with the key, then revoke it) kept working and refreshing after the key was revoked,
/// and an operator's socket kept streaming after the key and the user were gone. Now the
/// key's sessions end with it, and open sockets close at once.
#[tokio::test]
async fn revocation_reaches_sessions_and_open_sockets() {
    let api = Api::new().await;
    let addr = serve(&api).await;
    let key = api.user_key("watcher", "operator").await;
    let anonymous = api.as_user(None);
    let (s, tokens) = anonymous
        .post("/api/v1/auth/login", json!({"api_key": key}))
        .await;
    assert_eq!(s, axum::http::StatusCode::OK, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let session = api.as_user(Some(&access));
    let (s, _) = session.get("/api/v1/runs").await;
    assert_eq!(s, axum::http::StatusCode::OK);
    let mut by_session = connect(&session, &addr, "heartbeat_ms=100000").await;
    let mut by_key = connect(&api.as_user(Some(&key)), &addr, "heartbeat_ms=100000").await;

    let key_id = key.trim_start_matches("plx_").split('_').next().unwrap();
    let (s, body) = api
        .call("DELETE", &format!("/api/v1/api-keys/{key_id}"), "", &[])
        .await;
    assert_eq!(s, axum::http::StatusCode::OK, "{body}");
    let (code, reason) = closed_with(&mut by_key).await;
    assert_eq!(code, 1008);
    assert!(reason.contains("revoked"), "{reason}");
    let (code, reason) = closed_with(&mut by_session).await;
    assert_eq!(code, 1008);
    assert!(reason.contains("session was ended"), "{reason}");
    let (s, _) = session.get("/api/v1/runs").await;
    assert_eq!(
        s,
        axum::http::StatusCode::UNAUTHORIZED,
        "the session ended with its key"
    );
    let (s, _) = anonymous
        .post("/api/v1/auth/refresh", json!({"refresh_token": refresh}))
        .await;
    assert_eq!(
        s,
        axum::http::StatusCode::UNAUTHORIZED,
        "and cannot be refreshed"
    );

    // A deactivated user's sockets close too.
    let other = api.user_key("leaver", "operator").await;
    let mut ws = connect(&api.as_user(Some(&other)), &addr, "heartbeat_ms=100000").await;
    let (s, _) = api
        .call(
            "PATCH",
            "/api/v1/users/leaver",
            json!({"active": false}).to_string(),
            &[("content-type", "application/json")],
        )
        .await;
    assert_eq!(s, axum::http::StatusCode::OK);
    let (code, reason) = closed_with(&mut ws).await;
    assert_eq!(code, 1008);
    assert!(reason.contains("deactivated"), "{reason}");
}

/// A subscriber of a run gets its events and then `finished`, and the stream ends —
/// also when it connects after the run ended (it used to get heartbeats forever).
#[tokio::test]
async fn a_runs_stream_ends_with_finished() {
    let api = Api::new().await;
    let addr = serve(&api).await;
    let flow = "version: plexus/v1\nname: quick\nsteps:\n- {id: a, builtin: noop}\n";
    let (_, run) = api.post("/api/v1/runs", json!({"manifest": flow})).await;
    let id = run["id"].as_str().unwrap().to_owned();
    api.wait_state(&id, "succeeded").await;
    let mut ws = connect(&api, &addr, &format!("run={id}&after=0&heartbeat_ms=20")).await;
    let mut kinds = Vec::new();
    loop {
        let m = next_json(&mut ws).await;
        assert_ne!(m["type"], "heartbeat", "{m}");
        kinds.push(m["type"].as_str().unwrap().to_owned());
        if m["type"] == "closed" {
            assert_eq!(m["frame"][0], 1000, "{m}");
            break;
        }
    }
    assert_eq!(
        kinds.iter().filter(|k| *k == "event").count(),
        4,
        "{kinds:?}"
    );
    assert_eq!(&kinds[kinds.len() - 2..], ["finished", "closed"]);
}
