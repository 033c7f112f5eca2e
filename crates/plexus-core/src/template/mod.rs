//! Templates (`{{ inputs.service }}`) and expressions (`when`, `foreach`), rendered with
//! minijinja. Rendering is pure: the caller passes the context, a minijinja [`Value`]
//! whose parts are shared, not copied (a step's large output is converted once, not once
//! per foreach item; see [`context_of`] for a context made from JSON).

use minijinja::{Environment, UndefinedBehavior, Value};
use serde_json::Value as Json;
use std::sync::OnceLock;

mod bounded;
pub mod sandbox;

pub use bounded::{MAX_TOKENS_PER_EXPRESSION, expression_is_bounded, is_bounded, screen};

/// How many instructions one rendering may execute. Templates run inside the engine's
/// loop, so a loop in a template (`range(9999)` three deep) must end quickly: this many
/// take a few milliseconds, far more than any interpolation or list formatting needs.
pub const RENDER_FUEL: u64 = 200_000;

/// The longest text one template may produce (1 MiB); a command line or parameter
/// longer than that is a mistake or an attack.
pub const MAX_RENDERED_BYTES: usize = 1 << 20;

fn environment(undefined: UndefinedBehavior) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(undefined);
    env.set_fuel(Some(RENDER_FUEL));
    env
}

/// Strict: an undefined name is an error, so a typo never becomes an empty string inside
/// a shell command.
fn strict() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| environment(UndefinedBehavior::Strict))
}

/// Chainable: `when` conditions may look into outputs that are missing (a skipped step),
/// which evaluates to undefined, i.e. false.
fn lenient() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| environment(UndefinedBehavior::Chainable))
}

/// Where a rendered value lands, and so how it is quoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Text, as it is (parameters, messages, environment values, directories).
    Text,
    /// A `/bin/sh` command line: every value is one shell word (`'a; b'`), so an input can
    /// never add a command. `| safe` opts a value out.
    Shell,
    /// Python source: every value is a Python literal (`'a'`, `3`, `True`, `None`,
    /// `['x']`), data rather than code. `| safe` opts a value out.
    Python,
}

fn quoting(target: Target) -> &'static Environment<'static> {
    static SHELL: OnceLock<Environment<'static>> = OnceLock::new();
    static PYTHON: OnceLock<Environment<'static>> = OnceLock::new();
    let (cell, name) = match target {
        Target::Text => return strict(),
        Target::Shell => (&SHELL, "shell"),
        Target::Python => (&PYTHON, "python"),
    };
    cell.get_or_init(|| {
        let mut env = environment(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(move |_| minijinja::AutoEscape::Custom(name.into()));
        env.set_formatter(move |out, state, value| {
            if value.is_safe() {
                return minijinja::escape_formatter(out, state, value);
            }
            let text = match target {
                Target::Python => python_literal(value),
                _ => shell_word(&value.to_string()),
            };
            out.write_str(&text).map_err(minijinja::Error::from)
        });
        env
    })
}

/// One `/bin/sh` word: as it is when it holds only characters the shell leaves alone,
/// else in single quotes (a `'` inside becomes `'\''`).
pub fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// A value as a Python literal: strings quoted (JSON's escapes are Python's), booleans
/// `True`/`False`, none `None`, lists and maps of literals.
fn python_literal(value: &Value) -> String {
    let json = serde_json::to_value(value).unwrap_or(Json::Null);
    fn literal(v: &Json) -> String {
        match v {
            Json::Null => "None".into(),
            Json::Bool(true) => "True".into(),
            Json::Bool(false) => "False".into(),
            Json::Number(n) => n.to_string(),
            Json::String(s) => Json::String(s.clone()).to_string(),
            Json::Array(items) => {
                format!(
                    "[{}]",
                    items.iter().map(literal).collect::<Vec<_>>().join(", ")
                )
            }
            Json::Object(map) => format!(
                "{{{}}}",
                map.iter()
                    .map(|(k, v)| format!("{}: {}", Json::String(k.clone()), literal(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    literal(&json)
}

/// A writer that refuses to grow past [`MAX_RENDERED_BYTES`].
struct Capped(Vec<u8>);

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_RENDERED_BYTES {
            return Err(std::io::Error::other("too long"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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
    match e.kind() {
        minijinja::ErrorKind::OutOfFuel => {
            return format!(
                "the template ran too long (more than {RENDER_FUEL} instructions); do heavy work in a step, not in a template"
            );
        }
        minijinja::ErrorKind::WriteFailure => {
            return format!(
                "the template produced more than {} KiB of text",
                MAX_RENDERED_BYTES >> 10
            );
        }
        _ => {}
    }
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
    // Parsing only: compiling would fold constants (see [`bounded::Screened`]).
    screen(src, false)?;
    minijinja::machinery::parse(src, "<template>", Default::default())
        .map(|_| ())
        .map_err(|e| describe(&e))
}

/// Checks an expression (`when`, `foreach`), with or without surrounding `{{ }}`.
pub fn check_expression(src: &str) -> Result<(), String> {
    let expr = sole_expression(src).unwrap_or(src);
    screen(expr, true)?;
    minijinja::machinery::parse_expr(expr)
        .map(|_| ())
        .map_err(|e| describe(&e))
}

/// A template value made from JSON (converted whole, eagerly: keep and share the result
/// rather than converting the same JSON again).
pub fn context_of(ctx: &Json) -> Value {
    Value::from(minijinja::value::Serde(ctx))
}

pub fn render_str(src: &str, ctx: &Value) -> Result<String, String> {
    render_for(src, ctx, Target::Text)
}

/// Renders a template whose text lands in `target`, quoting each value for it. A
/// template that could build huge values goes to the installed sandbox.
pub fn render_for(src: &str, ctx: &Value, target: Target) -> Result<String, String> {
    if !is_template(src) {
        return Ok(src.to_owned());
    }
    let kind = match target {
        Target::Text => sandbox::JobKind::Text,
        Target::Shell => sandbox::JobKind::Shell,
        Target::Python => sandbox::JobKind::Python,
    };
    let text = |rendered: Result<Json, String>| match rendered? {
        Json::String(s) => Ok(s),
        other => Err(format!(
            "the template sandbox answered {other} instead of text"
        )),
    };
    if !screen(src, false)?.compiles_safely
        && let Some(rendered) = sandbox::delegate(kind, src, ctx)
    {
        return text(rendered);
    }
    let template = quoting(target)
        .template_from_str(src)
        .map_err(|e| describe(&e))?;
    let compiled = minijinja::machinery::get_compiled_template(&template);
    if !is_bounded(&compiled.instructions)
        && let Some(rendered) = sandbox::delegate(kind, src, ctx)
    {
        return text(rendered);
    }
    render_template(&template, ctx)
}

/// [`render_for`] in this process, whatever the template does.
fn render_here(src: &str, ctx: &Value, target: Target) -> Result<String, String> {
    if !is_template(src) {
        return Ok(src.to_owned());
    }
    screen(src, false)?;
    let template = quoting(target)
        .template_from_str(src)
        .map_err(|e| describe(&e))?;
    render_template(&template, ctx)
}

fn render_template(template: &minijinja::Template<'_, '_>, ctx: &Value) -> Result<String, String> {
    let mut out = Capped(Vec::new());
    template
        .render_captured_to(ctx.clone(), &mut out)
        .map_err(|e| describe(&e))?;
    // What minijinja writes is the text of a `str`, so it is UTF-8.
    String::from_utf8(out.0).map_err(|e| e.to_string())
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

/// Whether an expression must go to the sandbox (when one is installed): compiling it
/// could build a huge constant, or evaluating it a huge value.
fn expression_needs_sandbox(expr: &str) -> Result<bool, String> {
    Ok(!screen(expr, true)?.compiles_safely || !expression_is_bounded(expr))
}

/// Evaluates an expression strictly and returns its value as JSON.
pub fn eval_value(expr: &str, ctx: &Value) -> Result<Json, String> {
    let expr = sole_expression(expr).unwrap_or(expr);
    if expression_needs_sandbox(expr)?
        && let Some(value) = sandbox::delegate(sandbox::JobKind::Value, expr, ctx)
    {
        return value;
    }
    eval_value_compiled(expr, ctx)
}

fn eval_value_here(expr: &str, ctx: &Value) -> Result<Json, String> {
    let expr = sole_expression(expr).unwrap_or(expr);
    screen(expr, true)?;
    eval_value_compiled(expr, ctx)
}

fn eval_value_compiled(expr: &str, ctx: &Value) -> Result<Json, String> {
    let compiled = strict()
        .compile_expression(expr)
        .map_err(|e| describe(&e))?;
    let v = compiled.eval(ctx.clone()).map_err(|e| describe(&e))?;
    // Strict rendering refuses an undefined name anywhere, including a template that is
    // nothing but that name (which evaluates to undefined rather than failing).
    if v.is_undefined() {
        return Err(format!("undefined value: `{expr}` names nothing"));
    }
    serde_json::to_value(&v).map_err(|e| e.to_string())
}

/// Evaluates a `when` condition: undefined values are false rather than errors.
pub fn eval_condition(expr: &str, ctx: &Value) -> Result<bool, String> {
    let expr = sole_expression(expr).unwrap_or(expr);
    if expression_needs_sandbox(expr)?
        && let Some(value) = sandbox::delegate(sandbox::JobKind::Condition, expr, ctx)
    {
        return match value? {
            Json::Bool(b) => Ok(b),
            other => Err(format!(
                "the template sandbox answered {other} instead of a boolean"
            )),
        };
    }
    eval_condition_compiled(expr, ctx)
}

fn eval_condition_here(expr: &str, ctx: &Value) -> Result<bool, String> {
    let expr = sole_expression(expr).unwrap_or(expr);
    screen(expr, true)?;
    eval_condition_compiled(expr, ctx)
}

fn eval_condition_compiled(expr: &str, ctx: &Value) -> Result<bool, String> {
    let compiled = lenient()
        .compile_expression(expr)
        .map_err(|e| describe(&e))?;
    Ok(compiled
        .eval(ctx.clone())
        .map_err(|e| describe(&e))?
        .is_true())
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
    fn a_template_that_is_only_an_undefined_name_fails() {
        let err = render_value(&json!("{{ nope }}"), &context_of(&json!({}))).unwrap_err();
        assert!(err.contains("undefined"), "{err}");
        let err = render_value(
            &json!("{{ inputs.nope }}"),
            &context_of(&json!({"inputs": {}})),
        )
        .unwrap_err();
        assert!(err.contains("undefined"), "{err}");
    }

    #[test]
    fn loops_and_output_are_bounded() {
        let ctx = context_of(&json!({}));
        let nested = "{% for a in range(9999) %}{% for b in range(9999) %}{% for c in range(9999) %}x{% endfor %}{% endfor %}{% endfor %}";
        let err = render_str(nested, &ctx).unwrap_err();
        assert!(err.contains("ran too long"), "{err}");
        let long = "{% for a in range(2000) %}{{ 'x' * 1000 }}{% endfor %}";
        let err = render_str(long, &ctx).unwrap_err();
        assert!(err.contains("KiB of text"), "{err}");
        // What a real template does stays well within the limits.
        let hosts: Vec<String> = (0..1000).map(|i| format!("host-{i}")).collect();
        let ctx = context_of(&json!({"hosts": hosts}));
        let ok = render_str("{% for h in hosts %}{{ h | upper }} {% endfor %}", &ctx).unwrap();
        assert!(ok.starts_with("HOST-0 HOST-1"));
    }

    #[test]
    fn shell_commands_get_each_value_as_one_word() {
        let ctx = context_of(&json!({"inputs": {
            "svc": "api; touch /tmp/x; echo",
            "plain": "api-2.eu_west:1",
            "quote": "it's",
            "n": 3,
            "hosts": ["a b", "c"],
        }}));
        let shell = |src: &str| render_for(src, &ctx, Target::Shell).unwrap();
        assert_eq!(
            shell("echo checking {{ inputs.svc }}"),
            "echo checking 'api; touch /tmp/x; echo'"
        );
        assert_eq!(
            shell("deploy {{ inputs.plain }} x{{ inputs.n }}"),
            "deploy api-2.eu_west:1 x3"
        );
        assert_eq!(shell("echo {{ inputs.quote }}"), r"echo 'it'\''s'");
        assert_eq!(
            shell("{% for h in inputs.hosts %}ping {{ h }}; {% endfor %}"),
            "ping 'a b'; ping c; "
        );
        assert_eq!(
            shell("{{ inputs.svc | safe }}"),
            "api; touch /tmp/x; echo",
            "`| safe` opts out"
        );
        // The quoted word is what sh sees as one argument.
        let out = std::process::Command::new("sh")
            .args([
                "-c",
                &shell("printf '%s|' {{ inputs.svc }} {{ inputs.quote }}"),
            ])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "api; touch /tmp/x; echo|it's|"
        );
    }

    #[test]
    fn python_scripts_get_values_as_literals() {
        let ctx = context_of(
            &json!({"inputs": {"s": "x'); import os; ('", "b": true, "n": null, "l": [1, "a"]}}),
        );
        let py = |src: &str| render_for(src, &ctx, Target::Python).unwrap();
        assert_eq!(py("v = {{ inputs.s }}"), r#"v = "x'); import os; ('""#);
        assert_eq!(
            py("{{ inputs.b }} {{ inputs.n }} {{ inputs.l }}"),
            r#"True None [1, "a"]"#
        );
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
