/**
 * Host-side preparation shared by every sandbox in a process: finding and
 * checking Deno, locating Pyodide in Deno's npm cache, the cache folder, the
 * runner file and the verified base snapshot.
 *
 * @module
 */

import { join } from "node:path";
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

/** Pyodide files the child must be able to read to load. */
export const PYODIDE_FILES = [
  "pyodide.asm.wasm",
  "python_stdlib.zip",
  "pyodide-lock.json",
];

const INSTALL_HINT =
  "install it with `npm install -g deno@2.9.6` (or see https://docs.deno.com/runtime/getting_started/installation/), or pass `denoPath`";

const checkedDeno = new Map<string, boolean>();

function isOwnBinary(denoPath: string): boolean {
  try {
    return !Deno.build.standalone && denoPath === Deno.execPath();
  } catch {
    return false; // No read permission to learn it: check by running.
  }
}

/**
 * Picks the `deno` binary the children run.
 *
 * @param denoPath The user's explicit choice.
 * @returns The path or command name to run.
 */
export function resolveDenoPath(denoPath?: string): string {
  if (denoPath !== undefined) return denoPath;
  if (Deno.build.standalone) return "deno";
  return Deno.execPath();
}

/**
 * Checks, once per binary and process, that `deno --version` runs (the
 * binary running this process is known to run and is not started).
 *
 * @param denoPath The binary.
 * @throws {Error} When it cannot be run.
 */
export function checkDeno(denoPath: string): void {
  if (checkedDeno.get(denoPath)) return;
  if (isOwnBinary(denoPath)) {
    // The binary running this code: it can run. Saves a process start.
    checkedDeno.set(denoPath, true);
    return;
  }
  let ok = false;
  let detail = "";
  try {
    const out = new Deno.Command(denoPath, {
      args: ["--version"],
      stdout: "piped",
      stderr: "piped",
      stdin: "null",
    }).outputSync();
    ok = out.success;
    if (!ok) detail = new TextDecoder().decode(out.stderr).trim();
  } catch (error) {
    detail = error instanceof Error ? error.message : String(error);
  }
  if (!ok) {
    throw new Error(
      `Deno is not installed or not in PATH: could not run "${denoPath} --version" (${detail}); ${INSTALL_HINT}`,
    );
  }
  checkedDeno.set(denoPath, true);
}

let privateCacheDir: string | undefined;

/**
 * The default cache folder: `$XDG_CACHE_HOME/pyodide-sandbox`,
 * `~/.cache/pyodide-sandbox` (`~/Library/Caches/...` on macOS,
 * `%LOCALAPPDATA%\pyodide-sandbox` on Windows), or, when no home is known, a
 * private folder made for this process in the system's temporary directory
 * (never a fixed shared path that another user could create first).
 *
 * @returns An absolute path.
 * @throws {Error} When no home is known and no private folder can be made.
 */
export function defaultCacheDir(): string {
  const env = (name: string): string | undefined => {
    try {
      return Deno.env.get(name) || undefined;
    } catch {
      return undefined;
    }
  };
  const xdg = env("XDG_CACHE_HOME");
  if (xdg) return join(xdg, "pyodide-sandbox");
  if (Deno.build.os === "windows") {
    const local = env("LOCALAPPDATA");
    if (local) return join(local, "pyodide-sandbox");
  }
  const home = env("HOME");
  if (home) {
    return Deno.build.os === "darwin"
      ? join(home, "Library", "Caches", "pyodide-sandbox")
      : join(home, ".cache", "pyodide-sandbox");
  }
  if (privateCacheDir === undefined) {
    try {
      privateCacheDir = Deno.makeTempDirSync({ prefix: "pyodide-sandbox-" });
    } catch (error) {
      throw new Error(
        `Cannot choose a cache folder: neither XDG_CACHE_HOME nor HOME is set and no private temporary folder could be made (${
          error instanceof Error ? error.message : String(error)
        }); pass \`cacheDir\``,
        { cause: error },
      );
    }
  }
  return privateCacheDir;
}

/** Everything a child needs from the host, resolved once. */
export interface Environment {
  denoPath: string;
  cacheDir: string;
  /** Folder of the pyodide npm package. */
  pyodideDir: string;
  /** DENO_DIR the children use (npm cache linked, storage disabled). */
  childDenoDir: string;
  /** Absolute path of the runner file. */
  runnerPath: string;
  /** Hash of the runner's files and Pyodide version. */
  runnerHash: string;
}

const environments = new Map<string, Environment>();

/**
 * Resolves (once per process, deno binary and cache folder) the Pyodide
 * folder, the runner file and the children's DENO_DIR. Synchronous so that
 * commands can be built without running anything; the first call in a
 * process may run `deno info` (which downloads Pyodide into Deno's cache if
 * it is missing).
 *
 * @param denoPath The deno binary.
 * @param cacheDir The cache folder.
 * @returns The environment.
 * @throws {Error} When the cache folder is unusable or Pyodide cannot be
 *   located.
 */
export function resolveEnvironment(
  denoPath: string,
  cacheDir: string,
): Environment {
  const key = `${denoPath}\0${cacheDir}\0${denoCacheKey()}`;
  let env = environments.get(key);
  if (!env) {
    ensureCacheDir(cacheDir);
    const { pyodideDir, denoDir } = locatePyodide(denoPath, cacheDir);
    const childDenoDir = linkChildDenoDir(cacheDir, denoDir, denoPath);
    env = {
      denoPath,
      cacheDir,
      pyodideDir,
      childDenoDir,
      ...runnerFile(cacheDir),
    };
    environments.set(key, env);
  }
  return env;
}

/**
 * Computes the SHA-256 of some bytes or text.
 *
 * @param data Input.
 * @returns Lowercase hex.
 */
export async function sha256Hex(data: Uint8Array | string): Promise<string> {
  const bytes = typeof data === "string"
    ? new TextEncoder().encode(data)
    : data;
  const digest = await crypto.subtle.digest(
    "SHA-256",
    bytes as Uint8Array<ArrayBuffer>,
  );
  return toHex(new Uint8Array(digest));
}

/**
 * Formats bytes as lowercase hex.
 *
 * @param bytes Input.
 * @returns Hex text.
 */
export function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Refuses a cache folder that another user could change: the runner, the
 * snapshot and the Deno folder links in it decide what every child runs.
 * Owned by the current user (or root) and not writable by group or others.
 *
 * @param cacheDir The folder.
 * @param stat Its `stat`.
 * @throws {Error} `Unsafe cache folder: ...` naming the folder.
 */
function checkCacheDirOwner(cacheDir: string, stat: Deno.FileInfo): void {
  if (Deno.build.os === "windows" || stat.uid === null) return;
  let uid: number | null = null;
  try {
    uid = Deno.uid();
  } catch {
    // Unknown: the mode check below still applies.
  }
  if (uid !== null && stat.uid !== uid && stat.uid !== 0) {
    throw new Error(
      `Unsafe cache folder: ${cacheDir} is owned by another user (uid ${stat.uid}, this process runs as uid ${uid}); pass a \`cacheDir\` of your own`,
    );
  }
  if (stat.mode !== null && (stat.mode & 0o022) !== 0) {
    throw new Error(
      `Unsafe cache folder: ${cacheDir} is writable by other users (mode ${
        (stat.mode & 0o777).toString(8)
      }); run \`chmod go-w ${cacheDir}\` or pass another \`cacheDir\``,
    );
  }
}

function ensureCacheDir(cacheDir: string): void {
  let stat: Deno.FileInfo;
  try {
    Deno.mkdirSync(cacheDir, { recursive: true, mode: 0o700 });
    stat = Deno.statSync(cacheDir);
    if (!stat.isDirectory) {
      throw new Error("not a directory");
    }
  } catch (error) {
    throw new Error(
      `Cannot use the cache folder: ${cacheDir} is not a writable directory (${
        error instanceof Error ? error.message : String(error)
      }); pass another \`cacheDir\``,
      { cause: error },
    );
  }
  checkCacheDirOwner(cacheDir, stat);
  try {
    const probe = join(cacheDir, `.probe-${crypto.randomUUID()}`);
    Deno.writeTextFileSync(probe, "");
    Deno.removeSync(probe);
  } catch (error) {
    throw new Error(
      `Cannot use the cache folder: ${cacheDir} is not a writable directory (${
        error instanceof Error ? error.message : String(error)
      }); pass another \`cacheDir\``,
      { cause: error },
    );
  }
}

function runDeno(denoPath: string, args: string[]): string {
  const out = new Deno.Command(denoPath, {
    args,
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).outputSync();
  if (!out.success) {
    throw new Error(
      `Failed to prepare Pyodide: "deno ${args.join(" ")}" failed: ${
        new TextDecoder().decode(out.stderr).trim()
      }`,
    );
  }
  return new TextDecoder().decode(out.stdout);
}

/**
 * What decides which Deno cache a `deno` started by this process uses: the
 * variables Deno reads to place `DENO_DIR`. Hosts that differ in it may use
 * different npm caches, so records and child folders are kept apart.
 */
function denoCacheKey(): string {
  const names = ["DENO_DIR", "XDG_CACHE_HOME", "HOME", "LOCALAPPDATA"];
  return names.map((name) => {
    try {
      // Queried first: reading an ungranted variable would prompt.
      const state = Deno.permissions.querySync({ name: "env", variable: name });
      return state.state === "granted" ? Deno.env.get(name) ?? "" : "?";
    } catch {
      return "?";
    }
  }).join("\0");
}

function locatePyodide(
  denoPath: string,
  cacheDir: string,
): { pyodideDir: string; denoDir: string } {
  const cacheKey = denoCacheKey();
  const record = join(
    cacheDir,
    `locations-${PYODIDE_VERSION}-${fnv(`${denoPath}\0${cacheKey}`)}.json`,
  );
  try {
    const saved = JSON.parse(Deno.readTextFileSync(record));
    if (saved.denoPath === denoPath && saved.cacheKey === cacheKey) {
      for (const file of PYODIDE_FILES) {
        Deno.statSync(join(saved.pyodideDir, file));
      }
      return saved;
    }
  } catch {
    // Look it up again.
  }
  const info = JSON.parse(runDeno(denoPath, [
    "info",
    "--json",
    "--no-config",
    "--node-modules-dir=none",
    `npm:pyodide@${PYODIDE_VERSION}`,
  ]));
  const pkg = info.npmPackages?.[`pyodide@${PYODIDE_VERSION}`];
  if (!pkg?.localPath) {
    throw new Error(
      `Failed to prepare Pyodide: npm:pyodide@${PYODIDE_VERSION} is not in Deno's cache and could not be downloaded`,
    );
  }
  const general = JSON.parse(runDeno(denoPath, ["info", "--json"]));
  const found = {
    denoPath,
    cacheKey,
    pyodideDir: pkg.localPath as string,
    denoDir: general.denoDir as string,
  };
  for (const file of PYODIDE_FILES) {
    Deno.statSync(join(found.pyodideDir, file));
  }
  writeFileAtomicSync(record, new TextEncoder().encode(JSON.stringify(found)));
  return found;
}

/**
 * Writes a file through a temporary sibling and a rename, so concurrent
 * writers and readers never see a half-written file.
 *
 * @param path Destination.
 * @param data Contents.
 */
export function writeFileAtomicSync(path: string, data: Uint8Array): void {
  const tmp = `${path}.${crypto.randomUUID()}.tmp`;
  Deno.writeFileSync(tmp, data, { mode: 0o600 });
  Deno.renameSync(tmp, path);
}

function linkChildDenoDir(
  cacheDir: string,
  denoDir: string,
  denoPath: string,
): string {
  // The children get a DENO_DIR of their own: the npm cache is linked in
  // (read-only for them: they have no write grant), while web storage
  // (localStorage, caches) points below a regular file, so untrusted code
  // cannot use it to fill the disk. One folder per Deno cache and binary
  // (deno-dir/<hash>): hosts with another DENO_DIR or deno sharing this
  // cacheDir get their own, instead of re-pointing each other's npm link.
  // Keyed by real paths, so links to one binary share a folder.
  const real = (path: string): string => {
    try {
      return Deno.realPathSync(path);
    } catch {
      return path; // Not there yet, or a command name: as given.
    }
  };
  const key = `${real(join(denoDir, "npm"))}\0${real(denoPath)}`;
  const parent = join(cacheDir, "deno-dir");
  const dir = join(parent, fnv(key));
  for (const path of [parent, dir]) {
    try {
      // A damaged cache (a file or link where a folder belongs) is rebuilt.
      if (!Deno.lstatSync(path).isDirectory) Deno.removeSync(path);
    } catch {
      // Missing: created below.
    }
    Deno.mkdirSync(path, { recursive: true, mode: 0o700 });
  }
  const links: [string, string][] = [
    ["npm", join(denoDir, "npm")],
    ["location_data", "/dev/null/pyodide-sandbox-no-storage"],
  ];
  for (const [name, target] of links) {
    const path = join(dir, name);
    let current: string | undefined;
    try {
      current = Deno.readLinkSync(path);
    } catch {
      current = undefined;
    }
    if (current === target) continue;
    const tmp = `${path}.${crypto.randomUUID()}.tmp`;
    Deno.symlinkSync(target, tmp);
    Deno.renameSync(tmp, path);
  }
  return dir;
}

const RUNNER_URL = new URL("./runner.ts", import.meta.url);

function runnerFile(
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

function fnv(text: string): string {
  // Two FNV-1a passes with different seeds: a cache key, not a security check.
  let a = 0x811c9dc5;
  let b = 0x01000193 ^ 0x5bd1e995;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193) >>> 0;
    b = Math.imul(b ^ c, 0x5bd1e995) >>> 0;
  }
  return a.toString(16).padStart(8, "0") + b.toString(16).padStart(8, "0");
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
 * @param env The environment.
 */
export async function materializeRunner(env: Environment): Promise<void> {
  if (RUNNER_URL.protocol === "file:") return;
  runnerBytes ??= new Map(
    RUNNER_FILES.map(([name, text]) => [name, new TextEncoder().encode(text)]),
  );
  const dir = env.runnerPath.slice(0, env.runnerPath.lastIndexOf("/"));
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

/**
 * Paths of the Pyodide files a child reads while loading.
 *
 * @param env The environment.
 * @returns Absolute paths.
 */
export function pyodideReadPaths(env: Environment): string[] {
  return PYODIDE_FILES.map((file) => join(env.pyodideDir, file));
}

/**
 * The `deno run` arguments of a child, permission flags included.
 *
 * @param env The environment.
 * @param memoryLimitMb Caps the WebAssembly heap and the JS heap.
 * @param permissionFlags `--allow-*` flags.
 * @returns Arguments after the `deno` binary.
 */
export function childArgs(
  env: Environment,
  memoryLimitMb: number,
  permissionFlags: string[],
): string[] {
  return [
    "run",
    "--no-prompt",
    "--no-config",
    "--no-lock",
    "--cached-only",
    "--no-remote",
    "--node-modules-dir=none",
    `--v8-flags=${
      [
        `--max-old-space-size=${memoryLimitMb}`,
        `--wasm-max-mem-pages=${memoryLimitMb * 16}`,
        // js.eval, Function, constructor.constructor and the like throw:
        // most attacks start with a string of JavaScript (SECURITY.md).
        "--disallow-code-generation-from-strings",
      ].join(",")
    }`,
    ...permissionFlags,
    env.runnerPath,
  ];
}

/**
 * The environment variables of a child: the user's allowed ones plus the
 * runner's own.
 *
 * @param env The environment.
 * @param passed Variables the user allowed.
 * @returns The complete child environment.
 */
export function childEnv(
  env: Environment,
  passed: Record<string, string>,
): Record<string, string> {
  return {
    ...passed,
    DENO_DIR: env.childDenoDir,
    DENO_NO_UPDATE_CHECK: "1",
    NO_COLOR: "1",
  };
}

/**
 * Where the base snapshot of this Pyodide and runner version lives.
 *
 * @param env The environment.
 * @returns An absolute path.
 */
export function snapshotPath(env: Environment): string {
  return join(
    env.cacheDir,
    `snapshot-${PYODIDE_VERSION}-${env.runnerHash}.bin`,
  );
}
