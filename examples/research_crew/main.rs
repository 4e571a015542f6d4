//! A research crew called from a flow step: a researcher with an HTTP `fetch_page` tool and a
//! writer, in a sequential crew; the step's output is the article.
//!
//! The page is served from this process on loopback, so the example runs offline. On the
//! default local model (SmolLM2-135M, which cannot call tools) the step fetches the page itself
//! through the same tool and hands it to the researcher as context; with a model that calls
//! tools (`CREWFLOW_MODEL=openai/gpt-4o-mini` with `OPENAI_API_KEY`, or `ollama/qwen2.5`), the
//! researcher decides to fetch the page itself, and the flow's events show each tool call.
//!
//! ```text
//! cargo run --example research_crew -- "lighthouses"
//! ```

use crewflow::agents::{Agent, Crew, Inputs, Task, ToolFn, ToolSet};
use crewflow::llm::Llm;
use crewflow::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PAGE: &str = "Lighthouses guide ships with a light of a known pattern. The Fresnel lens (1822) \
made their beams visible for over 20 miles. Most lighthouses are automated today; the last \
keepers of many countries left in the 1990s. Their towers are built to stand storms: the \
Eddystone lighthouse was rebuilt four times.";

/// What the run keeps.
#[derive(Default, Debug, Serialize, Deserialize)]
struct Research {
    topic: String,
    page_url: String,
    article: String,
}

/// The arguments of `fetch_page`.
#[derive(Deserialize, schemars::JsonSchema)]
struct FetchArgs {
    /// The page's URL (http://...).
    url: String,
}

/// A tool that fetches a web page's text.
fn fetch_page() -> ToolFn<FetchArgs, impl Fn(FetchArgs) -> FetchFuture + Send + Sync + 'static> {
    ToolFn::new("fetch_page", "Fetches a web page and returns its text.", |args: FetchArgs| -> FetchFuture {
        Box::pin(async move {
            // crewflow builds reqwest without a TLS provider of its own (see its docs).
            crewflow::llm::install_crypto_provider();
            let response = reqwest::get(&args.url).await.map_err(|e| format!("cannot fetch {}: {e}", args.url))?;
            let status = response.status();
            if !status.is_success() {
                return Err(format!("{} answered {status}", args.url));
            }
            response.text().await.map_err(|e| format!("cannot read {}: {e}", args.url))
        })
    })
}

type FetchFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send>>;

/// Serves [`PAGE`] on loopback; returns its URL.
async fn serve_page() -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/lighthouses", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{PAGE}",
                    PAGE.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok(url)
}

struct ResearchFlow {
    llm: Llm,
}

#[flow(state = Research)]
impl ResearchFlow {
    /// Runs the crew on the topic.
    #[start]
    async fn research(&self, cx: &Cx<Research>) -> Result<String> {
        let (topic, url) = cx.state(|r| (r.topic.clone(), r.page_url.clone()));
        let tools = ToolSet::new().with(fetch_page());
        let mut researcher = Agent::new(self.llm.clone())
            .role("{topic} Researcher")
            .goal("Find accurate facts about {topic} from the sources given")
            .backstory("You read sources carefully and never invent facts.")
            .max_iter(4);
        let mut inputs = Inputs::from([("topic", topic.as_str()), ("url", url.as_str())]);
        let mut description = "Read the page at {url} and list the key facts about {topic}.".to_string();
        if !self.llm.calls_tools().await? {
            // A model without tools (the default local one): fetch the page here, with the same tool.
            let text = tools.call("fetch_page", serde_json::json!({ "url": url })).await?;
            inputs.insert("page", text);
            description = "List the key facts about {topic} in this page:\n{page}".into();
        } else {
            researcher = researcher.tools(&tools);
        }
        let writer = Agent::new(self.llm.clone())
            .role("Writer")
            .goal("Write short, clear articles about {topic}")
            .backstory("You write for curious readers.")
            .max_iter(2);
        let crew = Crew::new(
            [researcher.clone(), writer.clone()],
            [
                Task::new("research", description).expected_output("a list of facts").agent(researcher),
                Task::new("article", "Write a short article about {topic} from the facts.")
                    .expected_output("one paragraph")
                    .agent(writer),
            ],
        );
        let out = crew.kickoff(&inputs).await?;
        for task in &out.tasks {
            println!("[{}] by {}: {} characters", task.name, task.agent, task.raw.len());
        }
        println!("tokens: {}", out.usage.total());
        cx.update(|r| r.article = out.raw.clone());
        Ok(out.raw)
    }
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let topic = std::env::args().nth(1).unwrap_or_else(|| "lighthouses".into());
    let llm = Llm::from_env()?;
    if !llm.calls_tools().await? {
        println!(
            "Model: {} ({}). It cannot call tools, so the step fetches the page and the researcher reads it; \
             set CREWFLOW_MODEL=openai/gpt-4o-mini (or ollama/<model>) to let the researcher call fetch_page itself.",
            llm.provider(),
            llm.model()
        );
    }
    let page_url = serve_page().await?;
    let flow = ResearchFlow { llm }
        .into_builder()
        .observe(|e: &Event| {
            if let EventKind::ToolCallFinished { name, outcome, .. } = &e.kind {
                println!("tool {name}: {outcome}");
            }
        })
        .build()?;
    let run = flow.kickoff(serde_json::json!({ "topic": topic, "page_url": page_url })).await?;
    println!("ARTICLE {}", run.output::<String>()?.replace('\n', " "));
    Ok(())
}
