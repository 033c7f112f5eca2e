//! A YAML/JSON document as a tree of nodes that remember where they were written.
//!
//! The manifest is first read into this tree (serde-saphyr does the YAML parsing and
//! refuses alias bombs through its budget), then converted by hand into typed structs so
//! that every problem can be reported at once, with its line and column.

use crate::diagnostic::Loc;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub loc: Loc,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub loc: Loc,
    pub value: Value,
}

impl Node {
    /// A short name for the node's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// What the node holds, for "found ..." in error messages: the value itself for
    /// scalars (`-1`, `the string "many"`, `true`), the type for lists and mappings.
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Null => "null".into(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Str(s) => {
                let shown: String = s.chars().take(40).collect();
                let more = if shown.len() < s.len() { "…" } else { "" };
                format!("the string {:?}{more}", shown)
            }
            Value::Seq(_) | Value::Map(_) => self.type_name().into(),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The node as plain JSON (locations dropped).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// Why a document could not be read at all.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub loc: Loc,
    pub message: String,
}

fn loc_of<T>(s: &Spanned<T>) -> Loc {
    Loc {
        line: s.referenced.line() as u32,
        column: s.referenced.column() as u32,
    }
}

struct Raw(Value);

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw(Value::Null))
    }
    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw(Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        Raw::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw(Value::Int(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw(
            i64::try_from(v).map_or(Value::Float(v as f64), Value::Int)
        ))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw(Value::Float(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw(Value::Str(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(Raw(Value::Str(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Raw>>()? {
            items.push(Node {
                loc: loc_of(&item),
                value: item.value.0,
            });
        }
        Ok(Raw(Value::Seq(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some((k, v)) = map.next_entry::<Spanned<String>, Spanned<Raw>>()? {
            entries.push((
                Key {
                    loc: loc_of(&k),
                    name: k.value,
                },
                Node {
                    loc: loc_of(&v),
                    value: v.value.0,
                },
            ));
        }
        Ok(Raw(Value::Map(entries)))
    }
}

/// Largest manifest accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024 * 1024;

/// Reads one YAML (or JSON, which YAML contains) document into a located tree.
pub fn parse_document(text: &str) -> Result<Node, SyntaxError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(SyntaxError {
            loc: Loc { line: 1, column: 1 },
            message: format!(
                "the document is {} bytes; the limit is {MAX_DOCUMENT_BYTES}",
                text.len()
            ),
        });
    }
    if text.trim().is_empty() {
        return Ok(Node {
            loc: Loc { line: 1, column: 1 },
            value: Value::Null,
        });
    }
    // Large generated workflows (100k steps) are legitimate, so the node budget is raised;
    // alias expansion keeps its own, much smaller limits, which is what stops alias bombs.
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = 20_000_000;
    budget.max_events = 20_000_000;
    let mut alias_limits = serde_saphyr::options::AliasLimits::default();
    alias_limits.max_total_replayed_events = 200_000;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.alias_limits = alias_limits;
    options.with_snippet = false;
    // YAML 1.2 booleans only: `on`, `off`, `yes`, `no` stay text (a step id `off`, a
    // country code `no`), as every modern YAML reader treats them.
    options.strict_booleans = true;
    match serde_saphyr::from_str_with_options::<Spanned<Raw>>(text, options) {
        Ok(node) => Ok(Node {
            loc: loc_of(&node),
            value: node.value.0,
        }),
        Err(e) => {
            let loc = e.location().map_or(Loc { line: 1, column: 1 }, |l| Loc {
                line: l.line() as u32,
                column: l.column() as u32,
            });
            Err(SyntaxError {
                loc,
                message: clean_message(&e.to_string()),
            })
        }
    }
}

/// The first line of serde-saphyr's message, without the location it repeats.
fn clean_message(message: &str) -> String {
    let first = message.lines().next().unwrap_or(message);
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let first = match first.find(" at line ") {
        Some(i) => &first[..i],
        None => first,
    };
    match first.find(": ") {
        Some(i) if first[..i].starts_with("line ") => first[i + 2..].to_owned(),
        _ => first.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_locations_of_keys_and_values() {
        let node = parse_document("a: 1\nb:\n  - x: yes\n").unwrap();
        let Value::Map(entries) = &node.value else {
            panic!("not a map")
        };
        assert_eq!(entries[1].0.name, "b");
        assert_eq!(entries[1].0.loc, Loc { line: 2, column: 1 });
        let Value::Seq(items) = &entries[1].1.value else {
            panic!("not a seq")
        };
        assert_eq!(items[0].loc.line, 3);
    }

    #[test]
    fn reports_syntax_errors_with_location() {
        let err = parse_document("a: [1, 2\nb: 3").unwrap_err();
        assert_eq!(err.loc.line, 2);
        assert!(!err.message.contains("line 2"), "{}", err.message);
    }

    #[test]
    fn only_true_and_false_are_booleans() {
        let node = parse_document("a: off\nb: yes\nc: true\non: [x]\n").unwrap();
        let Value::Map(entries) = &node.value else {
            panic!("not a map")
        };
        assert_eq!(entries[0].1.value, Value::Str("off".into()));
        assert_eq!(entries[1].1.value, Value::Str("yes".into()));
        assert_eq!(entries[2].1.value, Value::Bool(true));
        assert_eq!(entries[3].0.name, "on");
    }

    #[test]
    fn refuses_alias_bombs() {
        let mut doc = String::from("a: &a [x,x,x,x,x,x,x,x,x,x]\n");
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
        for w in names.windows(2) {
            let refs = vec![format!("*{}", w[0]); 10].join(",");
            doc.push_str(&format!("{}: &{} [{}]\n", w[1], w[1], refs));
        }
        assert!(parse_document(&doc).is_err());
    }
}
