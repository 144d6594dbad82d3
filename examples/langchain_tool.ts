/**
 * `pythonTool()` as a LangChain.js tool (`@langchain/core` `tool()`): the
 * JSON Schema, description and handler come from the sandbox, and each
 * LangGraph thread (`configurable.thread_id`) keeps its own Python session,
 * closed after 10 idle minutes. Images reach the model as standard image
 * content blocks.
 *
 * Bind it to any chat model (`model.bindTools([runPython])`) or agent.
 *
 * Run: deno run -A examples/langchain_tool.ts
 *
 * @module
 */

import { tool } from "@langchain/core/tools";
import { PyodideSandbox, pythonTool, SessionPool } from "../mod.ts";

const sandbox = new PyodideSandbox({ timeoutSeconds: 30 });
const sessions = new SessionPool(sandbox, { idleSeconds: 600 });
const python = pythonTool(sandbox, { sessions });

/** The LangChain tool. */
export const runPython = tool(
  async (input, config) => {
    const out = await python.call(input, {
      signal: config.signal,
      conversationId: String(config.configurable?.thread_id ?? "default"),
    });
    // [content for the model, artifact for the application]
    return [out.content, out.result];
  },
  {
    name: python.name,
    description: python.description,
    schema: python.inputSchema,
    responseFormat: "content_and_artifact",
  },
);

if (import.meta.main) {
  const config = { configurable: { thread_id: "thread-1" } };
  await runPython.invoke({ code: "x = 6 * 7" }, config);
  // A ToolCall input gives a ToolMessage, as an agent loop would get.
  const message = await runPython.invoke({
    type: "tool_call",
    id: "call_1",
    name: python.name,
    args: { code: "print('x is', x)\nx" },
  }, config);
  console.log(message); // ToolMessage { content: [{ type: "text", text: "stdout:\nx is 42\n" }, { type: "text", text: "result:\n42" }], artifact: {...} }
  await sessions.close();
  await sandbox.close();
}
