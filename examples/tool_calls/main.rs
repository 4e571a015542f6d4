//! Does this model call tools well enough to build on? Twelve small tasks through an agent's
//! tool loop, scored: the right tools with the right arguments, and an answer that uses what
//! the tools returned. The facts come from the tools (an order table, a weather table, fixed
//! exchange rates), so a model cannot answer them without calling.
//!
//! ```text
//! cargo run --release --example tool_calls                      # the model CREWFLOW_MODEL names
//! CREWFLOW_LOCAL_MODEL=/path/to/qwen2.5-0.5b-instruct.gguf cargo run --release --example tool_calls
//! ```
//!
//! The default local model (SmolLM2-135M) has no tool format in its chat template, so on it
//! this says so and stops. A local GGUF whose template takes tools (Qwen2.5's) runs the tasks
//! offline; a hosted model (`CREWFLOW_MODEL=openai/gpt-4o-mini`) over HTTP. The last line is a
//! JSON summary: tasks whose first call was right (can the model call at all), tasks whose
//! calls were all right and nothing more (can it use a result and stop), tasks whose answer was
//! right, calls the tool set rejected, seconds and tokens. docs/agents.md records what the
//! small models measured.

use std::collections::BTreeSet;
use std::time::Instant;

use crewflow::agents::{Agent, ToolFn, ToolOutcome, ToolSet};
use crewflow::llm::Llm;
use serde::Deserialize;

/// One task: the question, the calls it needs (tool, arguments as compact JSON), and a piece
/// of text any right answer contains (one of several spellings).
struct Case {
    question: &'static str,
    calls: &'static [(&'static str, &'static str)],
    answer: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        question: "What is the status of order 42?",
        calls: &[("order_status", r#"{"order_id":42}"#)],
        answer: &["shipped"],
    },
    Case {
        question: "Has order 7 been paid?",
        calls: &[("order_status", r#"{"order_id":7}"#)],
        answer: &["payment", "not"],
    },
    Case {
        question: "Did order 1001 arrive?",
        calls: &[("order_status", r#"{"order_id":1001}"#)],
        answer: &["delivered"],
    },
    Case {
        question: "What is the weather in Oslo right now?",
        calls: &[("weather", r#"{"city":"Oslo"}"#)],
        answer: &["snow", "-3"],
    },
    Case {
        question: "Do I need sunglasses in Lisbon today?",
        calls: &[("weather", r#"{"city":"Lisbon"}"#)],
        answer: &["sunny", "18"],
    },
    Case { question: "How warm is it in Nairobi?", calls: &[("weather", r#"{"city":"Nairobi"}"#)], answer: &["24"] },
    Case {
        question: "How much is 100 EUR in USD?",
        calls: &[("convert_currency", r#"{"amount":100.0,"from":"EUR","to":"USD"}"#)],
        answer: &["108"],
    },
    Case {
        question: "Convert 250 USD to JPY.",
        calls: &[("convert_currency", r#"{"amount":250.0,"from":"USD","to":"JPY"}"#)],
        answer: &["37500", "37,500", "37 500"],
    },
    Case {
        question: "I have 40 GBP. What is that in EUR?",
        calls: &[("convert_currency", r#"{"amount":40.0,"from":"GBP","to":"EUR"}"#)],
        answer: &["46.8"],
    },
    Case {
        question: "What is the weather in Oslo and in Lisbon?",
        calls: &[("weather", r#"{"city":"Oslo"}"#), ("weather", r#"{"city":"Lisbon"}"#)],
        answer: &["snow", "-3"],
    },
    Case {
        question: "Check orders 42 and 7 for me.",
        calls: &[("order_status", r#"{"order_id":42}"#), ("order_status", r#"{"order_id":7}"#)],
        answer: &["shipped"],
    },
    Case { question: "What is 2 + 2? Answer with the number.", calls: &[], answer: &["4"] },
];

#[derive(Deserialize, schemars::JsonSchema)]
struct OrderArgs {
    /// The order's number.
    order_id: u32,
}

#[derive(Deserialize, schemars::JsonSchema)]
struct WeatherArgs {
    /// The city, in English (`Oslo`).
    city: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
struct ConvertArgs {
    /// The amount to convert.
    amount: f64,
    /// The currency it is in (ISO code: `EUR`).
    from: String,
    /// The currency wanted (ISO code: `USD`).
    to: String,
}

fn tools() -> ToolSet {
    let order_status =
        ToolFn::new("order_status", "Looks up an order's status by its number.", |a: OrderArgs| async move {
            match a.order_id {
                42 => Ok("order 42: shipped on 3 March".to_string()),
                7 => Ok("order 7: waiting for payment".to_string()),
                1001 => Ok("order 1001: delivered on 1 March".to_string()),
                n => Err(format!("no order {n}")),
            }
        });
    let weather = ToolFn::new("weather", "Gives the current weather in a city.", |a: WeatherArgs| async move {
        match a.city.to_lowercase().as_str() {
            "oslo" => Ok("Oslo: -3 °C, snow".to_string()),
            "lisbon" => Ok("Lisbon: 18 °C, sunny".to_string()),
            "nairobi" => Ok("Nairobi: 24 °C, clouds".to_string()),
            _ => Err(format!("no weather station in {}", a.city)),
        }
    });
    let convert = ToolFn::new(
        "convert_currency",
        "Converts an amount of money from one currency to another at today's rate.",
        |a: ConvertArgs| async move {
            let in_usd = |code: &str| match code.to_uppercase().as_str() {
                "USD" => Some(1.0),
                "EUR" => Some(1.08),
                "GBP" => Some(1.2636),
                "JPY" => Some(1.0 / 150.0),
                _ => None,
            };
            match (in_usd(&a.from), in_usd(&a.to)) {
                (Some(from), Some(to)) => Ok(format!("{} {} = {:.2} {}", a.amount, a.from, a.amount * from / to, a.to)),
                _ => Err(format!("unknown currency: {} or {}", a.from, a.to)),
            }
        },
    );
    ToolSet::new().with(order_status).with(weather).with(convert)
}

/// A call as `(tool, arguments)` with the arguments re-serialized compactly (key order and
/// number spelling do not count: `100` and `100.0` are the same amount).
fn normalized(name: &str, arguments: &str) -> (String, String) {
    let value: serde_json::Value = serde_json::from_str(arguments).unwrap_or(serde_json::Value::Null);
    let value = match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .map(|(k, v)| match v.as_f64() {
                    Some(n) if v.is_number() => (k, serde_json::json!(n)),
                    _ => (k, v),
                })
                .collect(),
        ),
        other => other,
    };
    (name.to_string(), value.to_string())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let llm = Llm::from_env()?;
    if !llm.calls_tools().await? {
        println!(
            "{} ({}) cannot be given tools: its chat template has no tool format. Point CREWFLOW_LOCAL_MODEL at a \
             GGUF whose template takes tools (Qwen2.5's), or set CREWFLOW_MODEL=openai/gpt-4o-mini (or ollama/<model>).",
            llm.model(),
            llm.provider()
        );
        return Ok(());
    }
    println!("Model: {} ({})", llm.model(), llm.provider());
    let agent = Agent::new(llm)
        .role("Assistant")
        .goal("Answer the user's question using the tools")
        .backstory("You look facts up with the tools instead of guessing, then answer in one short sentence.")
        .tools(&tools())
        .max_iter(3);
    let started = Instant::now();
    let (mut first_right, mut calls_right, mut answers_right, mut rejected, mut tokens) = (0, 0, 0, 0, 0u64);
    for case in CASES {
        let t = Instant::now();
        let out = agent.kickoff(case.question).await?;
        let made: BTreeSet<_> = out.tool_calls.iter().map(|c| normalized(&c.name, &c.arguments)).collect();
        let wanted: BTreeSet<_> = case.calls.iter().map(|(n, a)| normalized(n, a)).collect();
        let calls_ok = made == wanted;
        // The first call alone: can the model call a tool at all, before it must use a result.
        let first = out.tool_calls.first().map(|c| normalized(&c.name, &c.arguments));
        first_right += usize::from(first.map_or(wanted.is_empty(), |call| wanted.contains(&call)));
        // An answer that is a call written as text (the loop ran out) is not an answer.
        let answer = out.raw.to_lowercase();
        let answer_ok =
            !answer.contains("\"arguments\"") && case.answer.iter().any(|a| answer.contains(&a.to_lowercase()));
        rejected +=
            out.tool_calls.iter().filter(|c| matches!(c.outcome, ToolOutcome::Invalid | ToolOutcome::Unknown)).count();
        calls_right += usize::from(calls_ok);
        answers_right += usize::from(answer_ok);
        tokens += out.usage.completion_tokens;
        println!(
            "{} {} {:>5.1}s  {}  calls: {}  answer: {}",
            if calls_ok { "calls ok " } else { "calls BAD" },
            if answer_ok { "answer ok " } else { "answer BAD" },
            t.elapsed().as_secs_f64(),
            case.question,
            made.iter().map(|(n, a)| format!("{n}{a}")).collect::<Vec<_>>().join(" "),
            out.raw.replace('\n', " ").chars().take(120).collect::<String>(),
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "tasks": CASES.len(),
            "first_call_right": first_right,
            "calls_right": calls_right,
            "answers_right": answers_right,
            "rejected_calls": rejected,
            "seconds": (seconds * 10.0).round() / 10.0,
            "completion_tokens": tokens,
        })
    );
    Ok(())
}
