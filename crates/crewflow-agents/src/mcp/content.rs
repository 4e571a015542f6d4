//! An MCP tool result as the text a model reads.

use rmcp::model::{CallToolResult, ContentBlock};

use crate::error::ToolError;

/// The text of a tool result: its text blocks, a note for each block a model cannot read as
/// text (an image, audio, a binary resource), or its structured content when it has no
/// content blocks. `isError` makes it the tool's error.
pub(crate) fn result_text(server: &str, result: CallToolResult) -> Result<String, ToolError> {
    let mut parts: Vec<String> = result.content.iter().map(block_text).collect();
    if parts.is_empty()
        && let Some(structured) = &result.structured_content
    {
        parts.push(structured.to_string());
    }
    let text = parts.join("\n");
    if result.is_error == Some(true) {
        let text = if text.is_empty() { "no details given".to_string() } else { text };
        Err(ToolError::Failed(format!("the MCP server `{server}` reported an error: {text}")))
    } else {
        Ok(text)
    }
}

fn block_text(block: &ContentBlock) -> String {
    match block {
        ContentBlock::Text(t) => t.text.clone(),
        ContentBlock::Image(i) => format!("[an image ({}), not shown]", i.mime_type),
        ContentBlock::Audio(a) => format!("[audio ({}), not shown]", a.mime_type),
        ContentBlock::Resource(r) => {
            let text = r.get_text();
            if text.is_empty() { "[a binary resource, not shown]".to_string() } else { text }
        }
        ContentBlock::ResourceLink(l) => format!("[resource `{}` at {}]", l.name, l.uri),
        _ => "[content of a kind crewflow does not read]".to_string(),
    }
}
