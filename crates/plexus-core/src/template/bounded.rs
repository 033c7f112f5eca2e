//! Which templates are safe to render inside the engine's own process.
//!
//! minijinja bounds instructions (fuel) and we bound the text a template writes, but
//! nothing inside minijinja bounds the size of the values a template builds: one
//! `{% set ns.s = ns.s ~ ns.s %}` in a 40-round loop asks for a terabyte, and `indent`,
//! `*` or a chain of `{% set %}` do the same without a loop. Limiting that from inside a
//! process is a surface that cannot be covered filter by filter, so the line is drawn
//! the other way round: a template is rendered in the engine only when its compiled
//! instructions prove that it *cannot* grow beyond a small multiple of its context
//! (straight-line code, every value used once, no repetition, filters that at most copy
//! their input). Everything else goes to the sandbox (see [`super::sandbox`]), a
//! separate process with an operating-system memory limit and a deadline.
//!
//! What a workflow usually holds (`{{ inputs.svc }}`, `{{ steps.a.output.hosts | join(",") }}`,
//! `{% if inputs.dry %}--dry-run{% endif %}`, `when` conditions) is bounded.

use minijinja::machinery::{Instruction, Instructions, Token};

/// The most tokens one `{{ }}` or `{% %}` may hold. minijinja compiles a chain of
/// operators (`a ~ b ~ c ...`, `x and y and ...`) recursively and in quadratic time: a
/// chain of 10,000 takes seconds and one of 100,000 overflows the stack, which aborts
/// the whole process. A thousand tokens compile in about a millisecond.
pub const MAX_TOKENS_PER_EXPRESSION: usize = 1000;

/// The compile cost allowed for one template: the sum over its expressions of their
/// token count squared (about a nanosecond each), so a template compiles in ~10 ms at most.
const MAX_COMPILE_COST: usize = 10_000_000;

/// What [`screen`] learned of a template's source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Screened {
    /// False when compiling it may itself build a huge value: minijinja folds constant
    /// expressions while compiling, so `'x' * 100000000` allocates 100 MB before any
    /// rendering (and a sum of such products, gigabytes). Only `*` and `**` multiply.
    pub compiles_safely: bool,
}

/// Looks at a template's (or, with `expression`, an expression's) tokens before
/// anything compiles it: refuses one too long to compile safely, and says whether
/// compiling it could allocate without bound.
pub fn screen(src: &str, expression: bool) -> Result<Screened, String> {
    let mut compiles_safely = true;
    let (mut tokens, mut cost) = (0usize, 0usize);
    let mut close = |tokens: usize| -> Result<(), String> {
        if tokens > MAX_TOKENS_PER_EXPRESSION {
            return Err(format!(
                "an expression in the template is too long to compile safely ({tokens} tokens, at most {MAX_TOKENS_PER_EXPRESSION}); compute it in a step"
            ));
        }
        cost += tokens * tokens;
        if cost > MAX_COMPILE_COST {
            return Err(
                "the template's expressions are too long to compile safely; split the template or compute in a step"
                    .into(),
            );
        }
        Ok(())
    };
    for token in minijinja::machinery::tokenize(src, expression, Default::default()) {
        // A lexing error is reported by the compiler, with its position; what comes
        // before it is parsed first, so it is checked too.
        let Ok((token, _)) = token else { break };
        match token {
            Token::VariableStart | Token::BlockStart => tokens = 0,
            Token::VariableEnd | Token::BlockEnd => {
                close(tokens)?;
                tokens = 0;
            }
            Token::TemplateData(_) => {}
            other => {
                tokens += 1;
                compiles_safely &= !matches!(other, Token::Mul | Token::Pow);
            }
        }
    }
    // An expression is one block; so is an unterminated one (which fails to compile).
    close(tokens)?;
    Ok(Screened { compiles_safely })
}

/// Filters whose result is at most a constant multiple of their input (with constant
/// arguments where they take any): they cannot amplify.
const COPYING_FILTERS: &[&str] = &[
    "abs",
    "bool",
    "capitalize",
    "count",
    "d",
    "default",
    "dictsort",
    "e",
    "escape",
    "first",
    "float",
    "int",
    "items",
    "last",
    "length",
    "list",
    "lower",
    "reverse",
    "safe",
    "sort",
    "split",
    "string",
    "title",
    "trim",
    "unique",
    "upper",
    "urlencode",
];

/// Filters that copy their input when their arguments are constants written in the
/// template (a separator, a replacement): the result is at most the input times the
/// template's own length.
const FILTERS_WITH_CONSTANT_ARGS: &[&str] = &["join", "replace", "tojson"];

/// True when `instructions` cannot build values much larger than the context.
pub fn is_bounded(instructions: &Instructions<'_>) -> bool {
    let mut pc = 0u32;
    let mut previous: Option<&Instruction<'_>> = None;
    while let Some(instruction) = instructions.get(pc) {
        let ok = match instruction {
            // Reading, literals and building small containers from values on the stack.
            Instruction::EmitRaw(_)
            | Instruction::Emit
            | Instruction::Lookup(_)
            | Instruction::GetAttr(_)
            | Instruction::GetItem
            | Instruction::Slice
            | Instruction::LoadConst(_)
            | Instruction::BuildMap(_)
            | Instruction::BuildKwargs(_)
            | Instruction::BuildList(_)
            | Instruction::BuildTuple(_)
            | Instruction::PushAutoEscape
            | Instruction::PopAutoEscape
            | Instruction::DiscardTop => true,
            // Arithmetic, comparison and concatenation: each value on the stack is used
            // once, so a straight line of these grows a result by addition, never by
            // doubling. `*` is left out: `"x" * 100000000` is one instruction.
            Instruction::Add
            | Instruction::Sub
            | Instruction::Div
            | Instruction::IntDiv
            | Instruction::Rem
            | Instruction::Pow
            | Instruction::Neg
            | Instruction::Eq
            | Instruction::Ne
            | Instruction::Gt
            | Instruction::Gte
            | Instruction::Lt
            | Instruction::Lte
            | Instruction::Not
            | Instruction::In
            | Instruction::CompareAndPreserve(_)
            | Instruction::StringConcat
            | Instruction::PerformTest(..) => true,
            Instruction::ApplyFilter(name, args, _) => {
                COPYING_FILTERS.contains(name)
                    || (FILTERS_WITH_CONSTANT_ARGS.contains(name)
                        && constant_arguments(name, *args, previous))
            }
            // `if`, `and`, `or`, `x if c else y`: forward jumps only, so nothing repeats.
            Instruction::Jump(to)
            | Instruction::JumpIfFalse(to)
            | Instruction::JumpIfFalseOrPop(to)
            | Instruction::JumpIfTrueOrPop(to) => *to > pc,
            // Loops, assignments (a value used twice doubles), macros, calls, captures,
            // includes: the sandbox's.
            _ => false,
        };
        if !ok {
            return false;
        }
        previous = Some(instruction);
        pc += 1;
    }
    true
}

/// Whether a `join`/`replace`/`tojson` takes only constants: `tojson` no argument,
/// `join` at most a separator and `replace` a replacement written in the template (the
/// argument count includes the value filtered; the last argument is the instruction
/// just before). A pattern taken from the context is harmless: at worst it matches
/// between every two characters, which multiplies the input by the replacement's length.
fn constant_arguments(name: &str, args: Option<u16>, previous: Option<&Instruction<'_>>) -> bool {
    let constant = matches!(previous, Some(Instruction::LoadConst(_)));
    match (name, args) {
        ("tojson" | "join", Some(1)) => true,
        ("join", Some(2)) | ("replace", Some(3)) => constant,
        _ => false,
    }
}

/// [`is_bounded`] for a standalone expression (`when`, `foreach`, a sole `{{ expr }}`).
/// Unparsable expressions count as bounded: compiling them fails in the engine anyway.
pub fn expression_is_bounded(expr: &str) -> bool {
    let Ok(ast) = minijinja::machinery::parse_expr(expr) else {
        return true;
    };
    let mut generator = minijinja::machinery::CodeGenerator::new("<expression>", expr);
    generator.compile_expr(&ast);
    is_bounded(&generator.finish().0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template_is_bounded(src: &str) -> bool {
        let env = minijinja::Environment::new();
        let template = env.template_from_str(src).unwrap();
        is_bounded(&minijinja::machinery::get_compiled_template(&template).instructions)
    }

    #[test]
    fn what_workflows_write_is_bounded() {
        for src in [
            "restart {{ inputs.svc }}",
            "{{ steps['fetch-logs'].output.lines | length }} lines",
            "{{ steps.inv.output.hosts | join(',') }}",
            "{{ inputs.name | default('world') | upper }}",
            "{% if inputs.dry %}--dry-run{% else %}--apply{% endif %} {{ item.name }}",
            "{{ a ~ '-' ~ b }} {{ x + 1 }} {{ y if z else w }}",
            "{{ steps.a.output | tojson }} {{ s | replace('a', 'b') }}",
            "{{ n is defined and n > 3 or m not in ['a', 'b'] }}",
        ] {
            assert!(template_is_bounded(src), "{src}");
        }
        for expr in [
            "steps.check.output.ok == true",
            "steps.inv.output.hosts",
            "inputs.n > 2 and not inputs.skip",
        ] {
            assert!(expression_is_bounded(expr), "{expr}");
        }
    }

    /// Every way found to build a huge value, and the constructs that could: loops,
    /// assignments, repetition, calls, filters with amplifying arguments, recursion.
    #[test]
    fn what_can_grow_is_not() {
        for src in [
            r#"{% set ns = namespace(s="x") %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"#,
            "{% set a = x ~ x %}{% set b = a ~ a %}{{ b }}",
            "{{ x * 100000000 }}",
            "{{ '' | indent(10000000000) }}",
            "{{ v | tojson(indent=100000000) }}",
            "{{ v | join(v) }}",
            "{{ range(10) }}",
            "{% for h in hosts %}{{ h }}{% endfor %}",
            "{% for x in tree recursive %}{{ loop(x.children) }}{% endfor %}",
            "{% filter upper %}{{ x }}{% endfilter %}",
            "{{ v | map('indent', 100000) | list }}",
        ] {
            assert!(!template_is_bounded(src), "{src}");
        }
        for expr in ["x * n", "range(100000) | list", "v | join(v)"] {
            assert!(!expression_is_bounded(expr), "{expr}");
        }
    }

    /// minijinja folds constants while compiling: a product of literals must not even be
    /// compiled in the engine.
    #[test]
    fn constant_products_are_not_compiled_here() {
        for (src, expression) in [
            ("{{ 'x' * 100000000 }}", false),
            ("{{ ('x' * 99999999) ~ ('x' * 99999999) }}", false),
            ("{% set a = [1] * 100000000 %}", false),
            ("'x' * 10 ** 8", true),
        ] {
            assert!(!screen(src, expression).unwrap().compiles_safely, "{src}");
        }
        for (src, expression) in [
            ("ls *.log {{ inputs.dir }}", false),
            ("{{ a ~ b }} {# x * y #}", false),
            ("inputs.n + 1", true),
        ] {
            assert!(screen(src, expression).unwrap().compiles_safely, "{src}");
        }
    }

    /// A chain of 100,000 operators overflowed the compiler's stack (aborting the
    /// process); 10,000 took seconds. Both are refused before compiling, quickly.
    #[test]
    fn expressions_too_long_to_compile_are_refused() {
        for n in [2_000, 100_000] {
            let long = format!("{{{{ x{} }}}}", " ~ y".repeat(n));
            let err = screen(&long, false).unwrap_err();
            assert!(err.contains("too long to compile safely"), "{err}");
            let err = super::super::check_template(&long).unwrap_err();
            assert!(err.contains("too long"), "{err}");
            let err = super::super::check_expression(&long).unwrap_err();
            assert!(err.contains("too long"), "{err}");
        }
        // Many expressions of a reasonable length add up to a cost limit too.
        let many =
            "{{ a and b and c and d and e and f and g and h and i and j and k }}".repeat(40_000);
        assert!(
            screen(&many, false)
                .unwrap_err()
                .contains("split the template")
        );
        // What a long but real condition looks like still passes.
        let clauses: Vec<String> = (0..40)
            .map(|i| format!("steps.s{i}.output.ok == true"))
            .collect();
        assert!(screen(&clauses.join(" and "), true).is_ok());
    }
}
