/**
 * Host-side preparation shared by every sandbox in a process: finding and
 * checking Deno, locating Pyodide in Deno's npm cache, the cache folder, the
 * runner file and the verified base snapshot.
 *
 * @module
 */

import { join } from "node:path";
import { PYODIDE_VERSION } from "./runner.ts";
import { fnv, toHex } from "./_bytes.ts";
import { writeFileAtomicSync } from "./_fs.ts";
import { materializeRunnerFiles, runnerFile } from "./_runner_copy.ts";
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

function unusableCacheDir(cacheDir: string, error: unknown): Error {
  return new Error(
    `Cannot use the cache folder: ${cacheDir} is not a writable directory (${
      error instanceof Error ? error.message : String(error)
    }); pass another \`cacheDir\``,
    { cause: error },
  );
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
    throw unusableCacheDir(cacheDir, error);
  }
  checkCacheDirOwner(cacheDir, stat);
  try {
    const probe = join(cacheDir, `.probe-${crypto.randomUUID()}`);
    Deno.writeTextFileSync(probe, "");
    Deno.removeSync(probe);
  } catch (error) {
    throw unusableCacheDir(cacheDir, error);
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
 * `deno info` on the Pyodide package: prints where Deno's npm cache holds
 * it, downloading it first when it is not there.
 */
export const PYODIDE_INFO_ARGS: readonly string[] = [
  "info",
  "--json",
  "--no-config",
  "--node-modules-dir=none",
  `npm:pyodide@${PYODIDE_VERSION}`,
];

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
  const info = JSON.parse(runDeno(denoPath, [...PYODIDE_INFO_ARGS]));
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

/**
 * Makes sure the runner files a child runs hold this module's runner (see
 * `materializeRunnerFiles` in `_runner_copy.ts`).
 *
 * @param env The environment.
 * @returns Settles when the copy is checked or rewritten.
 */
export function materializeRunner(env: Environment): Promise<void> {
  return materializeRunnerFiles(env.runnerPath);
}
