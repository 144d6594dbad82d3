/**
 * The input schema and the call result of a `PythonTool`: the shapes that
 * `tool.ts` and the OpenAI and Anthropic adapters (`_tool_adapters.ts`)
 * share.
 *
 * @module
 */

import type { ContentPart } from "./format.ts";
import type { CodeExecutionResult } from "./result.ts";

/** The JSON Schema of a `PythonTool`'s input: `{ code }` only. */
export interface PythonToolInputSchema {
  /** Always `"object"`. */
  type: "object";
  /** The one property, `code`. */
  properties: {
    /** The Python source. */
    code: { type: "string"; description: string };
  };
  /** Always `["code"]`. */
  required: string[];
  /** Always false: no other property is accepted. */
  additionalProperties: false;
}

/** What `PythonTool.call` returns. */
export interface PythonToolResult {
  /** Text and image parts for the model (never empty). */
  content: ContentPart[];
  /** True when the code failed or the call could not run. */
  isError: boolean;
  /** The full result, when the code ran (files, timing, session bytes). */
  result?: CodeExecutionResult;
}
