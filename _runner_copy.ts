/**
 * The files a child runs: `runner.ts` and the local files it imports, their
 * sources taken through the module graph, the hash of the set (part of the
 * snapshot key) and the verified copy in the cache folder that a child runs
 * when this module was imported from a registry.
 *
 * @module
 */

import { join } from "node:path";
import { fnv } from "./_bytes.ts";
import { writeFileAtomicSync } from "./_fs.ts";
import { PYODIDE_VERSION } from "./runner.ts";
// The runner's own bytes, through the module graph (checked by the registry's
// integrity data when imported from one): what a materialized copy in the
// cache folder must hold before a child runs it. One import per file of
// RUNNER_FILES.
import RUNNER_SOURCE from "./runner.ts" with { type: "text" };
import PROTOCOL_SOURCE from "./_protocol.ts" with { type: "text" };
import SETUP_PY_SOURCE from "./_runner_setup_py.ts" with { type: "text" };
import CAPTURED_SOURCE from "./_runner_captured.ts" with { type: "text" };
import CHANNEL_SOURCE from "./_runner_channel.ts" with { type: "text" };
import FILES_SOURCE from "./_runner_files.ts" with { type: "text" };
import LOCKDOWN_SOURCE from "./_runner_lockdown.ts" with { type: "text" };
import HTTP_SOURCE from "./_runner_http.ts" with { type: "text" };
import STATE_SOURCE from "./_runner_state.ts" with { type: "text" };
import DIFF_SOURCE from "./_state_diff.ts" with { type: "text" };
import PREPARE_SOURCE from "./_runner_prepare.ts" with { type: "text" };

/**
 * The files the child runs, by name, with their sources: `runner.ts` and
 * the local files it imports (the child runs with `--no-config`, so it may
 * import only these, by relative path).
 */
const RUNNER_FILES: readonly (readonly [string, string])[] = [
  ["runner.ts", RUNNER_SOURCE],
  ["_protocol.ts", PROTOCOL_SOURCE],
  ["_runner_setup_py.ts", SETUP_PY_SOURCE],
  ["_runner_captured.ts", CAPTURED_SOURCE],
  ["_runner_channel.ts", CHANNEL_SOURCE],
  ["_runner_files.ts", FILES_SOURCE],
  ["_runner_lockdown.ts", LOCKDOWN_SOURCE],
  ["_runner_http.ts", HTTP_SOURCE],
  ["_runner_state.ts", STATE_SOURCE],
  ["_state_diff.ts", DIFF_SOURCE],
  ["_runner_prepare.ts", PREPARE_SOURCE],
];

/**
 * The names of the files the child runs (`runner.ts` first), copied
 * together into the cache folder when the module comes from a registry.
 *
 * @returns File names relative to this module.
 */
export function runnerFileNames(): string[] {
  return RUNNER_FILES.map(([name]) => name);
}

const RUNNER_URL = new URL("./runner.ts", import.meta.url);

/**
 * Where the child's `runner.ts` is and the hash of the runner set.
 *
 * @param cacheDir The cache folder (used when imported from a registry).
 * @returns The runner path and the set's hash.
 */
export function runnerFile(
  cacheDir: string,
): { runnerPath: string; runnerHash: string } {
  if (RUNNER_URL.protocol === "file:") {
    // The files on disk are what the child runs (and may differ from the
    // imported text while someone edits them): hash those.
    const dir = decodeURIComponent(new URL(".", RUNNER_URL).pathname);
    const sources = RUNNER_FILES.map(([name]) =>
      [name, Deno.readTextFileSync(join(dir, name))] as const
    );
    return {
      runnerPath: decodeURIComponent(RUNNER_URL.pathname),
      runnerHash: setHash(sources),
    };
  }
  // Imported from a registry: the child runs with --no-remote and gets a
  // local copy of the sources this module imported, in a folder of their
  // own, written and checked by materializeRunner().
  const runnerHash = setHash(RUNNER_FILES);
  return {
    runnerPath: join(cacheDir, `runner-${runnerHash}`, "runner.ts"),
    runnerHash,
  };
}

function setHash(files: readonly (readonly [string, string])[]): string {
  return fnv(
    [PYODIDE_VERSION, ...files.map(([name, text]) => `${name}\n${text}`)]
      .join("\n\0"),
  );
}

let runnerBytes: Map<string, Uint8Array> | undefined;

/** Fingerprints of runner copies whose bytes were compared, by path. */
const checkedRunners = new Map<string, string>();

function runnerFingerprint(stat: Deno.FileInfo): string {
  // ctime too: a rewrite that restores size and mtime still changes it.
  return [stat.size, stat.mtime?.getTime(), stat.ctime?.getTime(), stat.ino]
    .join(":") + (stat.isFile ? "" : ":not-a-file");
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Makes sure the runner files a child runs hold this module's runner. When
 * the module was imported from a registry, the runner is a folder of copies
 * in the cache folder (`runner-<hash>/`, one per file of the set): each
 * file's bytes are compared with the source this module imported once per
 * process and again whenever the file's size, mtime or inode changes (so
 * call it before every spawn batch), and it is rewritten atomically when it
 * is missing or differs: a planted runner file never runs.
 *
 * @param runnerPath Where the child's `runner.ts` is.
 */
export async function materializeRunnerFiles(
  runnerPath: string,
): Promise<void> {
  if (RUNNER_URL.protocol === "file:") return;
  runnerBytes ??= new Map(
    RUNNER_FILES.map(([name, text]) => [name, new TextEncoder().encode(text)]),
  );
  const dir = runnerPath.slice(0, runnerPath.lastIndexOf("/"));
  await ensureRunnerDir(dir);
  for (const [name, bytes] of runnerBytes) {
    await materializeFile(join(dir, name), bytes);
  }
}

/** The set's folder: a real folder, never a link or a file planted there. */
async function ensureRunnerDir(dir: string): Promise<void> {
  let stat: Deno.FileInfo | undefined;
  try {
    stat = await Deno.lstat(dir);
  } catch {
    // Missing: created below.
  }
  if (stat?.isDirectory) return;
  if (stat) await Deno.remove(dir, { recursive: true });
  try {
    await Deno.mkdir(dir, { mode: 0o700 });
  } catch (error) {
    // Another host made it at the same time.
    if (!(error instanceof Deno.errors.AlreadyExists)) throw error;
  }
}

async function materializeFile(path: string, bytes: Uint8Array): Promise<void> {
  let stat: Deno.FileInfo | undefined;
  try {
    stat = await Deno.lstat(path);
  } catch {
    // Missing: written below.
  }
  if (stat && checkedRunners.get(path) === runnerFingerprint(stat)) return;
  checkedRunners.delete(path);
  let current: Uint8Array | undefined;
  if (stat?.isFile) {
    try {
      current = await Deno.readFile(path);
    } catch {
      // Unreadable: rewritten below.
    }
  }
  if (!current || !sameBytes(current, bytes)) {
    if (stat && !stat.isFile) await Deno.remove(path, { recursive: true });
    writeFileAtomicSync(path, bytes);
  }
  checkedRunners.set(path, runnerFingerprint(await Deno.lstat(path)));
}
