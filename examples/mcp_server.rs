//! crewflow tools and a flow served to MCP clients over stdio.
//!
//! Any MCP client (Claude Desktop, an IDE, the MCP Inspector, another crewflow agent through
//! `McpServer::stdio`) can start it:
//!
//! ```text
//! cargo build --example mcp_server --features mcp
//! npx @modelcontextprotocol/inspector target/debug/examples/mcp_server
//! ```
//!
//! It serves two tools (`word_count`, `to_fahrenheit`) and the flow `shipping_quote` as a
//! third: its arguments are the flow's state fields, its result the run's output. Standard
//! output is the protocol's; this example writes nothing else there.

use crewflow::agents::{McpService, ToolSet, tool};
use crewflow::prelude::*;
use serde::{Deserialize, Serialize};

/// Counts the words of a text.
#[tool]
async fn word_count(text: String) -> Result<usize, std::convert::Infallible> {
    Ok(text.split_whitespace().count())
}

/// Converts a temperature from Celsius to Fahrenheit.
#[tool]
async fn to_fahrenheit(celsius: f64) -> Result<f64, std::convert::Infallible> {
    Ok(celsius * 9.0 / 5.0 + 32.0)
}

/// The quote flow's state: its fields are the tool's arguments.
#[derive(Default, Serialize, Deserialize, schemars::JsonSchema)]
struct Shipment {
    /// The parcel's weight in kilograms.
    weight_kg: f64,
    /// Express delivery (twice the price).
    express: bool,
}

/// A two-step flow: price the parcel, then word the quote.
fn shipping_quote() -> Result<Flow<Shipment>, crewflow::Error> {
    FlowBuilder::<Shipment>::new("shipping_quote")
        .start("price", |cx: Cx<Shipment>, (): ()| async move {
            let (kg, express) = cx.state(|s| (s.weight_kg, s.express));
            if kg <= 0.0 {
                return Err(StepError::msg("the weight must be more than 0 kg"));
            }
            let base = 4.5 + 1.2 * kg;
            Ok(if express { base * 2.0 } else { base })
        })
        .listen("quote", "price", |cx: Cx<Shipment>, price: f64| async move {
            let kind = if cx.state(|s| s.express) { "express" } else { "standard" };
            Ok::<_, StepError>(format!("{kind} shipping: {price:.2} EUR"))
        })
        .build()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tools = ToolSet::new().with(WordCount).with(ToFahrenheit);
    McpService::new("crewflow-example")
        .instructions("Small utilities and a shipping quote flow.")
        .tools(&tools)
        .flow(shipping_quote()?, "Quotes the price of shipping a parcel.")
        .serve_stdio()
        .await?;
    Ok(())
}
