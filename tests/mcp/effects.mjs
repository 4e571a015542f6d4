// A small MCP server (the official TypeScript SDK, over stdio) whose tools leave evidence
// outside the process that calls them, for tests/mcp_durable.rs: `charge` and `mail` each
// append a line to the file named by EFFECTS_FILE; `mail` first waits MAIL_DELAY_MS (the test
// kills the agent's process while it waits). Usage: EFFECTS_FILE=... node effects.mjs
//
// The server exits as soon as its standard input ends: a client killed with SIGKILL cannot shut
// it down, and a server left behind would still write `mail` after its delay (the SDK's stdio
// transport does not exit on its own). The SDK's low-level `Server` takes plain JSON Schemas,
// so this needs no package but the SDK.
import { appendFileSync } from "node:fs";
import { Server } from "@modelcontextprotocol/sdk/server/index.js";
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { CallToolRequestSchema, ListToolsRequestSchema } from "@modelcontextprotocol/sdk/types.js";

const file = process.env.EFFECTS_FILE;
if (!file) {
  console.error("effects.mjs: set EFFECTS_FILE to the file the tools append to");
  process.exit(2);
}
const mailDelay = Number(process.env.MAIL_DELAY_MS ?? "0");
const order = { type: "object", properties: { order: { type: "string" } }, required: ["order"] };
const tools = {
  charge: {
    description: "Charges an order.",
    call: async ({ order }) => {
      appendFileSync(file, `charge ${order}\n`);
      return `receipt for ${order}`;
    },
  },
  mail: {
    description: "Mails the receipt of an order.",
    call: async ({ order }) => {
      await new Promise((done) => setTimeout(done, mailDelay));
      appendFileSync(file, `mail ${order}\n`);
      return "mailed";
    },
  },
};

const server = new Server({ name: "effects", version: "1.0.0" }, { capabilities: { tools: {} } });
server.setRequestHandler(ListToolsRequestSchema, async () => ({
  tools: Object.entries(tools).map(([name, t]) => ({ name, description: t.description, inputSchema: order })),
}));
server.setRequestHandler(CallToolRequestSchema, async ({ params }) => {
  const tool = tools[params.name];
  if (!tool) {
    return { isError: true, content: [{ type: "text", text: `no tool named ${params.name}` }] };
  }
  return { content: [{ type: "text", text: await tool.call(params.arguments ?? {}) }] };
});
process.stdin.on("end", () => process.exit(0));
await server.connect(new StdioServerTransport());
