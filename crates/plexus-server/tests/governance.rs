//! Governance through the real router and a real SQLite store: every route against every
//! role, credentials (forged, expired, tampered, revoked, deactivated), login limits,
//! the audit chain (and what tampering with its rows does), settings with secrets.

mod common;
use axum::http::StatusCode;
use common::Api;
use plexus_server::ROUTES;
use plexus_server::auth::{Access, Role};
use serde_json::{Value, json};

/// Fills a route's `{params}` with values that name nothing (or an approve action).
fn concrete(path: &str) -> String {
    path.replace("{id}", "00000000-0000-0000-0000-000000000000")
        .replace("{step}", "nostep")
        .replace("{action}", "approve")
        .replace("{name}", "no-such-thing")
        .replace("{sha256}", &"0".repeat(64))
        .replace("{username}", "nobody-here")
        .replace("{key}", "budgets.nothing")
}

/// The methods a client can send; the framework answers some the table does not list
/// (HEAD on every GET route).
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
];

/// Every path the router has (from `ROUTES`, the table the router is built from), with
/// every method, called by anonymous and by each role: refused with 401/403 exactly when
/// the path's rule for that method says so (HEAD has GET's rule); a method the table does
/// not list never reaches a handler for anyone.
#[tokio::test]
async fn every_route_checks_the_callers_role() {
    let api = Api::new().await;
    let mut callers: Vec<(Option<Role>, Api)> = vec![(None, api.as_user(None))];
    for role in Role::ALL {
        let key = api
            .user_key(&format!("rbac-{}", role.as_str()), role.as_str())
            .await;
        callers.push((Some(role), api.as_user(Some(&key))));
    }
    assert!(ROUTES.len() >= 40, "the table holds every route");
    let mut paths: Vec<&str> = ROUTES.iter().map(|r| r.path).collect();
    paths.dedup();
    let audited_before = api.audit_count("permission.denied").await;
    let mut denied = 0;
    for path in paths {
        let uri = concrete(path);
        for method in METHODS {
            let listed = if method == "HEAD" { "get" } else { method };
            let rule = ROUTES
                .iter()
                .find(|r| r.path == path && r.method.eq_ignore_ascii_case(listed))
                .map(|r| r.access);
            for (role, caller) in &callers {
                let (status, body) = caller
                    .call(
                        method,
                        &uri,
                        "{}".to_string(),
                        &[("content-type", "application/json")],
                    )
                    .await;
                let label = format!("{method} {path} as {role:?}: {status} {body}");
                let Some(access) = rule else {
                    // Not in the table: 405 for whoever may use the path at all, else
                    // refused; never an answer from a handler.
                    assert!(
                        [
                            StatusCode::METHOD_NOT_ALLOWED,
                            StatusCode::UNAUTHORIZED,
                            StatusCode::FORBIDDEN
                        ]
                        .contains(&status),
                        "{label}"
                    );
                    denied += usize::from(status == StatusCode::FORBIDDEN);
                    continue;
                };
                match (role, access.allows(*role)) {
                    (_, true) => {
                        assert!(
                            status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                            "{label}"
                        );
                        // Names that exist nowhere and an empty body: a clear 4xx, never a 5xx.
                        assert!(!status.is_server_error(), "{label}");
                    }
                    (None, false) => assert_eq!(status, StatusCode::UNAUTHORIZED, "{label}"),
                    (Some(_), false) => {
                        assert_eq!(status, StatusCode::FORBIDDEN, "{label}");
                        denied += 1;
                    }
                }
            }
        }
    }
    // Every refusal of a signed-in caller is in the audit log, HEAD ones included.
    let audited = api.audit_count("permission.denied").await - audited_before;
    assert_eq!(audited, denied);
}

/// The attack as it was found: `HEAD` without a credential on GET routes answered 200 with
/// the admin's content length, confirmed which run ids exist, and ran the export handler.
#[tokio::test]
async fn head_requests_need_the_same_credential_as_get() {
    let api = Api::new().await;
    let anonymous = api.as_user(None);
    for uri in [
        "/api/v1/users",
        "/api/v1/settings",
        "/api/v1/runs",
        "/metrics",
        "/api/v1/runs/00000000-0000-0000-0000-000000000000",
        "/api/v1/audit/export",
    ] {
        let (status, _) = anonymous.call("HEAD", uri, "", &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "HEAD {uri}");
    }
    let key = api.user_key("head-operator", "operator").await;
    let operator = api.as_user(Some(&key));
    for uri in ["/api/v1/users", "/api/v1/settings", "/api/v1/audit/export"] {
        let (status, _) = operator.call("HEAD", uri, "", &[]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "HEAD {uri} as operator");
    }
    let (status, _) = operator.call("HEAD", "/api/v1/runs", "", &[]).await;
    assert_eq!(status, StatusCode::OK);
}

/// Every route that takes a body, sent bodies that are wrong in several ways: always a
/// clear 4xx, never a 5xx (and never a panic).
#[tokio::test]
async fn every_route_refuses_bad_bodies_cleanly() {
    let api = Api::new().await;
    let bodies = [
        "not json {",
        "[]",
        "{\"unknown\": true}",
        "\"text\"",
        "{\"name\": 42}",
        "",
    ];
    for route in ROUTES.iter().filter(|r| r.method != "get") {
        let uri = concrete(route.path);
        for body in bodies {
            let (status, answer) = api
                .call(
                    &route.method.to_ascii_uppercase(),
                    &uri,
                    body.to_string(),
                    &[("content-type", "application/json")],
                )
                .await;
            assert!(
                !status.is_server_error(),
                "{} {} with {body:?}: {status} {answer}",
                route.method,
                route.path
            );
        }
    }
}

/// The rules themselves follow the role model, whatever order routes are declared in.
#[test]
fn route_rules_follow_the_role_model() {
    let public: Vec<&str> = ROUTES
        .iter()
        .filter(|r| r.access == Access::Public)
        .map(|r| r.path)
        .collect();
    assert_eq!(
        public,
        [
            "/healthz",
            "/api/v1/openapi.json",
            "/api/v1/auth/login",
            "/api/v1/auth/refresh"
        ]
    );
    for r in ROUTES {
        let own = r.path.starts_with("/api/v1/auth/") || r.path.starts_with("/api/v1/api-keys");
        if r.path.starts_with("/api/v1/users") || r.path.starts_with("/api/v1/settings") {
            assert_eq!(
                r.access,
                Access::Role(Role::Admin),
                "{} {}",
                r.method,
                r.path
            );
        } else if r.method != "get" && !own {
            assert!(
                matches!(r.access, Access::Role(Role::Engineer | Role::Admin)),
                "{} {} changes things: engineer at least",
                r.method,
                r.path
            );
        } else if r.method == "get" && !own && r.access != Access::Public {
            assert!(
                r.access == Access::Role(Role::Operator) || r.path == "/api/v1/audit/export",
                "{} {}: operators read everything but the audit export",
                r.method,
                r.path
            );
        }
    }
}

async fn login(api: &Api, username: &str, password: &str) -> (StatusCode, Value) {
    api.as_user(None)
        .post(
            "/api/v1/auth/login",
            json!({"username": username, "password": password}),
        )
        .await
}

#[tokio::test]
async fn sessions_tokens_and_what_refuses_them() {
    let api = Api::new().await;
    let (s, _) = api
        .post(
            "/api/v1/users",
            json!({"username": "ada", "password": "a long passphrase", "role": "engineer"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, weak) = api
        .post(
            "/api/v1/users",
            json!({"username": "bob", "password": "short", "role": "engineer"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{weak}");

    let (s, tokens) = login(&api, "ada", "a long passphrase").await;
    assert_eq!(s, StatusCode::OK, "{tokens}");
    assert_eq!(tokens["expires_in"], 900);
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    assert!(access.starts_with("v4.local."));
    let ada = api.as_user(Some(&access));
    let (s, me) = ada.get("/api/v1/auth/me").await;
    assert_eq!((s, me["role"].clone()), (StatusCode::OK, json!("engineer")));

    // Refresh: new tokens; the old refresh token works once only, and reusing it ends
    // the session (so the new tokens die with it).
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let anon = api.as_user(None);
    let (s, fresh) = anon
        .post("/api/v1/auth/refresh", json!({"refresh_token": refresh}))
        .await;
    assert_eq!(s, StatusCode::OK, "{fresh}");
    let fresh_access = fresh["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        api.as_user(Some(&fresh_access))
            .get("/api/v1/auth/me")
            .await
            .0,
        StatusCode::OK
    );
    let (s, _) = anon
        .post("/api/v1/auth/refresh", json!({"refresh_token": refresh}))
        .await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "a used refresh token is refused"
    );
    assert_eq!(
        api.as_user(Some(&fresh_access))
            .get("/api/v1/auth/me")
            .await
            .0,
        StatusCode::UNAUTHORIZED,
        "reuse of a refresh token ended the session"
    );

    // Forged, expired, tampered tokens.
    let (_, t2) = login(&api, "ada", "a long passphrase").await;
    let good = t2["access_token"].as_str().unwrap().to_owned();
    let claims = api.state.auth.keyring.verify(&good, 0).unwrap();
    let expired = api
        .state
        .auth
        .keyring
        .issue(&plexus_server::auth::tokens::Claims {
            exp: 1,
            ..claims.clone()
        });
    let mut tampered = good.clone().into_bytes();
    let i = tampered.len() - 30;
    tampered[i] = if tampered[i] == b'a' { b'b' } else { b'a' };
    let tampered = String::from_utf8(tampered).unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let forged =
        plexus_server::auth::tokens::Keyring::load_or_create(&other_dir.path().join("k.json"), 0)
            .unwrap()
            .issue(&claims);
    for (what, token) in [
        ("expired", expired.as_str()),
        ("tampered", tampered.as_str()),
        ("forged", forged.as_str()),
        ("garbage", "v4.local.AAAA"),
        ("unknown key", "plx_0000_secret"),
    ] {
        let (s, body) = api.as_user(Some(token)).get("/api/v1/runs").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{what}: {body}");
    }

    // Logout ends the token at once.
    let ada = api.as_user(Some(&good));
    assert_eq!(
        ada.post("/api/v1/auth/logout", json!({})).await.0,
        StatusCode::OK
    );
    assert_eq!(ada.get("/api/v1/runs").await.0, StatusCode::UNAUTHORIZED);

    // Deactivation stops sessions and API keys at once; activation lets keys work again.
    let (_, t3) = login(&api, "ada", "a long passphrase").await;
    let live = api.as_user(Some(t3["access_token"].as_str().unwrap()));
    let (_, key) = live.post("/api/v1/api-keys", json!({"name": "ci"})).await;
    let key = key["secret"].as_str().unwrap().to_owned();
    assert_eq!(
        api.as_user(Some(&key)).get("/api/v1/runs").await.0,
        StatusCode::OK
    );
    let (s, _) = api
        .call(
            "PATCH",
            "/api/v1/users/ada",
            json!({"active": false}).to_string(),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(live.get("/api/v1/runs").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        api.as_user(Some(&key)).get("/api/v1/runs").await.0,
        StatusCode::UNAUTHORIZED
    );
    let (s, _) = login(&api, "ada", "a long passphrase").await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "a deactivated user cannot log in"
    );
    api.call(
        "PATCH",
        "/api/v1/users/ada",
        json!({"active": true}).to_string(),
        &[],
    )
    .await;
    assert_eq!(
        api.as_user(Some(&key)).get("/api/v1/runs").await.0,
        StatusCode::OK
    );

    // A revoked key is refused.
    let keys = api.as_user(Some(&key));
    let (_, mine) = keys.get("/api/v1/api-keys").await;
    let id = mine["api_keys"][0]["id"].as_str().unwrap().to_owned();
    let (s, _) = keys
        .call("DELETE", &format!("/api/v1/api-keys/{id}"), "", &[])
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(keys.get("/api/v1/runs").await.0, StatusCode::UNAUTHORIZED);

    // A second bootstrap on a store with users does nothing.
    assert!(
        plexus_server::auth::bootstrap::bootstrap(api.state.store.as_ref())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn failed_logins_are_limited_per_user() {
    let api = Api::new().await;
    api.post(
        "/api/v1/users",
        json!({"username": "eve", "password": "the right password", "role": "operator"}),
    )
    .await;
    for _ in 0..5 {
        let (s, _) = login(&api, "eve", "a wrong password").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let (s, body) = login(&api, "eve", "the right password").await;
    assert_eq!(
        s,
        StatusCode::TOO_MANY_REQUESTS,
        "locked even with the right password: {body}"
    );
    let (s, _) = login(&api, "nobody", "whatever it is").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "other users are not locked");
    // Failing on purpose from one address does not lock the user out elsewhere: the
    // real eve, from her own address, signs in (with her name in any case).
    let (s, body) = login_from(&api, "10.1.2.3:5000", "EVE", "the right password").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = api
        .post(
            "/api/v1/users",
            json!({"username": "Eve", "password": "another long one", "role": "admin"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "a look-alike of eve: {body}");
}

/// A login as a client from `address` (what the server sees of a real connection).
async fn login_from(
    api: &Api,
    address: &str,
    username: &str,
    password: &str,
) -> (StatusCode, Value) {
    let mut req = axum::http::Request::builder()
        .method("POST")
        .uri("/api/v1/auth/login")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(
            json!({"username": username, "password": password}).to_string(),
        ))
        .unwrap();
    let addr: std::net::SocketAddr = address.parse().unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(addr));
    let res = tower::ServiceExt::oneshot(api.router.clone(), req)
        .await
        .unwrap();
    let status = res.status();
    let bytes = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn responses_carry_security_headers_and_no_cors() {
    let api = Api::new().await;
    let res = tower::ServiceExt::oneshot(
        api.router.clone(),
        axum::http::Request::builder()
            .method("OPTIONS")
            .uri("/api/v1/runs")
            .header("origin", "https://evil.example")
            .header("access-control-request-method", "POST")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
    let res = tower::ServiceExt::oneshot(
        api.router.clone(),
        axum::http::Request::builder()
            .uri("/healthz")
            .header("origin", "https://evil.example")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    let h = res.headers();
    assert!(h.get("access-control-allow-origin").is_none());
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["cache-control"], "no-store");
}

#[tokio::test]
async fn secret_settings_never_come_back_out() {
    let api = Api::new().await;
    let plain = "sk-live-do-not-leak-4242";
    let (s, set) = api
        .call(
            "PUT",
            "/api/v1/settings/providers.openai.api_key",
            json!({"value": plain}).to_string(),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{set}");
    assert!(!set.to_string().contains(plain));
    let (_, all) = api.get("/api/v1/settings").await;
    assert!(!all.to_string().contains(plain), "{all}");
    assert_eq!(all["settings"][0]["value"], json!({"set": true}));
    let (_, audit) = api.get("/api/v1/audit").await;
    assert!(!audit.to_string().contains(plain));
    // At rest it is sealed; the server can still open it for its own use.
    let stored = api.state.store.settings().await.unwrap();
    assert!(stored[0].value.starts_with("sealed:v1:"));
    assert!(!stored[0].value.contains(plain));
    assert_eq!(
        api.state
            .auth
            .sealer
            .open("providers.openai.api_key", &stored[0].value),
        Some(format!("\"{plain}\""))
    );

    // The attack as found: a secret under a key whose name says nothing, stored in the
    // clear and shown to operators in the audit log. Now it is sealed, and no audit
    // record holds any setting's value, secret or not.
    let password = "hunter2-nested-9911";
    let (s, set) = api
        .call(
            "PUT",
            "/api/v1/settings/providers.db",
            json!({"value": {"host": "db.internal", "password": password}}).to_string(),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{set}");
    assert_eq!(set["value"], json!({"set": true}));
    let stored = api.state.store.settings().await.unwrap();
    let db = stored.iter().find(|s| s.key == "providers.db").unwrap();
    assert!(db.secret && !db.value.contains(password));
    let (s, _) = api
        .call(
            "PUT",
            "/api/v1/settings/providers.plain",
            json!({"value": {"base_url": "http://model.internal:1234"}}).to_string(),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let operator = api.as_user(Some(&api.user_key("audit-reader", "operator").await));
    let (_, audit) = operator.get("/api/v1/audit?limit=1000").await;
    let text = audit.to_string();
    assert!(!text.contains(password), "{text}");
    assert!(!text.contains("model.internal"), "{text}");
    assert!(text.contains("sha256"), "{text}");

    let (s, mode) = api
        .call(
            "PUT",
            "/api/v1/settings/execution_mode",
            json!({"value": "yolo"}).to_string(),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{mode}");
    let (s, _) = api
        .call(
            "PUT",
            "/api/v1/settings/colour",
            json!({"value": 1}).to_string(),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

/// Rows edited, deleted or reordered in the database break the chain where it happened.
#[tokio::test]
async fn tampering_with_audit_rows_is_found() {
    let api = Api::new().await;
    for i in 0..4 {
        api.post(
            "/api/v1/users",
            json!({"username": format!("u{i}"), "role": "operator"}),
        )
        .await;
    }
    let (_, ok) = api.get("/api/v1/audit/verify").await;
    assert_eq!(ok["ok"], true, "{ok}");
    let n = ok["records"].as_u64().unwrap();
    assert!(n >= 6);

    let db = rusqlite::Connection::open(api.dir.path().join("plexus.db")).unwrap();
    let verify = || async { api.get("/api/v1/audit/verify").await.1 };

    let actor: String = db
        .query_row("SELECT actor FROM audit WHERE seq = 3", [], |r| r.get(0))
        .unwrap();
    db.execute("UPDATE audit SET actor = 'user:mallory' WHERE seq = 3", [])
        .unwrap();
    let v = verify().await;
    assert_eq!(
        (v["ok"].clone(), v["seq"].clone()),
        (json!(false), json!(3)),
        "{v}"
    );
    db.execute("UPDATE audit SET actor = ?1 WHERE seq = 3", [&actor])
        .unwrap();
    assert_eq!(verify().await["ok"], true, "restored");

    db.execute_batch(
        "CREATE TEMP TABLE kept AS SELECT * FROM audit WHERE seq = 4; DELETE FROM audit WHERE seq = 4;",
    )
    .unwrap();
    let v = verify().await;
    assert_eq!(
        (v["ok"].clone(), v["seq"].clone()),
        (json!(false), json!(4)),
        "{v}"
    );
    assert!(v["problem"].as_str().unwrap().contains("missing"));
    db.execute_batch("INSERT INTO audit SELECT * FROM kept;")
        .unwrap();
    assert_eq!(verify().await["ok"], true, "restored");

    // Reorder: swap the contents of records 2 and 5.
    db.execute_batch(
        "UPDATE audit SET seq = -2 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 5; UPDATE audit SET seq = 5 WHERE seq = -2;",
    )
    .unwrap();
    let v = verify().await;
    assert_eq!(
        (v["ok"].clone(), v["seq"].clone()),
        (json!(false), json!(2)),
        "{v}"
    );
}

/// `execution_mode: manual` makes every step of a workflow without its own mode wait;
/// a workflow that sets its mode keeps it. No mode lets a MODIFY step run unapproved.
/// The seed engine's spelling, `execution-mode`, names the same setting.
#[tokio::test]
async fn the_execution_mode_setting_applies_to_workflows_without_one() {
    let api = Api::new().await;
    api.call(
        "PUT",
        "/api/v1/settings/execution-mode",
        json!({"value": "manual"}).to_string(),
        &[],
    )
    .await;
    let (_, stored) = api.get("/api/v1/settings/execution_mode").await;
    assert_eq!(stored["key"], "execution_mode", "{stored}");
    assert_eq!(stored["value"], "manual", "{stored}");
    let plain =
        json!({"version": "plexus/v1", "name": "plain", "steps": [{"id": "look", "run": "true"}]});
    let (_, run) = api.post("/api/v1/runs", json!({"manifest": plain})).await;
    let id = run["id"].as_str().unwrap();
    api.wait_step(id, "look", "awaiting_approval").await;

    let own = json!({"version": "plexus/v1", "name": "own", "mode": "autonomous", "steps": [
        {"id": "look", "run": "true"}, {"id": "change", "needs": ["look"], "permission": "modify", "run": "true"}]});
    let (_, run) = api.post("/api/v1/runs", json!({"manifest": own})).await;
    let id = run["id"].as_str().unwrap();
    api.wait_step(id, "look", "succeeded").await;
    api.wait_step(id, "change", "awaiting_approval").await;
}

/// A flood of bad credentials is one audit record at once and one with the count later,
/// not a record per request.
#[tokio::test]
async fn a_flood_of_bad_tokens_is_audited_by_count() {
    let api = Api::new().await;
    let forger = api.as_user(Some("v4.local.forged"));
    for _ in 0..30 {
        assert_eq!(forger.get("/api/v1/runs").await.0, StatusCode::UNAUTHORIZED);
    }
    let refused = |records: &Value| -> Vec<Value> {
        records["records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == "credential.refused")
            .map(|r| serde_json::from_str(r["details"].as_str().unwrap()).unwrap())
            .collect()
    };
    let (_, audit) = api.get("/api/v1/audit?domain=security").await;
    assert_eq!(refused(&audit).len(), 1, "{audit}");
    plexus_server::auth::flush_refusals(&api.state, std::time::Duration::ZERO).await;
    let (_, audit) = api.get("/api/v1/audit?domain=security").await;
    let counts: Vec<u64> = refused(&audit)
        .iter()
        .map(|d| d["count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, vec![1, 29], "every refusal is counted");
}
