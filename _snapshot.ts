/**
 * The base memory snapshot: built once per Pyodide and runner version by a
 * child that can only read the Pyodide files, stored with its size and
 * sha256, and verified before any child is started from it.
 *
 * @module
 */

import { join } from "node:path";
import { SandboxChild } from "./_child.ts";
import {
  childArgs,
  childEnv,
  type Environment,
  materializeRunner,
  pyodideReadPaths,
  sha256Hex,
  snapshotPath,
} from "./_setup.ts";
import { writeFileAtomicSync } from "./_fs.ts";
import { PYODIDE_VERSION } from "./runner.ts";
import {
  type ExecRequest,
  INSTALL_CALL,
  ToChild,
  ToParent,
} from "./_protocol.ts";
import { buildPermissionFlag } from "./permissions.ts";
import {
  InstallError,
  normalizeName,
  type PackageResolver,
  type Wheel,
} from "./_packages.ts";
import { sha256Bytes } from "./_wheel_cache.ts";
import { encodeBase64 } from "./_bytes.ts";

interface SnapshotRecord {
  pyodideVersion: string;
  runnerHash: string;
  /** Preloaded snapshots: `name==version sha256` of each wheel. */
  packages?: string[];
  /** Preloaded snapshots: the sha256 of the base they are a diff from. */
  base?: string;
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
/** The sha256 of each base snapshot verified by this process, by path. */
const hashes = new Map<string, string>();
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
 *
 * @param path The file.
 * @returns Its sha256, hex.
 */
export async function sha256File(path: string): Promise<string> {
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
    hashes.set(path, record.sha256);
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
  hashes.set(path, record.sha256);
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
      // In use by this process (base or preloaded): kept.
      if (path === keep || verified.has(path)) continue;
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
  hashes.delete(path);
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

/** Preloaded states of this process, by path, once verified. */
const preloaded = new Map<string, Promise<Uint8Array>>();

/**
 * Python that imports the wanted pure-Python packages (without binding
 * names in the user's namespace) and records the compiled ones, which a
 * pooled child imports when it warms up: the libraries they load live
 * outside the snapshot's memory and would not come back with it.
 */
function importCode(wheels: Wheel[], wanted: string[]): string {
  const names = new Set(wanted.map(normalizeName));
  const now: string[] = [];
  const later: string[] = [];
  for (const wheel of wheels) {
    if (!names.has(normalizeName(wheel.name))) continue;
    for (const name of wheel.imports) {
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) continue;
      (wheel.native ? later : now).push(name);
    }
  }
  return [
    ...now.map((name) => `__import__(${JSON.stringify(name)})`),
    `__import__("_pyodide_sandbox")._preload_imports[:] = ${
      JSON.stringify(later)
    }`,
  ].join("\n");
}

/**
 * The path of the preloaded snapshot for a package set: keyed by the
 * wanted names, each wheel's name, version and sha256, the Pyodide version
 * and the runner.
 */
async function preloadPath(
  env: Environment,
  packages: string[],
  wheels: Wheel[],
): Promise<{ path: string; listed: string[] }> {
  const listed: string[] = [];
  for (const wheel of wheels) {
    listed.push(
      `${wheel.name}==${wheel.version} ${await sha256Bytes(wheel.data)}`,
    );
  }
  const key = await sha256Hex(JSON.stringify({
    pyodide: PYODIDE_VERSION,
    runner: env.runnerHash,
    wanted: [...new Set(packages.map(normalizeName))].sort(),
    wheels: listed,
  }));
  return {
    path: join(
      env.cacheDir,
      `snapshot-${PYODIDE_VERSION}-${env.runnerHash}-preload-${
        key.slice(0, 32)
      }.bin`,
    ),
    listed,
  };
}

/** The install reply for the build child: the wheels, encoded. */
function installReply(wheels: Wheel[], args: unknown[]): string {
  const installed = new Set(
    (Array.isArray(args[2]) ? args[2] : []).map((n) =>
      normalizeName(String(n))
    ),
  );
  return JSON.stringify({
    ok: true,
    value: wheels.filter((w) => !installed.has(normalizeName(w.name))).map((
      w,
    ) => ({
      name: w.name,
      version: w.version,
      fileName: w.fileName,
      installDir: w.installDir,
      // Compiled code is only unpacked: its libraries are loaded when the
      // code imports it, in the process that runs it.
      unpackOnly: w.native,
      data: encodeBase64(w.data),
    })),
  });
}

/** Builds a preloaded state: a child installs and imports, then saves. */
async function buildPreload(
  env: Environment,
  path: string,
  packages: string[],
  wheels: Wheel[],
  listed: string[],
): Promise<Uint8Array> {
  const started = performance.now();
  const { path: base, sha256: baseSha256 } = await ensureBase(env);
  const reads = [...pyodideReadPaths(env), base];
  // The state is saved as a diff from the base, which the child reads
  // again to make it: that grant is kept.
  const child = await SandboxChild.spawn({
    denoPath: env.denoPath,
    args: childArgs(env, 2048, [buildPermissionFlag("read", reads)!]),
    env: childEnv(env, {}),
    rssLimitBytes: 0,
  }, {
    mode: "serve",
    snapshotPath: base,
    oneShot: true,
    revokeRead: pyodideReadPaths(env),
  });
  let outcome;
  try {
    const request: ExecRequest = {
      code: importCode(wheels, packages),
      wantState: true,
      maxFileBytes: 0,
      maxTotalFileBytes: 0,
      install: { packages },
    };
    outcome = await child.call(
      ToChild.exec,
      request,
      undefined,
      ToParent.result,
      {
        deadline: performance.now() + BUILD_TIMEOUT_MS,
        soft: false,
        maxOutputBytes: 64 * 1024,
        maxDisplayBytes: 0,
        onCall: (call) =>
          Promise.resolve(
            call.name === INSTALL_CALL
              ? installReply(wheels, call.args)
              : JSON.stringify({ ok: false, message: "No host functions" }),
          ),
      },
    );
  } finally {
    child.close();
  }
  const header = outcome.frame?.json as
    | { out?: { ok?: boolean; error?: { message?: string } } }
    | undefined;
  if (!outcome.frame || !header?.out?.ok || outcome.frame.bin.length === 0) {
    const why = header?.out?.error?.message ?? outcome.ended ??
      child.describeExit();
    throw new InstallError(
      `The preloaded packages (${
        packages.join(", ")
      }) could not be installed and imported: ${why}${
        outcome.stderr ? `\n${outcome.stderr.slice(-2000)}` : ""
      }`,
    );
  }
  const bin = outcome.frame.bin.slice();
  const record: SnapshotRecord = {
    pyodideVersion: PYODIDE_VERSION,
    runnerHash: env.runnerHash,
    packages: listed,
    base: baseSha256,
    size: bin.length,
    sha256: await sha256Bytes(bin),
    createdAt: new Date().toISOString(),
    buildMs: Math.round(performance.now() - started),
  };
  writeFileAtomicSync(path, bin);
  writeFileAtomicSync(
    `${path}.json`,
    new TextEncoder().encode(JSON.stringify(record)),
  );
  verified.set(path, fingerprint(await Deno.stat(path)));
  await pruneOldSnapshots(env.cacheDir, path);
  return bin;
}

/**
 * Reads a preloaded state whose record matches its size and sha256 and was
 * made against this base (a rebuilt base makes it useless).
 */
async function readVerified(
  path: string,
  base: string,
): Promise<Uint8Array | undefined> {
  try {
    const record = JSON.parse(
      await Deno.readTextFile(`${path}.json`),
    ) as SnapshotRecord;
    if (record.pyodideVersion !== PYODIDE_VERSION) return undefined;
    if (record.base !== base) return undefined;
    const bin = await Deno.readFile(path);
    if (bin.length !== record.size) return undefined;
    if ((await sha256Bytes(bin)) !== record.sha256) return undefined;
    verified.set(path, fingerprint(await Deno.stat(path)));
    return bin;
  } catch {
    return undefined;
  }
}

/**
 * The preloaded state for a package set: the session state of an
 * interpreter started from the base snapshot that installed the packages
 * and imported the pure-Python ones. Built once per package set (wheels by
 * sha256), Pyodide version and runner, stored next to the base snapshot
 * with its size and sha256, verified before use and rebuilt when it does
 * not match; pruned like the base snapshot. Pooled children and sessions
 * start from it.
 *
 * @param env The environment.
 * @param packages The wanted packages (the `preload` option).
 * @param resolver Where their wheels come from (verified, cached).
 * @returns The state bytes (for `ChildInit.state`) and the file's path.
 * @throws {InstallError} When a package cannot be found, fetched, verified,
 *   installed or imported.
 */
export async function ensurePreload(
  env: Environment,
  packages: string[],
  resolver: PackageResolver,
): Promise<{ state: Uint8Array; path: string }> {
  await materializeRunner(env);
  const wheels = await resolver.resolve([], packages, []);
  const { path, listed } = await preloadPath(env, packages, wheels);
  let pending = preloaded.get(path);
  if (!pending) {
    pending = (async () =>
      await readVerified(path, (await ensureBase(env)).sha256) ??
        await buildPreload(env, path, packages, wheels, listed))();
    preloaded.set(path, pending);
    pending.catch(() =>
      preloaded.delete(path)
    );
  }
  return { state: await pending, path };
}

/**
 * Forgets a preloaded state (a child failed to start from it): the next
 * {@linkcode ensurePreload} verifies the file again, rebuilding it when it
 * does not match.
 *
 * @param path The preloaded snapshot's path.
 */
export function distrustPreload(path: string): void {
  preloaded.delete(path);
  verified.delete(path);
}

/** The base snapshot a sandbox's session bytes are made against. */
export interface BaseSnapshot {
  /** Its path. */
  path: string;
  /** Its sha256, hex. */
  sha256: string;
}

/**
 * The verified base snapshot and its sha256 (see {@linkcode ensureSnapshot}).
 *
 * @param env The environment.
 * @returns Path and sha256.
 * @throws {Error} When the snapshot cannot be built.
 */
export async function ensureBase(env: Environment): Promise<BaseSnapshot> {
  let path = await ensureSnapshot(env);
  let sha256 = hashes.get(path);
  if (!sha256) {
    distrustSnapshot(path);
    path = await ensureSnapshot(env);
    sha256 = hashes.get(path);
  }
  if (!sha256) throw new Error("The base snapshot could not be verified");
  return { path, sha256 };
}
