/**
 * `pythonTool()` as a Vercel AI SDK tool (`ai` `tool()`): the JSON Schema,
 * description and handler come from the sandbox, the SDK's abort signal
 * stops the run, each conversation keeps its own Python session, and
 * `toModelOutput` sends images to the model as images.
 *
 * Use it with any model: `generateText({ model, tools: pythonTools(id), ... })`.
 *
 * Run: deno run -A examples/ai_sdk_tool.ts
 *
 * @module
 */

import { jsonSchema, tool } from "ai";
import {
  type ContentPart,
  PyodideSandbox,
  pythonTool,
  SessionPool,
} from "../mod.ts";

const sandbox = new PyodideSandbox({ timeoutSeconds: 30 });
const sessions = new SessionPool(sandbox, { idleSeconds: 600 });
const python = pythonTool(sandbox, { sessions });

/**
 * The tools of one conversation: `run_python` in that conversation's
 * session.
 *
 * @param conversationId Your application's id of the conversation.
 * @returns A tool set for `generateText` / `streamText`.
 */
export function pythonTools(conversationId: string) {
  return {
    [python.name]: tool({
      description: python.description,
      inputSchema: jsonSchema<{ code: string }>(python.inputSchema),
      strict: true,
      execute: async (input, { abortSignal }) => {
        const out = await python.call(input, {
          signal: abortSignal,
          conversationId,
        });
        // The output must be JSON-serializable: drop the raw result.
        return { content: out.content, isError: out.isError };
      },
      // Text parts as text, images as image files the model sees.
      toModelOutput: ({ output }) => ({
        type: "content",
        value: output.content.map((part: ContentPart) =>
          part.type === "text" ? { type: "text" as const, text: part.text } : {
            type: "file" as const,
            data: { type: "data" as const, data: part.data },
            mediaType: part.mimeType,
          }
        ),
      }),
    }),
  };
}

if (import.meta.main) {
  const tools = pythonTools("conversation-1");
  const run = tools[python.name];
  const options = { toolCallId: "call_1", messages: [], context: {} };
  await run.execute!({ code: "import math\nr = 2" }, options);
  const out = await run.execute!(
    { code: "round(math.pi * r ** 2, 3)" },
    options,
  );
  console.log(out); // { content: [{ type: "text", text: "result:\n12.566" }], isError: false }
  await sessions.close();
  await sandbox.close();
}
