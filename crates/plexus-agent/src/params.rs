//! Action parameters: what an action declares it takes, as JSON Schema.
//!
//! The public SDKs do not send JSON Schema: an action's `input_params` is a JSON *array*
//! of `{"Name", "Type", "Required", "Description"}` (Go structs without json tags), and
//! their agents expect every value as a string. Plexus agents written with this crate
//! send a JSON Schema *object* there instead, and get their values as typed JSON. Both
//! become a [`Params`]: the schema the engine checks a step's `with:` against, and how
//! values travel.

use serde_json::{Map, Value as Json, json};

/// What an action takes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Params {
    /// A JSON Schema of the parameters object.
    pub schema: Json,
    /// Whether the agent expects every value as a string (the SDKs' parameter lists).
    pub strings: bool,
}

impl Params {
    /// Anything goes (an action that declares nothing), values sent as strings.
    pub fn undeclared() -> Params {
        Params {
            schema: json!({"type": "object"}),
            strings: true,
        }
    }

    /// From what an action sent in `input_params` (already decoded from its blob).
    pub fn from_declared(declared: Option<Json>) -> Result<Params, String> {
        match declared {
            None | Some(Json::Null) => Ok(Params::undeclared()),
            Some(Json::Array(list)) => from_list(&list),
            Some(schema @ Json::Object(_)) => Ok(Params {
                schema,
                strings: false,
            }),
            Some(other) => Err(format!(
                "input_params must be a parameter list or a JSON Schema object, not {other}"
            )),
        }
    }

    /// The values as the agent expects them.
    pub fn values_for_agent(&self, values: &Map<String, Json>) -> Map<String, Json> {
        if !self.strings {
            return values.clone();
        }
        values
            .iter()
            .map(|(k, v)| (k.clone(), Json::String(stringify(v))))
            .collect()
    }
}

/// A value as a Go agent reads a parameter: strings as they are, anything else as JSON.
pub fn stringify(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn field<'a>(entry: &'a Json, name: &str) -> Option<&'a Json> {
    let obj = entry.as_object()?;
    obj.get(name)
        .or_else(|| obj.get(&name.to_ascii_lowercase()))
}

/// A parameter list as JSON Schema. Values are checked as what they will be read as:
/// a `number` may be written as a number or a numeric string, a `boolean` as a boolean
/// or `"true"`/`"false"`, a `string` as any scalar (it is sent as its text).
fn from_list(list: &[Json]) -> Result<Params, String> {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let name = field(entry, "Name")
            .and_then(Json::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("parameter {i} has no Name"))?;
        let kind = field(entry, "Type").and_then(Json::as_str).unwrap_or("");
        let mut schema = match kind.to_ascii_lowercase().as_str() {
            "number" | "int" | "integer" | "float" => json!({
                "anyOf": [
                    {"type": "number"},
                    {"type": "string", "pattern": "^\\s*-?[0-9]+(\\.[0-9]+)?([eE][-+]?[0-9]+)?\\s*$"}
                ]
            }),
            "boolean" | "bool" => json!({"anyOf": [
                {"type": "boolean"}, {"enum": ["true", "false"]}
            ]}),
            "string" | "duration" => json!({"type": ["string", "number", "boolean"]}),
            _ => json!({}),
        };
        if let Some(d) = field(entry, "Description").and_then(Json::as_str)
            && !d.is_empty()
        {
            schema["description"] = Json::String(d.to_owned());
        }
        if field(entry, "Required").and_then(Json::as_bool) == Some(true) {
            required.push(Json::String(name.to_owned()));
        }
        properties.insert(name.to_owned(), schema);
    }
    Ok(Params {
        schema: json!({"type": "object", "properties": properties, "required": required}),
        strings: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_go_parameter_list_becomes_json_schema_with_required_names() {
        let p = Params::from_declared(Some(json!([
            {"Name": "query", "Type": "string", "Required": true, "Description": "PromQL"},
            {"Name": "step", "Type": "number", "Required": false, "Description": ""}
        ])))
        .unwrap();
        assert!(p.strings);
        assert_eq!(p.schema["required"], json!(["query"]));
        assert_eq!(p.schema["properties"]["query"]["description"], "PromQL");
        let sent = p.values_for_agent(
            json!({"query": "up", "step": 60, "labels": {"a": 1}})
                .as_object()
                .unwrap(),
        );
        assert_eq!(
            Json::Object(sent),
            json!({"query": "up", "step": "60", "labels": "{\"a\":1}"})
        );
    }

    #[test]
    fn a_json_schema_object_is_taken_as_it_is_and_values_stay_typed() {
        let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
        let p = Params::from_declared(Some(schema.clone())).unwrap();
        assert_eq!(p.schema, schema);
        assert!(!p.strings);
        let values = json!({"n": 3});
        assert_eq!(
            Json::Object(p.values_for_agent(values.as_object().unwrap())),
            values
        );
    }

    #[test]
    fn nothing_declared_takes_anything_and_a_nameless_parameter_is_an_error() {
        assert_eq!(Params::from_declared(None).unwrap(), Params::undeclared());
        assert!(Params::from_declared(Some(json!([{"Type": "string"}]))).is_err());
        assert!(Params::from_declared(Some(json!("x"))).is_err());
    }
}
