/**
 * An agent tool without any SDK: `pythonTool()` gives the name, a
 * description built from the sandbox's real limits, a strict JSON Schema
 * and a handler. Shown here in the OpenAI function-calling and Anthropic
 * tool-use shapes, with the model's tool calls written by hand (no network
 * call). Host functions make the agent's other tools callable from its code.
 *
 * Run: deno run -A examples/agent_tool.ts
 *
 * @module
 */

import {
  type AnthropicTool,
  type AnthropicToolUseBlock,
  type OpenAIFunctionTool,
  type OpenAIToolCall,
  PyodideSandbox,
  pythonTool,
} from "../mod.ts";

const prices: Record<string, number> = { apple: 0.5, pear: 0.75 };

const sandbox = new PyodideSandbox({
  timeoutSeconds: 30,
  functions: {
    lookup_price: (item) => prices[String(item)] ?? null,
  },
});

/** The tool; its description names Python 3.14, 30 s, 512 MB, no network. */
export const python = pythonTool(sandbox, {
  instructions: "`lookup_price(item)` returns the price of a fruit in EUR.",
});

/** What goes into an OpenAI Chat Completions request's `tools`. */
export const openAITools: OpenAIFunctionTool[] = [python.toOpenAITool()];

/** What goes into an Anthropic Messages request's `tools`. */
export const anthropicTools: AnthropicTool[] = [python.toAnthropicTool()];

if (import.meta.main) {
  const code =
    "total = 3 * lookup_price('apple') + lookup_price('pear')\nprint(f'total: {total}')\ntotal";

  // An OpenAI assistant message's tool_calls entry: arguments is a JSON string.
  const call: OpenAIToolCall = {
    id: "call_1",
    type: "function",
    function: { name: "run_python", arguments: JSON.stringify({ code }) },
  };
  const { message, images } = await python.callOpenAI(call);
  console.log(message); // { role: "tool", tool_call_id: "call_1", content: "stdout:\ntotal: 2.25\n\n\nresult:\n2.25" }
  console.log(images.length); // 0 (images go in a user message after the tool messages)

  // Malformed JSON from the model is an error message for it, not a crash.
  const bad = await python.callOpenAI({
    id: "call_2",
    function: { name: "run_python", arguments: '{"code": "1 +' },
  });
  console.log(bad.isError, bad.message.content); // true error: Invalid arguments: not valid JSON (...)

  // An Anthropic tool_use block becomes a tool_result block.
  const block: AnthropicToolUseBlock = {
    type: "tool_use",
    id: "toolu_1",
    name: "run_python",
    input: { code },
  };
  console.log(await python.callAnthropic(block)); // { type: "tool_result", tool_use_id: "toolu_1", content: [...], is_error: false }
  await sandbox.close();
}
