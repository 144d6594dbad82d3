/**
 * Sandboxes whose children are FULLY COMPROMISED: `EvilSandbox` runs the
 * real host code (pool, queue, runCall, host calls, resultFromOutcome,
 * sessions) against `tests/_fixtures/evil_child.ts`, which sends whatever
 * frames a test scripts. Also helpers to build such scripts and to measure
 * the host's memory.
 *
 * @module
 */

import assert from "node:assert/strict";
import { dirname } from "node:path";
import { fileURLToPath as fromFileUrl } from "node:url";
import {
  type CodeExecutionResult,
  PyodideSandbox,
  type SandboxOptions,
} from "../mod.ts";
import type { ChildSpec } from "../_child.ts";
import type { Bin, Op } from "./_fixtures/evil_child.ts";
import {
  assertNoDenoChildren,
  assertSuccess,
  TEST_DENO_PATH,
} from "./_helpers.ts";

export type { Bin, Op };

/**
 * The cache folder of this test module's sandboxes and hosts: its own, so no
 * other host's snapshot or Deno folder is shared, and its snapshot is built
 * here, before any test times a call.
 */
export const EVIL_CACHE_DIR: string = Deno.env.get("PSB_EVIL_CACHE_DIR") ??
  await Deno.makeTempDir({ prefix: "pysb-evil-cache-" });
if (!Deno.env.get("PSB_EVIL_CACHE_DIR")) {
  globalThis.addEventListener("unload", () => {
    try {
      Deno.removeSync(EVIL_CACHE_DIR, { recursive: true });
    } catch {
      // Already gone.
    }
  });
  const builder = new PyodideSandbox({
    cacheDir: EVIL_CACHE_DIR,
    poolSize: 0,
    denoPath: TEST_DENO_PATH,
  });
  await builder.warmup();
  await builder.close();
}

/** Absolute path of the compromised child program. */
export const EVIL_CHILD: string = fromFileUrl(
  new URL("./_fixtures/evil_child.ts", import.meta.url),
);

/** Deno flags of the compromised child: it may read its own folder only. */
export function evilChildArgs(): string[] {
  return [
    "run",
    "--no-prompt",
    "--no-config",
    "--no-lock",
    "--no-remote",
    `--allow-read=${dirname(EVIL_CHILD)}`,
    EVIL_CHILD,
  ];
}

/**
 * A {@linkcode PyodideSandbox} whose children run `evil_child.ts` instead of
 * the runner: everything on the host side is the real code.
 */
export class EvilSandbox extends PyodideSandbox {
  /**
   * The real child spec (binary, environment, RSS cap) with the compromised
   * program in place of the runner.
   *
   * @param memoryLimitMb The memory limit.
   * @returns The spec.
   */
  protected override childSpec(memoryLimitMb: number): ChildSpec {
    return { ...super.childSpec(memoryLimitMb), args: evilChildArgs() };
  }
}

/**
 * Creates an {@linkcode EvilSandbox} with no pool, this module's `deno`
 * and short timeouts.
 *
 * @param options Overrides.
 * @returns The sandbox.
 */
export function evilSandbox(options: SandboxOptions = {}): EvilSandbox {
  return new EvilSandbox({
    poolSize: 0,
    denoPath: TEST_DENO_PATH,
    cacheDir: EVIL_CACHE_DIR,
    timeoutSeconds: 10,
    ...options,
  });
}

/**
 * A `denoPath` for {@linkcode SyncPyodideSandbox} (whose worker builds the
 * child spec in another thread, out of reach of a subclass): a shell script
 * that starts the compromised child for `deno run` when `PSB_EVIL=1` reaches
 * the child's environment (pass `allowEnv: ["PSB_EVIL"]` and set it in the
 * host), and the real deno otherwise (`--version`, `deno info`, and the
 * snapshot build, whose environment is cleared).
 *
 * @param dir A folder to create the script in.
 * @returns The script's path.
 */
export function evilDenoPath(dir: string): string {
  const path = `${dir}/evil-deno`;
  const quote = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;
  Deno.writeTextFileSync(
    path,
    [
      "#!/bin/sh",
      `if [ "$PSB_EVIL" = 1 ] && [ "$1" = run ]; then exec ${
        quote(Deno.execPath())
      } ${evilChildArgs().map(quote).join(" ")}; fi`,
      `exec ${quote(Deno.execPath())} "$@"`,
      "",
    ].join("\n"),
  );
  Deno.chmodSync(path, 0o755);
  return path;
}

/**
 * Runs `fn` with an {@linkcode evilSandbox}, then checks that what the
 * hostile child did was contained: the same sandbox still runs an honest
 * call (result `1`), and no child is left once it is closed.
 *
 * @param options Sandbox options over the evil defaults.
 * @param fn The hostile calls.
 */
export async function withEvil(
  options: SandboxOptions,
  fn: (sandbox: EvilSandbox) => Promise<void>,
): Promise<void> {
  const sandbox = evilSandbox(options);
  try {
    await fn(sandbox);
    // Contained: the same sandbox still runs an honest call.
    const after = await sandbox.execute(script(RESULT));
    assertSuccess(after);
    assert.equal(after.result, 1);
  } finally {
    await sandbox.close();
  }
  await assertNoDenoChildren("after the hostile child's calls");
}

/**
 * The `code` that makes the compromised child run these ops.
 *
 * @param ops The ops.
 * @returns The code string.
 */
export function script(...ops: Op[]): string {
  return `script:${JSON.stringify(ops)}`;
}

/**
 * A frame op.
 *
 * @param type Frame type.
 * @param json Header value.
 * @param bin Attachment.
 * @returns The op.
 */
export function frame(
  type: number,
  json: unknown = null,
  bin?: Bin,
): Extract<Op, { op: "frame" }> {
  return { op: "frame", type, json, bin };
}

/** An honest result op: `{ok: true, result: 1}`. */
export const RESULT: Op = { op: "result" };

/** Base64 of bytes. */
export function base64(bytes: Uint8Array): string {
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text);
}

/**
 * A files frame (type 10) from an index value and contents.
 *
 * @param index The index (any JSON value: the child is hostile).
 * @param contents The blobs, concatenated after the index.
 * @returns The op.
 */
export function filesFrame(
  index: unknown,
  ...contents: Uint8Array[]
): Op {
  const text = new TextEncoder().encode(JSON.stringify(index));
  const total = contents.reduce((n, c) => n + c.length, 0);
  const bin = new Uint8Array(4 + text.length + total);
  new DataView(bin.buffer).setUint32(0, text.length);
  bin.set(text, 4);
  let offset = 4 + text.length;
  for (const c of contents) {
    bin.set(c, offset);
    offset += c.length;
  }
  return frame(10, null, { base64: base64(bin) });
}

/**
 * One field of `/proc/self/status`, in bytes.
 *
 * @param field `VmRSS` or `VmHWM`.
 * @returns The value (0 where unknown).
 */
export function selfMemory(field: "VmRSS" | "VmHWM" = "VmRSS"): number {
  try {
    const text = Deno.readTextFileSync("/proc/self/status");
    const match = new RegExp(`${field}:\\s+(\\d+) kB`).exec(text);
    return match ? Number(match[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** The parts of a result the host-subprocess tests compare. */
export interface ResultSummary {
  status: string;
  error?: { kind: string; message: string };
  result: unknown;
  stdout: string;
  stderr: string;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  stdoutLength: number;
  displays: unknown[];
  files: { path: string; size: number; length: number; truncated: boolean }[];
}

/**
 * Summarizes a result (long output cut to 4000 characters).
 *
 * @param r The result.
 * @returns The summary.
 */
export function summarize(r: CodeExecutionResult): ResultSummary {
  const extra = r as CodeExecutionResult & {
    stdoutTruncated?: boolean;
    stderrTruncated?: boolean;
  };
  return {
    status: r.status,
    error: r.error
      ? { kind: r.error.kind, message: r.error.message }
      : undefined,
    result: r.result,
    stdout: r.stdout.slice(0, 4000),
    stderr: r.stderr.slice(0, 4000),
    stdoutTruncated: extra.stdoutTruncated ?? false,
    stderrTruncated: extra.stderrTruncated ?? false,
    stdoutLength: r.stdout.length,
    displays: (r.displays ?? []).map((d) =>
      JSON.stringify(d).length > 200 ? "<large>" : d
    ),
    files: (r.files ?? []).map((f) => ({
      path: f.path,
      size: f.size,
      length: f.content.length,
      truncated: f.truncated,
    })),
  };
}

/** What a host subprocess (tests/_fixtures/evil_host.ts) reported. */
export interface HostReport {
  /** Its exit code (0 unless something killed or ended it). */
  code: number;
  /** It printed `DONE`: it survived to the end. */
  done: boolean;
  results: ResultSummary[];
  thrown: string[];
  /** Growth of its peak RSS during the attack calls, in bytes. */
  growth: number;
  /** Its live descendants at the end. */
  children: number[];
  output: string;
  stderr: string;
}

const EVIL_HOST = fromFileUrl(
  new URL("./_fixtures/evil_host.ts", import.meta.url),
);

/**
 * Runs a host plan in a fresh `deno` process, killed after `seconds`.
 *
 * @param plan The plan (see evil_host.ts).
 * @param seconds Bound on the whole run.
 * @returns What the host reported.
 */
export async function runHost(
  plan: Record<string, unknown>,
  seconds = 120,
): Promise<HostReport> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", EVIL_HOST, JSON.stringify(plan)],
    // The host process shares this module's cache folder (and snapshot).
    env: { PSB_EVIL_CACHE_DIR: EVIL_CACHE_DIR },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), seconds * 1000);
  const out = await child.output();
  clearTimeout(timer);
  const output = new TextDecoder().decode(out.stdout);
  const report: HostReport = {
    code: out.code,
    done: false,
    results: [],
    thrown: [],
    growth: -1,
    children: [],
    output,
    stderr: new TextDecoder().decode(out.stderr).slice(-4000),
  };
  for (const line of output.split("\n")) {
    const [tag, ...rest] = line.split(" ");
    const value = rest.join(" ");
    if (tag === "RESULT") report.results.push(JSON.parse(value));
    else if (tag === "THROWN") report.thrown.push(value);
    else if (tag === "MEM") report.growth = JSON.parse(value).growth;
    else if (tag === "CHILDREN") report.children = JSON.parse(value);
    else if (tag === "DONE") report.done = true;
  }
  return report;
}
