/**
 * An agent tool: the JSON-schema tool shape that LLM tool-calling APIs
 * expect, with a handler that runs the model's code in the sandbox. Host
 * functions make the agent's other tools callable from its code.
 *
 * Run: deno run -A examples/agent_tool.ts
 *
 * @module
 */

import { type CodeExecutionResult, PyodideSandbox } from "../mod.ts";

/** The tool definition handed to the model. */
export const runPythonTool = {
  name: "run_python",
  description:
    "Run Python 3 code in a sandbox. Print what you need to see; the value of the last expression is returned. `lookup_price(item)` is available.",
  input_schema: {
    type: "object",
    properties: {
      code: { type: "string", description: "Python source to run" },
    },
    required: ["code"],
  },
} as const;

const prices: Record<string, number> = { apple: 0.5, pear: 0.75 };

const sandbox = new PyodideSandbox({
  timeoutSeconds: 10,
  functions: {
    lookup_price: (item) => prices[String(item)] ?? null,
  },
});

/**
 * Handles one tool call from the model.
 *
 * @param input The model's arguments.
 * @returns Text for the model.
 */
export async function handleRunPython(
  input: { code: string },
): Promise<string> {
  const result: CodeExecutionResult = await sandbox.execute(input.code);
  const parts = [result.stdout];
  if (result.status === "error") parts.push(result.stderr);
  else if (result.result !== null) {
    parts.push(`result: ${JSON.stringify(result.result)}`);
  }
  return parts.filter(Boolean).join("\n");
}

if (import.meta.main) {
  console.log(
    await handleRunPython({
      code:
        "total = 3 * lookup_price('apple') + lookup_price('pear')\nprint(f'total: {total}')\ntotal",
    }),
  );
  await sandbox.close();
}
