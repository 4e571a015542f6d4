//! Declarative flows with `agent` and `crew` actions, against scripted replies in the OpenAI
//! wire format over a real loopback server: a crew loaded from CrewAI YAML runs as a method
//! with inputs rendered from the state, an agent summarises its output, and a name the
//! registry lacks fails the build naming the one meant.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::http::{TestServer, openai_completion, openai_llm};
use crewflow::agents::{Agent, Crew, CrewRegistry};
use crewflow::declarative::{FlowDefinition, Registry};
use serde_json::json;

const FLOW: &str = r#"
name: research_flow
state:
  default: {topic: ""}
methods:
  research:
    start: true
    do: {call: crew, ref: research, inputs: {topic: "${state.topic}"}}
  summarise:
    listen: research
    do: {call: agent, ref: editor, prompt: "Summarise {topic}: ${outputs.research}", inputs: {audience: engineers}}
"#;

const AGENTS: &str = "researcher:\n  role: '{topic} Researcher'\n  goal: Find facts about {topic}\n  llm: fast\n";
const TASKS: &str = "research:\n  description: Research {topic}.\n  expected_output: two facts\n  agent: researcher\n";

#[tokio::test]
async fn a_flow_runs_a_yaml_crew_and_an_agent() {
    let server = TestServer::start(vec![
        openai_completion("Lighthouses use Fresnel lenses. They are automated."),
        openai_completion("Two facts about lighthouses."),
    ])
    .await;
    let llm = openai_llm(&server);
    let crew = Crew::from_yaml(AGENTS, TASKS, &CrewRegistry::new().llm("fast", llm.clone())).unwrap();
    let editor = Agent::new(llm).role("Editor").goal("Keep it short for {audience}.");
    let registry = Registry::new().crew("research", crew).agent("editor", editor);
    let flow = FlowDefinition::from_yaml(FLOW).unwrap().build(&registry).unwrap();
    let run = flow.kickoff(json!({"topic": "lighthouses"})).await.unwrap();
    assert_eq!(run.output_json(), Some(json!("Two facts about lighthouses.")));

    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    let first = reqs[0].json();
    assert!(first["messages"][0]["content"].as_str().unwrap().contains("You are lighthouses Researcher"), "{first}");
    assert!(first["messages"][1]["content"].as_str().unwrap().starts_with("Research lighthouses."), "{first}");
    let second = reqs[1].json();
    assert!(second["messages"][0]["content"].as_str().unwrap().contains("Keep it short for engineers."), "{second}");
    assert_eq!(
        second["messages"][1]["content"], "Summarise {topic}: Lighthouses use Fresnel lenses. They are automated.",
        "the prompt's braces are text; the inputs fill the agent's placeholders"
    );
}

#[tokio::test]
async fn an_unknown_crew_or_agent_fails_the_build() {
    let server = TestServer::start(Vec::new()).await;
    let llm = openai_llm(&server);
    let crew = Crew::from_yaml(AGENTS, TASKS, &CrewRegistry::new().llm("fast", llm.clone())).unwrap();
    let registry = Registry::new().crew("researcher", crew).agent("editors", Agent::new(llm).role("Editor"));
    let err = FlowDefinition::from_yaml(FLOW).unwrap().build(&registry).err().unwrap();
    assert_eq!(
        err.to_string(),
        "flow `research_flow`, method `research`: do: no crew `research` is registered — did you mean `researcher`? (registered: researcher); register it with Registry::crew"
    );
    let registry = registry.crew(
        "research",
        Crew::from_yaml(AGENTS, TASKS, &CrewRegistry::new().llm("fast", openai_llm(&server))).unwrap(),
    );
    let err = FlowDefinition::from_yaml(FLOW).unwrap().build(&registry).err().unwrap();
    assert_eq!(
        err.to_string(),
        "flow `research_flow`, method `summarise`: do: no agent `editor` is registered — did you mean `editors`? (registered: editors); register it with Registry::agent"
    );
    let doc = FLOW.replace(
        "call: agent, ref: editor, prompt: \"Summarise {topic}: ${outputs.research}\", inputs: {audience: engineers}",
        "call: tool, ref: search",
    );
    let err = FlowDefinition::from_yaml(&doc).unwrap().build(&registry).err().unwrap();
    assert!(
        err.to_string()
            .contains("a tool is called by an agent: register one with Registry::agent and use `call: agent`"),
        "{err}"
    );
}
