/**
 * The sandbox as an MCP server: {@linkcode createSandboxMcp} for your own
 * server, and `deno task mcp` (over stdio by default; over streamable HTTP
 * at `/mcp` with `--http`, with MCP session ids).
 *
 * Tools: `run_python` (`code`, optional `session_id`), `create_session`,
 * `close_session` (`session_id`). `run_python` returns text and image
 * content (from `formatResult`) and `structuredContent` (status, stdout,
 * stderr, result, error). Calls of one MCP session without a `session_id`
 * share one Python interpreter (variables and imports persist) until it
 * is idle for `sessionIdleSeconds`; `create_session` opens explicit ones.
 * With a progress token, output lines stream as progress notifications
 * while the code runs.
 *
 * ```sh
 * deno task mcp --allow-net=api.example.com --timeout 30
 * SANDBOX_TOKEN=secret deno task mcp --http --hostname 0.0.0.0 --port 8001
 * ```
 *
 * With `--session-store redis://HOST:PORT[/DB]` (and the same
 * `--session-secret` on every replica, or `--insecure-store`),
 * `create_session` sessions live in Redis and any replica serves them;
 * `--session-checkpoint-seconds N` writes them back at most every N
 * seconds and on shutdown instead of after every call.
 *
 * @module
 */

import process from "node:process";
import { LimitedStdioServerTransport } from "./_mcp_stdio.ts";
import {
  type SandboxMcp,
  SandboxMcpCore,
  type SandboxMcpOptions,
} from "./_mcp_core.ts";
import { fail, parseNumberFlag } from "./_cli_flags.ts";
import {
  EXIT_OK,
  EXIT_USAGE,
  parseServeFlags,
  serveHttp,
  STORE_FLAG_OPTIONS,
  STORE_FLAGS_HELP,
  storeFromFlags,
} from "./_serve.ts";

export type { SandboxMcp, SandboxMcpOptions } from "./_mcp_core.ts";
export type { SharedSessionStore } from "./handler.ts";
export type {
  JsonRpcMessage,
  McpServerHandle,
  McpTransport,
} from "./_mcp_sdk.ts";

/**
 * Creates the sandbox's MCP tools (`run_python`, `create_session`,
 * `close_session`) over a shared sandbox, for stdio, streamable HTTP or
 * any other MCP transport.
 *
 * @param options The sandbox (or its options), token and session limits.
 * @returns The tools, with a server factory and an HTTP handler.
 * @throws {TypeError} When an option has the wrong type.
 * @throws {RangeError} When a limit is out of range.
 * @example
 * ```ts ignore
 * import { createSandboxMcp } from "jsr:@pyodide-sandbox/pyodide-sandbox/mcp";
 *
 * const mcp = createSandboxMcp({
 *   sandboxOptions: { timeoutSeconds: 30, allowNet: ["api.example.com"] },
 *   token: Deno.env.get("MCP_TOKEN"),
 * });
 * Deno.serve({ port: 8001 }, (req) =>
 *   new URL(req.url).pathname === "/mcp"
 *     ? mcp.handleHttp(req)
 *     : new Response("Not found", { status: 404 }));
 * ```
 */
export function createSandboxMcp(options: SandboxMcpOptions = {}): SandboxMcp {
  return new SandboxMcpCore(options);
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

const PROGRAM = "pyodide-sandbox MCP server";

const USAGE = `Usage: deno task mcp [flags]

Serves the sandbox over MCP: stdio by default, streamable HTTP with --http.
Over stdio it stops (exit 0) when stdin closes.

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
  --max-output-bytes N       Output kept per stream and call (1048576)
  --max-sessions N           Python sessions at most (16), for create_session
                             and, apart, for MCP sessions' interpreters
  --max-mcp-sessions N       MCP sessions over HTTP at most (64)
  --session-idle-seconds S   Close sessions unused this long (600)
  --stateless                Calls without session_id start fresh each time
  --package NAME             Install a package before every run (repeatable)
  --package-dir DIR          Folder of wheels to install from (offline)
  --package-index URL        Index serving pyodide-lock.json (repeatable)
  --no-package-index         No package index at all (offline)
  --preload NAMES            Packages in the snapshot, comma-separated (repeatable)
  --session-secret S         HMAC key for session bytes (or env
                             SANDBOX_SESSION_SECRET)
  --cache-dir DIR            Snapshot cache folder
${STORE_FLAGS_HELP}  --version                  Print the module and Pyodide versions
  --help                     Show this help
`;

const FLAGS = {
  http: { type: "boolean" },
  "max-concurrency": { type: "string" },
  "max-sessions": { type: "string" },
  "max-mcp-sessions": { type: "string" },
  "session-idle-seconds": { type: "string" },
  stateless: { type: "boolean" },
  ...STORE_FLAG_OPTIONS,
} as const;

/** Turns the command line into server settings; exits 2 when invalid. */
function configure(args: string[]) {
  const { values, sandboxOptions, listen } = parseServeFlags(args, {
    program: PROGRAM,
    usage: USAGE,
    flags: FLAGS,
  });
  try {
    const int = (flag: string, value: string | undefined, min: number) =>
      parseNumberFlag(flag, value, { min, max: 2 ** 31, integer: true });
    const maxConcurrency = int(
      "--max-concurrency",
      values["max-concurrency"],
      1,
    );
    if (maxConcurrency !== undefined) {
      sandboxOptions.maxConcurrency = maxConcurrency;
    }
    const httpOnly = ["hostname", "port", "token", "max-mcp-sessions"] as const;
    if (!values.http && httpOnly.some((name) => values[name] !== undefined)) {
      throw new TypeError(
        "Invalid command line: --hostname, --port, --token and --max-mcp-sessions only apply with --http",
      );
    }
    const { store, checkpointSeconds, idleSeconds: idle } = storeFromFlags(
      values,
      sandboxOptions.sessionSecret,
    );
    const options: SandboxMcpOptions = {
      sandboxOptions,
      token: values.http ? listen.token : undefined,
      maxSessions: int("--max-sessions", values["max-sessions"], 0),
      maxMcpSessions: int("--max-mcp-sessions", values["max-mcp-sessions"], 1),
      sessionIdleSeconds: idle,
      implicitSessions: !values.stateless,
      ...(store
        ? { sessionStore: store, sessionCheckpointSeconds: checkpointSeconds }
        : {}),
    };
    if (store) console.error(`Session store: ${store.url}`);
    return { http: values.http === true, listen, options, store };
  } catch (error) {
    fail(errorText(error), EXIT_USAGE);
  }
}

/** Serves over stdio until stdin closes or a signal. */
async function serveStdio(
  mcp: SandboxMcp,
  store: { close(): Promise<void> } | undefined,
): Promise<void> {
  // stdout carries the protocol: log to stderr only.
  const server = mcp.createServer();
  let stopping = false;
  const stop = async (why: string) => {
    if (stopping) return;
    stopping = true;
    console.error(`${PROGRAM}: ${why}, stopping`);
    await server.close().catch(() => {});
    await mcp.close({ graceSeconds: 0 });
    await store?.close();
    Deno.exit(EXIT_OK);
  };
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    try {
      Deno.addSignalListener(signal, () => void stop(signal));
    } catch {
      // Not every platform has every signal.
    }
  }
  process.stdin.on("end", () => void stop("stdin closed"));
  process.stdin.on("close", () => void stop("stdin closed"));
  // Not the SDK's StdioServerTransport: it closes (and so ends the server
  // and every session) on one message over 10 MiB.
  await server.connect(new LimitedStdioServerTransport());
  console.error(`${PROGRAM} running on stdio`);
  mcp.sandbox.warmup().catch((error) => {
    console.error(`${PROGRAM}: warm-up failed: ${errorText(error)}`);
  });
}

/** Parses flags and serves over stdio or HTTP until a signal or EOF. */
async function main(args: string[]): Promise<void> {
  const config = configure(args);
  if (!config.http) {
    let mcp: SandboxMcp;
    try {
      mcp = createSandboxMcp(config.options);
    } catch (error) {
      fail(errorText(error), EXIT_USAGE);
    }
    return await serveStdio(mcp, config.store);
  }
  await serveHttp({ ...config.listen, program: PROGRAM, path: "/mcp" }, () => {
    const mcp = createSandboxMcp(config.options);
    return {
      handle: (req) =>
        new URL(req.url).pathname === "/mcp"
          ? mcp.handleHttp(req)
          : Promise.resolve(
            Response.json({ error: "Not found: the MCP endpoint is /mcp" }, {
              status: 404,
            }),
          ),
      warmup: () => mcp.sandbox.warmup(),
      close: async (options) => {
        await mcp.close(options);
        await config.store?.close();
      },
    };
  });
}

if (import.meta.main) {
  await main(Deno.args);
}
