/**
 * `deno task fuzz [--seed N] [--iterations M] [--seconds S] [--targets a,b]
 * [--only I]`: drives the REAL host code with seeded hostile input and
 * checks that the host holds.
 *
 * Targets: `frames` and `calls` (a compromised child, tests/_evil.ts, sends
 * hostile frames and host-call requests to a real sandbox, in one-shot calls
 * and in a live session), `session` (mutated session bytes and metadata to
 * the verifier and to `execute()`), `http` (random requests to
 * `createHandler()` in process) and `mcp` (random JSON-RPC lines to the real
 * MCP server over stdio).
 *
 * Invariants: no unhandled rejection or uncaught error in the host; every
 * call resolves to a result (status and error kind valid, stdout within
 * `maxOutputBytes`, displays within `maxDisplayBytes`, files inside the
 * sandbox) or throws TypeError/RangeError/SessionError for bad arguments;
 * the HTTP handler never answers 500; the MCP server stays alive and answers
 * a ping; no child outlives its call; host RSS stays below its start plus
 * {@linkcode RSS_BOUND_BYTES}. A failure prints the seed and iteration;
 * `--only I` replays that iteration.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import {
  type CodeExecutionResult,
  createHandler,
  ERROR_KINDS,
  type PyodideSession,
  SessionError,
} from "../mod.ts";
import { sealSession, unsealSession } from "../_session_bytes.ts";
import { type EvilSandbox, evilSandbox, script, selfMemory } from "./_evil.ts";
import {
  callScript,
  frameScript,
  httpRequest,
  iterationSeed,
  jsonValue,
  mcpLine,
  mutate,
  Rng,
} from "./_fuzz_gen.ts";
import { assertNoDenoChildren, liveDenoChildren } from "./_helpers.ts";

/**
 * How far host RSS may grow over its start. The fuzz sandbox's caps bound a
 * call to about 2 x 64 KiB of output, 1 MiB of displays, 1 MiB of files and
 * the headers the generator sends (a few MB); 256 MB leaves room for V8.
 */
export const RSS_BOUND_BYTES = 256 * 1024 * 1024;
const MAX_OUTPUT = 64 * 1024;
const MAX_DISPLAY = 1024 * 1024;

/** Names of the targets. */
export const TARGETS = ["frames", "calls", "session", "http", "mcp"] as const;
/** One target's name. */
export type Target = typeof TARGETS[number];

/** Settings of a run. */
export interface FuzzOptions {
  seed: number;
  /** Iterations per target (upper bound). */
  iterations: number;
  /** Time per target, in seconds (upper bound). */
  seconds: number;
  targets: readonly Target[];
  /** Run only this iteration (a replay). */
  only?: number;
  log?: (line: string) => void;
}

/** What a run found. */
export interface FuzzReport {
  /** Per target: iterations done and their rate. */
  stats: Record<string, { iterations: number; perSecond: number }>;
  /** `seed`, target, iteration and what broke. */
  failures: string[];
  peakRssGrowth: number;
}

class Failure extends Error {}

function check(ok: unknown, what: string): void {
  if (!ok) throw new Failure(what);
}

/** Checks a result from a hostile child against the caps. */
function checkResult(r: CodeExecutionResult): void {
  check(r && typeof r === "object", "the result is not an object");
  check(r.status === "success" || r.status === "error", `status ${r.status}`);
  if (r.status === "error") {
    check(ERROR_KINDS.includes(r.error!.kind), `kind ${r.error?.kind}`);
    check(typeof r.error!.message === "string", "no error message");
  }
  check(r.stdout.length <= MAX_OUTPUT, `stdout of ${r.stdout.length}`);
  const displayBytes = JSON.stringify(r.displays ?? []).length;
  check(displayBytes <= MAX_DISPLAY + 4096, `displays of ${displayBytes}`);
  for (const d of r.displays ?? []) {
    check(d && typeof d === "object" && !Array.isArray(d), "a bad display");
  }
  for (const f of r.files ?? []) {
    check(
      typeof f.path === "string" && f.path.startsWith("/home/pyodide/") &&
        !f.path.includes("/../"),
      `a file at ${JSON.stringify(f.path)}`,
    );
    check(f.size >= f.content.length, "a file smaller than its content");
  }
}

function expectedError(error: unknown): boolean {
  return error instanceof TypeError || error instanceof RangeError ||
    error instanceof SessionError;
}

/** Per-target state: a sandbox, a session, a handler, an MCP server. */
interface World {
  sandbox: EvilSandbox;
  session?: PyodideSession;
  handler?: ReturnType<typeof createHandler>;
  sessionIds: string[];
  mcp?: McpServer;
}

async function childScript(world: World, rng: Rng, ops: unknown[]) {
  const code = script(...ops as never[]);
  if (rng.chance(0.5)) {
    if (!world.session?.alive) {
      await world.session?.close();
      world.session = await world.sandbox.openSession();
    }
    checkResult(await world.session.execute(code));
  } else {
    checkResult(await world.sandbox.execute(code));
    // The one-shot child is gone; only the session's may live.
    const live = liveDenoChildren().length;
    check(live <= (world.session?.alive ? 1 : 0), `${live} children live`);
  }
}

async function sessionIteration(world: World, rng: Rng): Promise<void> {
  const secret = rng.chance(0.5) ? rng.bytes(32) : undefined;
  const sealed = await sealSession(rng.bytes(rng.int(100)), undefined, secret);
  const bytes = rng.chance(0.9)
    ? mutate(rng, sealed.sessionBytes)
    : jsonValue(rng);
  const metadata = rng.chance(0.8)
    ? {
      ...sealed.sessionMetadata,
      ...(rng.chance(0.3) ? { createdAt: "x" } : {}),
    }
    : jsonValue(rng);
  try {
    await unsealSession(bytes as Uint8Array, metadata as never, secret);
  } catch (error) {
    check(
      error instanceof SessionError || error instanceof TypeError,
      `unsealSession threw ${error}`,
    );
  }
  try {
    const r = await world.sandbox.execute("scenario:honest", {
      sessionBytes: bytes as Uint8Array,
      sessionMetadata: metadata as never,
      timeoutSeconds: 5,
    });
    checkResult(r);
  } catch (error) {
    check(expectedError(error), `execute threw ${error}`);
  }
}

async function httpIteration(world: World, rng: Rng): Promise<void> {
  world.handler ??= createHandler({ sandbox: world.sandbox });
  const response = await world.handler(httpRequest(rng, world.sessionIds));
  check(response.status >= 200 && response.status < 600, "bad status");
  const text = await response.text();
  check(response.status !== 500, `500: ${text.slice(0, 300)}`);
  const id = /"(?:id|sessionId)":"([^"]+)"/.exec(text)?.[1];
  if (id && world.sessionIds.length < 4) world.sessionIds.push(id);
}

/** The MCP server over stdio, one line per message. */
class McpServer {
  #process: Deno.ChildProcess;
  #writer: WritableStreamDefaultWriter<Uint8Array>;
  #lines: string[] = [];
  exited = false;

  constructor() {
    const mcp = fileURLToPath(new URL("../mcp.ts", import.meta.url));
    this.#process = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", mcp, "--pool-size", "0", "--timeout", "5"],
      stdin: "piped",
      stdout: "piped",
      stderr: "null",
    }).spawn();
    this.#process.status.then(() => this.exited = true);
    this.#writer = this.#process.stdin.getWriter();
    this.#read();
  }

  async #read(): Promise<void> {
    let rest = "";
    const decoder = new TextDecoder();
    for await (const chunk of this.#process.stdout) {
      rest += decoder.decode(chunk, { stream: true });
      const parts = rest.split("\n");
      rest = parts.pop()!;
      this.#lines.push(...parts);
      if (this.#lines.length > 1000) this.#lines.splice(0, 500);
    }
  }

  async send(line: string): Promise<void> {
    await this.#writer.write(new TextEncoder().encode(`${line}\n`));
  }

  /** Sends a ping and waits for its answer. */
  async ping(id: number, seconds = 20): Promise<boolean> {
    await this.send(JSON.stringify({ jsonrpc: "2.0", id, method: "ping" }));
    const end = performance.now() + seconds * 1000;
    while (performance.now() < end && !this.exited) {
      if (this.#lines.some((l) => l.includes(`"id":${id}`))) return true;
      await new Promise((r) => setTimeout(r, 20));
    }
    return false;
  }

  async close(): Promise<void> {
    await this.#writer.close().catch(() => {});
    const timer = setTimeout(() => this.#process.kill("SIGKILL"), 5000);
    await this.#process.status;
    clearTimeout(timer);
  }
}

async function mcpIteration(world: World, rng: Rng, i: number): Promise<void> {
  if (!world.mcp) {
    world.mcp = new McpServer();
    await world.mcp.send(JSON.stringify({
      jsonrpc: "2.0",
      id: 0,
      method: "initialize",
      params: {
        protocolVersion: "2025-03-26",
        capabilities: {},
        clientInfo: { name: "fuzz", version: "1" },
      },
    }));
    check(await world.mcp.ping(1e9, 60), "the MCP server does not start");
  }
  await world.mcp.send(mcpLine(rng, 1000 + i));
  if (i % 10 === 9) {
    check(await world.mcp.ping(2e9 + i), "the MCP server stopped answering");
  }
  check(!world.mcp.exited, "the MCP server exited");
}

function iteration(world: World, target: Target, rng: Rng, i: number) {
  switch (target) {
    case "frames":
      return childScript(world, rng, frameScript(rng));
    case "calls":
      return childScript(world, rng, callScript(rng));
    case "session":
      return sessionIteration(world, rng);
    case "http":
      return httpIteration(world, rng);
    case "mcp":
      return mcpIteration(world, rng, i);
  }
}

async function closeWorld(world: World): Promise<void> {
  await world.session?.close();
  await world.handler?.close({ graceSeconds: 5 });
  await world.mcp?.close();
  await world.sandbox.close();
}

/** The generated input of an iteration, for a failure report. */
function describeInput(target: Target, i: number, seed: number): string {
  const rng = new Rng(iterationSeed(seed, target, i));
  const ops = target === "frames"
    ? frameScript(rng)
    : target === "calls"
    ? callScript(rng)
    : undefined;
  return ops ? JSON.stringify(ops).slice(0, 4000) : "(see the generator)";
}

/**
 * Runs the fuzzer.
 *
 * @param options Seed, bounds and targets.
 * @returns Rates and failures.
 */
export async function runFuzz(options: FuzzOptions): Promise<FuzzReport> {
  const log = options.log ?? console.log;
  const report: FuzzReport = { stats: {}, failures: [], peakRssGrowth: 0 };
  const baseline = selfMemory();
  let uncaught: unknown;
  const onRejection = (e: PromiseRejectionEvent) => {
    e.preventDefault();
    uncaught ??= e.reason;
  };
  const onError = (e: ErrorEvent) => {
    e.preventDefault();
    uncaught ??= e.error;
  };
  globalThis.addEventListener("unhandledrejection", onRejection);
  globalThis.addEventListener("error", onError);
  try {
    for (const target of options.targets) {
      const world: World = {
        sandbox: evilSandbox(
          {
            timeoutSeconds: 2,
            maxOutputBytes: MAX_OUTPUT,
            maxDisplayBytes: MAX_DISPLAY,
            maxFileBytes: 1024,
            maxTotalFileBytes: 64 * 1024,
            functions: { echo: (...args) => args },
          } as Parameters<typeof evilSandbox>[0],
        ),
        sessionIds: [],
      };
      const started = performance.now();
      const first = options.only ?? 0;
      const last = options.only ?? options.iterations - 1;
      let done = 0;
      for (let i = first; i <= last; i++) {
        if (performance.now() - started > options.seconds * 1000) break;
        const rng = new Rng(iterationSeed(options.seed, target, i));
        const where = `seed ${options.seed} target ${target} iteration ${i}`;
        try {
          await iteration(world, target, rng, i);
          if (uncaught !== undefined) {
            throw new Failure(`unhandled in the host: ${uncaught}`);
          }
        } catch (error) {
          const what = error instanceof Failure
            ? error.message
            : `threw ${error instanceof Error ? error.stack : error}`;
          report.failures.push(`${where}: ${what}`);
          log(`FAIL ${where}: ${what}`);
          if (options.only !== undefined) {
            log(`input: ${describeInput(target, i, options.seed)}`);
          }
          uncaught = undefined;
          if (report.failures.length >= 10) break;
        }
        done++;
        const growth = selfMemory() - baseline;
        report.peakRssGrowth = Math.max(report.peakRssGrowth, growth);
        if (growth > RSS_BOUND_BYTES) {
          report.failures.push(`${where}: host RSS grew by ${growth} bytes`);
          break;
        }
      }
      await closeWorld(world);
      const seconds = (performance.now() - started) / 1000;
      report.stats[target] = { iterations: done, perSecond: done / seconds };
      log(`${target}: ${done} iterations, ${(done / seconds).toFixed(1)}/s`);
      if (liveDenoChildren().length > 0) {
        report.failures.push(
          `seed ${options.seed} target ${target}: children left`,
        );
      }
    }
  } finally {
    globalThis.removeEventListener("unhandledrejection", onRejection);
    globalThis.removeEventListener("error", onError);
  }
  log(`peak host RSS growth ${(report.peakRssGrowth / 2 ** 20).toFixed(0)} MB`);
  return report;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      seed: { type: "string" },
      iterations: { type: "string", default: "1000000" },
      seconds: { type: "string", default: "60" },
      targets: { type: "string", default: TARGETS.join(",") },
      only: { type: "string" },
      json: { type: "boolean" },
    },
  });
  const seed = values.seed === undefined
    ? Math.floor(Math.random() * 2 ** 31)
    : Number(values.seed);
  console.log(`fuzz seed ${seed}`);
  const report = await runFuzz({
    seed,
    iterations: Number(values.iterations),
    seconds: Number(values.seconds),
    targets: values.targets.split(",") as Target[],
    only: values.only === undefined ? undefined : Number(values.only),
  });
  if (values.json) {
    // The suite's fuzz test reads this last line (a process of its own, so
    // its RSS is the fuzzer's alone, not shared with parallel test modules).
    await assertNoDenoChildren("after the fuzz run").catch((error) => {
      report.failures.push(String(error));
    });
    console.log(JSON.stringify(report));
    Deno.exit(0);
  }
  if (report.failures.length) {
    console.log(
      `${report.failures.length} failures; replay one with --seed ${seed} --targets T --only I`,
    );
    Deno.exit(1);
  }
}
