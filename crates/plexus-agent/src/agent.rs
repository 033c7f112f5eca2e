//! What an agent is: a name, a version, and actions, each a typed async function with a
//! declared permission. [`Agent`] answers the engine's `PluginService` calls.

use crate::engine::Engine;
use crate::params::Params;
use crate::rpc::{Call, Handler};
use crate::wire::{self, Blob, Style};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Instant;
use tonic::Status;

/// What an action may change, as approvers see it: the engine asks a person before a
/// MODIFY or ADMIN action runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    Read,
    Modify,
    Admin,
}

impl Permission {
    pub fn wire(self) -> i32 {
        match self {
            Permission::Read => wire::permission::READ,
            Permission::Modify => wire::permission::MODIFY,
            Permission::Admin => wire::permission::ADMIN,
        }
    }

    /// From the wire: WRITE is MODIFY, and UNSPECIFIED (or anything unknown) is taken as
    /// MODIFY, the safe side.
    pub fn from_wire(value: i32) -> Permission {
        match value {
            wire::permission::READ => Permission::Read,
            wire::permission::ADMIN => Permission::Admin,
            _ => Permission::Modify,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "READ",
            Permission::Modify => "MODIFY",
            Permission::Admin => "ADMIN",
        }
    }
}

/// The DevOps stages an agent serves (the SDKs require at least one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Plan = 1,
    Code,
    Build,
    Test,
    Release,
    Deploy,
    Operate,
    Observe,
}

/// What an action is called with.
#[derive(Clone)]
pub struct Request {
    pub execution_id: String,
    pub step_id: String,
    pub tenant_id: String,
    pub time_range: Option<wire::TimeRange>,
    /// The engine, for callbacks (config, cache, approval, audit events).
    pub engine: Option<Engine>,
}

/// An action's failure, shown to the user as the step's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionError(pub String);

impl<E: std::fmt::Display> From<E> for ActionError {
    fn from(e: E) -> Self {
        ActionError(e.to_string())
    }
}

type BoxedAction = Arc<
    dyn Fn(Request, Json) -> Pin<Box<dyn Future<Output = Result<Json, ActionError>> + Send>>
        + Send
        + Sync,
>;

/// One action of an agent.
#[derive(Clone)]
pub struct Action {
    pub id: String,
    pub description: String,
    pub permission: Permission,
    /// JSON Schema of its parameters (from the parameter type).
    pub input_schema: Json,
    pub output_schema: Option<Json>,
    /// Phrases that ask for this action (`how big is {path}`), for `plexus ask`.
    pub intents: Vec<String>,
    run: BoxedAction,
}

impl Action {
    /// An action taking parameters of type `P` (their JSON Schema is derived with
    /// `schemars`, and the engine checks a step's parameters against it before calling)
    /// and answering any serializable value.
    pub fn new<P, R, F, Fut>(id: &str, description: &str, permission: Permission, f: F) -> Action
    where
        P: DeserializeOwned + JsonSchema + Send + 'static,
        R: Serialize + JsonSchema,
        F: Fn(Request, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, ActionError>> + Send + 'static,
    {
        let f = Arc::new(f);
        let run: BoxedAction = Arc::new(move |req, params| {
            let f = f.clone();
            Box::pin(async move {
                let params: P = serde_json::from_value(params)
                    .map_err(|e| ActionError(format!("bad parameters: {e}")))?;
                let out = f(req, params).await?;
                serde_json::to_value(out).map_err(|e| ActionError(format!("bad result: {e}")))
            })
        });
        Action {
            id: id.to_owned(),
            description: description.to_owned(),
            permission,
            input_schema: serde_json::to_value(schemars::schema_for!(P)).unwrap_or(Json::Null),
            output_schema: serde_json::to_value(schemars::schema_for!(R)).ok(),
            intents: Vec::new(),
            run,
        }
    }

    /// A phrase that asks for this action; `{name}` placeholders become its parameters.
    pub fn intent(mut self, pattern: &str) -> Action {
        self.intents.push(pattern.to_owned());
        self
    }
}

/// A configuration key the agent reads (set with `plexus agent config-set`).
#[derive(Debug, Clone)]
pub struct ConfigKey {
    pub key: String,
    pub description: String,
    pub required: bool,
    pub secret: bool,
    pub default: String,
}

type EmbedFn = Arc<
    dyn Fn(
            wire::EmbedRequest,
        ) -> Pin<Box<dyn Future<Output = Result<Vec<Vec<f32>>, String>> + Send>>
        + Send
        + Sync,
>;

type HealthFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// An agent: build it, then [`crate::serve`] it.
#[derive(Clone)]
pub struct Agent {
    pub name: String,
    pub version: String,
    pub description: String,
    pub stages: Vec<Stage>,
    pub actions: Vec<Action>,
    pub config: Vec<ConfigKey>,
    /// Prompts `llm` steps can use by name (`template: AGENT/NAME`).
    pub prompt_templates: Vec<wire::PromptTemplate>,
    /// `PROVIDER` for a model provider (see [`Agent::provider`]), else `AGENT`.
    pub plugin_type: i32,
    embed: Option<EmbedFn>,
    health: Option<HealthFn>,
    /// The configuration the engine pushed last.
    pushed: Arc<RwLock<BTreeMap<String, String>>>,
    pub(crate) instance_id: String,
    pub(crate) engine: Option<Engine>,
}

impl Agent {
    pub fn new(name: &str, version: &str, description: &str) -> Agent {
        Agent {
            name: name.to_owned(),
            version: version.to_owned(),
            description: description.to_owned(),
            stages: Vec::new(),
            actions: Vec::new(),
            config: Vec::new(),
            prompt_templates: Vec::new(),
            plugin_type: wire::plugin_type::AGENT,
            embed: None,
            health: None,
            pushed: Arc::default(),
            instance_id: uuid::Uuid::new_v4().to_string(),
            engine: None,
        }
    }

    pub fn stage(mut self, stage: Stage) -> Agent {
        self.stages.push(stage);
        self
    }

    pub fn action(mut self, action: Action) -> Agent {
        self.actions.push(action);
        self
    }

    /// A prompt `llm` steps can use by name: `template: AGENT/NAME` with `vars:` for its
    /// `{{ placeholders }}`.
    pub fn prompt_template(mut self, name: &str, description: &str, content: &str) -> Agent {
        self.prompt_templates.push(wire::PromptTemplate {
            name: name.to_owned(),
            description: description.to_owned(),
            content: content.to_owned(),
        });
        self
    }

    /// Makes this a model provider plugin (type `PROVIDER`): its action `chat` answers
    /// chat calls (parameters `messages` (a JSON string), `tools`, `max_tokens`,
    /// `temperature`, `model`; result `content`, `model`, `finish_reason`, `tool_calls`,
    /// `usage`), and `embed` makes embeddings (`Embed`).
    pub fn provider<F, Fut>(mut self, embed: F) -> Agent
    where
        F: Fn(wire::EmbedRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<Vec<f32>>, String>> + Send + 'static,
    {
        self.plugin_type = wire::plugin_type::PROVIDER;
        self.embed = Some(Arc::new(move |r| Box::pin(embed(r))));
        self
    }

    pub fn config_key(mut self, key: ConfigKey) -> Agent {
        self.config.push(key);
        self
    }

    /// How the agent tells whether it can work (its backend answers, say).
    pub fn health<F, Fut>(mut self, f: F) -> Agent
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.health = Some(Arc::new(move || Box::pin(f())));
        self
    }

    /// The configuration the engine pushed last (empty until it pushes; read it with
    /// [`Engine::config`] otherwise).
    pub fn pushed_config(&self) -> BTreeMap<String, String> {
        self.pushed.read().map(|c| c.clone()).unwrap_or_default()
    }

    /// What the SDKs check before serving; the engine checks the same.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.name.trim().is_empty() {
            out.push("the agent's name is empty".to_owned());
        }
        if self.version.trim().is_empty() {
            out.push("the agent's version is empty".to_owned());
        }
        if self.description.trim().is_empty() {
            out.push("the agent's description is empty".to_owned());
        }
        if self.stages.is_empty() {
            out.push("the agent declares no stage".to_owned());
        }
        if self.actions.is_empty() {
            out.push("the agent declares no action".to_owned());
        }
        let mut seen = std::collections::HashSet::new();
        for a in &self.actions {
            if !seen.insert(a.id.as_str()) {
                out.push(format!("action `{}` is declared twice", a.id));
            }
        }
        out
    }

    fn stages_wire(&self) -> Vec<i32> {
        self.stages.iter().map(|s| *s as i32).collect()
    }

    fn action_defs(&self, style: Style) -> Vec<wire::ActionDef> {
        self.actions
            .iter()
            .map(|a| wire::ActionDef {
                id: a.id.clone(),
                description: a.description.clone(),
                permission: a.permission.wire(),
                stages: self.stages_wire(),
                input_params: Blob::json(&a.input_schema, style),
                output_params: a
                    .output_schema
                    .as_ref()
                    .map(|s| Blob::json(s, style))
                    .unwrap_or_default(),
                intents: a
                    .intents
                    .iter()
                    .map(|p| wire::IntentPattern {
                        pattern: p.clone(),
                        confidence: 1.0,
                        description: a.description.clone(),
                        priority: 10,
                    })
                    .collect(),
                ..Default::default()
            })
            .collect()
    }

    pub(crate) fn info(&self, style: Style) -> wire::InfoResponse {
        wire::InfoResponse {
            name: self.name.clone(),
            version: self.version.clone(),
            description: self.description.clone(),
            plugin_type: self.plugin_type,
            permission: self
                .actions
                .iter()
                .map(|a| a.permission)
                .max()
                .unwrap_or(Permission::Read)
                .wire(),
            devops_stages: self.stages_wire(),
            actions: self.action_defs(style),
            config_schema: self
                .config
                .iter()
                .map(|c| wire::ConfigParam {
                    key: c.key.clone(),
                    kind: "string".into(),
                    required: c.required,
                    default: c.default.clone(),
                    description: c.description.clone(),
                    is_secret: c.secret,
                })
                .collect(),
            prompt_templates: self.prompt_templates.clone(),
            instance_id: self.instance_id.clone(),
            ..Default::default()
        }
    }

    async fn execute(&self, req: wire::ExecuteRequest) -> wire::ExecuteResponse {
        let started = Instant::now();
        let params = match req.params_json.to_json() {
            Ok(Some(Json::Object(mut map))) => {
                map.remove("action");
                Json::Object(map)
            }
            Ok(None) => Json::Object(Default::default()),
            Ok(Some(other)) => {
                return failed(
                    format!("params_json must be an object, not {other}"),
                    started,
                );
            }
            Err(e) => return failed(format!("params_json: {e}"), started),
        };
        let action_id = if req.action_id.is_empty() {
            // The public SDKs' callers name the action among the parameters.
            req.params_json
                .to_json()
                .ok()
                .flatten()
                .and_then(|p| p.get("action").and_then(Json::as_str).map(str::to_owned))
                .unwrap_or_default()
        } else {
            req.action_id.clone()
        };
        let Some(action) = self.actions.iter().find(|a| a.id == action_id) else {
            return failed(
                format!("{} has no action `{action_id}`", self.name),
                started,
            );
        };
        let request = Request {
            execution_id: req.execution_id,
            step_id: req.step_id,
            tenant_id: req.tenant_id,
            time_range: req.time_range.filter(|t| t.start_epoch_ms > 0),
            engine: self.engine.clone(),
        };
        match (action.run)(request, params).await {
            Ok(result) => wire::ExecuteResponse {
                success: true,
                result_json: Blob::json(&result, Style::Go),
                duration_ms: started.elapsed().as_millis() as i64,
                ..Default::default()
            },
            Err(ActionError(e)) => failed(e, started),
        }
    }
}

fn failed(error: String, started: Instant) -> wire::ExecuteResponse {
    wire::ExecuteResponse {
        success: false,
        error,
        duration_ms: started.elapsed().as_millis() as i64,
        ..Default::default()
    }
}

/// The parameters an agent's action declares, as the engine reads them (for tests and
/// tools that look at an agent without running it).
pub fn declared_params(def: &wire::ActionDef) -> Result<Params, String> {
    Params::from_declared(def.input_params.to_json()?)
}

impl Handler for Agent {
    async fn call(&self, call: Call) -> Result<Json, Status> {
        let style = call.style;
        let bad = |e: String| Status::invalid_argument(e);
        Ok(match call.method.as_str() {
            "Info" => wire::encode(&self.info(style)),
            "GetSchema" => wire::encode(&wire::GetSchemaResponse {
                actions: self.action_defs(style),
                ..Default::default()
            }),
            "Execute" => {
                let req: wire::ExecuteRequest = wire::decode(call.body).map_err(bad)?;
                let mut out = self.execute(req).await;
                // Results travel in the caller's style.
                if style == Style::Python
                    && let Ok(Some(v)) = out.result_json.to_json()
                {
                    out.result_json = Blob::json(&v, style);
                }
                wire::encode(&out)
            }
            "Embed" => {
                let req: wire::EmbedRequest = wire::decode(call.body).map_err(bad)?;
                let Some(embed) = &self.embed else {
                    return Err(Status::unimplemented("Embed is not implemented"));
                };
                let model = req.model.clone();
                let out = match embed(req).await {
                    Ok(vectors) => wire::EmbedResponse {
                        dimensions: vectors.first().map_or(0, |v| v.len() as i32),
                        vectors,
                        model,
                        error: String::new(),
                    },
                    Err(error) => wire::EmbedResponse {
                        error,
                        ..Default::default()
                    },
                };
                wire::encode(&out)
            }
            "HealthCheck" => {
                let verdict = match &self.health {
                    Some(check) => check().await,
                    None => Ok(()),
                };
                wire::encode(&wire::HealthCheckResponse {
                    healthy: verdict.is_ok(),
                    message: verdict.err().unwrap_or_else(|| "ok".into()),
                    ..Default::default()
                })
            }
            "ConfigUpdated" => {
                let req: wire::ConfigUpdatedRequest = wire::decode(call.body).map_err(bad)?;
                if let Ok(mut c) = self.pushed.write() {
                    *c = req.config;
                }
                wire::encode(&wire::ConfigUpdatedResponse {
                    acknowledged: true,
                    ..Default::default()
                })
            }
            other => return Err(Status::unimplemented(format!("{other} is not implemented"))),
        })
    }

    fn streams(&self, method: &str) -> bool {
        method == "ChatStream" && self.plugin_type == wire::plugin_type::PROVIDER
    }

    /// `ChatStream`: the provider's `chat` action, its `content` sent on in pieces as
    /// they are ready (word by word here: the action answers whole), then the end.
    async fn call_stream(&self, call: Call) -> Result<crate::rpc::JsonStream, Status> {
        let req: wire::ChatStreamRequest =
            wire::decode(call.body).map_err(Status::invalid_argument)?;
        let answer = self
            .execute(wire::ExecuteRequest {
                action_id: "chat".into(),
                params_json: req.params_json,
                tenant_id: req.tenant_id,
                ..Default::default()
            })
            .await;
        let piece = |token: String, is_final: bool, error: String| {
            Ok(wire::encode(&wire::ChatStreamResponse {
                token,
                is_final,
                error,
            }))
        };
        let mut pieces = Vec::new();
        if !answer.success {
            pieces.push(piece(String::new(), true, answer.error));
        } else {
            let content = answer
                .result_json
                .to_json()
                .ok()
                .flatten()
                .and_then(|v| v["content"].as_str().map(str::to_owned))
                .unwrap_or_default();
            for word in content.split_inclusive(' ') {
                pieces.push(piece(word.to_owned(), false, String::new()));
            }
            pieces.push(piece(String::new(), true, String::new()));
        }
        Ok(Box::pin(tokio_stream::iter(pieces)))
    }
}
