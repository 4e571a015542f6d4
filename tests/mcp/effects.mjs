// A small MCP server (the official TypeScript SDK, over stdio) whose tools leave evidence
// outside the process that calls them, for tests/mcp_durable.rs: `charge` and `mail` each
// append a line to the file named by EFFECTS_FILE; `mail` first waits MAIL_DELAY_MS (the test
// kills the agent's process while it waits). Usage: EFFECTS_FILE=... node effects.mjs
//
// The server exits as soon as its standard input ends: a client killed with SIGKILL cannot shut
// it down, and a server left behind would still write `mail` after its delay.
import { appendFileSync } from "node:fs";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { z } from "zod";

const file = process.env.EFFECTS_FILE;
if (!file) {
  console.error("effects.mjs: set EFFECTS_FILE to the file the tools append to");
  process.exit(2);
}
const mailDelay = Number(process.env.MAIL_DELAY_MS ?? "0");
const text = (t) => ({ content: [{ type: "text", text: t }] });

const server = new McpServer({ name: "effects", version: "1.0.0" });
server.registerTool(
  "charge",
  { description: "Charges an order.", inputSchema: { order: z.string() } },
  async ({ order }) => {
    appendFileSync(file, `charge ${order}\n`);
    return text(`receipt for ${order}`);
  },
);
server.registerTool(
  "mail",
  { description: "Mails the receipt of an order.", inputSchema: { order: z.string() } },
  async ({ order }) => {
    await new Promise((done) => setTimeout(done, mailDelay));
    appendFileSync(file, `mail ${order}\n`);
    return text("mailed");
  },
);
process.stdin.on("end", () => process.exit(0));
await server.connect(new StdioServerTransport());
