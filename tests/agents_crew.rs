//! Tasks and crews against scripted replies in the OpenAI wire format over a real loopback
//! server: sequential crews passing context, typed task output, guardrails that reject with
//! feedback and retry, hierarchical crews whose manager delegates to a named agent (and is
//! refused an unknown one), and set-up errors that name the fix.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::http::{Recorded, TestServer, openai_completion, openai_llm, openai_tool_calls};
use crewflow::agents::{Agent, AgentError, Crew, Inputs, Process, Task};
use serde::Deserialize;
use serde_json::{Value, json};

fn messages(r: &Recorded) -> Vec<Value> {
    r.json()["messages"].as_array().cloned().unwrap_or_default()
}

fn system(r: &Recorded) -> String {
    messages(r)[0]["content"].as_str().unwrap_or("").to_string()
}

fn user(r: &Recorded) -> String {
    messages(r)[1]["content"].as_str().unwrap_or("").to_string()
}

#[derive(Debug, Deserialize, schemars::JsonSchema, PartialEq)]
struct Outline {
    points: Vec<String>,
}

#[tokio::test]
async fn a_sequential_crew_passes_context_and_types_outputs() {
    let server = TestServer::start(vec![
        openai_completion("{\"points\": [\"ownership\", \"borrowing\"]}"),
        openai_completion("Rust is safe because of ownership and borrowing."),
    ])
    .await;
    let llm = openai_llm(&server);
    let researcher = Agent::new(llm.clone()).role("{topic} Researcher").goal("Find facts about {topic}.");
    let writer = Agent::new(llm).role("Writer").goal("Write clearly.");
    let crew = Crew::new(
        [researcher.clone(), writer.clone()],
        [
            Task::new("research", "List the key points of {topic}.")
                .expected_output("two points")
                .agent(researcher)
                .output_type::<Outline>(),
            Task::new("write", "Write one sentence about {topic}.").agent(writer).context(["research"]),
        ],
    );
    let out = crew.kickoff(&Inputs::from([("topic", "Rust")])).await.unwrap();
    assert_eq!(out.raw, "Rust is safe because of ownership and borrowing.");
    assert_eq!(out.tasks.len(), 2);
    assert_eq!(out.tasks[0].parse::<Outline>().unwrap().points, ["ownership", "borrowing"]);
    assert_eq!(out.tasks[0].agent, "Rust Researcher");
    assert_eq!(out.usage.total(), 50, "usage of both tasks");
    let reqs = server.requests();
    assert!(system(&reqs[0]).contains("You are Rust Researcher"), "{}", system(&reqs[0]));
    let first = user(&reqs[0]);
    assert!(
        first.starts_with("List the key points of Rust.")
            && first.contains("expected criteria for your final answer: two points"),
        "{first}"
    );
    let second = user(&reqs[1]);
    assert!(
        second.contains("[research]\n{\"points\": [\"ownership\", \"borrowing\"]}"),
        "the research output is the context: {second}"
    );
}

#[tokio::test]
async fn a_guardrail_rejects_with_feedback_and_the_agent_retries() {
    let server =
        TestServer::start(vec![openai_completion("A long rambling answer that goes on."), openai_completion("Short.")])
            .await;
    let checked = Arc::new(AtomicUsize::new(0));
    let c = checked.clone();
    let agent = Agent::new(openai_llm(&server)).role("Writer");
    let task = Task::new("tagline", "Write a tagline.").agent(agent).guardrail(move |o| {
        c.fetch_add(1, Ordering::SeqCst);
        if o.raw.split_whitespace().count() <= 3 { Ok(()) } else { Err("use at most 3 words".into()) }
    });
    let out = task.execute(&Inputs::new(), &[]).await.unwrap();
    assert_eq!((out.raw.as_str(), out.attempts), ("Short.", 2));
    assert_eq!(checked.load(Ordering::SeqCst), 2);
    let retry = user(&server.requests()[1]);
    assert!(retry.contains("Your previous answer was rejected: use at most 3 words"), "{retry}");

    // Rejected every time: an error with the last feedback, after 1 + max_retries answers.
    let server = TestServer::start(vec![openai_completion("too many words here"); 3]).await;
    let agent = Agent::new(openai_llm(&server)).role("Writer");
    let task = Task::new("tagline", "Write a tagline.")
        .agent(agent)
        .guardrail(|o| if o.raw.len() < 5 { Ok(()) } else { Err("shorter".into()) })
        .guardrail_max_retries(2);
    let err = task.execute(&Inputs::new(), &[]).await.unwrap_err();
    assert!(matches!(&err, AgentError::Guardrail { attempts: 3, .. }), "{err}");
    assert!(err.to_string().contains("shorter"), "{err}");
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn a_hierarchical_manager_delegates_to_the_named_agent() {
    let server = TestServer::start(vec![
        // The manager delegates to the Writer, by role.
        openai_tool_calls(&[(
            "d1",
            "delegate_work",
            json!({"coworker": "Writer", "task": "Write a haiku about autumn.", "context": "keep it calm"}),
        )]),
        // The Writer's own model call.
        openai_completion("Leaves drift, slow and gold"),
        // The manager's final answer.
        openai_completion("Leaves drift, slow and gold"),
    ])
    .await;
    let llm = openai_llm(&server);
    let researcher = Agent::new(llm.clone()).role("Researcher").goal("Find facts.");
    let writer = Agent::new(llm.clone()).role("Writer").goal("Write poems.").backstory("A poet.");
    let crew = Crew::new([researcher, writer], [Task::new("poem", "A haiku about autumn.").expected_output("a haiku")])
        .process(Process::Hierarchical)
        .manager_llm(llm);
    let out = crew.kickoff(&Inputs::new()).await.unwrap();
    assert_eq!(out.raw, "Leaves drift, slow and gold");
    assert_eq!(out.tasks[0].agent, "Crew Manager");
    assert_eq!(out.usage.total(), 40 + 25 + 25, "the coworker's tokens count too");
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    // The manager was offered the delegation tools, with the real roles as the only choices.
    let tools = reqs[0].json()["tools"].clone();
    let delegate = tools.as_array().unwrap().iter().find(|t| t["function"]["name"] == "delegate_work").unwrap();
    assert_eq!(delegate["function"]["parameters"]["properties"]["coworker"]["enum"], json!(["Researcher", "Writer"]));
    // The delegation reached the Writer: its persona and the delegated task.
    assert!(system(&reqs[1]).contains("You are Writer. A poet."), "{}", system(&reqs[1]));
    let delegated = user(&reqs[1]);
    assert!(delegated.starts_with("Write a haiku about autumn.") && delegated.contains("keep it calm"), "{delegated}");
    assert!(reqs[1].json().get("tools").is_none(), "the Writer has no tools");
    // And its answer went back to the manager as the tool's result.
    let result = messages(&reqs[2]).into_iter().find(|m| m["role"] == "tool").unwrap();
    assert_eq!(result["content"], "Leaves drift, slow and gold");
}

#[tokio::test]
async fn delegating_to_an_unknown_coworker_is_refused_to_the_model() {
    let server = TestServer::start(vec![
        openai_tool_calls(&[(
            "d1",
            "ask_coworker",
            json!({"coworker": "Ghost", "question": "Who are you?", "context": ""}),
        )]),
        openai_completion("I will do it myself."),
    ])
    .await;
    let llm = openai_llm(&server);
    let writer = Agent::new(llm.clone()).role("Writer");
    let manager = Agent::new(llm).role("Boss").goal("Delegate.");
    let crew = Crew::new([writer], [Task::new("t", "Do it.")]).process(Process::Hierarchical).manager(manager);
    let out = crew.kickoff(&Inputs::new()).await.unwrap();
    assert_eq!(out.raw, "I will do it myself.");
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2, "no coworker was called");
    let result = messages(&reqs[1]).into_iter().find(|m| m["role"] == "tool").unwrap();
    let text = result["content"].as_str().unwrap();
    assert!(text.contains("Ghost") && text.contains("Writer"), "the refusal names the coworkers: {text}");
}

#[tokio::test]
async fn crew_setup_errors_name_the_fix() {
    let server = TestServer::start(vec![]).await;
    let llm = openai_llm(&server);
    let a = Agent::new(llm.clone()).role("A");
    let err = Crew::new([a.clone()], [Task::new("t", "x")]).kickoff(&Inputs::new()).await.unwrap_err();
    assert!(err.to_string().contains("task \"t\" has no agent"), "{err}");
    let err = Crew::new(
        [a.clone()],
        [Task::new("t", "x").agent(a.clone()).context(["later"]), Task::new("later", "y").agent(a.clone())],
    )
    .kickoff(&Inputs::new())
    .await
    .unwrap_err();
    assert!(err.to_string().contains("\"later\", which is not a task before it"), "{err}");
    let err = Crew::new([a.clone()], [Task::new("t", "x")])
        .process(Process::Hierarchical)
        .kickoff(&Inputs::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Crew::manager_llm"), "{err}");
    let err =
        Crew::new([a.clone()], [Task::new("t", "About {topic}").agent(a)]).kickoff(&Inputs::new()).await.unwrap_err();
    assert!(err.to_string().contains("description of task \"t\" names `{topic}`"), "{err}");
    assert!(server.requests().is_empty(), "nothing was sent");
}
