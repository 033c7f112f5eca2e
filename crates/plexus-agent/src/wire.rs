//! The messages of `mirastack.plugin.v1` as they travel: JSON in Go's `encoding/json`
//! form (snake_case names, integer enums, int64 as numbers).
//!
//! Decoding is lenient, because two SDKs with different habits speak it: a missing field
//! or a `null` is the zero value ([`decode`]), and a protobuf `bytes` field is a [`Blob`]
//! that may hold base64 (Go) or the raw text (Python). Encoding follows the Go SDK, except
//! that blobs are written in the style of the peer ([`Style`]).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value as Json;
use std::collections::BTreeMap;

/// How a peer writes `bytes` fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Style {
    /// Base64 strings (Go's `encoding/json` for `[]byte`), sent as `application/grpc+json`.
    #[default]
    Go,
    /// The raw text itself (the Python SDK), sent as plain `application/grpc`.
    Python,
}

impl Style {
    /// The style of a caller, from the content type of its request: the Go SDK says
    /// `application/grpc+json`; the Python SDK sends JSON under plain `application/grpc`.
    pub fn of_content_type(content_type: Option<&str>) -> Style {
        match content_type {
            Some(t) if t.starts_with("application/grpc+json") => Style::Go,
            _ => Style::Python,
        }
    }
}

/// A protobuf `bytes` field as JSON text: base64 or raw, depending on who wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blob(pub String);

impl Blob {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bytes written for a peer of `style`.
    pub fn encode(bytes: &[u8], style: Style) -> Blob {
        match style {
            Style::Go => Blob(BASE64.encode(bytes)),
            Style::Python => Blob(String::from_utf8_lossy(bytes).into_owned()),
        }
    }

    /// A JSON document written for a peer of `style`.
    pub fn json(value: &Json, style: Style) -> Blob {
        Blob::encode(value.to_string().as_bytes(), style)
    }

    /// The bytes, read the way a peer of `style` writes them (binary data such as cache
    /// values; text that is not base64 is taken as it is).
    pub fn bytes(&self, style: Style) -> Vec<u8> {
        match style {
            Style::Go => BASE64
                .decode(self.0.as_bytes())
                .unwrap_or_else(|_| self.0.as_bytes().to_vec()),
            Style::Python => self.0.as_bytes().to_vec(),
        }
    }

    /// The JSON document it carries, whoever wrote it: raw JSON text is taken first
    /// (base64 of a JSON document is never itself a JSON document, except for texts of
    /// digits that decode to no valid JSON), then base64. Empty is `None`.
    pub fn to_json(&self) -> Result<Option<Json>, String> {
        let text = self.0.trim();
        if text.is_empty() {
            return Ok(None);
        }
        if let Ok(v) = serde_json::from_str::<Json>(text) {
            return Ok(Some(v));
        }
        let decoded = BASE64
            .decode(text.as_bytes())
            .map_err(|_| format!("neither JSON nor base64 of JSON: {}", preview(text)))?;
        if decoded.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        serde_json::from_slice(&decoded)
            .map(Some)
            .map_err(|e| format!("base64 of something that is not JSON ({e})"))
    }
}

fn preview(text: &str) -> String {
    let cut: String = text.chars().take(60).collect();
    if cut.len() < text.len() {
        format!("{cut}...")
    } else {
        cut
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A peer that put a JSON document where bytes belong meant its text.
        Ok(match Json::deserialize(d)? {
            Json::String(s) => Blob(s),
            Json::Null => Blob::default(),
            other => Blob(other.to_string()),
        })
    }
}

/// Decodes a message leniently: `null` anywhere counts as absent, absent fields are zero
/// values, unknown fields are ignored.
pub fn decode<T: DeserializeOwned + Default>(mut body: Json) -> Result<T, String> {
    if body.is_null() {
        return Ok(T::default());
    }
    strip_nulls(&mut body);
    serde_json::from_value(body).map_err(|e| format!("malformed message: {e}"))
}

fn strip_nulls(v: &mut Json) {
    match v {
        Json::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Json::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Encodes a message.
pub fn encode<T: Serialize>(message: &T) -> Json {
    serde_json::to_value(message).unwrap_or(Json::Null)
}

/// Permission levels on the wire.
pub mod permission {
    pub const UNSPECIFIED: i32 = 0;
    pub const READ: i32 = 1;
    pub const MODIFY: i32 = 2;
    pub const ADMIN: i32 = 3;
    /// An older name for MODIFY.
    pub const WRITE: i32 = 4;
}

/// Plugin types on the wire.
pub mod plugin_type {
    pub const AGENT: i32 = 1;
    pub const PROVIDER: i32 = 2;
    pub const CONNECTOR: i32 = 3;
}

/// Execution modes on the wire.
pub mod mode {
    pub const MANUAL: i32 = 1;
    pub const GUIDED: i32 = 2;
    pub const AUTONOMOUS: i32 = 3;
}

// ---------------------------------------------------------------- PluginService

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct IntentPattern {
    pub pattern: String,
    pub confidence: f32,
    pub description: String,
    pub priority: i32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RoutingSemantics {
    pub schema_version: String,
    pub accepted_intent_domains: Vec<String>,
    pub capability_domain: String,
    pub positive_use_cases: Vec<String>,
    pub negative_use_cases: Vec<String>,
    pub signal_domains: Vec<String>,
    pub backend_domains: Vec<String>,
    pub entity_types: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ActionDef {
    pub id: String,
    pub description: String,
    pub permission: i32,
    pub stages: Vec<i32>,
    pub intents: Vec<IntentPattern>,
    /// A parameter list (see [`crate::params`]), as a blob.
    pub input_params: Blob,
    pub output_params: Blob,
    pub routing_semantics: RoutingSemantics,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PromptTemplate {
    pub name: String,
    pub description: String,
    pub content: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ConfigParam {
    pub key: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub required: bool,
    pub default: String,
    pub description: String,
    pub is_secret: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct InfoResponse {
    pub name: String,
    pub version: String,
    pub description: String,
    #[serde(rename = "type")]
    pub plugin_type: i32,
    pub permission: i32,
    pub devops_stages: Vec<i32>,
    pub default_intents: Vec<IntentPattern>,
    pub actions: Vec<ActionDef>,
    pub prompt_templates: Vec<PromptTemplate>,
    pub config_schema: Vec<ConfigParam>,
    pub metadata: BTreeMap<String, String>,
    pub instance_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct GetSchemaResponse {
    pub params_json_schema: Blob,
    pub result_json_schema: Blob,
    pub actions: Vec<ActionDef>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TimeRange {
    pub start_epoch_ms: i64,
    pub end_epoch_ms: i64,
    pub timezone: String,
    pub original_expression: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ExecuteRequest {
    pub execution_id: String,
    pub step_id: String,
    pub action_id: String,
    /// A JSON object.
    pub params_json: Blob,
    /// What the Python SDK reads.
    pub mode: i32,
    /// What the Go SDK reads.
    pub execution_mode: i32,
    pub context: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_range: Option<TimeRange>,
    pub tenant_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ExecuteResponse {
    pub success: bool,
    pub result_json: Blob,
    pub error: String,
    pub logs: Vec<String>,
    pub duration_ms: i64,
}

/// A provider plugin's `ChatStream` (server streaming): the `chat` parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ChatStreamRequest {
    pub params_json: Blob,
    pub tenant_id: String,
}

/// One piece of a streamed reply; the last has `is_final`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ChatStreamResponse {
    pub token: String,
    pub is_final: bool,
    pub error: String,
}

/// A provider plugin's `Embed`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct EmbedRequest {
    pub model: String,
    pub inputs: Vec<String>,
    pub tenant_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct EmbedResponse {
    pub vectors: Vec<Vec<f32>>,
    pub model: String,
    pub dimensions: i32,
    pub error: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct HealthCheckResponse {
    pub healthy: bool,
    pub message: String,
    pub details: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ConfigUpdatedRequest {
    pub config: BTreeMap<String, String>,
    pub version: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ConfigUpdatedResponse {
    pub acknowledged: bool,
    pub error: String,
}

// ---------------------------------------------------------------- EngineService

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RegisterPluginRequest {
    pub name: String,
    pub version: String,
    pub grpc_addr: String,
    pub plugin_type: i32,
    pub instance_id: String,
    pub tenant_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RegisterPluginResponse {
    pub success: bool,
    pub plugin_id: String,
    pub error: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DeregisterPluginRequest {
    pub name: String,
    pub instance_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Acknowledged {
    pub acknowledged: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct HeartbeatRequest {
    pub name: String,
    pub instance_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct HeartbeatResponse {
    pub acknowledged: bool,
    pub re_register_required: bool,
    #[serde(skip_serializing_if = "is_zero")]
    pub heartbeat_interval_seconds: i32,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct GetConfigRequest {
    pub plugin_name: String,
    pub tenant_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct GetConfigResponse {
    pub config: BTreeMap<String, String>,
    /// The same map as JSON text (what the Python SDK reads).
    pub config_json: String,
    pub version: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CacheGetRequest {
    pub key: String,
    pub tenant_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CacheGetResponse {
    pub value: Blob,
    pub found: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CacheGetBatchRequest {
    pub keys: Vec<String>,
    pub tenant_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CacheEntry {
    pub key: String,
    pub value: Blob,
    pub found: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CacheGetBatchResponse {
    pub entries: Vec<CacheEntry>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CacheSetRequest {
    pub key: String,
    pub value: Blob,
    pub ttl_seconds: i64,
    pub tenant_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CacheSetResponse {
    pub success: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PublishResultRequest {
    pub execution_id: String,
    pub step_id: String,
    pub result_json: Blob,
    pub success: bool,
    pub error: String,
    pub tenant_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct BlastRadius {
    pub resource_type: String,
    pub resources: Vec<String>,
    pub scope: String,
    pub reversible: bool,
    pub estimated_count: i32,
    pub regions: Vec<String>,
    pub summary: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RequestApprovalRequest {
    pub execution_id: String,
    pub step_id: String,
    pub description: String,
    pub required_permission: i32,
    pub context_json: Blob,
    pub timeout_seconds: i32,
    pub tenant_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blast_radius: Option<BlastRadius>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RequestApprovalResponse {
    pub approved: bool,
    pub timed_out: bool,
    pub reviewer: String,
    pub comment: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct LogEventRequest {
    pub plugin_name: String,
    pub event_type: String,
    pub data_json: Blob,
    pub severity: String,
    pub tenant_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CallPluginRequest {
    pub caller_plugin: String,
    pub target_plugin: String,
    pub action_id: String,
    pub params_json: Blob,
    pub timeout_seconds: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_range: Option<TimeRange>,
    pub tenant_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CallPluginResponse {
    pub success: bool,
    pub result_json: Blob,
    pub error: String,
    pub duration_ms: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ListKpisResponse {
    pub kpis: Vec<Json>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nulls_and_missing_fields_are_zero_values() {
        let info: InfoResponse = decode(json!({
            "name": "query_vmetrics", "metadata": null, "actions": [
                {"id": "query", "permission": 1, "stages": null, "input_params": null}
            ]
        }))
        .unwrap();
        assert_eq!(info.name, "query_vmetrics");
        assert!(info.metadata.is_empty());
        assert_eq!(info.actions[0].stages, Vec::<i32>::new());
        assert!(info.actions[0].input_params.is_empty());
        assert_eq!(info.version, "");
    }

    #[test]
    fn blobs_carry_json_as_base64_or_raw_text() {
        let doc = json!({"query": "up", "n": 3});
        let go = Blob::json(&doc, Style::Go);
        assert_ne!(go.0, doc.to_string(), "Go blobs are base64");
        let py = Blob::json(&doc, Style::Python);
        assert_eq!(py.0, doc.to_string());
        assert_eq!(go.to_json().unwrap(), Some(doc.clone()));
        assert_eq!(py.to_json().unwrap(), Some(doc));
        assert_eq!(Blob::default().to_json().unwrap(), None);
        // A JSON object put where bytes belong is read as its text.
        let raw: ExecuteResponse =
            decode(json!({"success": true, "result_json": {"ok": 1}})).unwrap();
        assert_eq!(raw.result_json.to_json().unwrap(), Some(json!({"ok": 1})));
        assert!(Blob("not json at all!".into()).to_json().is_err());
    }

    #[test]
    fn binary_blobs_round_trip_exactly_in_each_style() {
        let gz = [0x1f, 0x8b, 0x08, 0x00, 0xff, 0x00, 0x10];
        assert_eq!(Blob::encode(&gz, Style::Go).bytes(Style::Go), gz);
        assert_eq!(
            Blob::encode(b"plain text", Style::Python).bytes(Style::Python),
            b"plain text"
        );
    }

    #[test]
    fn the_style_of_a_caller_comes_from_its_content_type() {
        assert_eq!(
            Style::of_content_type(Some("application/grpc+json")),
            Style::Go
        );
        assert_eq!(
            Style::of_content_type(Some("application/grpc")),
            Style::Python
        );
        assert_eq!(Style::of_content_type(None), Style::Python);
    }
}
