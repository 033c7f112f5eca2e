//! Shared helpers: a real engine and a real SQLite store behind the router.
#![allow(dead_code)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use plexus_engine::{Engine, EngineConfig};
use plexus_server::{AppState, ServerConfig, app};
use plexus_store::{SqliteOptions, SqliteStore, Store};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

pub struct Api {
    pub router: axum::Router,
    pub state: AppState,
    pub dir: Arc<tempfile::TempDir>,
    /// Sent as `Authorization: Bearer ...` unless a call passes its own (the bootstrap
    /// admin key by default; see [`Api::as_user`]).
    pub bearer: Option<String>,
}

impl Api {
    /// A server on a fresh store, called as the bootstrap admin.
    pub async fn new() -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let store = Arc::new(
            SqliteStore::open(dir.path().join("plexus.db"), SqliteOptions::default()).unwrap(),
        );
        let mut api = Self::with_store(dir, store);
        let key = plexus_server::auth::bootstrap::bootstrap(api.state.store.as_ref())
            .await
            .unwrap()
            .expect("a fresh store bootstraps an admin");
        api.bearer = Some(key.secret);
        api
    }

    /// Another server (a replica with its own engine) on the same store.
    pub fn replica(&self) -> Self {
        let mut r = Self::with_store(self.dir.clone(), self.state.store.clone());
        r.bearer = self.bearer.clone();
        r
    }

    /// The same server, called with another credential (`None`: anonymous).
    pub fn as_user(&self, bearer: Option<&str>) -> Self {
        Api {
            router: self.router.clone(),
            state: self.state.clone(),
            dir: self.dir.clone(),
            bearer: bearer.map(str::to_owned),
        }
    }

    /// How many audit records have this action.
    pub async fn audit_count(&self, action: &str) -> usize {
        let filter = plexus_store::auth::AuditFilter {
            limit: u32::MAX,
            ..Default::default()
        };
        let records = self.state.store.audit(filter).await.unwrap();
        records.iter().filter(|r| r.action == action).count()
    }

    /// Creates a user with `role` and returns an API key secret for them.
    pub async fn user_key(&self, username: &str, role: &str) -> String {
        let (s, v) = self
            .post(
                "/api/v1/users",
                serde_json::json!({"username": username, "role": role}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let user = self.as_user(None);
        let admin_key = self.bearer.clone().unwrap();
        let (s, v) = user
            .as_user(Some(&admin_key))
            .post(
                "/api/v1/api-keys",
                serde_json::json!({"name": "test", "username": username}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["secret"].as_str().unwrap().to_owned()
    }

    fn with_store(dir: Arc<tempfile::TempDir>, store: Arc<dyn Store>) -> Self {
        let pools = BTreeMap::from([("default".to_owned(), 2)]);
        let engine = Engine::start(
            store.clone(),
            EngineConfig::new(dir.path().to_path_buf(), pools.clone()),
        );
        let state: AppState = plexus_server::Services {
            engine,
            store,
            compile: plexus_core::CompileOptions {
                pools,
                default_mode: None,
                action_floors: Default::default(),
            },
            config: Arc::new(ServerConfig {
                body_limit: 64 * 1024,
                base_dir: dir.path().to_path_buf(),
                artifact_root: dir.path().join("artifacts"),
                allowed_origins: vec!["https://dash.example.com".to_owned()],
            }),
            auth: Arc::new(plexus_server::auth::Auth::open(&dir.path().join("keys")).unwrap()),
            plans: Default::default(),
            newest_workflows: Default::default(),
            intents: Default::default(),
        }
        .into();
        Api {
            router: app(state.clone()),
            state,
            dir,
            bearer: None,
        }
    }

    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        body: impl Into<Body>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        let own = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"));
        if let (Some(b), false) = (&self.bearer, own) {
            req = req.header("authorization", format!("Bearer {b}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = self
            .router
            .clone()
            .oneshot(req.body(body.into()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, value)
    }

    pub async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call("GET", uri, Body::empty(), &[]).await
    }

    pub async fn post(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        self.call(
            "POST",
            uri,
            body.to_string(),
            &[("content-type", "application/json")],
        )
        .await
    }

    /// Polls the run until it reaches `state`.
    pub async fn wait_state(&self, id: &str, state: &str) -> Value {
        for _ in 0..400 {
            let (_, run) = self.get(&format!("/api/v1/runs/{id}")).await;
            if run["state"] == state {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("run {id} never reached {state}");
    }

    pub async fn wait_step(&self, id: &str, step: &str, state: &str) {
        for _ in 0..400 {
            let (_, run) = self.get(&format!("/api/v1/runs/{id}")).await;
            if run["steps"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["id"] == step && s["state"] == state)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("step {step} of run {id} never reached {state}");
    }
}

impl Api {
    /// GET a text body (200 expected), with the caller's credential.
    pub async fn text(&self, uri: &str) -> String {
        let mut req = Request::builder().uri(uri);
        if let Some(b) = &self.bearer {
            req = req.header("authorization", format!("Bearer {b}"));
        }
        let res = self
            .router
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }
}
