/**
 * {@linkcode pythonTool}: the sandbox as a framework-neutral agent tool,
 * with a name, a description built from the sandbox's real settings, a
 * strict JSON Schema, a `call` that returns text and image parts, and
 * adapters for OpenAI function calling and Anthropic tool use.
 *
 * @module
 */

import {
  checkFormatOptions,
  formatResult,
  type FormatResultOptions,
} from "./format.ts";
import { PyodideSandbox } from "./sandbox.ts";
import { PyodideSession } from "./session.ts";
import { SessionPool } from "./sessions.ts";
import type { CodeExecutionResult } from "./result.ts";
import {
  type AnthropicTool,
  type AnthropicToolResultBlock,
  type AnthropicToolUseBlock,
  type OpenAIFunctionTool,
  type OpenAIToolCall,
  type OpenAIToolOutput,
  toAnthropicResult,
  toOpenAIOutput,
} from "./_tool_adapters.ts";
import { describeSandbox } from "./_tool_description.ts";

import type { PythonToolInputSchema, PythonToolResult } from "./_tool_types.ts";

/** The input of a {@linkcode PythonTool}. */
export interface PythonToolInput {
  /** Python source to run. */
  code: string;
}

/** Options of {@linkcode pythonTool}. */
export interface PythonToolOptions {
  /**
   * The tool's name (letters, digits, `_` and `-`, at most 64: what the
   * OpenAI and Anthropic APIs accept).
   * @default {"run_python"}
   */
  name?: string;
  /**
   * Replaces the generated description (which states the Python version,
   * limits, packages and what the code may reach).
   * @default {undefined}
   */
  description?: string;
  /**
   * Text appended to the generated description, e.g. what the host
   * functions do or which files are there.
   * @default {undefined}
   */
  instructions?: string;
  /**
   * Run every call in this live session (opened from the same sandbox):
   * one tool per conversation, state kept between calls.
   * @default {undefined}
   */
  session?: PyodideSession;
  /**
   * Run each call in the session of its conversation: calls pass
   * `conversationId`, and the pool opens, keeps and expires one session
   * per id. The pool's sandbox must be the tool's sandbox.
   * @default {undefined}
   */
  sessions?: SessionPool;
  /**
   * How results are turned into text and image parts.
   * @default {{}}
   */
  format?: FormatResultOptions;
}

/** Per-call options of {@linkcode PythonTool.call}. */
export interface PythonToolCallOptions {
  /**
   * Aborts the call: the run is killed and `call` rejects with the
   * signal's reason (with `sessions`, the conversation's next call gets a
   * new session).
   * @default {undefined}
   */
  signal?: AbortSignal;
  /**
   * The conversation the call belongs to; required with the `sessions`
   * option, ignored without it. Chosen by your application, never by the
   * model, so one conversation cannot reach another's session.
   * @default {undefined}
   */
  conversationId?: string;
}

const NAME = /^[A-Za-z0-9_-]{1,64}$/;

const CODE_DESCRIPTION =
  "Python source to run. Print what you need to see; the value of the last expression is returned; top-level await works.";

function errorResult(message: string): PythonToolResult {
  return {
    content: [{ type: "text", text: `error: ${message}` }],
    isError: true,
  };
}

function argsProblem(args: unknown): string | undefined {
  if (typeof args !== "object" || args === null || Array.isArray(args)) {
    return `expected an object {"code": string}, got ${
      args === null ? "null" : Array.isArray(args) ? "an array" : typeof args
    }`;
  }
  const extra = Object.keys(args).filter((k) => k !== "code");
  if (extra.length) {
    return `unknown propert${extra.length > 1 ? "ies" : "y"} ${
      extra.slice(0, 5).map((k) => JSON.stringify(k.slice(0, 64))).join(", ")
    }; only "code" is accepted`;
  }
  const code = (args as { code?: unknown }).code;
  if (typeof code !== "string") {
    return `"code" must be a string of Python source, got ${
      code === undefined ? "nothing" : code === null ? "null" : typeof code
    }`;
  }
  return undefined;
}

function checkOptions(
  sandbox: unknown,
  options: PythonToolOptions,
): void {
  if (!(sandbox instanceof PyodideSandbox)) {
    throw new TypeError("Invalid sandbox: expected a PyodideSandbox");
  }
  if (typeof options !== "object" || options === null) {
    throw new TypeError("Invalid options: expected an object");
  }
  if (options.name !== undefined && !NAME.test(String(options.name))) {
    throw new TypeError(
      "Invalid name: expected 1 to 64 letters, digits, underscores or hyphens",
    );
  }
  for (const key of ["description", "instructions"] as const) {
    if (options[key] !== undefined && typeof options[key] !== "string") {
      throw new TypeError(`Invalid ${key}: expected a string`);
    }
  }
  if (
    options.session !== undefined &&
    !(options.session instanceof PyodideSession)
  ) {
    throw new TypeError("Invalid session: expected a PyodideSession");
  }
  if (options.sessions !== undefined) {
    if (!(options.sessions instanceof SessionPool)) {
      throw new TypeError("Invalid sessions: expected a SessionPool");
    }
    if (options.sessions.sandbox !== sandbox) {
      throw new TypeError(
        "Invalid sessions: the pool belongs to another sandbox; create it with the tool's sandbox",
      );
    }
    if (options.session !== undefined) {
      throw new TypeError(
        "Invalid options: give session (one for all calls) or sessions (one per conversation), not both",
      );
    }
  }
  checkFormatOptions(options.format ?? {});
}

/**
 * The sandbox as an agent tool; create it with {@linkcode pythonTool}.
 * Framework-neutral: hand `name`, `description` and `inputSchema` to any
 * tool-calling API and run its calls with `call`, or use the OpenAI and
 * Anthropic adapters.
 */
export class PythonTool {
  #sandbox: PyodideSandbox;
  #session?: PyodideSession;
  #sessions?: SessionPool;
  #format: FormatResultOptions;
  /** The tool's name. */
  readonly name: string;
  /**
   * What the model is told: the Python version, the time and memory
   * limits, the packages, what the code may reach and whether state is
   * kept.
   */
  readonly description: string;

  /**
   * Use {@linkcode pythonTool} instead.
   *
   * @param sandbox The sandbox the code runs in.
   * @param options Name, description, sessions and formatting.
   * @throws {TypeError} When an argument has the wrong type.
   */
  constructor(sandbox: PyodideSandbox, options: PythonToolOptions = {}) {
    checkOptions(sandbox, options);
    this.#sandbox = sandbox;
    this.#session = options.session;
    this.#sessions = options.sessions;
    this.#format = { ...options.format };
    this.name = options.name ?? "run_python";
    const state = options.session
      ? { kind: "session" as const }
      : options.sessions
      ? { kind: "pool" as const, idleSeconds: options.sessions.idleSeconds }
      : { kind: "stateless" as const };
    const text = options.description ?? describeSandbox(sandbox, state);
    this.description = options.instructions
      ? `${text}\n${options.instructions}`
      : text;
  }

  /**
   * The input's JSON Schema: `{ code: string }`, required, and no other
   * property (`additionalProperties: false`). A fresh copy on every read.
   */
  get inputSchema(): PythonToolInputSchema {
    return {
      type: "object",
      properties: {
        code: { type: "string", description: CODE_DESCRIPTION },
      },
      required: ["code"],
      additionalProperties: false,
    };
  }

  /**
   * Runs one call. Input from the model is checked here: input that does
   * not match the schema, code the sandbox refuses and code that fails
   * all give `isError: true` results (with the traceback for Python
   * errors), never a rejection.
   *
   * @param args The model's input, `{ code }`.
   * @param options `signal`, and `conversationId` with `sessions`.
   * @returns Text and image parts, `isError`, and the full result.
   * @throws {TypeError} When an option is invalid, or `conversationId` is
   *   missing with `sessions`.
   * @throws {unknown} The signal's reason when `options.signal` aborts.
   */
  async call(
    args: unknown,
    options: PythonToolCallOptions = {},
  ): Promise<PythonToolResult> {
    if (typeof options !== "object" || options === null) {
      throw new TypeError("Invalid call options: expected an object");
    }
    const { signal, conversationId } = options;
    if (signal !== undefined && !(signal instanceof AbortSignal)) {
      throw new TypeError("Invalid signal: expected an AbortSignal");
    }
    if (
      this.#sessions &&
      (typeof conversationId !== "string" || conversationId === "" ||
        conversationId.length > 256)
    ) {
      throw new TypeError(
        "Invalid conversationId: a tool with sessions needs a string of 1 to 256 characters naming the conversation",
      );
    }
    signal?.throwIfAborted();
    const problem = argsProblem(args);
    if (problem) return errorResult(`Invalid arguments: ${problem}`);
    const code = (args as PythonToolInput).code;
    let result: CodeExecutionResult;
    try {
      result = this.#sessions
        ? await this.#sessions.execute(conversationId!, code, { signal })
        : this.#session
        ? await this.#session.execute(code, { signal })
        : await this.#sandbox.execute(code, { signal });
    } catch (error) {
      if (signal?.aborted) throw signal.reason;
      return errorResult(
        error instanceof Error ? error.message : String(error),
      );
    }
    return {
      content: formatResult(result, this.#format),
      isError: result.status === "error",
      result,
    };
  }

  /**
   * The tool in OpenAI's function-calling shape (Chat Completions
   * `tools` entry), with `strict: true`.
   *
   * @returns `{ type: "function", function: { name, description, parameters, strict } }`.
   */
  toOpenAITool(): OpenAIFunctionTool {
    return {
      type: "function",
      function: {
        name: this.name,
        description: this.description,
        parameters: this.inputSchema,
        strict: true,
      },
    };
  }

  /**
   * Runs one entry of an OpenAI assistant message's `tool_calls`. Its
   * `arguments` is the model's JSON string: bad JSON, a wrong shape or
   * another tool's name give an error message, not a rejection. Chat
   * Completions tool messages carry text only, so images come back apart,
   * as `image_url` parts for a user message sent after all tool messages.
   *
   * @param toolCall The `tool_calls` entry.
   * @param options `signal`, and `conversationId` with `sessions`.
   * @returns The `role: "tool"` message, the images and `isError`.
   * @throws {TypeError} When `toolCall` has no string `id` or `function`,
   *   or an option is invalid.
   * @throws {unknown} The signal's reason when `options.signal` aborts.
   */
  async callOpenAI(
    toolCall: OpenAIToolCall,
    options: PythonToolCallOptions = {},
  ): Promise<OpenAIToolOutput> {
    if (
      typeof toolCall !== "object" || toolCall === null ||
      typeof toolCall.id !== "string" ||
      typeof toolCall.function !== "object" || toolCall.function === null
    ) {
      throw new TypeError(
        "Invalid toolCall: expected a tool_calls entry { id, function: { name, arguments } }",
      );
    }
    const { name, arguments: json } = toolCall.function;
    let out: PythonToolResult;
    if (name !== this.name) {
      out = this.#unknownTool(name);
    } else if (typeof json !== "string") {
      out = errorResult("Invalid arguments: expected a JSON string");
    } else {
      let args: unknown;
      try {
        args = JSON.parse(json);
      } catch (error) {
        out = errorResult(
          `Invalid arguments: not valid JSON (${(error as Error).message})`,
        );
        return toOpenAIOutput(toolCall.id, out);
      }
      out = await this.call(args, options);
    }
    return toOpenAIOutput(toolCall.id, out);
  }

  /**
   * The tool in Anthropic's tool-use shape (Messages API `tools` entry).
   *
   * @returns `{ name, description, input_schema }`.
   */
  toAnthropicTool(): AnthropicTool {
    return {
      name: this.name,
      description: this.description,
      input_schema: this.inputSchema,
    };
  }

  /**
   * Runs a `tool_use` content block and returns its `tool_result` block
   * (text and base64 image blocks, `is_error`). A wrong input shape or
   * another tool's name give an error block, not a rejection.
   *
   * @param block The `tool_use` block of an assistant message.
   * @param options `signal`, and `conversationId` with `sessions`.
   * @returns The `tool_result` block for the next user message.
   * @throws {TypeError} When `block` is not a `tool_use` block with a
   *   string `id`, or an option is invalid.
   * @throws {unknown} The signal's reason when `options.signal` aborts.
   */
  async callAnthropic(
    block: AnthropicToolUseBlock,
    options: PythonToolCallOptions = {},
  ): Promise<AnthropicToolResultBlock> {
    if (
      typeof block !== "object" || block === null ||
      block.type !== "tool_use" || typeof block.id !== "string"
    ) {
      throw new TypeError(
        'Invalid block: expected a { type: "tool_use", id, name, input } block',
      );
    }
    const out = block.name === this.name
      ? await this.call(block.input, options)
      : this.#unknownTool(block.name);
    return toAnthropicResult(block.id, out);
  }

  /** The error result for a call addressed to another tool. */
  #unknownTool(name: unknown): PythonToolResult {
    return errorResult(
      `Unknown tool: ${
        JSON.stringify(String(name).slice(0, 64))
      }; this handler runs "${this.name}"`,
    );
  }
}

/**
 * Makes the sandbox an agent tool: `name`, a `description` stating the
 * Python version, the time and memory limits, the packages and what the
 * code may reach (read from the sandbox's settings), a strict
 * `inputSchema` (`{ code }`, `additionalProperties: false`), and
 * `call(args, { signal })` returning text and image parts and `isError`.
 * Stateless by default (every call a fresh interpreter); with `session`
 * every call runs in that session, with `sessions` each conversation gets
 * its own, expiring when idle.
 *
 * @param sandbox The sandbox the code runs in (not closed by the tool).
 * @param options Name, description, sessions and result formatting.
 * @returns The tool.
 * @throws {TypeError} When an argument has the wrong type.
 * @throws {RangeError} When a `format` limit is out of range.
 * @example
 * ```ts ignore
 * import { PyodideSandbox, pythonTool, SessionPool } from "./mod.ts";
 * const sandbox = new PyodideSandbox({ timeoutSeconds: 30 });
 * const tool = pythonTool(sandbox, { sessions: new SessionPool(sandbox) });
 * const out = await tool.call({ code: "x = 6 * 7\nx" }, { conversationId: "c1" });
 * console.log(out.isError, out.content); // false [{ type: "text", text: "result:\n42" }]
 * ```
 */
export function pythonTool(
  sandbox: PyodideSandbox,
  options: PythonToolOptions = {},
): PythonTool {
  return new PythonTool(sandbox, options);
}
