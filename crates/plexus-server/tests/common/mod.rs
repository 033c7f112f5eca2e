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
}

impl Api {
    pub fn new() -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let store = Arc::new(
            SqliteStore::open(dir.path().join("plexus.db"), SqliteOptions::default()).unwrap(),
        );
        Self::with_store(dir, store)
    }

    /// Another server (a replica with its own engine) on the same store.
    pub fn replica(&self) -> Self {
        Self::with_store(self.dir.clone(), self.state.store.clone())
    }

    fn with_store(dir: Arc<tempfile::TempDir>, store: Arc<dyn Store>) -> Self {
        let pools = BTreeMap::from([("default".to_owned(), 2)]);
        let engine = Engine::start(
            store.clone(),
            EngineConfig::new(dir.path().to_path_buf(), pools.clone()),
        );
        let state = AppState {
            engine,
            store,
            compile: plexus_core::CompileOptions { pools },
            config: Arc::new(ServerConfig {
                body_limit: 64 * 1024,
                base_dir: dir.path().to_path_buf(),
                artifact_root: dir.path().join("artifacts"),
            }),
        };
        Api {
            router: app(state.clone()),
            state,
            dir,
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

/// GET a text body through the router.
pub trait RouterText {
    fn oneshot_get(self, uri: &str) -> impl std::future::Future<Output = String>;
}

impl RouterText for axum::Router {
    async fn oneshot_get(self, uri: &str) -> String {
        let res = self
            .oneshot(Request::builder().uri(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }
}
