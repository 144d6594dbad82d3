/**
 * Helpers of the MCP tests: start `mcp.ts --http` on a free loopback port,
 * call a tool with the SDK's client, the environment for a stdio server.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { Client } from "@modelcontextprotocol/sdk/client/index.js";

/** The client-side timeout of each tool call, in milliseconds. */
export const CALL_TIMEOUT_MS = 300_000;

/** A tool result as the tests read it. */
export type ToolResult = {
  content: { type: string; text?: string; data?: string; mimeType?: string }[];
  isError?: boolean;
  structuredContent?: Record<string, unknown>;
};

/**
 * Calls a tool.
 *
 * @param client A connected client.
 * @param name The tool.
 * @param args Its arguments.
 * @returns The result.
 */
export async function tool(
  client: Client,
  name: string,
  args: Record<string, unknown> = {},
): Promise<ToolResult> {
  // Generous: the first call may build the snapshot on a loaded machine.
  return await client.callTool({ name, arguments: args }, undefined, {
    timeout: CALL_TIMEOUT_MS,
  }) as ToolResult;
}

/**
 * The environment a stdio server needs (the SDK's client passes only a
 * few variables unless given `env`).
 *
 * @returns HOME, PATH and Deno's cache variables, when set.
 */
export function stdioEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const name of ["HOME", "PATH", "DENO_DIR", "XDG_CACHE_HOME"]) {
    const value = Deno.env.get(name);
    if (value) env[name] = value;
  }
  return env;
}

/** A running `mcp.ts --http`. */
export interface McpHttpServer {
  /** The MCP endpoint. */
  url: URL;
  /** The server process. */
  process: Deno.ChildProcess;
  /** Its whole stderr, once it ended. */
  stderr: Promise<string>;
  /** Kills it (if still running) and waits for it. */
  stop(): Promise<void>;
}

/**
 * Starts `mcp.ts --http --port 0` and waits for its listening line.
 *
 * @param mcpTs Path of `mcp.ts`.
 * @param flags More flags.
 * @param env More environment variables.
 * @returns The server.
 */
export async function startMcpHttp(
  mcpTs: string,
  flags: string[],
  env: Record<string, string> = {},
): Promise<McpHttpServer> {
  const process = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", mcpTs, "--http", "--port", "0", ...flags],
    env,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(process.stderr).text();
  const reader = process.stdout.pipeThrough(new TextDecoderStream())
    .getReader();
  let out = "";
  let match: RegExpExecArray | null = null;
  while (!match) {
    const { done, value } = await reader.read();
    if (done) assert.fail(`The server ended: ${out}${await stderr}`);
    out += value;
    match = /listening on (http:\/\/\S+\/mcp)/.exec(out);
  }
  (async () => {
    while (!(await reader.read()).done) { /* drain */ }
  })();
  return {
    url: new URL(match[1]),
    process,
    stderr,
    async stop() {
      try {
        process.kill("SIGKILL");
      } catch {
        // Already ended.
      }
      await process.status;
      await stderr;
    },
  };
}
