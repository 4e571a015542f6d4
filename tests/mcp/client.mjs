// A real MCP client (the official TypeScript SDK) driving a crewflow MCP server over stdio,
// for tests/mcp_server.rs. Usage: node client.mjs <server program> [args...]
// Prints one JSON object: the tools listed and the results of the calls in CALLS (a JSON
// array of {name, arguments} in the environment).
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const [command, ...args] = process.argv.slice(2);
const calls = JSON.parse(process.env.CALLS ?? "[]");
const transport = new StdioClientTransport({ command, args, stderr: "inherit" });
const client = new Client({ name: "crewflow-test-client", version: "1.0.0" });
await client.connect(transport);
const server = client.getServerVersion();
const { tools } = await client.listTools();
const results = [];
for (const call of calls) {
  try {
    const r = await client.callTool({ name: call.name, arguments: call.arguments });
    results.push({ isError: r.isError ?? false, text: r.content.map((c) => c.text).join("\n") });
  } catch (e) {
    results.push({ rpcError: e.code ?? null, message: String(e.message) });
  }
}
await client.close();
console.log(JSON.stringify({ server, tools, results }));
