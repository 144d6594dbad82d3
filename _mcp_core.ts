/**
 * The MCP server's core behind `mcp.ts`: the tools over a
 * `SandboxService`, one interpreter per MCP session (a `SessionPool` key),
 * and the table of MCP sessions served over streamable HTTP with their
 * cap and idle expiry.
 *
 * @module
 */

import {
  createHttpTransport,
  createProtocolServer,
  type HttpTransport,
  type McpServerHandle,
  type ToolCallContext,
  type ToolOutput,
  type ToolSpec,
} from "./_mcp_sdk.ts";
import {
  argumentProblem,
  errorOutput,
  OutputRelay,
  structuredResult,
  toolSpecs,
} from "./_mcp_tools.ts";
import { PyodideSandbox } from "./sandbox.ts";
import type { CodeExecutionResult, SandboxOptions } from "./mod.ts";
import { formatResult, type FormatResultOptions } from "./format.ts";
import { SessionPool } from "./sessions.ts";
import { integerOption, SandboxService } from "./_service.ts";
import { startSweep } from "./_session_store.ts";
import type { SharedSessionStore } from "./handler.ts";
import { describeSandbox } from "./_tool_description.ts";
import { MODULE_VERSION } from "./_version.ts";
import { WWW_AUTHENTICATE } from "./_auth.ts";

/**
 * Options of {@linkcode createSandboxMcp}. Permissions and limits are set
 * by the operator, never by a tool call.
 *
 * @example
 * ```ts
 * import type { SandboxMcpOptions } from "./mcp.ts";
 * const options: SandboxMcpOptions = { sandboxOptions: { timeoutSeconds: 10 }, maxSessions: 4 };
 * ```
 */
export interface SandboxMcpOptions {
  /**
   * The sandbox to run code in; without it one is created from
   * `sandboxOptions` (and closed by `close()`).
   * @default {undefined}
   */
  sandbox?: PyodideSandbox;
  /**
   * Options of the sandbox created when `sandbox` is not given.
   * @default {{}}
   */
  sandboxOptions?: SandboxOptions;
  /**
   * Bearer token `handleHttp` requires (`Authorization: Bearer <token>`).
   * @default {undefined}
   */
  token?: string;
  /**
   * Python sessions at most, counted apart for `create_session` ones and
   * for the interpreters of MCP sessions (one each, opened on their first
   * `run_python` without `session_id`).
   * @default {16}
   */
  maxSessions?: number;
  /**
   * Sessions, and MCP sessions over HTTP, unused for this many seconds are
   * closed.
   * @default {600}
   */
  sessionIdleSeconds?: number;
  /**
   * MCP sessions over HTTP at most; a new client beyond it gets `429`.
   * @default {64}
   */
  maxMcpSessions?: number;
  /**
   * `run_python` calls without `session_id` share one interpreter per MCP
   * session. When false, each starts from a fresh interpreter.
   * @default {true}
   */
  implicitSessions?: boolean;
  /**
   * How results become text and image content.
   * @default {{}}
   */
  formatOptions?: FormatResultOptions;
  /**
   * A shared session store from `redisSessionStore()` (the `./server`
   * entry): `create_session` sessions live in it, so any replica serves
   * them (`run_python` with their `session_id`, `close_session`), with
   * the same leases, fencing and write-back as the HTTP server. The
   * interpreters of MCP sessions (calls without `session_id`) stay on the
   * replica. Not closed by `close()`.
   * @default {undefined}
   */
  sessionStore?: SharedSessionStore;
  /**
   * With a `sessionStore`: `0` writes every step back before answering;
   * `N > 0` writes a session back at most every N seconds and on
   * `close()` (a crash loses at most N seconds of acknowledged steps).
   * @default {0}
   */
  sessionCheckpointSeconds?: number;
}

/**
 * The sandbox's MCP tools, ready for any transport.
 *
 * @example
 * ```ts ignore
 * import { createSandboxMcp } from "jsr:@pyodide-sandbox/pyodide-sandbox/mcp";
 * import { StdioServerTransport } from "npm:@modelcontextprotocol/sdk@1/server/stdio.js";
 *
 * const mcp = createSandboxMcp({ sandboxOptions: { timeoutSeconds: 30 } });
 * await mcp.createServer().connect(new StdioServerTransport());
 * ```
 */
export interface SandboxMcp extends AsyncDisposable {
  /** The sandbox the tools run code in. */
  readonly sandbox: PyodideSandbox;
  /** Live MCP sessions served by `handleHttp`. */
  readonly httpSessionCount: number;
  /**
   * Creates an MCP server with the tools, for one MCP session (its calls
   * without `session_id` share an interpreter). All servers made by one
   * `SandboxMcp` share its sandbox and explicit sessions.
   *
   * @returns A server to connect to a transport (the SDK's
   *   `StdioServerTransport`, `InMemoryTransport`, ...).
   */
  createServer(): McpServerHandle;
  /**
   * Serves one streamable-HTTP MCP request: `initialize` starts an MCP
   * session (the `Mcp-Session-Id` response header), later requests carry
   * its id; `DELETE` ends it. Responses to calls are SSE streams.
   *
   * @param req The request (any path: route `/mcp` to it yourself).
   * @returns The response.
   */
  handleHttp(req: Request): Promise<Response>;
  /**
   * Ends every MCP session, waits for running calls (at most
   * `graceSeconds`), closes every session and, if it was created here, the
   * sandbox.
   *
   * @param options How long to wait for running calls.
   * @returns Settles when everything is closed.
   */
  close(options?: { graceSeconds?: number }): Promise<void>;
}

/** One MCP session: the key of its interpreter, and whether it is busy. */

/** One MCP session: the key of its interpreter, and whether it is busy. */
interface Conversation {
  key: string;
  busy: number;
  lastUsed: number;
}

interface HttpSession {
  conversation: Conversation;
  server: McpServerHandle;
  transport: HttpTransport;
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function jsonRpcError(status: number, code: number, message: string) {
  return Response.json(
    { jsonrpc: "2.0", error: { code, message }, id: null },
    { status },
  );
}

function checkOptions(options: SandboxMcpOptions): void {
  if (typeof options !== "object" || options === null) {
    throw new TypeError("Invalid options: expected an object");
  }
  const implicit = options.implicitSessions;
  if (implicit !== undefined && typeof implicit !== "boolean") {
    throw new TypeError("Invalid implicitSessions: expected a boolean");
  }
  if (
    options.sandbox !== undefined &&
    !(options.sandbox instanceof PyodideSandbox)
  ) {
    throw new TypeError("Invalid sandbox: expected a PyodideSandbox");
  }
  const format = options.formatOptions;
  if (format !== undefined && (typeof format !== "object" || !format)) {
    throw new TypeError("Invalid formatOptions: expected an object");
  }
  // Checks the format options once, now rather than at the first call.
  formatResult({
    status: "success",
    stdout: "",
    stderr: "",
    result: null,
    executionTime: 0,
  }, format);
}

/** The timeout of a given sandbox: the cap of the service's calls. */
function timeoutOf(sandbox: PyodideSandbox): number {
  return (sandbox["settings"] as { timeoutSeconds: number }).timeoutSeconds;
}

/** The implementation of {@linkcode SandboxMcp}. */
export class SandboxMcpCore implements SandboxMcp {
  #service: SandboxService;
  #pool: SessionPool | undefined;
  #tools: ToolSpec[];
  #format: FormatResultOptions | undefined;
  #idleSeconds: number;
  #maxMcp: number;
  #conversations = new Set<Conversation>();
  #http = new Map<string, HttpSession>();
  #pending = 0;
  #sweep: ReturnType<typeof setInterval>;

  /**
   * @param options The sandbox (or its options), token and limits.
   */
  constructor(options: SandboxMcpOptions) {
    checkOptions(options);
    const maxSessions = integerOption(
      "maxSessions",
      options.maxSessions,
      16,
      0,
    );
    this.#maxMcp = integerOption("maxMcpSessions", options.maxMcpSessions, 64);
    this.#service = new SandboxService({
      sandbox: options.sandbox,
      sandboxOptions: options.sandboxOptions,
      token: options.token,
      maxSessions,
      sessionIdleSeconds: options.sessionIdleSeconds,
      sessionStore: options.sessionStore,
      sessionCheckpointSeconds: options.sessionCheckpointSeconds,
      ...(options.sandbox
        ? { maxTimeoutSeconds: timeoutOf(options.sandbox) }
        : {}),
    });
    const idleSeconds = options.sessionIdleSeconds ?? 600;
    this.#idleSeconds = idleSeconds;
    this.#pool = options.implicitSessions !== false && maxSessions > 0
      ? new SessionPool(this.sandbox, { maxSessions, idleSeconds })
      : undefined;
    const description = [
      describeSandbox(
        this.sandbox,
        this.#pool ? { kind: "pool", idleSeconds } : { kind: "stateless" },
      ),
      maxSessions > 0
        ? "For separate states, create_session gives a session_id to pass to run_python."
        : "",
      "With a progress token, output lines stream as progress notifications while the code runs.",
    ].filter(Boolean).join("\n");
    this.#tools = toolSpecs(description);
    this.#format = options.formatOptions;
    this.#sweep = startSweep(idleSeconds, () => this.#expire());
  }

  /** The sandbox the tools run code in. */
  get sandbox(): PyodideSandbox {
    return this.#service.sandbox;
  }

  /** Live MCP sessions served by `handleHttp`. */
  get httpSessionCount(): number {
    return this.#http.size;
  }

  /**
   * Creates a server for one MCP session.
   *
   * @returns The server.
   */
  createServer(): McpServerHandle {
    return this.#newServer().server;
  }

  #newServer(): { server: McpServerHandle; conversation: Conversation } {
    const conversation: Conversation = {
      key: crypto.randomUUID(),
      busy: 0,
      lastUsed: Date.now(),
    };
    this.#conversations.add(conversation);
    const server = createProtocolServer({
      name: "pyodide-sandbox",
      version: MODULE_VERSION,
      instructions:
        "Runs Python in an isolated sandbox (Pyodide) with run_python. The tool description says whether variables persist between calls and what the code may use; create_session gives separate states.",
      tools: () => this.#tools,
      callTool: (name, args, context) =>
        this.#callTool(conversation, name, args, context),
      onClose: () => this.#endConversation(conversation),
    });
    return { server, conversation };
  }

  async #callTool(
    conversation: Conversation,
    name: string,
    args: Record<string, unknown>,
    context: ToolCallContext,
  ): Promise<ToolOutput> {
    conversation.lastUsed = Date.now();
    const spec = this.#tools.find((t) => t.name === name);
    if (!spec) return errorOutput(`Unknown tool: "${name}"`);
    const problem = argumentProblem(spec, args);
    if (problem) return errorOutput(`Invalid arguments of ${name}: ${problem}`);
    try {
      if (name === "run_python") {
        return await this.#runPython(conversation, args, context);
      }
      if (name === "create_session") {
        const id = await this.#service.createSession();
        return {
          content: [{ type: "text", text: `session_id: ${id}` }],
          structuredContent: { session_id: id },
        };
      }
      const id = args.session_id as string;
      if (await this.#service.deleteSession(id)) {
        return { content: [{ type: "text", text: `Closed session ${id}` }] };
      }
      return errorOutput(
        `Unknown session: "${id}" does not exist (it may have been closed or expired)`,
      );
    } catch (error) {
      return errorOutput(errorText(error));
    }
  }

  async #runPython(
    conversation: Conversation,
    args: Record<string, unknown>,
    context: ToolCallContext,
  ): Promise<ToolOutput> {
    conversation.busy++;
    try {
      const result = await this.#execute(
        conversation,
        args.session_id as string | undefined,
        args.code as string,
        context,
      );
      return {
        content: formatResult(result, this.#format),
        structuredContent: structuredResult(result),
        ...(result.status === "error" ? { isError: true } : {}),
      };
    } finally {
      conversation.busy--;
      conversation.lastUsed = Date.now();
    }
  }

  async #execute(
    conversation: Conversation,
    sessionId: string | undefined,
    code: string,
    context: ToolCallContext,
  ): Promise<CodeExecutionResult> {
    const relay = new OutputRelay(context);
    const streams = relay.active
      ? {
        onStdout: (text: string) => relay.write("stdout", text),
        onStderr: (text: string) => relay.write("stderr", text),
      }
      : {};
    const service = this.#service;
    // A session's call is not aborted by a cancel: that would end the
    // session and lose its state (the timeout still applies).
    const work = sessionId !== undefined
      ? service.executeInSession(sessionId, code, streams)
      : this.#pool
      ? this.#pool.execute(conversation.key, code, streams)
      : service.execute(code, { ...streams, signal: context.signal });
    try {
      return await service.track(work);
    } finally {
      await relay.flush();
    }
  }

  #endConversation(conversation: Conversation): void {
    if (!this.#conversations.delete(conversation)) return;
    this.#pool?.delete(conversation.key).catch(() => {});
  }

  #endHttpSession(id: string): void {
    const entry = this.#http.get(id);
    if (!entry) return;
    this.#http.delete(id);
    entry.server.close().catch(() => {});
    this.#endConversation(entry.conversation);
  }

  #expire(): void {
    const limit = Date.now() - this.#idleSeconds * 1000;
    for (const [id, entry] of this.#http) {
      const c = entry.conversation;
      if (c.busy === 0 && c.lastUsed < limit) this.#endHttpSession(id);
    }
  }

  async #startHttpSession(req: Request): Promise<Response> {
    if (this.#http.size + this.#pending >= this.#maxMcp) {
      return jsonRpcError(
        429,
        -32000,
        `Too many MCP sessions: the limit is ${this.#maxMcp}; end one (DELETE) or wait for idle ones to expire, then retry`,
      );
    }
    this.#pending++;
    try {
      const { server, conversation } = this.#newServer();
      const transport: HttpTransport = createHttpTransport({
        onSessionInitialized: (id) =>
          this.#http.set(id, { server, transport, conversation }),
        onSessionClosed: (id) => this.#endHttpSession(id),
      });
      await server.connect(transport);
      const response = await transport.handleRequest(req);
      const id = transport.sessionId;
      if (id === undefined || !this.#http.has(id)) await server.close();
      return response;
    } finally {
      this.#pending--;
    }
  }

  /**
   * Serves one streamable-HTTP MCP request.
   *
   * @param req The request.
   * @returns The response.
   */
  async handleHttp(req: Request): Promise<Response> {
    const problem = await this.#service.authProblem(req);
    if (problem) {
      return Response.json({ error: problem }, {
        status: 401,
        headers: { "www-authenticate": WWW_AUTHENTICATE },
      });
    }
    if (this.#service.closing) {
      return Response.json({ error: "The server is shutting down" }, {
        status: 503,
      });
    }
    const id = req.headers.get("mcp-session-id");
    if (id === null) return await this.#startHttpSession(req);
    const entry = this.#http.get(id);
    if (!entry) {
      return jsonRpcError(
        404,
        -32001,
        "Session not found: the MCP session ended or expired; initialize a new one",
      );
    }
    entry.conversation.lastUsed = Date.now();
    return await entry.transport.handleRequest(req);
  }

  /**
   * Ends every MCP session and closes the service.
   *
   * @param options How long to wait for running calls.
   * @returns Settles when closed.
   */
  async close(
    { graceSeconds }: { graceSeconds?: number } = {},
  ): Promise<void> {
    clearInterval(this.#sweep);
    // Running calls finish first (their results need their MCP sessions);
    // new requests get 503 meanwhile.
    await this.#service.close(
      graceSeconds === undefined ? {} : { graceSeconds },
    );
    for (const id of [...this.#http.keys()]) this.#endHttpSession(id);
    await this.#pool?.close();
  }

  /**
   * Same as `close()`.
   *
   * @returns Settles when closed.
   */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
