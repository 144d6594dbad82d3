/**
 * The base memory snapshot: built once per Pyodide and runner version by a
 * child that can only read the Pyodide files, stored with its size and
 * sha256, and verified before any child is started from it.
 *
 * @module
 */

import { SandboxChild } from "./_child.ts";
import {
  childArgs,
  childEnv,
  type Environment,
  materializeRunner,
  pyodideReadPaths,
  sha256Hex,
  snapshotPath,
  writeFileAtomicSync,
} from "./_setup.ts";
import { PYODIDE_VERSION } from "./runner.ts";
import { ToParent } from "./_protocol.ts";
import { buildPermissionFlag } from "./permissions.ts";

interface SnapshotRecord {
  pyodideVersion: string;
  runnerHash: string;
  size: number;
  sha256: string;
  createdAt: string;
  buildMs: number;
}

interface Verified {
  size: number;
  mtime: number;
  ino: number | null;
}

const verified = new Map<string, Verified>();
const building = new Map<string, Promise<void>>();

/** How long building the snapshot may take. */
const BUILD_TIMEOUT_MS = 120_000;

function fingerprint(stat: Deno.FileInfo): Verified {
  return {
    size: stat.size,
    mtime: stat.mtime?.getTime() ?? 0,
    ino: stat.ino,
  };
}

function same(a: Verified, b: Verified): boolean {
  return a.size === b.size && a.mtime === b.mtime && a.ino === b.ino;
}

/**
 * Hashes a file in 1 MiB pieces with node:crypto: about three times faster
 * than reading the whole snapshot and hashing it with crypto.subtle, which
 * matters because every new host process verifies the snapshot once.
 */
async function sha256File(path: string): Promise<string> {
  // Imported here: loading node:crypto costs a host ~8 ms, paid only by a
  // process that verifies a snapshot.
  const { createHash } = await import("node:crypto");
  const hash = createHash("sha256");
  const buffer = new Uint8Array(1 << 20);
  using file = await Deno.open(path);
  for (;;) {
    const n = await file.read(buffer);
    if (n === null) break;
    hash.update(buffer.subarray(0, n));
  }
  return hash.digest("hex");
}

async function verify(path: string): Promise<boolean> {
  try {
    const record = JSON.parse(
      await Deno.readTextFile(`${path}.json`),
    ) as SnapshotRecord;
    const stat = await Deno.stat(path);
    if (record.pyodideVersion !== PYODIDE_VERSION) return false;
    if (stat.size !== record.size) return false;
    if ((await sha256File(path)) !== record.sha256) return false;
    verified.set(path, fingerprint(stat));
    return true;
  } catch {
    return false;
  }
}

async function build(env: Environment, path: string): Promise<void> {
  const started = performance.now();
  const read = buildPermissionFlag("read", pyodideReadPaths(env))!;
  const child = await SandboxChild.spawn({
    denoPath: env.denoPath,
    args: childArgs(env, 1024, [read]),
    env: childEnv(env, {}),
    rssLimitBytes: 0,
  }, { mode: "snapshot", oneShot: true });
  const timer = setTimeout(() => child.kill("timeout"), BUILD_TIMEOUT_MS);
  let frame;
  try {
    frame = await child.ready;
  } finally {
    clearTimeout(timer);
    child.close();
  }
  if (frame.type !== ToParent.snapshot || frame.bin.length === 0) {
    throw new Error(
      `Failed to build the Pyodide snapshot: ${child.describeExit()}`,
    );
  }
  const record: SnapshotRecord = {
    pyodideVersion: PYODIDE_VERSION,
    runnerHash: env.runnerHash,
    size: frame.bin.length,
    sha256: await sha256Hex(frame.bin),
    createdAt: new Date().toISOString(),
    buildMs: Math.round(performance.now() - started),
  };
  // Data first, then the record: a reader that sees a new file with an old
  // record fails verification and rebuilds; it never loads unverified bytes.
  writeFileAtomicSync(path, frame.bin);
  writeFileAtomicSync(
    `${path}.json`,
    new TextEncoder().encode(JSON.stringify(record)),
  );
  const stat = await Deno.stat(path);
  verified.set(path, fingerprint(stat));
  await pruneOldSnapshots(env.cacheDir, path);
}

/** Snapshots of other runner versions older than this are removed. */
const STALE_SNAPSHOT_MS = 24 * 60 * 60 * 1000;

/**
 * Removes snapshots (and their records) of other Pyodide or runner versions
 * that have not been touched for a day: each is 30 MB, and another process
 * with an older version of this module may still be using a recent one.
 */
async function pruneOldSnapshots(
  cacheDir: string,
  keep: string,
): Promise<void> {
  try {
    for await (const entry of Deno.readDir(cacheDir)) {
      if (!/^snapshot-.*\.bin$/.test(entry.name)) continue;
      const path = `${cacheDir}/${entry.name}`;
      if (path === keep) continue;
      const stat = await Deno.stat(path);
      const age = Date.now() - (stat.mtime?.getTime() ?? Date.now());
      if (age < STALE_SNAPSHOT_MS) continue;
      await Deno.remove(path).catch(() => {});
      await Deno.remove(`${path}.json`).catch(() => {});
    }
  } catch {
    // Pruning is best effort.
  }
}

/**
 * Forgets that a snapshot was verified, so that the next
 * {@linkcode ensureSnapshot} hashes it again and rebuilds it when it is
 * corrupted (a change that keeps size and mtime, such as bit rot, is not
 * seen by the fingerprint). Called when a child fails to start from it.
 *
 * @param path The snapshot path.
 */
export function distrustSnapshot(path: string): void {
  verified.delete(path);
}

/**
 * Returns the path of a verified base snapshot, building it when it is
 * missing, corrupted or from another version. Verification (sha256) happens
 * once per process and again whenever the file changes. The runner file is
 * checked first ({@linkcode materializeRunner}).
 *
 * @param env The environment.
 * @returns The snapshot path.
 * @throws {Error} When the snapshot cannot be built.
 */
export async function ensureSnapshot(env: Environment): Promise<string> {
  // Called before every spawn batch: the runner copy is checked here too.
  await materializeRunner(env);
  const path = snapshotPath(env);
  const known = verified.get(path);
  if (known) {
    try {
      if (same(known, fingerprint(await Deno.stat(path)))) return path;
    } catch {
      // Gone: verify or rebuild below.
    }
    verified.delete(path);
  }
  let pending = building.get(path);
  if (!pending) {
    pending = (async () => {
      if (!(await verify(path))) await build(env, path);
    })();
    building.set(path, pending);
    pending.finally(() => building.delete(path)).catch(() => {});
  }
  await pending;
  return path;
}
