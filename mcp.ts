/**
 * `deno task mcp`: the sandbox as an MCP server, built on the official
 * TypeScript SDK. Over stdio by default; over streamable HTTP (stateless,
 * path `/mcp`) with `--http`.
 *
 * Tools: `run_python` (`code`, optional `session_id`), `create_session`,
 * `close_session` (`session_id`). Every stateless call gets a fresh
 * interpreter in a fresh process, and every session its own process, so
 * concurrent calls never mix their outputs.
 *
 * ```sh
 * deno task mcp --allow-net=api.example.com --timeout 30
 * SANDBOX_TOKEN=secret deno task mcp --http --hostname 0.0.0.0 --port 8001
 * ```
 *
 * @module
 */

import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { WebStandardStreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/webStandardStreamableHttp.js";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { LimitedStdioServerTransport } from "./_mcp_stdio.ts";
import { z } from "zod";
import process from "node:process";
import { PyodideSandbox, type SandboxOptions } from "./sandbox.ts";
import type { CodeExecutionResult } from "./result.ts";
import { SessionStore } from "./_session_store.ts";
import {
  bearerProblem,
  hostProblem,
  loopbackHosts,
  WWW_AUTHENTICATE,
} from "./_auth.ts";
import {
  envLookup,
  fail,
  isLoopbackHostname,
  listenUrl,
  parseNumberFlag,
  parseSandboxFlags,
} from "./_cli_flags.ts";

/** The version the MCP server reports. */
const SERVER_VERSION = "0.1.0";

type Content = CallToolResult["content"][number];

const BINARY_IMAGES = ["image/png", "image/jpeg", "image/gif", "image/webp"];

/**
 * Maps a {@linkcode CodeExecutionResult} to MCP tool output: text blocks
 * for stdout, stderr and the result, image blocks for PNG (and JPEG, GIF,
 * WebP) displays, and `isError: true` with the traceback in the text for
 * errors. A last-expression value that is not JSON-safe is shown as its
 * `repr`, unless it was already shown as a display.
 *
 * @param result The result of an execution.
 * @returns The tool result.
 * @example
 * ```ts
 * import { resultToContent } from "./mcp.ts";
 * const out = resultToContent({
 *   status: "success",
 *   stdout: "hi\n",
 *   stderr: "",
 *   result: 42,
 *   executionTime: 0.1,
 * });
 * console.log(out.content.map((c) => c.type)); // ["text", "text"]
 * ```
 */
export function resultToContent(result: CodeExecutionResult): CallToolResult {
  const content: Content[] = [];
  const r = result as CodeExecutionResult & {
    stdoutTruncated?: boolean;
    stderrTruncated?: boolean;
  };
  if (r.stdout) {
    content.push({
      type: "text",
      text: `stdout:\n${r.stdout}${
        r.stdoutTruncated ? "\n[stdout truncated]" : ""
      }`,
    });
  }
  if (r.status === "error") {
    const e = r.error;
    let text = r.stderr;
    if (e?.traceback && !text.includes(e.traceback)) text += e.traceback;
    if (e && !e.traceback && !text.includes(e.message)) {
      text += `${e.message}\n`;
    }
    content.push({
      type: "text",
      text: `error (${e?.kind ?? "crash"}${
        e?.type ? `: ${e.type}` : ""
      }):\n${text.trimEnd()}${r.stderrTruncated ? "\n[stderr truncated]" : ""}`,
    });
  } else if (r.stderr) {
    content.push({
      type: "text",
      text: `stderr:\n${r.stderr}${
        r.stderrTruncated ? "\n[stderr truncated]" : ""
      }`,
    });
  }
  for (const bundle of r.displays ?? []) {
    const image = BINARY_IMAGES.find((t) => typeof bundle[t] === "string");
    if (image) {
      content.push({
        type: "image",
        data: bundle[image] as string,
        mimeType: image,
      });
      continue;
    }
    const text = ["text/markdown", "text/plain"]
      .map((t) => bundle[t])
      .find((v) => typeof v === "string");
    if (text !== undefined) {
      content.push({ type: "text", text: `display:\n${text}` });
    }
  }
  if (r.files?.length) {
    content.push({
      type: "text",
      text: `files:\n${
        r.files.map((f) =>
          `${f.path} (${f.size} bytes${f.truncated ? ", truncated" : ""})`
        ).join("\n")
      }`,
    });
  }
  if (r.status === "success" && r.result !== null && r.result !== undefined) {
    const value = r.result as { type?: unknown; repr?: unknown };
    if (value.type === "not_serializable" && typeof value.repr === "string") {
      // Shown as its repr, unless it was already shown as a display.
      const shown = (r.displays ?? []).some((d) =>
        d["text/plain"] === value.repr
      );
      if (!shown) {
        content.push({ type: "text", text: `result:\n${value.repr}` });
      }
    } else {
      content.push({
        type: "text",
        text: `result:\n${JSON.stringify(r.result, null, 2)}`,
      });
    }
  }
  if (content.length === 0) content.push({ type: "text", text: "(no output)" });
  return r.status === "error" ? { content, isError: true } : { content };
}

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
   * Live sessions at most.
   * @default {16}
   */
  maxSessions?: number;
  /**
   * Sessions unused for this many seconds are closed.
   * @default {600}
   */
  sessionIdleSeconds?: number;
}

/** The sandbox's MCP tools, ready for any transport. */
export interface SandboxMcp {
  /** The sandbox the tools run code in. */
  readonly sandbox: PyodideSandbox;
  /**
   * Creates an MCP server with the tools. All servers made by one
   * `SandboxMcp` share its sandbox and sessions.
   *
   * @returns A server to connect to a transport.
   */
  createServer(): McpServer;
  /**
   * Serves one streamable-HTTP MCP request (stateless mode: a fresh server
   * and transport per request; sessions live in the sandbox).
   *
   * @param req The request (any path: route `/mcp` to it yourself).
   * @returns The response.
   */
  handleHttp(req: Request): Promise<Response>;
  /**
   * Closes every session and, if it was created here, the sandbox.
   *
   * @returns Settles when everything is closed.
   */
  close(): Promise<void>;
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * Creates the sandbox's MCP tools (`run_python`, `create_session`,
 * `close_session`) over a shared sandbox and session store.
 *
 * @param options The sandbox (or its options), token and session limits.
 * @returns The tools, with a server factory and an HTTP handler.
 * @throws {TypeError} When an option has the wrong type.
 * @example
 * ```ts ignore
 * import { createSandboxMcp } from "./mcp.ts";
 * const mcp = createSandboxMcp({ token: "secret" });
 * Deno.serve({ port: 8001 }, (req) =>
 *   new URL(req.url).pathname === "/mcp" ? mcp.handleHttp(req) : new Response(null, { status: 404 }));
 * ```
 */
export function createSandboxMcp(options: SandboxMcpOptions = {}): SandboxMcp {
  if (
    options.sandbox !== undefined &&
    !(options.sandbox instanceof PyodideSandbox)
  ) {
    throw new TypeError("Invalid sandbox: expected a PyodideSandbox");
  }
  if (
    options.token !== undefined &&
    (typeof options.token !== "string" || options.token === "")
  ) {
    throw new TypeError("Invalid token: expected a non-empty string");
  }
  const ownSandbox = options.sandbox === undefined;
  const sandbox = options.sandbox ??
    new PyodideSandbox(options.sandboxOptions ?? {});
  const store = new SessionStore(sandbox, {
    maxSessions: options.maxSessions ?? 16,
    idleSeconds: options.sessionIdleSeconds ?? 600,
  });
  let closing = false;

  function createServer(): McpServer {
    const server = new McpServer(
      { name: "pyodide-sandbox", version: SERVER_VERSION },
      {
        instructions:
          "Runs Python 3 (Pyodide) in an isolated sandbox. Use run_python for one-off code; use create_session and pass its session_id to run_python to keep variables, imports and files between calls.",
      },
    );
    server.registerTool("run_python", {
      title: "Run Python",
      description:
        "Run Python 3 code (Pyodide: standard library, top-level await works) in an isolated sandbox and return stdout, stderr, rich displays and the value of the last expression. Without session_id every call starts from a fresh interpreter; with a session_id from create_session, variables, imports and files persist between calls. Network and host files are only reachable if the operator granted them. Errors come back with the Python traceback.",
      inputSchema: {
        code: z.string().describe("Python source code to run"),
        session_id: z.string().optional().describe(
          "A session id from create_session, to run in that session's interpreter",
        ),
      },
    }, async (
      { code, session_id }: { code: string; session_id?: string },
      extra: { signal: AbortSignal },
    ) => {
      try {
        const result = session_id === undefined
          ? await sandbox.execute(code, { signal: extra.signal })
          : await store.execute(session_id, code, {});
        return resultToContent(result);
      } catch (error) {
        return {
          content: [{ type: "text", text: `error: ${errorText(error)}` }],
          isError: true,
        };
      }
    });
    server.registerTool("create_session", {
      title: "Create a Python session",
      description:
        "Start a live Python session whose state (variables, imports, files) persists across run_python calls that pass its session_id. Close it with close_session when done; idle sessions expire.",
      inputSchema: {},
      outputSchema: { session_id: z.string() },
    }, async () => {
      try {
        const id = await store.create();
        return {
          content: [{ type: "text", text: `session_id: ${id}` }],
          structuredContent: { session_id: id },
        };
      } catch (error) {
        return {
          content: [{ type: "text", text: `error: ${errorText(error)}` }],
          isError: true,
        };
      }
    });
    server.registerTool("close_session", {
      title: "Close a Python session",
      description: "Close a session created by create_session.",
      inputSchema: {
        session_id: z.string().describe("The session id to close"),
      },
    }, async ({ session_id }: { session_id: string }) => {
      if (await store.delete(session_id)) {
        return {
          content: [{ type: "text", text: `Closed session ${session_id}` }],
        };
      }
      return {
        content: [{
          type: "text",
          text:
            `error: Unknown session: "${session_id}" does not exist (it may have been closed or expired)`,
        }],
        isError: true,
      };
    });
    return server;
  }

  async function handleHttp(req: Request): Promise<Response> {
    if (options.token !== undefined) {
      const problem = await bearerProblem(req, options.token);
      if (problem) {
        return Response.json({ error: problem }, {
          status: 401,
          headers: { "www-authenticate": WWW_AUTHENTICATE },
        });
      }
    }
    if (closing) {
      return Response.json({ error: "The server is shutting down" }, {
        status: 503,
      });
    }
    const server = createServer();
    const transport = new WebStandardStreamableHTTPServerTransport({
      sessionIdGenerator: undefined,
      enableJsonResponse: true,
    });
    await server.connect(transport);
    try {
      return await transport.handleRequest(req);
    } finally {
      await server.close();
    }
  }

  async function close(): Promise<void> {
    closing = true;
    await store.close();
    if (ownSandbox) await sandbox.close();
  }

  return { sandbox, createServer, handleHttp, close };
}

const USAGE = `Usage: deno task mcp [flags]

Serves the sandbox over MCP: stdio by default, streamable HTTP with --http.

  --http                     Serve streamable HTTP at /mcp instead of stdio
  --hostname HOST            HTTP interface (default 127.0.0.1)
  --port PORT                HTTP port (default 8000; 0 picks a free one)
  --token TOKEN              HTTP bearer token (or env SANDBOX_TOKEN);
                             required when HOST is not loopback
  --allow-read[=PATHS]       Permissions of the sandboxed code, spelled as in
  --allow-write[=PATHS]      deno run; nothing is granted by default
  --allow-net[=HOSTS]
  --allow-env[=NAMES]
  --allow-run[=PROGRAMS]     (amounts to giving up the sandbox)
  --allow-ffi[=PATHS]        (amounts to giving up the sandbox)
  --timeout SECONDS          Limit of each call (60)
  --memory MB                Python heap limit per child (512)
  --pool-size N              Warm children for stateless calls (2)
  --max-concurrency N        Executions at once; more wait in a queue (4)
  --max-sessions N           Live sessions at most (16)
  --session-idle-seconds S   Close sessions unused this long (600)
  --session-secret S         HMAC key for session bytes (or env
                             SANDBOX_SESSION_SECRET)
  --cache-dir DIR            Snapshot cache folder
  --help                     Show this help
`;

function onSignals(stop: (signal: string) => void): void {
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    try {
      Deno.addSignalListener(signal, () => stop(signal));
    } catch {
      // Not every platform has every signal.
    }
  }
}

/** Parses flags and serves over stdio or HTTP until a signal or EOF. */
async function main(args: string[]): Promise<void> {
  let parsed;
  try {
    parsed = parseSandboxFlags(args, {
      http: { type: "boolean" },
      hostname: { type: "string" },
      port: { type: "string" },
      token: { type: "string" },
      "max-concurrency": { type: "string" },
      "max-sessions": { type: "string" },
      "session-idle-seconds": { type: "string" },
      help: { type: "boolean" },
    });
  } catch (error) {
    fail(`${errorText(error)}\n\n${USAGE}`, 2);
  }
  const { values, sandboxOptions } = parsed;
  if (values.help) {
    console.error(USAGE);
    return;
  }
  const hostname = values.hostname ?? "127.0.0.1";
  const token = values.token ?? envLookup("SANDBOX_TOKEN");
  let mcp: SandboxMcp;
  let port = 8000;
  try {
    const maxConcurrency = parseNumberFlag(
      "--max-concurrency",
      values["max-concurrency"],
      { min: 1, max: 1024, integer: true },
    );
    if (maxConcurrency !== undefined) {
      sandboxOptions.maxConcurrency = maxConcurrency;
    }
    if (values.http) {
      port = parseNumberFlag("--port", values.port ?? "8000", {
        min: 0,
        max: 65535,
        integer: true,
      })!;
      if (!isLoopbackHostname(hostname) && !token) {
        fail(
          `Refusing to listen on ${hostname} without a token: binding to anything but loopback needs --token or the SANDBOX_TOKEN environment variable, so that only holders of the token can run code`,
          1,
        );
      }
    } else if (
      values.hostname !== undefined || values.port !== undefined ||
      values.token !== undefined
    ) {
      throw new TypeError(
        "Invalid command line: --hostname, --port and --token only apply with --http",
      );
    }
    mcp = createSandboxMcp({
      sandboxOptions,
      token: values.http ? token : undefined,
      maxSessions: parseNumberFlag("--max-sessions", values["max-sessions"], {
        min: 0,
        max: 2 ** 31,
        integer: true,
      }),
      sessionIdleSeconds: parseNumberFlag(
        "--session-idle-seconds",
        values["session-idle-seconds"],
        { min: 0.001, max: 365 * 86_400 },
      ),
    });
  } catch (error) {
    fail(errorText(error), 2);
  }

  if (!values.http) {
    // stdout carries the protocol: log to stderr only.
    const server = mcp.createServer();
    let stopping = false;
    const stop = async (why: string) => {
      if (stopping) return;
      stopping = true;
      console.error(`pyodide-sandbox MCP: ${why}, stopping`);
      await server.close().catch(() => {});
      await mcp.close();
      Deno.exit(0);
    };
    onSignals((signal) => void stop(signal));
    process.stdin.on("end", () => void stop("stdin closed"));
    process.stdin.on("close", () => void stop("stdin closed"));
    // Not the SDK's StdioServerTransport: it closes (and so ends the server
    // and every session) on one message over 10 MiB.
    await server.connect(new LimitedStdioServerTransport());
    console.error("pyodide-sandbox MCP server running on stdio");
    mcp.sandbox.warmup().catch((error) => {
      console.error(
        `pyodide-sandbox MCP: warm-up failed: ${errorText(error)}`,
      );
    });
    return;
  }

  try {
    await mcp.sandbox.warmup();
  } catch (error) {
    await mcp.close();
    fail(`The sandbox could not start: ${errorText(error)}`, 1);
  }
  let allowedHosts: Set<string> | undefined;
  const server = Deno.serve({
    hostname,
    port,
    onListen(addr) {
      if (!token) allowedHosts = loopbackHosts(addr);
      console.log(
        `pyodide-sandbox MCP server listening on ${
          listenUrl(addr, "/mcp")
        } (auth: ${token ? "bearer token" : "none, loopback only"})`,
      );
    },
  }, (req) => {
    const refused = hostProblem(req, allowedHosts);
    if (refused) return refused;
    if (new URL(req.url).pathname !== "/mcp") {
      return Response.json({ error: "Not found: the MCP endpoint is /mcp" }, {
        status: 404,
      });
    }
    return mcp.handleHttp(req);
  });
  let stopping = false;
  onSignals(async (signal) => {
    if (stopping) {
      await mcp.close();
      Deno.exit(0);
    }
    stopping = true;
    console.error(`${signal}: shutting down`);
    await server.shutdown();
    await mcp.close();
    Deno.exit(0);
  });
  await server.finished;
}

if (import.meta.main) {
  await main(Deno.args);
}
