/**
 * Shared helpers for the tests: live `deno` processes under this process
 * (Linux `/proc`), a loopback HTTP server that records its hits, temporary
 * folders, and a Python probe that reports which operations Deno denied.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  type CodeExecutionResult,
  PyodideSandbox,
  type SandboxOptions,
} from "../mod.ts";

/**
 * A temporary folder for this test module, removed when the module's
 * process unloads (a module-wide cache folder: one snapshot build).
 *
 * @param prefix The folder name's prefix.
 * @returns Its path.
 */
export function moduleTempDir(prefix: string): string {
  const dir = Deno.makeTempDirSync({ prefix });
  globalThis.addEventListener("unload", () => {
    try {
      Deno.removeSync(dir, { recursive: true });
    } catch {
      // Already gone.
    }
  });
  return dir;
}

/**
 * A `deno` binary path unique to this test module: a symlink to the running
 * deno. Sandboxes built with it as `denoPath` start children whose argv[0]
 * is this path, so leak checks count only this module's children even when
 * `deno test --parallel` runs other modules in the same process.
 */
export const TEST_DENO_PATH: string = (() => {
  const path = `${moduleTempDir("sandbox-test-deno-")}/deno`;
  Deno.symlinkSync(Deno.execPath(), path);
  return path;
})();

/** One process as seen in `/proc`. */
export interface ProcessInfo {
  /** Its pid. */
  pid: number;
  /** Its parent's pid. */
  ppid: number;
  /** The one-letter state (`R`, `S`, `Z`, ...). */
  state: string;
  /** The executable name (`/proc/<pid>/comm`). */
  comm: string;
  /** Its session id (the pid of the process that called `setsid`). */
  session: number;
}

/**
 * Reads one process from `/proc/<pid>/stat`.
 *
 * @param pid The process.
 * @returns What `/proc` says of it, or `undefined` once it is gone.
 */
export function processInfo(pid: number): ProcessInfo | undefined {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    const open = stat.indexOf("(");
    // The command name may contain spaces and parentheses: split after the
    // last ")".
    const close = stat.lastIndexOf(")");
    const fields = stat.slice(close + 2).split(" ");
    return {
      pid,
      ppid: Number(fields[1]),
      state: fields[0],
      comm: stat.slice(open + 1, close),
      session: Number(fields[3]),
    };
  } catch {
    // The process ended while we looked.
    return undefined;
  }
}

/**
 * Lists every process of the machine as `/proc` shows it, zombies included.
 *
 * @returns The processes.
 */
export function processes(): ProcessInfo[] {
  const all: ProcessInfo[] = [];
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    const info = processInfo(Number(entry.name));
    if (info) all.push(info);
  }
  return all;
}

/**
 * Tells whether a process exists and is not a zombie.
 *
 * @param pid The process.
 * @returns `true` while it lives.
 */
export function isAlive(pid: number): boolean {
  const info = processInfo(pid);
  return info !== undefined && info.state !== "Z";
}

/**
 * A process's command line, its arguments joined by NUL bytes.
 *
 * @param pid The process.
 * @returns The command line, or `undefined` once the process is gone.
 */
export function commandLine(pid: number): string | undefined {
  try {
    return Deno.readTextFileSync(`/proc/${pid}/cmdline`);
  } catch {
    return undefined;
  }
}

/**
 * Lists the live (not zombie) descendants of a process.
 *
 * @param root The ancestor's pid.
 * @returns The descendants, children first.
 */
export function descendants(root: number = Deno.pid): ProcessInfo[] {
  const all = processes();
  const out: ProcessInfo[] = [];
  const parents = new Set([root]);
  let grew = true;
  while (grew) {
    grew = false;
    for (const info of all) {
      if (parents.has(info.ppid) && !parents.has(info.pid)) {
        parents.add(info.pid);
        out.push(info);
        grew = true;
      }
    }
  }
  return out.filter((p) => p.state !== "Z" && p.state !== "X");
}

function argv0(pid: number): string | undefined {
  return commandLine(pid)?.split("\0")[0];
}

/**
 * Pids of all live processes on the machine whose argv[0] is `path`
 * (orphans included: a process whose parent died is no descendant).
 *
 * @param path The argv[0] to look for.
 * @returns The pids.
 */
export function processesStartedAs(path: string): number[] {
  const out: number[] = [];
  for (const info of processes()) {
    if (info.state !== "Z" && argv0(info.pid) === path) out.push(info.pid);
  }
  return out;
}

/**
 * Pids of the live processes below this test process that were started
 * through {@linkcode TEST_DENO_PATH} (this module's sandbox children).
 *
 * @returns The pids.
 */
export function liveDenoChildren(): number[] {
  return descendants()
    .filter((p) => argv0(p.pid) === TEST_DENO_PATH)
    .map((p) => p.pid);
}

/**
 * Describes processes by pid and command line, for failure messages.
 *
 * @param pids The processes.
 * @returns One line per process.
 */
export function describePids(pids: number[]): string {
  return pids.map((pid) => {
    const cmd = commandLine(pid)?.replaceAll("\0", " ").trim();
    return cmd === undefined
      ? `${pid}: (gone)`
      : `${pid}: ${cmd.slice(0, 400)}`;
  }).join("\n");
}

/**
 * Asserts that no `deno` child of this process is alive right now.
 *
 * @param when Described in the failure message.
 */
export function assertNoDenoChildrenNow(when: string): void {
  const left = liveDenoChildren();
  assert.ok(
    left.length === 0,
    `no live deno child ${when}, found:\n${describePids(left)}`,
  );
}

/**
 * Waits until a condition holds.
 *
 * @param what Described in the failure message.
 * @param check The condition.
 * @param seconds How long to wait at most.
 * @throws {assert.AssertionError} When the condition never held.
 */
export async function eventually(
  what: string,
  check: () => boolean | Promise<boolean>,
  seconds = 10,
): Promise<void> {
  const end = performance.now() + seconds * 1000;
  while (performance.now() < end) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.fail(`Timed out after ${seconds} s waiting for: ${what}`);
}

/**
 * Asserts that no `deno` child of this process is alive, giving the kernel
 * a moment to reap what was just killed.
 *
 * @param when Described in the failure message.
 */
export async function assertNoDenoChildren(when: string): Promise<void> {
  const end = performance.now() + 3000;
  while (liveDenoChildren().length > 0 && performance.now() < end) {
    await new Promise((r) => setTimeout(r, 50));
  }
  assertNoDenoChildrenNow(when);
}

/** A loopback HTTP server that records every request. */
export interface RecordingServer {
  /** `http://127.0.0.1:<port>`. */
  url: string;
  /** `127.0.0.1:<port>`, as a `--allow-net` entry. */
  host: string;
  /** Paths of the requests received so far. */
  hits: string[];
  /** Stops the server. */
  close(): Promise<void>;
}

/**
 * Starts a loopback HTTP server on a free port that answers `ok` and records
 * each request's path.
 *
 * @returns The server.
 */
export function startRecordingServer(): RecordingServer {
  return startFileServer(() => "ok");
}

/**
 * Starts a loopback HTTP server on a free port that records each request's
 * path and answers with what `respond` gives for it (404 for `undefined`).
 *
 * @param respond The response or body for a path.
 * @returns The server.
 */
export function startFileServer(
  respond: (path: string) => Response | BodyInit | undefined,
): RecordingServer {
  const hits: string[] = [];
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (request) => {
      const path = new URL(request.url).pathname;
      hits.push(path);
      const body = respond(path);
      if (body === undefined) return new Response("not found", { status: 404 });
      return body instanceof Response ? body : new Response(body);
    },
  );
  const host = `127.0.0.1:${server.addr.port}`;
  return {
    url: `http://${host}`,
    host,
    hits,
    close: () => server.shutdown(),
  };
}

/**
 * Runs a function with a fresh temporary folder, removed afterwards.
 *
 * @param fn Receives the folder's absolute path.
 * @returns What `fn` returns.
 */
export async function withTempDir<T>(
  fn: (dir: string) => Promise<T> | T,
): Promise<T> {
  const dir = await Deno.realPath(
    await Deno.makeTempDir({ prefix: "sandbox_test_" }),
  );
  try {
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/**
 * Python source defining `probe(fn)`, which runs `fn` and reports `"ok: ..."`
 * with its value, `"denied: ..."` when Deno refused the permission, or
 * `"other: ..."` for any other failure. `js` is imported.
 */
export const PROBE_PY = `
import js
def probe(fn):
    try:
        return "ok: " + str(fn())
    except Exception as e:
        text = str(e)
        if "NotCapable" in text or "PermissionDenied" in text or "Requires " in text:
            return "denied: " + text
        return "other: " + type(e).__name__ + ": " + text
async def aprobe(fn):
    try:
        return "ok: " + str(await fn())
    except Exception as e:
        text = str(e)
        if "NotCapable" in text or "PermissionDenied" in text or "Requires " in text:
            return "denied: " + text
        return "other: " + type(e).__name__ + ": " + text
`;

/**
 * Asserts that a probe report says the operation was denied by Deno.
 *
 * @param report The probe's report.
 * @param what Described in the failure message.
 * @param permission The permission Deno must name (`read`, `net`, ...).
 */
export function assertDenied(
  report: unknown,
  what: string,
  permission?: string,
): void {
  assert.equal(typeof report, "string", `${what}: no report`);
  assert.ok(
    (report as string).startsWith("denied: "),
    `${what} should be denied by Deno, got: ${report}`,
  );
  if (permission) {
    assert.ok(
      (report as string).includes(`Requires ${permission} access`),
      `${what} should be denied ${permission} access, got: ${report}`,
    );
  }
}

/**
 * Asserts that a probe report says the operation succeeded.
 *
 * @param report The probe's report.
 * @param what Described in the failure message.
 * @returns The value after `ok: `.
 */
export function assertAllowed(report: unknown, what: string): string {
  assert.equal(typeof report, "string", `${what}: no report`);
  assert.ok(
    (report as string).startsWith("ok: "),
    `${what} should be allowed, got: ${report}`,
  );
  return (report as string).slice(4);
}

/**
 * Runs a test body with a fresh sandbox (no pool, this module's `deno`),
 * always closed afterwards.
 *
 * @param options Sandbox options (override the defaults).
 * @param fn The body.
 */
export async function withSandbox(
  options: SandboxOptions,
  fn: (sandbox: PyodideSandbox) => Promise<void>,
): Promise<void> {
  const sandbox = new PyodideSandbox({
    poolSize: 0,
    denoPath: TEST_DENO_PATH,
    ...options,
  });
  try {
    await fn(sandbox);
  } finally {
    await sandbox.close();
  }
}

/**
 * Asserts a successful result, showing the error and stderr otherwise.
 *
 * @param result The result.
 */
export function assertSuccess(result: CodeExecutionResult): void {
  assert.equal(
    result.status,
    "success",
    `expected success, got ${JSON.stringify(result.error)}\n${result.stderr}`,
  );
  assert.equal(result.error, undefined);
}

/**
 * Asserts an error result of the given kind (and Python type), with no
 * result value.
 *
 * @param result The result.
 * @param kind The error's kind.
 * @param type The Python exception's type, when it matters.
 */
export function assertError(
  result: CodeExecutionResult,
  kind: string,
  type?: string,
): void {
  assert.equal(result.status, "error", `expected an error: ${result.stdout}`);
  assert.ok(result.error, "error details");
  assert.equal(result.error.kind, kind, JSON.stringify(result.error));
  if (type !== undefined) assert.equal(result.error.type, type);
  assert.equal(result.result, null);
}

/**
 * Runs `fn` while no other test module of this process measures the
 * process's resident memory. `deno test --parallel` runs several test
 * modules in one process, whose RSS they all share: a check of the host's
 * RSS growth holds this lock (a file named for this process, removed by a
 * later run once the process has ended) so that another module's giant
 * output or memory bomb is not counted against it.
 *
 * @param fn The measured work.
 * @returns What `fn` returns.
 */
export async function withHostRssLock<T>(fn: () => Promise<T>): Promise<T> {
  const dir = `${Deno.env.get("TMPDIR") ?? "/tmp"}/pysb-host-rss-locks`;
  await Deno.mkdir(dir, { recursive: true });
  // The lock files of test processes that ended are litter.
  for (const entry of Deno.readDirSync(dir)) {
    if (/^\d+$/.test(entry.name) && !isAlive(Number(entry.name))) {
      await Deno.remove(`${dir}/${entry.name}`).catch(() => {});
    }
  }
  const lock = await Deno.open(`${dir}/${Deno.pid}`, {
    read: true,
    write: true,
    create: true,
  });
  try {
    await lock.lock(true);
    return await fn();
  } finally {
    lock.close();
  }
}
