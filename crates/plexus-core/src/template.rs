//! Templates (`{{ inputs.service }}`) and expressions (`when`, `foreach`), rendered with
//! minijinja. Rendering is pure: the caller passes the context, a minijinja [`Value`]
//! whose parts are shared, not copied (a step's large output is converted once, not once
//! per foreach item; see [`context_of`] for a context made from JSON).

use minijinja::{Environment, UndefinedBehavior, Value};
use serde_json::Value as Json;
use std::sync::OnceLock;

/// Strict: an undefined name is an error, so a typo never becomes an empty string inside
/// a shell command.
fn strict() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env
    })
}

/// Chainable: `when` conditions may look into outputs that are missing (a skipped step),
/// which evaluates to undefined, i.e. false.
fn lenient() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env
    })
}

pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

/// If `s` is exactly one `{{ expression }}`, the expression inside it.
fn sole_expression(s: &str) -> Option<&str> {
    let inner = s.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}")).then_some(inner.trim())
}

fn describe(e: &minijinja::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

/// Checks template syntax without rendering.
pub fn check_template(src: &str) -> Result<(), String> {
    if !is_template(src) {
        return Ok(());
    }
    strict()
        .template_from_str(src)
        .map(|_| ())
        .map_err(|e| describe(&e))
}

/// Checks an expression (`when`, `foreach`), with or without surrounding `{{ }}`.
pub fn check_expression(src: &str) -> Result<(), String> {
    let expr = sole_expression(src).unwrap_or(src);
    lenient()
        .compile_expression(expr)
        .map(|_| ())
        .map_err(|e| describe(&e))
}

/// A template value made from JSON (converted whole, eagerly: keep and share the result
/// rather than converting the same JSON again).
pub fn context_of(ctx: &Json) -> Value {
    Value::from(minijinja::value::Serde(ctx))
}

pub fn render_str(src: &str, ctx: &Value) -> Result<String, String> {
    if !is_template(src) {
        return Ok(src.to_owned());
    }
    strict()
        .render_str(src, ctx.clone())
        .map_err(|e| describe(&e))
}

/// Renders every string inside a JSON value. A string that is exactly `{{ expr }}` becomes
/// the expression's value with its type (a list stays a list).
pub fn render_value(value: &Json, ctx: &Value) -> Result<Json, String> {
    Ok(match value {
        Json::String(s) => match sole_expression(s) {
            Some(expr) => eval_value(expr, ctx)?,
            None => Json::String(render_str(s, ctx)?),
        },
        Json::Array(items) => Json::Array(
            items
                .iter()
                .map(|v| render_value(v, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Json::Object(map) => Json::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_value(v, ctx)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// Evaluates an expression strictly and returns its value as JSON.
pub fn eval_value(expr: &str, ctx: &Value) -> Result<Json, String> {
    let expr = sole_expression(expr).unwrap_or(expr);
    let compiled = strict()
        .compile_expression(expr)
        .map_err(|e| describe(&e))?;
    let v = compiled.eval(ctx.clone()).map_err(|e| describe(&e))?;
    serde_json::to_value(&v).map_err(|e| e.to_string())
}

/// Evaluates a `when` condition: undefined values are false rather than errors.
pub fn eval_condition(expr: &str, ctx: &Value) -> Result<bool, String> {
    let expr = sole_expression(expr).unwrap_or(expr);
    let compiled = lenient()
        .compile_expression(expr)
        .map_err(|e| describe(&e))?;
    let v = compiled.eval(ctx.clone()).map_err(|e| describe(&e))?;
    Ok(v.is_true())
}

/// Names that follow `root.` or `root["..."]` in a template or expression, e.g. the step
/// ids in `steps.fetch.output` or `steps['fetch-logs']`.
pub fn referenced_names(src: &str, root: &str) -> Vec<String> {
    let bytes = src.as_bytes();
    let mut names = Vec::new();
    let mut from = 0;
    while let Some(pos) = src[from..].find(root) {
        let start = from + pos;
        from = start + root.len();
        let preceded = start > 0 && {
            let c = bytes[start - 1];
            c.is_ascii_alphanumeric() || c == b'_' || c == b'.'
        };
        if preceded {
            continue;
        }
        let rest = &src[from..];
        let name: String = if let Some(r) = rest.strip_prefix('.') {
            r.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        } else if let Some(r) = rest.strip_prefix('[') {
            let r = r.trim_start();
            let Some(quote) = r.chars().next().filter(|c| *c == '"' || *c == '\'') else {
                continue;
            };
            r[1..].chars().take_while(|c| *c != quote).collect()
        } else {
            continue;
        };
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_and_keeps_types_of_sole_expressions() {
        let ctx = context_of(
            &json!({"inputs": {"svc": "api"}, "steps": {"inv": {"output": {"hosts": ["a", "b"]}}}}),
        );
        assert_eq!(
            render_str("restart {{ inputs.svc }}", &ctx).unwrap(),
            "restart api"
        );
        let v = render_value(
            &json!({"hosts": "{{ steps.inv.output.hosts }}", "n": 3}),
            &ctx,
        )
        .unwrap();
        assert_eq!(v, json!({"hosts": ["a", "b"], "n": 3}));
    }

    #[test]
    fn strict_rendering_refuses_undefined_names() {
        let err = render_str(
            "rm -rf /{{ inputs.nope }}",
            &context_of(&json!({"inputs": {}})),
        )
        .unwrap_err();
        assert!(err.contains("undefined"), "{err}");
    }

    #[test]
    fn conditions_treat_missing_as_false() {
        let ctx = context_of(&json!({"steps": {"a": {"output": {"action": "restart"}}}}));
        assert!(eval_condition("steps.a.output.action == \"restart\"", &ctx).unwrap());
        assert!(!eval_condition("steps.b.output.action == \"restart\"", &ctx).unwrap());
        assert!(eval_condition("{{ 1 < 2 }}", &ctx).unwrap());
    }

    #[test]
    fn finds_references() {
        let src = "{{ steps.a.output }} {{ steps['fetch-logs'].output }} {{ mysteps.x }} {{ inputs.svc }}";
        assert_eq!(referenced_names(src, "steps"), vec!["a", "fetch-logs"]);
        assert_eq!(referenced_names(src, "inputs"), vec!["svc"]);
    }
}
