/**
 * Helpers of the HTTP tests (handler_test.ts, server_test.ts): serving a
 * handler on a loopback port, calling it with the test token, and running
 * server.ts as a child process.
 *
 * @module
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { withTempDir } from "./_helpers.ts";
import {
  createHandler,
  type HandlerOptions,
  type SandboxHandler,
} from "../handler.ts";

export const TOKEN = "test-token-0123456789";
export const SERVER_TS = fileURLToPath(
  new URL("../server.ts", import.meta.url),
);

export interface Served {
  url: string;
  handler: SandboxHandler;
  server: Deno.HttpServer<Deno.NetAddr>;
}

export function serve(handler: SandboxHandler): Served {
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    handler,
  );
  return { url: `http://127.0.0.1:${server.addr.port}`, handler, server };
}

export function call(
  base: string,
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<Response> {
  const init: RequestInit = {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, ...headers },
  };
  if (body !== undefined) {
    init.body = typeof body === "string" ? body : JSON.stringify(body);
    (init.headers as Record<string, string>)["content-type"] ??=
      "application/json";
  }
  return fetch(base + path, init);
}

export async function jsonOf(
  response: Response,
  status: number,
): Promise<Record<string, unknown>> {
  const text = await response.text();
  assert.equal(response.status, status, text);
  return text ? JSON.parse(text) : {};
}

/** Reads stdout lines of a process until one matches. */
export async function readUntil(
  stream: ReadableStream<Uint8Array<ArrayBuffer>>,
  pattern: RegExp,
): Promise<RegExpExecArray> {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (true) {
    const { done, value } = await reader.read();
    if (done) assert.fail(`Output ended before ${pattern}: ${text}`);
    text += value;
    const m = pattern.exec(text);
    if (m) {
      // Keep draining until the process ends.
      (async () => {
        while (!(await reader.read()).done) { /* drain */ }
      })();
      return m;
    }
  }
}

/** This process's environment without `SANDBOX_TOKEN`, plus `extra`. */
export function serverEnv(
  extra: Record<string, string> = {},
): Record<string, string> {
  const env = Deno.env.toObject();
  delete env.SANDBOX_TOKEN;
  return { ...env, ...extra };
}

/** Runs server.ts to completion with a clean environment. */
export async function runServer(
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", SERVER_TS, ...args],
    env: serverEnv(),
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder();
  return {
    code: out.code,
    stdout: text.decode(out.stdout),
    stderr: text.decode(out.stderr),
  };
}

/**
 * Starts `server.ts` with `args`, hands the child and its stderr text to
 * `fn`, and always kills it afterwards.
 */
export async function withServerProcess(
  args: string[],
  env: Record<string, string>,
  fn: (child: Deno.ChildProcess, stderr: Promise<string>) => Promise<void>,
): Promise<void> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", SERVER_TS, ...args],
    env,
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  try {
    await fn(child, stderr);
  } finally {
    try {
      child.kill("SIGKILL");
    } catch {
      // Already ended.
    }
    await child.status;
    await stderr;
  }
}

/**
 * Runs `fn` with a handler whose sandbox has no pool and a temporary cache
 * folder, always closed afterwards.
 */
export async function withTempHandler(
  options: HandlerOptions,
  fn: (handler: SandboxHandler) => Promise<void>,
): Promise<void> {
  await withTempDir(async (cacheDir) => {
    const handler = createHandler({
      ...options,
      sandboxOptions: { poolSize: 0, cacheDir },
    });
    try {
      await fn(handler);
    } finally {
      await handler.close({ graceSeconds: 0 });
    }
  });
}

/** A handler that never runs code, served on a loopback port. */
export async function withIdleHandler(
  options: HandlerOptions,
  fn: (base: string) => Promise<void>,
): Promise<void> {
  await withTempHandler(options, async (handler) => {
    const served = serve(handler);
    try {
      await fn(served.url);
    } finally {
      await served.server.shutdown();
    }
  });
}

export function preflight(
  url: string,
  origin: string,
  method = "POST",
): Promise<Response> {
  return fetch(url, {
    method: "OPTIONS",
    headers: {
      origin,
      "access-control-request-method": method,
      "access-control-request-headers": "authorization, content-type",
    },
  });
}
