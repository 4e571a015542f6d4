//! Expressions ([CEL](https://cel.dev)) and `${...}` templates.
//!
//! Both are compiled when the flow is built, so a syntax error is a build error naming the
//! method, never a surprise halfway through a run. They are evaluated over:
//!
//! - `state`: the run's state (a map);
//! - `outputs`: the latest output of each method that has run, by method name;
//! - `input`: what triggered the step (the output of the step or router before it, the
//!   feedback result after a `human_feedback` step; `null` for a start);
//! - `item`: the current element inside an `each` action.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use serde_json::{Map, Value};

/// The values an expression sees.
pub(crate) struct Scope<'a> {
    pub state: &'a Map<String, Value>,
    pub outputs: &'a Map<String, Value>,
    pub input: &'a Value,
    pub item: Option<&'a Value>,
}

/// CEL's standard environment (functions and macros), built once: building it per evaluation
/// cost more than the evaluation itself.
static STDLIB: LazyLock<Arc<cel::Env>> = LazyLock::new(|| Arc::new(cel::Env::stdlib()));

/// Which of the scope's variables an expression reads: only those are snapshotted and turned
/// into CEL values (a chain of 100 steps would otherwise convert every output at every step).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Uses {
    pub state: bool,
    pub outputs: bool,
}

impl Uses {
    pub fn union(self, other: Uses) -> Uses {
        Uses { state: self.state || other.state, outputs: self.outputs || other.outputs }
    }
}

/// A compiled CEL expression and its source (for messages).
#[derive(Clone)]
pub(crate) struct Expr {
    source: Arc<str>,
    program: Arc<cel::Program>,
    uses: Uses,
    uses_input: bool,
    uses_item: bool,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({})", self.source)
    }
}

/// The longest expression, in bytes. Expressions are conditions and small computations; the
/// cap keeps the CEL parser within what it handles (it panics formatting a syntax error past
/// column 65,535).
pub(crate) const MAX_EXPRESSION_BYTES: usize = 4096;

/// The most operator characters (`+ - * / % < > = ! & | ? . [ (`) an expression may hold.
/// CEL's parser and evaluator recurse once per nested operation; about 1,300 nested additions
/// overflow a 2 MiB thread stack (an abort, not an error), so the budget stays well below.
pub(crate) const MAX_OPERATORS: usize = 500;

/// The variables an expression may read (see the module documentation).
const VARIABLES: [&str; 4] = ["state", "outputs", "input", "item"];

impl Expr {
    /// Compiles `source`; the error says what is wrong with it.
    pub fn compile(source: &str) -> Result<Expr, String> {
        check_size(source)?;
        let program = STDLIB
            .compile(source)
            .map_err(|e| format!("the expression `{source}` does not parse: {}", one_line(&e.to_string())))?;
        check_names(source, program.expression())?;
        let refs = program.references();
        let uses = Uses { state: refs.has_variable("state"), outputs: refs.has_variable("outputs") };
        let (uses_input, uses_item) = (refs.has_variable("input"), refs.has_variable("item"));
        Ok(Expr { source: source.into(), program: Arc::new(program), uses, uses_input, uses_item })
    }

    /// The parts of the scope this expression reads.
    pub fn uses(&self) -> Uses {
        self.uses
    }

    /// The expression's value in `scope`, as JSON.
    pub fn eval(&self, scope: &Scope<'_>) -> Result<Value, String> {
        let mut cx = cel::Context::with_env(STDLIB.clone());
        if self.uses.state {
            cx.add_variable_from_value("state", object_to_cel(scope.state));
        }
        if self.uses.outputs {
            cx.add_variable_from_value("outputs", object_to_cel(scope.outputs));
        }
        if self.uses_input {
            cx.add_variable_from_value("input", to_cel(scope.input));
        }
        if let (true, Some(item)) = (self.uses_item, scope.item) {
            cx.add_variable_from_value("item", to_cel(item));
        }
        let value = self.program.execute(&cx).map_err(|e| format!("the expression `{}` failed: {e}", self.source))?;
        value.json().map_err(|e| format!("the expression `{}` gave a value JSON cannot hold: {e}", self.source))
    }

    /// Whether the expression's value is `true` (anything else but `false` is an error).
    pub fn test(&self, scope: &Scope<'_>) -> Result<bool, String> {
        match self.eval(scope)? {
            Value::Bool(b) => Ok(b),
            other => Err(format!("the condition `{}` gave {other}, not true or false", self.source)),
        }
    }
}

/// Refuses an expression too long or too deeply nested for the CEL parser, before it runs.
fn check_size(source: &str) -> Result<(), String> {
    let shown = || {
        let head: String = source.chars().take(60).collect();
        if head.len() < source.len() { format!("{head}…") } else { head }
    };
    if source.len() > MAX_EXPRESSION_BYTES {
        return Err(format!(
            "the expression `{}` is {} bytes long, over the limit of {MAX_EXPRESSION_BYTES}; split it across steps, or compute the value in a registered function (`call: code`)",
            shown(),
            source.len()
        ));
    }
    let operators = operator_count(source);
    if operators > MAX_OPERATORS {
        return Err(format!(
            "the expression `{}` has {operators} operators, over the limit of {MAX_OPERATORS}; split it across steps, or compute the value in a registered function (`call: code`)",
            shown()
        ));
    }
    Ok(())
}

/// The operator characters outside string literals: an upper bound on how deeply the
/// expression nests.
fn operator_count(source: &str) -> usize {
    let mut count = 0;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in source.chars() {
        if let Some(q) = quote {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                _ if c == q => quote = None,
                _ => {}
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '+' | '-' | '*' | '/' | '%' | '<' | '>' | '=' | '!' | '&' | '|' | '?' | '.' | '[' | '(' => count += 1,
            _ => {}
        }
    }
    count
}

/// Refuses a name no evaluation can resolve (`stat.count` for `state.count`), naming it and the
/// closest known one: otherwise the typo would fail the run, at the step, every time.
fn check_names(source: &str, expr: &cel::IdedExpr) -> Result<(), String> {
    let mut bound = Vec::new();
    match unknown_name(expr, &mut bound) {
        None => Ok(()),
        Some(name) => {
            let hint =
                crewflow_rules::closest(&name, VARIABLES).map(|c| format!("; did you mean `{c}`?")).unwrap_or_default();
            Err(format!(
                "the expression `{source}` reads `{name}`, which is not defined{hint} (expressions see `state`, `outputs`, `input` and, inside `each`, `item`)"
            ))
        }
    }
}

/// The first identifier in `expr` that is neither a variable, nor bound by a macro around it
/// (`x` in `list.all(x, x > 0)`), nor a type name (`int`); `bound` holds the macro variables in
/// scope.
fn unknown_name(expr: &cel::IdedExpr, bound: &mut Vec<String>) -> Option<String> {
    use cel::common::ast::{EntryExpr, Expr as Node};
    match &expr.expr {
        Node::Ident(name) => {
            let known = VARIABLES.contains(&name.as_str())
                || bound.iter().any(|b| b == name)
                || STDLIB.types().find_type(name).is_some();
            (!known).then(|| name.clone())
        }
        Node::Call(call) => {
            // `optional.of(x)`: a function in the `optional` namespace, not a variable.
            let namespaced =
                matches!(call.target.as_deref(), Some(t) if matches!(&t.expr, Node::Ident(n) if n == "optional"));
            let target = call.target.as_deref().filter(|_| !namespaced);
            target.into_iter().chain(&call.args).find_map(|e| unknown_name(e, bound))
        }
        Node::Comprehension(c) => {
            if let Some(name) = unknown_name(&c.iter_range, bound).or_else(|| unknown_name(&c.accu_init, bound)) {
                return Some(name);
            }
            let depth = bound.len();
            bound.push(c.accu_var.clone());
            let result = unknown_name(&c.result, bound);
            bound.push(c.iter_var.clone());
            bound.extend(c.iter_var2.clone());
            let found =
                result.or_else(|| unknown_name(&c.loop_cond, bound)).or_else(|| unknown_name(&c.loop_step, bound));
            bound.truncate(depth);
            found
        }
        Node::List(list) => list.elements.iter().find_map(|e| unknown_name(e, bound)),
        Node::Map(map) => map.entries.iter().find_map(|entry| match &entry.expr {
            EntryExpr::MapEntry(e) => unknown_name(&e.key, bound).or_else(|| unknown_name(&e.value, bound)),
            EntryExpr::StructField(f) => unknown_name(&f.value, bound),
        }),
        Node::Struct(s) => s.entries.iter().find_map(|entry| match &entry.expr {
            EntryExpr::MapEntry(e) => unknown_name(&e.key, bound).or_else(|| unknown_name(&e.value, bound)),
            EntryExpr::StructField(f) => unknown_name(&f.value, bound),
        }),
        Node::Select(select) => unknown_name(&select.operand, bound),
        Node::Literal(_) | Node::Unspecified => None,
    }
}

/// JSON to CEL. Integers become CEL `int` whenever they fit (JSON has one number type; CEL
/// refuses `int + uint`, so `state.count + 1` must see an `int`).
fn to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => cel::Value::Int(i),
            (None, Some(u), _) => cel::Value::UInt(u),
            (_, _, Some(f)) => cel::Value::Float(f),
            _ => cel::Value::Null,
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(map) => object_to_cel(map),
    }
}

fn object_to_cel(map: &Map<String, Value>) -> cel::Value {
    let entries: HashMap<String, cel::Value> = map.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
    cel::Value::from(entries)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A string with `${expression}` parts, compiled.
///
/// A template that is exactly one `${...}` keeps the value's type (`"${state.count}"` is a
/// number); otherwise parts are joined as text, with non-strings written as JSON and `null` as
/// nothing. `$${` writes a literal `${`.
#[derive(Clone, Debug)]
pub(crate) enum Template {
    Whole(Expr),
    Parts(Vec<Part>),
}

#[derive(Clone, Debug)]
pub(crate) enum Part {
    Text(String),
    Expr(Expr),
}

impl Template {
    pub fn compile(source: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = source;
        while let Some(at) = rest.find("${") {
            if rest[..at].ends_with('$') {
                text.push_str(&rest[..at - 1]);
                text.push_str("${");
                rest = &rest[at + 2..];
                continue;
            }
            text.push_str(&rest[..at]);
            let body = &rest[at + 2..];
            let end = closing_brace(body)
                .ok_or_else(|| format!("the template `{source}` opens `${{` without a closing `}}`"))?;
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(Part::Expr(Expr::compile(body[..end].trim())?));
            rest = &body[end + 1..];
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(match parts.as_slice() {
            [Part::Expr(e)] => Template::Whole(e.clone()),
            _ => Template::Parts(parts),
        })
    }

    /// The parts of the scope the template reads.
    pub fn uses(&self) -> Uses {
        match self {
            Template::Whole(e) => e.uses(),
            Template::Parts(parts) => parts.iter().fold(Uses::default(), |u, p| match p {
                Part::Expr(e) => u.union(e.uses()),
                Part::Text(_) => u,
            }),
        }
    }

    pub fn render(&self, scope: &Scope<'_>) -> Result<Value, String> {
        match self {
            Template::Whole(e) => e.eval(scope),
            Template::Parts(parts) => {
                let mut out = String::new();
                for part in parts {
                    match part {
                        Part::Text(t) => out.push_str(t),
                        Part::Expr(e) => match e.eval(scope)? {
                            Value::Null => {}
                            Value::String(s) => out.push_str(&s),
                            other => out.push_str(&other.to_string()),
                        },
                    }
                }
                Ok(Value::String(out))
            }
        }
    }
}

/// The index of the `}` closing an expression, skipping braces inside it and string literals.
fn closing_brace(body: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        if let Some(q) = quote {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                _ if c == q => quote = None,
                _ => {}
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// A JSON value whose strings may hold templates (the `with:` of an action), compiled.
#[derive(Clone, Debug)]
pub(crate) enum ValueTemplate {
    Literal(Value),
    String(Template),
    Array(Vec<ValueTemplate>),
    Object(Vec<(String, ValueTemplate)>),
}

impl ValueTemplate {
    pub fn compile(value: &Value) -> Result<ValueTemplate, String> {
        Ok(match value {
            Value::String(s) if s.contains("${") => ValueTemplate::String(Template::compile(s)?),
            Value::Array(items) => {
                ValueTemplate::Array(items.iter().map(ValueTemplate::compile).collect::<Result<_, _>>()?)
            }
            Value::Object(map) => ValueTemplate::Object(
                map.iter().map(|(k, v)| Ok((k.clone(), ValueTemplate::compile(v)?))).collect::<Result<_, String>>()?,
            ),
            other => ValueTemplate::Literal(other.clone()),
        })
    }

    /// The parts of the scope the templates read.
    pub fn uses(&self) -> Uses {
        match self {
            ValueTemplate::Literal(_) => Uses::default(),
            ValueTemplate::String(t) => t.uses(),
            ValueTemplate::Array(items) => items.iter().fold(Uses::default(), |u, t| u.union(t.uses())),
            ValueTemplate::Object(entries) => entries.iter().fold(Uses::default(), |u, (_, t)| u.union(t.uses())),
        }
    }

    pub fn render(&self, scope: &Scope<'_>) -> Result<Value, String> {
        Ok(match self {
            ValueTemplate::Literal(v) => v.clone(),
            ValueTemplate::String(t) => t.render(scope)?,
            ValueTemplate::Array(items) => {
                Value::Array(items.iter().map(|t| t.render(scope)).collect::<Result<_, _>>()?)
            }
            ValueTemplate::Object(entries) => Value::Object(
                entries.iter().map(|(k, t)| Ok((k.clone(), t.render(scope)?))).collect::<Result<_, String>>()?,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope_eval(template: &str, state: Value, input: Value) -> Result<Value, String> {
        let state = state.as_object().cloned().unwrap_or_default();
        let outputs = Map::new();
        Template::compile(template)?.render(&Scope { state: &state, outputs: &outputs, input: &input, item: None })
    }

    #[test]
    fn a_whole_template_keeps_the_type_and_mixed_text_renders_json() {
        assert_eq!(scope_eval("${state.n + 1}", json!({"n": 41}), Value::Null), Ok(json!(42)));
        assert_eq!(
            scope_eval("n=${state.n}, tags=${state.tags}, none=${input}.", json!({"n": 1, "tags": ["a"]}), Value::Null),
            Ok(json!("n=1, tags=[\"a\"], none=."))
        );
        assert_eq!(scope_eval("cost $${x}", json!({}), Value::Null), Ok(json!("cost ${x}")));
        assert_eq!(scope_eval("${'}' + input}", json!({}), json!("x")), Ok(json!("}x")));
        assert_eq!(scope_eval("${ {'a': 1}.a }", json!({}), Value::Null), Ok(json!(1)));
    }

    #[test]
    fn bad_templates_and_expressions_say_what_is_wrong() {
        let open = Template::compile("hello ${state.name").unwrap_err();
        assert!(open.contains("without a closing"), "{open}");
        let syntax = Expr::compile("state.(").unwrap_err();
        assert!(syntax.contains("does not parse"), "{syntax}");
        let missing = scope_eval("${state.missing}", json!({}), Value::Null).unwrap_err();
        assert!(missing.contains("state.missing"), "{missing}");
    }
}
