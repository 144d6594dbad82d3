/**
 * The MCP server's tools as plain data: their JSON Schemas (strict inputs,
 * `run_python`'s output schema), argument checks, the structured result,
 * and the relay that streams output lines as notifications while code
 * runs.
 *
 * @module
 */

import type { ToolCallContext, ToolOutput, ToolSpec } from "./_mcp_sdk.ts";
import { type CodeExecutionResult, ERROR_KINDS } from "./result.ts";

const SESSION_ID = {
  type: "string",
  minLength: 1,
  maxLength: 256,
  description: "A session id returned by create_session",
};

/** `run_python`'s `structuredContent`, as a JSON Schema. */
export const RUN_PYTHON_OUTPUT_SCHEMA: Record<string, unknown> = {
  type: "object",
  properties: {
    status: {
      type: "string",
      enum: ["success", "error"],
      description: '"error" when the code raised, timed out or crashed',
    },
    stdout: { type: "string", description: "Everything printed to stdout" },
    stderr: { type: "string", description: "Everything printed to stderr" },
    result: {
      description:
        'The value of the last expression (JSON), null when there is none; a value that is not JSON-safe is an object with type "not_serializable", pythonType and repr',
    },
    error: {
      description: "Why the call failed; null on success",
      anyOf: [
        { type: "null" },
        {
          type: "object",
          properties: {
            kind: { type: "string", enum: [...ERROR_KINDS] },
            message: { type: "string" },
            type: {
              type: "string",
              description: "The Python exception class",
            },
            traceback: { type: "string" },
          },
          required: ["kind", "message"],
          additionalProperties: false,
        },
      ],
    },
    stdout_truncated: { type: "boolean" },
    stderr_truncated: { type: "boolean" },
    execution_time: {
      type: "number",
      description: "Seconds the whole call took",
    },
  },
  required: ["status", "stdout", "stderr", "result", "error"],
  additionalProperties: false,
};

/**
 * The three tools.
 *
 * @param description `run_python`'s description.
 * @returns The tool list.
 */
export function toolSpecs(description: string): ToolSpec[] {
  return [
    {
      name: "run_python",
      title: "Run Python",
      description,
      inputSchema: {
        type: "object",
        properties: {
          code: { type: "string", description: "Python source code to run" },
          session_id: SESSION_ID,
        },
        required: ["code"],
        additionalProperties: false,
      },
      outputSchema: RUN_PYTHON_OUTPUT_SCHEMA,
      annotations: { readOnlyHint: false, openWorldHint: false },
    },
    {
      name: "create_session",
      title: "Create a Python session",
      description:
        "Start an explicit Python session whose state (variables, imports, files) persists across run_python calls that pass its session_id, apart from the default state of this connection. Close it with close_session when done; idle sessions expire.",
      inputSchema: {
        type: "object",
        properties: {},
        additionalProperties: false,
      },
      outputSchema: {
        type: "object",
        properties: { session_id: { type: "string" } },
        required: ["session_id"],
        additionalProperties: false,
      },
    },
    {
      name: "close_session",
      title: "Close a Python session",
      description: "Close a session created by create_session.",
      inputSchema: {
        type: "object",
        properties: { session_id: SESSION_ID },
        required: ["session_id"],
        additionalProperties: false,
      },
    },
  ];
}

/**
 * Checks arguments against a tool's (flat, string-only) input schema.
 *
 * @param spec The tool.
 * @param args The arguments.
 * @returns Why they are invalid, or undefined.
 */
export function argumentProblem(
  spec: ToolSpec,
  args: Record<string, unknown>,
): string | undefined {
  const schema = spec.inputSchema as {
    properties: Record<string, { minLength?: number; maxLength?: number }>;
    required?: string[];
  };
  const known = Object.keys(schema.properties);
  for (const name of Object.keys(args)) {
    if (!known.includes(name)) {
      return `unknown argument "${name}", expected ${
        known.length ? known.join(", ") : "none"
      }`;
    }
  }
  for (const name of schema.required ?? []) {
    if (args[name] === undefined) return `missing argument "${name}"`;
  }
  for (const [name, rule] of Object.entries(schema.properties)) {
    const value = args[name];
    if (value === undefined) continue;
    if (typeof value !== "string") {
      return `"${name}" must be a string, got ${
        value === null ? "null" : typeof value
      }`;
    }
    if (rule.minLength !== undefined && value.length < rule.minLength) {
      return `"${name}" must not be empty`;
    }
    if (rule.maxLength !== undefined && value.length > rule.maxLength) {
      return `"${name}" must be at most ${rule.maxLength} characters`;
    }
  }
  return undefined;
}

/**
 * `run_python`'s structured result.
 *
 * @param r The execution's result.
 * @returns Data matching {@linkcode RUN_PYTHON_OUTPUT_SCHEMA}.
 */
export function structuredResult(
  r: CodeExecutionResult,
): Record<string, unknown> {
  const extra = r as { stdoutTruncated?: unknown; stderrTruncated?: unknown };
  const e = r.error;
  return {
    status: r.status,
    stdout: r.stdout,
    stderr: r.stderr,
    result: r.result ?? null,
    error: e
      ? {
        kind: e.kind,
        message: e.message,
        ...(typeof e.type === "string" ? { type: e.type } : {}),
        ...(typeof e.traceback === "string" ? { traceback: e.traceback } : {}),
      }
      : null,
    stdout_truncated: extra.stdoutTruncated === true,
    stderr_truncated: extra.stderrTruncated === true,
    execution_time: r.executionTime,
  };
}

/**
 * A tool error as the model sees it.
 *
 * @param message What went wrong.
 * @returns An `isError` output.
 */
export function errorOutput(message: string): ToolOutput {
  return {
    content: [{ type: "text", text: `error: ${message}` }],
    isError: true,
  };
}

/** Notifications sent per call at most; the result has the whole output. */
const MAX_NOTIFICATIONS = 1000;
/** Characters streamed per call at most. */
const MAX_STREAMED_CHARS = 1024 * 1024;
/** An unfinished line longer than this is sent as it is. */
const MAX_LINE_CHARS = 8192;

type Stream = "stdout" | "stderr";

/**
 * Streams a running call's stdout and stderr, line by line, as progress
 * notifications (when the client sent a progress token) and logging
 * notifications (when the client set a logging level: stdout at `info`,
 * stderr at `warning`). Capped per call; notifications go out in order and
 * a failure to send one is ignored.
 */
export class OutputRelay {
  #context: ToolCallContext;
  #partial: Record<Stream, string> = { stdout: "", stderr: "" };
  #count = 0;
  #chars = 0;
  #stopped = false;
  #chain: Promise<void> = Promise.resolve();

  /**
   * @param context The call's context.
   */
  constructor(context: ToolCallContext) {
    this.#context = context;
  }

  /** Whether the client asked for anything to be streamed. */
  get active(): boolean {
    return this.#context.progressToken !== undefined ||
      this.#context.logs("info") || this.#context.logs("warning");
  }

  /**
   * Takes output text; complete lines go out at once.
   *
   * @param stream Which stream.
   * @param text The text, as the sandbox delivered it.
   */
  write(stream: Stream, text: string): void {
    if (this.#stopped || typeof text !== "string") return;
    const all = this.#partial[stream] + text;
    const cut = all.lastIndexOf("\n");
    if (cut === -1 && all.length <= MAX_LINE_CHARS) {
      this.#partial[stream] = all;
      return;
    }
    const end = cut === -1 ? all.length : cut;
    this.#partial[stream] = all.slice(end + 1);
    this.#send(stream, all.slice(0, end));
  }

  /**
   * Sends unfinished lines and waits until every notification went out.
   *
   * @returns Settles when sent.
   */
  async flush(): Promise<void> {
    for (const stream of ["stdout", "stderr"] as const) {
      const rest = this.#partial[stream];
      this.#partial[stream] = "";
      if (rest && !this.#stopped) this.#send(stream, rest);
    }
    await this.#chain;
  }

  #send(stream: Stream, text: string): void {
    if (this.#count >= MAX_NOTIFICATIONS || this.#chars >= MAX_STREAMED_CHARS) {
      this.#stopped = true;
      text =
        `[output streaming stopped after ${this.#count} notifications; the result has the output]`;
    } else {
      text = text.slice(0, MAX_STREAMED_CHARS - this.#chars);
      this.#chars += text.length;
    }
    const n = ++this.#count;
    const context = this.#context;
    this.#chain = this.#chain.then(async () => {
      try {
        await context.progress(n, `${stream}: ${text}`);
        await context.log(
          stream === "stdout" ? "info" : "warning",
          stream,
          text,
        );
      } catch {
        // The client went away; the result still carries the output.
      }
    });
  }
}
