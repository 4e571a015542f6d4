//! The content pipeline of the production guide: a research crew → a router on the research's
//! quality (back to research, searching more broadly, at most twice) → a writing crew whose
//! editor's article a person reviews before it is published.
//!
//! Everything runs offline: the sources are a small built-in corpus behind a `search_sources`
//! tool, and the model is the local one unless `CREWFLOW_MODEL` names another. The local
//! SmolLM2-135M cannot call tools, so there the research step searches through the same tool
//! and hands the sources to the researcher; with a model that calls tools
//! (`CREWFLOW_MODEL=openai/gpt-4o-mini` with `OPENAI_API_KEY`, or `ollama/qwen2.5`) the
//! researcher searches itself, and writes better notes. The review asks on the terminal: an
//! empty line or `approve` publishes, anything else goes back to the editor as what to change.
//!
//! ```text
//! cargo run --example content_pipeline -- "async runtimes"
//! ```

use crewflow::agents::{Agent, Crew, HumanReview, Inputs, Task, ToolFn, ToolSet};
use crewflow::llm::Llm;
use crewflow::prelude::*;
use serde::{Deserialize, Serialize};

/// What the run knows; every step reads and updates it through `cx`.
#[derive(Default, Debug, Serialize, Deserialize)]
struct Content {
    topic: String,
    audience: String,
    /// Research rounds so far.
    attempts: u32,
    /// The sources the last round found.
    sources: Vec<String>,
    /// The research crew's checked notes.
    research: String,
    /// The article, as the reviewer approved it.
    article: String,
}

/// What the quality gate decides.
#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum Quality {
    /// Enough sources: write.
    Enough,
    /// Too few: research again, more broadly.
    Retry,
}

/// The arguments of `search_sources`.
#[derive(Deserialize, schemars::JsonSchema)]
struct SearchArgs {
    /// What to look for.
    query: String,
    /// 1: sources with every word of the query; 2: with any word; 3: related ones too.
    breadth: u32,
}

/// Searches the built-in corpus: one source a line.
fn search_sources() -> impl crewflow::agents::Tool {
    ToolFn::new("search_sources", "Searches the sources; returns one source a line.", |args: SearchArgs| async move {
        let words: Vec<String> = args
            .query
            .split_whitespace()
            .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase())
            .filter(|w| !w.is_empty())
            .collect();
        let found: Vec<&str> = CORPUS
            .iter()
            .filter(|source| {
                let s = source.to_lowercase();
                let hits = words.iter().filter(|w| s.contains(w.as_str())).count();
                match args.breadth {
                    0 | 1 => hits == words.len(),
                    2 => hits > 0,
                    _ => hits > 0 || RELATED.iter().any(|r| s.contains(r)),
                }
            })
            .copied()
            .collect();
        Ok::<_, String>(found.join("\n"))
    })
}

/// The flow's parts: the model, and how many sources make enough research.
struct ContentPipeline {
    llm: Llm,
    min_sources: usize,
    max_retries: u32,
}

#[flow(state = Content)]
impl ContentPipeline {
    /// Fills in the defaults.
    #[start]
    async fn plan(&self, cx: &Cx<Content>) -> Result<String> {
        let topic = cx.update(|c| {
            if c.audience.is_empty() {
                c.audience = "engineers".into();
            }
            c.topic.clone()
        });
        Ok(topic)
    }

    /// The research crew: a researcher finds the sources and notes the facts, an analyst keeps
    /// only what the sources support. Each retry searches more broadly.
    #[listen(or(plan, Quality::Retry))]
    async fn research(&self, cx: &Cx<Content>) -> Result<usize> {
        let (topic, attempt) = cx.update(|c| {
            c.attempts += 1;
            (c.topic.clone(), c.attempts)
        });
        let tools = ToolSet::new().with(search_sources());
        // The sources found, for the quality gate (the same search the researcher is asked
        // to make).
        let query = serde_json::json!({ "query": topic, "breadth": attempt });
        let found = tools.call("search_sources", query).await?;
        let sources: Vec<String> = found.lines().map(str::to_string).collect();
        let mut researcher = Agent::new(self.llm.clone())
            .role("Researcher")
            .goal("Find accurate facts about {topic} in the sources")
            .backstory("You read sources carefully and never invent facts.")
            .max_iter(4);
        let mut inputs = Inputs::from([("topic", topic.clone()), ("breadth", attempt.to_string())]);
        let description = if !self.llm.calls_tools().await? {
            // A model without tools (the default local one) reads what the search found.
            inputs.insert("sources", if found.is_empty() { "(none)".to_string() } else { found.clone() });
            "List the key facts about {topic} in these sources:\n{sources}"
        } else {
            researcher = researcher.tools(&tools);
            "Search the sources for {topic} (search_sources with breadth {breadth}) and list the key facts."
        };
        let analyst = Agent::new(self.llm.clone())
            .role("Analyst")
            .goal("Keep only facts about {topic} that the sources support")
            .backstory("You check every claim.")
            .max_iter(2);
        let crew = Crew::new(
            [researcher.clone(), analyst.clone()],
            [
                Task::new("research", description).expected_output("a list of facts").agent(researcher),
                Task::new("check", "Check the facts about {topic}; list the ones the sources support.")
                    .expected_output("a list of checked facts")
                    .agent(analyst),
            ],
        );
        let out = crew.kickoff(&inputs).await?;
        for task in &out.tasks {
            println!("[{}] by {}: {} characters", task.name, task.agent, task.raw.len());
        }
        println!("research round {attempt}: {} sources, {} tokens", sources.len(), out.usage.total());
        let count = sources.len();
        cx.update(|c| {
            c.sources = sources;
            c.research = out.raw;
        });
        Ok(count)
    }

    /// Enough sources, or out of retries: write. Otherwise research again, more broadly.
    #[router(research)]
    async fn quality_gate(&self, cx: &Cx<Content>, found: usize) -> Result<Quality> {
        let attempts = cx.state(|c| c.attempts);
        let route =
            if found >= self.min_sources || attempts > self.max_retries { Quality::Enough } else { Quality::Retry };
        println!("quality: {found} sources after {attempts} rounds -> {route:?}");
        Ok(route)
    }

    /// The writing crew: a writer drafts from the research, an editor tightens it, and a person
    /// reviews the editor's article (the flow's feedback provider: the terminal here).
    #[listen(Quality::Enough)]
    async fn write(&self, cx: &Cx<Content>) -> Result<String> {
        let (topic, audience, research) = cx.state(|c| (c.topic.clone(), c.audience.clone(), c.research.clone()));
        let writer = Agent::new(self.llm.clone())
            .role("Writer")
            .goal("Write short, clear articles for {audience}")
            .backstory("You explain technical topics plainly.")
            .max_iter(2);
        let editor = Agent::new(self.llm.clone())
            .role("Editor")
            .goal("Make articles short, correct and readable")
            .backstory("You cut every word that does not help the reader.")
            .max_iter(2);
        let crew = Crew::new(
            [writer.clone(), editor.clone()],
            [
                Task::new(
                    "draft",
                    "Write a short article about {topic} for {audience} from this research:\n{research}",
                )
                .expected_output("one or two paragraphs")
                .agent(writer),
                Task::new("edit", "Edit the draft about {topic}: shorter, clearer, nothing the research does not say.")
                    .expected_output("the edited article")
                    .agent(editor)
                    .human_review(HumanReview::new("Publish this article?").max_revisions(2)),
            ],
        );
        let inputs = Inputs::from([("topic", topic), ("audience", audience), ("research", research)]);
        let out = crew.kickoff(&inputs).await?;
        for task in &out.tasks {
            println!("[{}] by {}: {} characters, {} attempts", task.name, task.agent, task.raw.len(), task.attempts);
        }
        println!("tokens: {}", out.usage.total());
        cx.update(|c| c.article = out.raw.clone());
        Ok(out.raw)
    }
}

/// Words that broaden the third search.
const RELATED: [&str; 3] = ["concurrency", "scheduler", "future"];

const CORPUS: [&str; 10] = [
    "An async runtime drives futures to completion by polling them when they can make progress.",
    "Tokio's scheduler uses work stealing so idle threads take tasks from busy ones.",
    "A future does nothing until it is polled; dropping it cancels the work at its next await.",
    "Blocking a runtime thread stalls every task scheduled on it; hand CPU-heavy work to spawn_blocking.",
    "Structured concurrency keeps child tasks inside the scope that started them.",
    "Async runtimes multiplex many tasks over a few OS threads.",
    "Cancellation in Rust async code is cooperative: tasks stop at await points.",
    "Event-driven workflows react to step completions instead of following a fixed script.",
    "Durable workflows checkpoint their state so a crash loses no finished work.",
    "Backpressure keeps a fast producer from overwhelming a slow consumer.",
];

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let topic = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let topic = if topic.is_empty() { "async runtimes".to_string() } else { topic };
    let llm = Llm::from_env()?;
    if !llm.calls_tools().await? {
        println!(
            "Model: {} ({}). It cannot call tools, so the research step searches and the researcher reads what it found; \
             set CREWFLOW_MODEL=openai/gpt-4o-mini (or ollama/<model>) for a researcher that searches itself and notes worth reading.",
            llm.provider(),
            llm.model()
        );
    }
    let flow = ContentPipeline { llm, min_sources: 3, max_retries: 2 }
        .into_builder()
        .observe(|e: &Event| match &e.kind {
            EventKind::ToolCallFinished { name, outcome, .. } => println!("tool {name}: {outcome}"),
            EventKind::FeedbackReceived { outcome: Some(outcome), .. } => println!("review: {outcome}"),
            _ => {}
        })
        .build()?;
    let run = flow.kickoff(serde_json::json!({ "topic": topic })).await?;
    println!("research rounds: {}", run.state.attempts);
    println!("ARTICLE {}", run.output::<String>()?.replace('\n', " "));
    Ok(())
}
