/**
 * Process helpers for tests that count sandbox children, over the `/proc`
 * reader of `../_helpers.ts`.
 *
 * @module
 */

import {
  commandLine as rawCommandLine,
  processes,
  processInfo,
  TEST_DENO_PATH,
} from "../_helpers.ts";

/**
 * Whether a process exists and is not a zombie.
 *
 * @param pid A process id.
 * @returns True while the process runs.
 */
export function isRunning(pid: number): boolean {
  const info = processInfo(pid);
  return info !== undefined && info.state !== "Z" && info.state !== "X";
}

function commandLine(pid: number): string {
  return (rawCommandLine(pid) ?? "").replaceAll("\0", " ");
}

/**
 * Direct children of a process.
 *
 * @param pid A process id.
 * @returns Their pids.
 */
export function childrenOf(pid: number): number[] {
  // The kernel's list of each thread's children: cheaper than reading every
  // process's stat, for the tests that poll this every few milliseconds.
  const out: number[] = [];
  let tasks: Iterable<Deno.DirEntry>;
  try {
    tasks = Deno.readDirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const task of tasks) {
    try {
      const text = Deno.readTextFileSync(
        `/proc/${pid}/task/${task.name}/children`,
      );
      for (const part of text.trim().split(/\s+/)) {
        if (part) out.push(Number(part));
      }
    } catch {
      // The thread ended.
    }
  }
  return out;
}

/**
 * Running sandbox children (`deno run ... runner.ts`) of this process.
 *
 * @returns Their pids, sorted.
 */
export function sandboxChildren(): number[] {
  return childrenOf(Deno.pid)
    .filter((pid) =>
      isRunning(pid) && /runner\.ts/.test(commandLine(pid)) &&
      commandLine(pid).startsWith(`${TEST_DENO} `)
    )
    .sort((a, b) => a - b);
}

/**
 * A `deno` of this test module's own (a symlink): sandboxes built with it as
 * `denoPath` have children that {@linkcode sandboxChildren} can tell apart
 * from other test modules' when `deno test --parallel` runs them in one
 * process.
 */
export const TEST_DENO: string = TEST_DENO_PATH;

/**
 * Running processes of a session (`setsid`), e.g. everything a fixture
 * script started, even after it was reparented.
 *
 * @param sid The session id (the pid of the process that called setsid).
 * @returns Their pids.
 */
export function processesInSession(sid: number): number[] {
  return processes()
    .filter((p) => p.state !== "Z" && p.session === sid)
    .map((p) => p.pid);
}

/**
 * Polls until a condition holds or the bound passes.
 *
 * @param condition Checked every 50 ms.
 * @param ms Upper bound.
 * @returns Whether the condition held.
 */
export async function waitFor(
  condition: () => boolean,
  ms: number,
): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (condition()) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return condition();
}
