/**
 * Seeded generators of hostile input for the fuzzer (tests/_fuzz.ts):
 * compromised-child frame scripts, host-call requests, session bytes, HTTP
 * requests and MCP messages.
 *
 * @module
 */

import type { Op } from "./_evil.ts";
import { base64, filesFrame, frame, RESULT } from "./_evil.ts";

/** A seeded PRNG (mulberry32). */
export class Rng {
  #state: number;

  /** @param seed Any integer. */
  constructor(seed: number) {
    this.#state = seed >>> 0;
  }

  /** A float in [0, 1). */
  next(): number {
    let t = (this.#state = (this.#state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.next() < p;
  }

  /** One of the items. */
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }

  /** Random bytes. */
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.int(256);
    return out;
  }
}

/**
 * The seed of one iteration, so that any iteration can be replayed alone.
 *
 * @param seed The run's seed.
 * @param target The target's name.
 * @param iteration The iteration.
 * @returns A 32-bit seed.
 */
export function iterationSeed(
  seed: number,
  target: string,
  iteration: number,
): number {
  let h = 2166136261 ^ seed;
  for (const c of `${target}:${iteration}`) {
    h = Math.imul(h ^ c.charCodeAt(0), 16777619);
  }
  return h >>> 0;
}

const STRINGS = [
  "",
  "\u0000install",
  "echo",
  "__proto__",
  "constructor",
  "toString",
  "text/plain",
  "image/png",
  "application/json",
  "/home/pyodide/a.txt",
  "/home/pyodide/../../etc/passwd",
  "/etc/cron.d/x",
  "x".repeat(300),
  "\ud800",
  "☃",
];

/**
 * A random JSON value of bounded depth.
 *
 * @param rng The PRNG.
 * @param depth Levels left.
 * @returns The value.
 */
export function jsonValue(rng: Rng, depth = 3): unknown {
  switch (rng.int(depth > 0 ? 9 : 6)) {
    case 0:
      return null;
    case 1:
      return rng.chance(0.5);
    case 2:
      return rng.pick([0, -1, 1.5, 2 ** 53, 1e308, 4294967296, 17]);
    case 3:
      return rng.pick(STRINGS);
    case 4:
      return String.fromCharCode(...rng.bytes(rng.int(20)));
    case 5:
      return rng.int(1000);
    case 6:
    case 7: {
      const out: Record<string, unknown> = {};
      const keys = ["out", "ok", "name", "args", "message", "path", "size"];
      for (let i = rng.int(5); i > 0; i--) {
        out[rng.chance(0.6) ? rng.pick(keys) : rng.pick(STRINGS)] = jsonValue(
          rng,
          depth - 1,
        );
      }
      return out;
    }
    default:
      return Array.from(
        { length: rng.int(5) },
        () => jsonValue(rng, depth - 1),
      );
  }
}

/** A random result header, sometimes valid. */
function resultOp(rng: Rng): Op {
  if (rng.chance(0.4)) return RESULT;
  if (rng.chance(0.5)) {
    return { op: "result", out: jsonValue(rng) };
  }
  return {
    op: "result",
    header: jsonValue(rng) as Record<string, unknown>,
  };
}

function filesOp(rng: Rng): Op {
  const entries = Array.from({ length: rng.int(4) }, () => ({
    path: rng.chance(0.5) ? `/home/pyodide/f${rng.int(5)}` : jsonValue(rng),
    size: rng.chance(0.7) ? rng.int(20) : jsonValue(rng),
    length: rng.chance(0.7) ? rng.int(20) : jsonValue(rng),
    truncated: rng.chance(0.7) ? rng.chance(0.5) : jsonValue(rng),
  }));
  const index = rng.chance(0.8) ? entries : jsonValue(rng);
  return filesFrame(index, rng.bytes(rng.int(60)));
}

/** One hostile frame op. */
function frameOp(rng: Rng): Op[] {
  switch (rng.int(14)) {
    case 0:
      return [frame(rng.pick([2, 3]), null, { base64: base64(rng.bytes(50)) })];
    case 1:
      return [frame(rng.int(256), jsonValue(rng))];
    case 2: // Huge declared lengths behind a short body.
      return [{
        op: "frame",
        type: rng.int(12),
        jsonText: "",
        jsonLength: rng.pick([0, rng.int(2 ** 32), 64 * 1024 * 1024 + 1]),
        binLength: rng.pick([0, rng.int(2 ** 32), 0xffffffff]),
        trailer: false,
      }, { op: "exit", code: 1 }];
    case 3:
      return [{ ...frame(rng.int(11), jsonValue(rng)), nonce: "bad" }];
    case 4:
      return [{ op: "raw", bin: { base64: base64(rng.bytes(rng.int(200))) } }];
    case 5:
      return [frame(6, jsonValue(rng)), { op: "reply", timeoutMs: 3000 }];
    case 6:
      return [frame(7, jsonValue(rng))];
    case 7:
      return [filesOp(rng)];
    case 8:
      return [frame(9, jsonValue(rng))];
    case 9: // A flood of valid stream frames.
      return Array.from({ length: 20 }, () => frame(2, null, { fill: 60_000 }));
    case 10:
      return [{
        op: "frame",
        type: rng.int(11),
        jsonText: "{" + "[".repeat(5),
      }];
    case 11: // Truncated: the body is shorter than declared, then exit.
      return [{
        op: "frame",
        type: rng.int(11),
        jsonText: "null",
        jsonLength: 4 + rng.int(100),
        trailer: false,
      }, { op: "exit", code: 0 }];
    case 12:
      return [{ op: "display", mime: "text/plain", fill: rng.int(2_000_000) }];
    default:
      return [resultOp(rng), frame(2, null, { text: "after\n" })];
  }
}

/**
 * A compromised child's script for one call: hostile frames, then (mostly)
 * a result or an exit, so that few calls wait for the timeout.
 *
 * @param rng The PRNG.
 * @returns The ops.
 */
export function frameScript(rng: Rng): Op[] {
  const ops: Op[] = [];
  for (let n = 1 + rng.int(4); n > 0; n--) ops.push(...frameOp(rng));
  const end = rng.next();
  if (end < 0.75) ops.push(resultOp(rng));
  else if (end < 0.95) ops.push({ op: "exit", code: rng.int(256) });
  else ops.push({ op: "hang" });
  return ops;
}

/**
 * Host-call requests (some valid), each followed by waiting for its reply.
 *
 * @param rng The PRNG.
 * @returns The ops.
 */
export function callScript(rng: Rng): Op[] {
  const ops: Op[] = [];
  for (let n = 1 + rng.int(6); n > 0; n--) {
    const request = rng.chance(0.3) ? jsonValue(rng) : {
      name: rng.chance(0.7) ? rng.pick(STRINGS) : jsonValue(rng),
      args: rng.chance(0.6)
        ? Array.from({ length: rng.int(4) }, () => jsonValue(rng))
        : jsonValue(rng),
    };
    ops.push(frame(6, request), { op: "reply", timeoutMs: 3000 });
  }
  ops.push(RESULT);
  return ops;
}

/**
 * Mutates bytes: flips, truncates, extends or replaces them.
 *
 * @param rng The PRNG.
 * @param bytes The original.
 * @returns A copy, mutated (or not, one time in ten).
 */
export function mutate(rng: Rng, bytes: Uint8Array): Uint8Array {
  const out = bytes.slice();
  switch (rng.int(5)) {
    case 0:
      for (let i = 1 + rng.int(4); i > 0; i--) {
        out[rng.int(out.length)] ^= 1 << rng.int(8);
      }
      return out;
    case 1:
      return out.slice(0, rng.int(out.length));
    case 2: {
      const longer = new Uint8Array(out.length + 1 + rng.int(64));
      longer.set(out);
      longer.set(rng.bytes(longer.length - out.length), out.length);
      return longer;
    }
    case 3:
      return rng.bytes(rng.int(200));
    default:
      return rng.chance(0.5) ? out : rng.bytes(0);
  }
}

/** The routes of the HTTP API, and some that are not. */
const PATHS = [
  "/healthz",
  "/metrics",
  "/openapi.json",
  "/v1/execute",
  "/v1/sessions",
  "/v1/sessions/x/execute",
  "/v1/sessions/x/export",
  "/v1/sessions/x",
  "/v1/sessions/import",
  "/v1/../v1/execute",
  "/%00",
  "/v1/execute?x=1",
];

/**
 * A random HTTP request to the handler.
 *
 * @param rng The PRNG.
 * @param sessionIds Ids of sessions created so far (to hit real ones).
 * @returns The request.
 */
export function httpRequest(rng: Rng, sessionIds: string[]): Request {
  let path = rng.pick(PATHS);
  if (sessionIds.length && rng.chance(0.5)) {
    path = path.replace("/x", `/${rng.pick(sessionIds)}`);
  }
  const method = rng.pick(["GET", "POST", "POST", "DELETE", "PUT"]);
  let body: BodyInit | undefined;
  if (method === "POST" || method === "PUT") {
    const kind = rng.int(4);
    body = kind === 0
      ? rng.bytes(rng.int(300)) as Uint8Array<ArrayBuffer>
      : kind === 1
      ? JSON.stringify(jsonValue(rng))
      : JSON.stringify({
        code: rng.chance(0.7)
          ? rng.pick(["1", "scenario:honest"])
          : jsonValue(rng),
        ...(rng.chance(0.5) ? { timeoutSeconds: jsonValue(rng) } : {}),
        ...(rng.chance(0.3) ? { sessionBytes: jsonValue(rng) } : {}),
        ...(rng.chance(0.3) ? { [rng.pick(STRINGS)]: jsonValue(rng) } : {}),
      });
  }
  const headers: Record<string, string> = {};
  if (rng.chance(0.8)) headers["content-type"] = "application/json";
  return new Request(`http://127.0.0.1${path}`, { method, body, headers });
}

const MCP_METHODS = [
  "initialize",
  "ping",
  "tools/list",
  "tools/call",
  "resources/list",
  "prompts/get",
  "notifications/initialized",
  "nope",
];

/**
 * A random MCP message line (JSON-RPC, or garbage).
 *
 * @param rng The PRNG.
 * @param id The request id to use.
 * @returns The line, without its newline.
 */
export function mcpLine(rng: Rng, id: number): string {
  if (rng.chance(0.1)) return String.fromCharCode(...rng.bytes(rng.int(80)));
  if (rng.chance(0.1)) return JSON.stringify(jsonValue(rng));
  const message: Record<string, unknown> = {
    jsonrpc: rng.chance(0.9) ? "2.0" : jsonValue(rng),
    method: rng.chance(0.9) ? rng.pick(MCP_METHODS) : jsonValue(rng),
  };
  if (rng.chance(0.8)) message.id = rng.chance(0.9) ? id : jsonValue(rng);
  if (message.method === "tools/call" && rng.chance(0.7)) {
    message.params = {
      name: rng.pick(["run_python", "create_session", "close_session", "x"]),
      arguments: rng.chance(0.5)
        ? { session_id: jsonValue(rng) }
        : jsonValue(rng),
    };
  } else if (rng.chance(0.7)) message.params = jsonValue(rng);
  return JSON.stringify(message);
}
