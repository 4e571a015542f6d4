//! Actions: what a method does (`do:`).
//!
//! | `call` | fields | output |
//! | --- | --- | --- |
//! | `code` (default) | `ref` (a registered function), `with` (arguments, templated) | the function's output |
//! | `expression` | `expr` (CEL over `state`, `outputs`, `input`) | the expression's value |
//! | `llm` | `prompt` (templated), `system` (templated), `model` | the model's reply text |
//! | `each` | `in` (CEL list), `do` (steps: `name`, `if`, `action`) | the last step's output per item |
//! | `agent` | `ref` (a registered agent), `prompt` (templated), `inputs` (templated) | the final answer |
//! | `crew` | `ref` (a registered crew), `inputs` (templated) | the last task's answer (its JSON when typed) |

use std::future::Future;
use std::pin::Pin;

use crewflow_core::{Cx, StepError};
use crewflow_llm::{ChatRequest, Llm, Message};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::expr::{Expr, Scope, Template, Uses, ValueTemplate};
use crate::registry::{Call, Function, Registry};
use crate::state::DeclarativeState;

/// An action as written (checked field by field; unknown fields are errors).
#[derive(Deserialize)]
#[serde(tag = "call", rename_all = "snake_case", deny_unknown_fields)]
enum ActionDoc {
    Code {
        #[serde(rename = "ref")]
        function: String,
        #[serde(default)]
        with: Option<Value>,
    },
    Expression {
        expr: String,
    },
    Llm {
        prompt: String,
        #[serde(default)]
        system: Option<String>,
        #[serde(default)]
        model: Option<String>,
    },
    Each {
        #[serde(rename = "in")]
        items: String,
        #[serde(rename = "do")]
        steps: Vec<EachStepDoc>,
    },
    #[cfg(feature = "agents")]
    Agent {
        #[serde(rename = "ref")]
        agent: String,
        prompt: String,
        #[serde(default)]
        inputs: Option<Value>,
    },
    #[cfg(feature = "agents")]
    Crew {
        #[serde(rename = "ref")]
        crew: String,
        #[serde(default)]
        inputs: Option<Value>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EachStepDoc {
    name: String,
    #[serde(default, rename = "if")]
    when: Option<String>,
    action: Value,
}

/// A compiled action, its names resolved.
#[derive(Clone)]
pub(crate) enum Action {
    Code {
        name: String,
        function: Function,
        with: Option<ValueTemplate>,
    },
    Expression(Expr),
    Llm {
        llm: Llm,
        prompt: Template,
        system: Option<Template>,
    },
    Each {
        items: Expr,
        steps: Vec<EachStep>,
    },
    #[cfg(feature = "agents")]
    Agent {
        name: String,
        agent: Box<crewflow_agents::Agent>,
        prompt: Template,
        inputs: Option<ValueTemplate>,
    },
    #[cfg(feature = "agents")]
    Crew {
        name: String,
        crew: Box<crewflow_agents::Crew>,
        inputs: Option<ValueTemplate>,
    },
}

#[derive(Clone)]
pub(crate) struct EachStep {
    name: String,
    when: Option<Expr>,
    action: Action,
}

type ActionFuture<'a> = Pin<Box<dyn Future<Output = Result<Value, StepError>> + Send + 'a>>;

impl Action {
    /// Compiles the `do:` of a method.
    pub fn compile(doc: &Value, registry: &Registry) -> Result<Action, String> {
        Action::compile_nested(doc, registry, false)
    }

    fn compile_nested(doc: &Value, registry: &Registry, in_each: bool) -> Result<Action, String> {
        let mut doc = match doc {
            Value::Object(map) => map.clone(),
            Value::Null => {
                return Err(
                    "`do:` is missing: say what the method does (e.g. `do: {call: code, ref: my_function}`)".into()
                );
            }
            other => {
                return Err(format!("`do:` must be a mapping such as `{{call: code, ref: my_function}}`, not {other}"));
            }
        };
        doc.entry("call").or_insert_with(|| Value::String("code".into()));
        let parsed: ActionDoc = serde_json::from_value(Value::Object(doc)).map_err(|e| {
            let e = e.to_string();
            if e.contains("unknown variant") && cfg!(feature = "agents") {
                format!("{e} (a tool is called by an agent: register one with Registry::agent and use `call: agent`)")
            } else if e.contains("unknown variant") {
                format!("{e} (agents and crews come with crewflow's `agents` feature; call registered Rust code with `call: code`)")
            } else {
                e
            }
        })?;
        Ok(match parsed {
            ActionDoc::Code { function, with } => {
                let Some(f) = registry.functions.get(&function) else {
                    return Err(unknown("function", &function, &registry.function_names(), "Registry::function"));
                };
                let with = with.as_ref().map(ValueTemplate::compile).transpose()?;
                Action::Code { name: function, function: f.clone(), with }
            }
            ActionDoc::Expression { expr } => Action::Expression(Expr::compile(&expr)?),
            ActionDoc::Llm { prompt, system, model } => Action::Llm {
                llm: resolve_model(registry, model.as_deref())?,
                prompt: Template::compile(&prompt)?,
                system: system.as_deref().map(Template::compile).transpose()?,
            },
            ActionDoc::Each { .. } if in_each => {
                return Err("an `each` cannot hold another `each`; move the inner loop into a method of its own".into());
            }
            ActionDoc::Each { items, steps } => {
                if steps.is_empty() {
                    return Err("`each` needs at least one step under `do`".into());
                }
                let steps = steps
                    .into_iter()
                    .map(|s| {
                        Ok(EachStep {
                            when: s.when.as_deref().map(Expr::compile).transpose()?,
                            action: Action::compile_nested(&s.action, registry, true)
                                .map_err(|e| format!("each step `{}`: {e}", s.name))?,
                            name: s.name,
                        })
                    })
                    .collect::<Result<_, String>>()?;
                Action::Each { items: Expr::compile(&items)?, steps }
            }
            #[cfg(feature = "agents")]
            ActionDoc::Agent { agent, prompt, inputs } => {
                let Some(a) = registry.agents.get(&agent) else {
                    let known: Vec<&str> = registry.agents.keys().map(String::as_str).collect();
                    return Err(unknown("agent", &agent, &known, "Registry::agent"));
                };
                Action::Agent {
                    agent: Box::new(a.clone()),
                    name: agent,
                    prompt: Template::compile(&prompt)?,
                    inputs: inputs.as_ref().map(ValueTemplate::compile).transpose()?,
                }
            }
            #[cfg(feature = "agents")]
            ActionDoc::Crew { crew, inputs } => {
                let Some(c) = registry.crews.get(&crew) else {
                    let known: Vec<&str> = registry.crews.keys().map(String::as_str).collect();
                    return Err(unknown("crew", &crew, &known, "Registry::crew"));
                };
                Action::Crew {
                    crew: Box::new(c.clone()),
                    name: crew,
                    inputs: inputs.as_ref().map(ValueTemplate::compile).transpose()?,
                }
            }
        })
    }

    /// The parts of the run's state the action's expressions read (`each` steps always see
    /// `outputs`: they write their own into it).
    pub fn uses(&self) -> Uses {
        match self {
            Action::Code { with, .. } => with.as_ref().map(ValueTemplate::uses).unwrap_or_default(),
            Action::Expression(e) => e.uses(),
            Action::Llm { prompt, system, .. } => {
                system.as_ref().map(Template::uses).unwrap_or_default().union(prompt.uses())
            }
            Action::Each { items, steps } => steps.iter().fold(items.uses(), |u, s| {
                let when = s.when.as_ref().map(Expr::uses).unwrap_or_default();
                u.union(when).union(s.action.uses())
            }),
            #[cfg(feature = "agents")]
            Action::Agent { prompt, inputs, .. } => {
                inputs.as_ref().map(ValueTemplate::uses).unwrap_or_default().union(prompt.uses())
            }
            #[cfg(feature = "agents")]
            Action::Crew { inputs, .. } => inputs.as_ref().map(ValueTemplate::uses).unwrap_or_default(),
        }
    }

    /// Runs the action for `method`, triggered by `input`, reading the parts of the state its
    /// expressions use (`uses`, computed once at build time).
    pub fn run<'a>(
        &'a self,
        cx: &'a Cx<DeclarativeState>,
        method: &'a str,
        input: &'a Value,
        uses: Uses,
    ) -> ActionFuture<'a> {
        Box::pin(async move {
            let (state, outputs) = if uses == Uses::default() {
                (Map::new(), Map::new())
            } else {
                cx.state(|s| {
                    let state = if uses.state { s.values.clone() } else { Map::new() };
                    let outputs = if uses.outputs { s.outputs.clone() } else { Map::new() };
                    (state, outputs)
                })
            };
            self.run_in(cx, method, input, &state, &outputs, None).await
        })
    }

    fn run_in<'a>(
        &'a self,
        cx: &'a Cx<DeclarativeState>,
        method: &'a str,
        input: &'a Value,
        state: &'a Map<String, Value>,
        outputs: &'a Map<String, Value>,
        item: Option<&'a Value>,
    ) -> ActionFuture<'a> {
        Box::pin(async move {
            let scope = Scope { state, outputs, input, item };
            match self {
                Action::Code { name, function, with } => {
                    let args = with.as_ref().map(|w| w.render(&scope)).transpose().map_err(StepError::msg)?;
                    let call = Call { method: method.to_string(), input: input.clone(), args };
                    function(cx.clone(), call)
                        .await
                        .map_err(|e| StepError::msg(format!("function `{name}` failed: {e}")))
                }
                Action::Expression(expr) => expr.eval(&scope).map_err(StepError::msg),
                Action::Llm { llm, prompt, system } => {
                    let prompt = text_of(prompt.render(&scope).map_err(StepError::msg)?);
                    let mut messages = Vec::new();
                    if let Some(system) = system {
                        messages.push(Message::system(text_of(system.render(&scope).map_err(StepError::msg)?)));
                    }
                    messages.push(Message::user(prompt));
                    let reply = llm.chat(ChatRequest::new(messages)).await?;
                    Ok(Value::String(reply.text))
                }
                Action::Each { items, steps } => {
                    let list = match items.eval(&scope).map_err(StepError::msg)? {
                        Value::Array(list) => list,
                        other => return Err(StepError::msg(format!("`each` needs a list to go through, got {other}"))),
                    };
                    let mut results = Vec::with_capacity(list.len());
                    for element in &list {
                        results.push(run_steps(steps, cx, method, input, state, outputs, element).await?);
                    }
                    Ok(Value::Array(results))
                }
                #[cfg(feature = "agents")]
                Action::Agent { name, agent, prompt, inputs } => {
                    let prompt = text_of(prompt.render(&scope).map_err(StepError::msg)?);
                    let inputs = agent_inputs(inputs.as_ref(), &scope)?;
                    let out = agent
                        .kickoff_verbatim(&prompt, &inputs)
                        .await
                        .map_err(|e| StepError::msg(format!("agent `{name}` failed: {e}")))?;
                    Ok(Value::String(out.raw))
                }
                #[cfg(feature = "agents")]
                Action::Crew { name, crew, inputs } => {
                    let inputs = agent_inputs(inputs.as_ref(), &scope)?;
                    let out = crew
                        .kickoff(&inputs)
                        .await
                        .map_err(|e| StepError::msg(format!("crew `{name}` failed: {e}")))?;
                    Ok(out.json.unwrap_or(Value::String(out.raw)))
                }
            }
        })
    }
}

/// The rendered `inputs:` of an agent or crew action (none: no inputs).
#[cfg(feature = "agents")]
fn agent_inputs(inputs: Option<&ValueTemplate>, scope: &Scope<'_>) -> Result<crewflow_agents::Inputs, StepError> {
    let Some(template) = inputs else { return Ok(crewflow_agents::Inputs::new()) };
    let value = template.render(scope).map_err(StepError::msg)?;
    crewflow_agents::Inputs::from_json(&value).map_err(|e| StepError::msg(format!("`inputs:` {e}")))
}

/// One item of an `each`: its steps in order, each step's output visible to the next as
/// `outputs.<step>`; a step whose `if` is false is skipped and the previous output stands.
async fn run_steps(
    steps: &[EachStep],
    cx: &Cx<DeclarativeState>,
    method: &str,
    input: &Value,
    state: &Map<String, Value>,
    outputs: &Map<String, Value>,
    item: &Value,
) -> Result<Value, StepError> {
    let mut local = outputs.clone();
    let mut last = Value::Null;
    for step in steps {
        if let Some(when) = &step.when {
            let scope = Scope { state, outputs: &local, input, item: Some(item) };
            if !when.test(&scope).map_err(|e| StepError::msg(format!("each step `{}`: {e}", step.name)))? {
                continue;
            }
        }
        last = step
            .action
            .run_in(cx, method, input, state, &local, Some(item))
            .await
            .map_err(|e| StepError::msg(format!("each step `{}`: {e}", step.name)))?;
        local.insert(step.name.clone(), last.clone());
    }
    Ok(last)
}

fn text_of(value: Value) -> String {
    match value {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The model a definition names: a registered model first, then a model string.
pub(crate) fn resolve_model(registry: &Registry, name: Option<&str>) -> Result<Llm, String> {
    match name {
        Some(name) => match registry.models.get(name) {
            Some(llm) => Ok(llm.clone()),
            None => Llm::new(name).map_err(|e| format!("model `{name}`: {e}")),
        },
        None => match &registry.default_model {
            Some(llm) => Ok(llm.clone()),
            None => Llm::from_env().map_err(|e| format!("no model named and none configured: {e}")),
        },
    }
}

/// "no function `x` is registered (registered: a, b); register it with Registry::function".
pub(crate) fn unknown(kind: &str, name: &str, known: &[&str], how: &str) -> String {
    let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
    let close = crewflow_rules::closest(name, known.split(", "));
    let hint = close.map(|c| format!(" — did you mean `{c}`?")).unwrap_or_default();
    format!("no {kind} `{name}` is registered{hint} (registered: {known}); register it with {how}")
}
