/**
 * Helpers of the attack battery (`tests/security_*_test.ts`): a Python
 * prelude that runs many attacks in one execution and reports each one, a
 * host fixture with a canary file and a secret environment variable, a
 * loopback server that records every connection, witnesses (other
 * sandboxes) that must stay unaffected (forged session bytes:
 * `_forge_session.ts`).
 *
 * @module
 */

import {
  liveDenoChildren,
  TEST_DENO_PATH,
  withHostRssLock,
} from "./_helpers.ts";
import assert from "node:assert/strict";
import type {
  CodeExecutionResult,
  JsonValue,
  PyodideSandbox,
  PyodideSession,
} from "../mod.ts";

/** What one attack inside a battery did. */
export interface Outcome {
  /** The attack completed without an exception. */
  ok: boolean;
  /** `String(value)` of what it returned (cut at 600 characters). */
  value?: string;
  /** `Type: message` of what it raised (cut at 600 characters). */
  error?: string;
}

/** The report of a battery: one outcome per attack id. */
export type Report = Record<string, Outcome>;

/**
 * Python code that defines `attempt(id, js_source)` (runs the body of an
 * async JavaScript function in the child) and `pyattempt(id, fn)` (runs a
 * Python callable, awaiting it when needed). Both record an {@linkcode
 * Outcome} in `_report`. JavaScript sources see the battery's context as
 * the global `CTX`, and `viaModule(source)` evaluates a module from a
 * `data:` URL, so that its `import()` goes through Deno's own module loader
 * (code run by `js.eval` resolves imports with the Node loader instead).
 */
const PRELUDE = String.raw`
import js as _js, json as _json
_report = {}
def _short(v):
    try:
        s = str(v)
    except BaseException:
        s = "<str failed>"
    return s[:600]
async def attempt(name, src):
    try:
        v = await _js.eval("(async () => {\n" + src + "\n})()")
        _report[name] = {"ok": True, "value": _short(v)}
    except BaseException as e:
        _report[name] = {"ok": False, "error": type(e).__name__ + ": " + _short(e)}
async def pyattempt(name, fn):
    try:
        v = fn()
        if hasattr(v, "__await__"):
            v = await v
        _report[name] = {"ok": True, "value": _short(v)}
    except BaseException as e:
        _report[name] = {"ok": False, "error": type(e).__name__ + ": " + _short(e)}
_js.eval("""
globalThis.CTX = JSON.parse(""" + _json.dumps(_CTX_JSON) + """);
globalThis.viaModule = async (source) => {
  const m = await import("data:application/javascript," + encodeURIComponent(source));
  return await m.default;
};
""")
CTX = _json.loads(_CTX_JSON)
`;

/**
 * Builds the Python source of a battery: the prelude, the attacks, and
 * `_report` as the last expression.
 *
 * @param body Python code calling `attempt` / `pyattempt` (top-level await).
 * @param context JSON-safe values the attacks need (`CTX` in both languages).
 * @returns Python source.
 */
export function batteryCode(
  body: string,
  context: Record<string, JsonValue> = {},
): string {
  return `_CTX_JSON = ${JSON.stringify(JSON.stringify(context))}\n${PRELUDE}\n${
    dedent(body)
  }\n_report\n`;
}

/** Something that runs code: a sandbox or a live session. */
export interface Runner {
  execute(
    code: string,
    options?: { timeoutSeconds?: number },
  ): Promise<CodeExecutionResult>;
}

/**
 * Runs a battery and returns its report; fails when the battery itself did
 * not complete.
 *
 * @param runner The sandbox or session under attack.
 * @param body Python attacks.
 * @param context Values for `CTX`.
 * @param timeoutSeconds Limit of the whole battery.
 * @returns The result and the report.
 */
export async function runBattery(
  runner: Runner,
  body: string,
  context: Record<string, JsonValue> = {},
  timeoutSeconds = 30,
): Promise<{ result: CodeExecutionResult; report: Report }> {
  const result = await runner.execute(batteryCode(body, context), {
    timeoutSeconds,
  });
  assert.equal(
    result.status,
    "success",
    `the battery did not complete: ${
      JSON.stringify(result.error)
    }\n${result.stderr}`,
  );
  if (Deno.env.get("PYSB_SECURITY_DEBUG")) {
    console.log(JSON.stringify(result.result, null, 1));
  }
  return { result, report: result.result as unknown as Report };
}

/**
 * Removes the common leading indentation of a block of code.
 *
 * @param text Indented code.
 * @returns The code without the indentation.
 */
export function dedent(text: string): string {
  const lines = text.replace(/^\n/, "").split("\n");
  const indents = lines.filter((l) => l.trim()).map((l) =>
    l.match(/^ */)![0].length
  );
  const cut = indents.length ? Math.min(...indents) : 0;
  return lines.map((l) => l.slice(cut)).join("\n");
}

/**
 * Asserts that an attack was refused: it raised, and the message matches.
 *
 * @param report The battery's report.
 * @param id The attack.
 * @param pattern What the refusal must say.
 */
export function assertRefused(
  report: Report,
  id: string,
  pattern: RegExp,
): void {
  const outcome = report[id];
  assert.ok(outcome, `attack ${id} did not run`);
  assert.equal(
    outcome.ok,
    false,
    `attack ${id} was NOT refused, it returned: ${outcome.value}`,
  );
  assert.match(outcome.error ?? "", pattern, `attack ${id}`);
}

/**
 * Asserts that an attack was refused by a missing Deno permission.
 *
 * @param report The battery's report.
 * @param id The attack.
 * @param permission The permission Deno must have asked for (`read`, ...).
 */
export function assertDenied(
  report: Report,
  id: string,
  permission: "read" | "write" | "env" | "net" | "run" | "ffi" | "sys",
): void {
  assertRefused(
    report,
    id,
    new RegExp(
      `NotCapable|Requires ${permission} access|requires unscoped --allow-${permission}`,
    ),
  );
  assert.match(
    report[id].error!,
    new RegExp(`${permission} access|--allow-${permission}`),
    `attack ${id} failed for another reason than the ${permission} permission`,
  );
}

/** Files and environment of the host that attacks try to reach. */
export interface HostFixture {
  /** A folder of the host that no sandbox is granted. */
  dir: string;
  /** A file in it with secret content. */
  canaryPath: string;
  /** Its content. */
  canaryText: string;
  /** A JavaScript module in it. */
  modulePath: string;
  /** Name of a host environment variable holding a secret. */
  secretName: string;
  /** Its value. */
  secretValue: string;
  /** Removes the folder and the variable. */
  cleanup(): Promise<void>;
}

/**
 * Creates the host fixture: a private folder with a canary file and a
 * module, and a secret in the host's environment.
 *
 * @returns The fixture.
 */
export async function createHostFixture(): Promise<HostFixture> {
  const dir = await Deno.makeTempDir({ prefix: "pysb-host-" });
  const canaryText = `host-canary-${crypto.randomUUID()}`;
  const canaryPath = `${dir}/canary.txt`;
  await Deno.writeTextFile(canaryPath, canaryText);
  const modulePath = `${dir}/host_module.js`;
  await Deno.writeTextFile(modulePath, `export default "${canaryText}";\n`);
  // One name per fixture: the battery's modules run at once in one process
  // (deno test --parallel) and share its environment.
  const secretName = `PYSB_SECURITY_CANARY_SECRET_${
    crypto.randomUUID().replaceAll("-", "")
  }`;
  const secretValue = `env-secret-${crypto.randomUUID()}`;
  Deno.env.set(secretName, secretValue);
  return {
    dir,
    canaryPath,
    canaryText,
    modulePath,
    secretName,
    secretValue,
    async cleanup() {
      Deno.env.delete(secretName);
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/**
 * Asserts that the host fixture is exactly as created: same files, same
 * content, same secret.
 *
 * @param fixture The fixture.
 */
export async function assertHostIntact(fixture: HostFixture): Promise<void> {
  const names: string[] = [];
  for await (const entry of Deno.readDir(fixture.dir)) names.push(entry.name);
  assert.deepEqual(
    names.sort(),
    ["canary.txt", "host_module.js"],
    "files appeared in or vanished from the host folder",
  );
  assert.equal(
    await Deno.readTextFile(fixture.canaryPath),
    fixture.canaryText,
    "the host canary file was changed",
  );
  assert.equal(Deno.env.get(fixture.secretName), fixture.secretValue);
}

/**
 * Asserts that nothing a sandbox returned contains a host secret.
 *
 * @param result A result.
 * @param secrets Values that must not appear.
 */
export function assertNoLeak(
  result: CodeExecutionResult,
  secrets: string[],
): void {
  const text = JSON.stringify(result);
  for (const secret of secrets) {
    assert.ok(!text.includes(secret), `a host secret leaked: ${secret}`);
  }
}

/**
 * Opens a witness: another live session of the sandbox holding state, which
 * attacks must not disturb.
 *
 * @param sandbox The sandbox.
 * @returns The session (state `witness = 41`).
 */
export async function openWitness(
  sandbox: PyodideSandbox,
): Promise<PyodideSession> {
  const session = await sandbox.openSession();
  const r = await session.execute("witness = 41\nimport js\njs.Deno.pid");
  assert.equal(r.status, "success", r.stderr);
  return session;
}

/**
 * The pid of a witness session's process.
 *
 * @param session The witness.
 * @returns Its pid.
 */
export async function witnessPid(session: PyodideSession): Promise<number> {
  const r = await session.execute("import js\njs.Deno.pid");
  assert.equal(r.status, "success", r.stderr);
  return r.result as number;
}

/**
 * Asserts that a witness session still runs and kept its state.
 *
 * @param session The witness.
 */
export async function assertWitnessAlive(
  session: PyodideSession,
): Promise<void> {
  assert.ok(session.alive, "the witness session was lost");
  const r = await session.execute("witness + 1", { timeoutSeconds: 20 });
  assert.equal(r.status, "success", r.stderr);
  assert.equal(r.result, 42, "the witness session lost its state");
}

/**
 * Asserts that a sandbox (or session) still runs `print(1)` correctly.
 *
 * @param runner The sandbox or session.
 */
export async function assertStillWorks(runner: Runner): Promise<void> {
  const r = await runner.execute("print(1)", { timeoutSeconds: 20 });
  assert.equal(r.status, "success", r.stderr);
  assert.equal(r.stdout, "1\n");
}

/** A loopback TCP server that counts every connection it accepts. */
export interface Recorder {
  /** Its port on 127.0.0.1. */
  port: number;
  /** Connections accepted so far. */
  readonly hits: number;
  /** Stops it. */
  close(): Promise<void>;
}

/**
 * Starts a loopback server that records any connection (HTTP, WebSocket
 * or raw TCP) and answers with a small HTTP response carrying a JavaScript
 * module.
 *
 * @returns The recorder.
 */
export function startRecorder(): Recorder {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const tasks = new Set<Promise<void>>();
  let hits = 0;
  const body = 'export default "from the recorder";\n';
  const response = new TextEncoder().encode(
    `HTTP/1.1 200 OK\r\ncontent-type: application/javascript\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`,
  );
  async function serve(conn: Deno.Conn): Promise<void> {
    try {
      const buf = new Uint8Array(4096);
      await conn.read(buf);
      await conn.write(response);
    } catch {
      // The client went away.
    } finally {
      conns.delete(conn);
      try {
        conn.close();
      } catch {
        // Already closed.
      }
    }
  }
  const accepting = (async () => {
    try {
      for await (const conn of listener) {
        hits++;
        conns.add(conn);
        const task = serve(conn);
        tasks.add(task);
        task.finally(() => tasks.delete(task));
      }
    } catch {
      // Closed.
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    get hits() {
      return hits;
    },
    async close() {
      listener.close();
      for (const conn of conns) {
        try {
          conn.close();
        } catch {
          // Already closed.
        }
      }
      await accepting;
      await Promise.all(tasks);
    },
  };
}

/**
 * A `deno` of this test module's own (a symlink), used as the sandboxes'
 * `denoPath`: under `deno test --parallel` all test modules share one
 * process, and only children started through it are this module's.
 */
export const ATTACK_DENO: string = TEST_DENO_PATH;

/**
 * Waits until no child processes are left, and fails if some remain.
 *
 * @param timeoutMs How long to wait.
 */
export async function assertNoChildren(timeoutMs = 3000): Promise<void> {
  const end = Date.now() + timeoutMs;
  let left = liveDenoChildren();
  while (left.length > 0 && Date.now() < end) {
    await new Promise((r) => setTimeout(r, 50));
    left = liveDenoChildren();
  }
  assert.deepEqual(left, [], "child processes were left behind");
}

/**
 * Total size in bytes of the files below a folder (symlinks not followed).
 *
 * @param dir The folder.
 * @returns The size.
 */
export function folderBytes(dir: string): number {
  let total = 0;
  for (const entry of Deno.readDirSync(dir)) {
    const path = `${dir}/${entry.name}`;
    if (entry.isSymlink) continue;
    if (entry.isDirectory) total += folderBytes(path);
    else {
      try {
        total += Deno.statSync(path).size;
      } catch {
        // Removed meanwhile.
      }
    }
  }
  return total;
}

/**
 * SHA-256 of a file, in hex.
 *
 * @param path The file.
 * @returns The digest.
 */
export async function sha256File(path: string): Promise<string> {
  const digest = await crypto.subtle.digest(
    "SHA-256",
    await Deno.readFile(path),
  );
  return Array.from(
    new Uint8Array(digest),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
}

/**
 * Polls the host's resident memory while a promise runs. The RSS is the
 * whole process's, and `deno test --parallel` runs several test modules in
 * one process: watches are taken one at a time across those modules
 * ({@linkcode withHostRssLock}), so that one module's giant output is not
 * counted against another's cap.
 *
 * @param run The work to watch.
 * @returns Its value and the highest RSS growth seen, in bytes.
 */
export function watchHostRss<T>(
  run: () => Promise<T>,
): Promise<{ value: T; growth: number }> {
  return withHostRssLock(async () => {
    const base = Deno.memoryUsage().rss;
    let peak = base;
    const timer = setInterval(() => {
      peak = Math.max(peak, Deno.memoryUsage().rss);
    }, 20);
    try {
      const value = await run();
      peak = Math.max(peak, Deno.memoryUsage().rss);
      return { value, growth: peak - base };
    } finally {
      clearInterval(timer);
    }
  });
}
