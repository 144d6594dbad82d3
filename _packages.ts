/**
 * Finds the wheels a run needs, in the host: a local folder of wheels (with
 * or without a `pyodide-lock.json`) first, then package indexes that serve a
 * `pyodide-lock.json` (the Pyodide CDN layout). Wheels listed in a lock file
 * are checked against its sha256 before they are handed to the child. The
 * child never gets network or folder access for installs: it asks the host
 * over its channel and receives the wheel bytes.
 *
 * @module
 */

import { concatBytes } from "./_bytes.ts";
import { join } from "node:path";
import { resolveEnvironment } from "./_setup.ts";
import { PYODIDE_VERSION } from "./runner.ts";
import { hasNativeCode, inspectWheel } from "./_wheel_zip.ts";
import {
  DEFAULT_PACKAGE_CACHE_MB,
  sha256Bytes,
  WheelCache,
} from "./_wheel_cache.ts";

export { DEFAULT_PACKAGE_CACHE_MB } from "./_wheel_cache.ts";

/**
 * The default package index: the official Pyodide CDN for exactly the
 * pinned Pyodide version. Its wheels are checked against the
 * `pyodide-lock.json` inside the local `pyodide` npm package, never against
 * a lock fetched from the network.
 */
export const DEFAULT_PACKAGE_INDEX_URL: string =
  `https://cdn.jsdelivr.net/pyodide/v${PYODIDE_VERSION}/full/`;

/**
 * Environment variables that stand in for the default index in tests: the
 * base URL its wheels are fetched from, and the local lock file they are
 * checked against. Read once, when a resolver is made, and only when the
 * host was granted them (never prompted for).
 */
export const TEST_INDEX_ENV = {
  baseUrl: "PYODIDE_SANDBOX_TEST_INDEX_URL",
  lockPath: "PYODIDE_SANDBOX_TEST_INDEX_LOCK",
} as const;

/** How long one host fetch of a wheel or lock may take. */
export const PACKAGE_FETCH_TIMEOUT_MS = 120_000;

/** The largest wheel (or lock) the host fetches, in bytes. */
export const MAX_PACKAGE_BYTES = 40 * 1024 * 1024;

/** The largest total of wheels sent to a child in one install (base64). */
const MAX_INSTALL_BYTES = 46 * 1024 * 1024;

/** A package that could not be installed; becomes kind `"install"`. */
export class InstallError extends Error {
  /**
   * Creates the error.
   *
   * @param message What could not be installed and where it was looked for.
   * @param options Standard error options.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "InstallError";
  }
}

/** Where packages come from. */
export interface PackageSources {
  /** A local folder of wheels. */
  packageDir?: string;
  /**
   * Base URLs of indexes serving `pyodide-lock.json` and wheels;
   * {@linkcode DEFAULT_PACKAGE_INDEX_URL} uses the local lock.
   */
  packageIndexUrls: string[];
  /** The cache folder (wheel cache; with `denoPath`, the local lock). */
  cacheDir?: string;
  /** The deno binary (locates the local `pyodide` package). */
  denoPath?: string;
  /** Size cap of the wheel cache in MiB; 0 turns it off. */
  packageCacheMb?: number;
  /** The local lock file of the default index (else found from Deno). */
  localLockPath?: string;
}

/** Where a wheel is unpacked: site-packages, or the shared libraries. */
export type InstallDir = "site" | "dynlib";

/** One installable wheel. */
export interface Wheel {
  /** Distribution name. */
  name: string;
  /** Version. */
  version: string;
  /** File name (as in its lock or folder). */
  fileName: string;
  /** Where it is unpacked. */
  installDir: InstallDir;
  /** Top-level import names (from the lock, else from the wheel). */
  imports: string[];
  /** Whether it holds compiled code (`.so` files or a shared library). */
  native: boolean;
  /** The verified bytes. */
  data: Uint8Array;
}

interface Entry {
  name: string;
  version: string;
  fileName: string;
  imports: string[];
  depends: string[];
  installDir: InstallDir;
  sha256?: string;
  /** Where the bytes come from (a URL or a path), for messages. */
  where: string;
  /** Loads the bytes (unchecked). */
  load: () => Promise<Uint8Array>;
}

interface Source {
  label: string;
  entries: Entry[];
  /** The index could not be read this time: ask again on the next call. */
  unreachable?: boolean;
}

/**
 * Normalises a distribution name (PEP 503).
 *
 * @param name A name.
 * @returns Its normal form.
 */
export function normalizeName(name: string): string {
  return name.toLowerCase().replace(/[-_.]+/g, "-");
}

interface LockPackage {
  name: string;
  version: string;
  file_name: string;
  imports?: string[];
  depends?: string[];
  sha256?: string;
  install_dir?: string;
}

interface LockFile {
  packages: Record<string, LockPackage>;
}

/** A lock's file name must name a file next to the lock, nothing else. */
const FILE_NAME = /^[A-Za-z0-9][A-Za-z0-9._+-]*$/;

function isStrings(value: unknown): value is string[] {
  return Array.isArray(value) && value.every((v) => typeof v === "string");
}

/** The usable entries of a parsed lock (odd ones are left out). */
function entriesFromLock(
  lock: unknown,
  where: (fileName: string) => string,
  load: (fileName: string) => Promise<Uint8Array>,
): Entry[] {
  const packages = (lock as Partial<LockFile> | null)?.packages;
  if (packages === null || typeof packages !== "object") return [];
  const entries: Entry[] = [];
  for (const p of Object.values(packages)) {
    if (
      p === null || typeof p !== "object" || typeof p.name !== "string" ||
      typeof p.version !== "string" || typeof p.file_name !== "string" ||
      !FILE_NAME.test(p.file_name) || p.file_name.includes("..") ||
      (p.imports !== undefined && !isStrings(p.imports)) ||
      (p.depends !== undefined && !isStrings(p.depends)) ||
      (p.sha256 !== undefined && typeof p.sha256 !== "string")
    ) continue;
    const file = p.file_name;
    entries.push({
      name: p.name,
      version: p.version,
      fileName: file,
      imports: p.imports ?? [],
      depends: p.depends ?? [],
      installDir: p.install_dir === "dynlib" ? "dynlib" : "site",
      sha256: p.sha256?.toLowerCase(),
      where: where(file),
      load: () => load(file),
    });
  }
  return entries;
}

/**
 * Fetches a URL in the host with its own timeout and size cap.
 *
 * @param url The URL.
 * @param timeoutMs How long it may take, body included.
 * @param maxBytes The largest body accepted.
 * @returns The body.
 * @throws {Error} On a network error, a non-2xx status, a timeout or a body
 *   over the cap.
 */
export async function fetchBytes(
  url: string,
  timeoutMs: number = PACKAGE_FETCH_TIMEOUT_MS,
  maxBytes: number = MAX_PACKAGE_BYTES,
): Promise<Uint8Array> {
  const signal = AbortSignal.timeout(timeoutMs);
  const late = () => new Error(`no complete answer within ${timeoutMs} ms`);
  try {
    const response = await fetch(url, { signal, redirect: "follow" });
    if (!response.ok) {
      await response.body?.cancel().catch(() => {});
      throw new Error(`HTTP ${response.status}`);
    }
    const declared = Number(response.headers.get("content-length") ?? NaN);
    if (declared > maxBytes) {
      await response.body?.cancel().catch(() => {});
      throw new Error(`${declared} bytes is over the cap of ${maxBytes}`);
    }
    const chunks: Uint8Array[] = [];
    let total = 0;
    for await (const chunk of response.body ?? []) {
      total += chunk.length;
      if (total > maxBytes) {
        throw new Error(`more than the cap of ${maxBytes} bytes`);
      }
      chunks.push(chunk);
    }
    return concatBytes(chunks);
  } catch (error) {
    if (signal.aborted) throw late();
    throw error;
  }
}

/** Reads one environment variable only if already granted. */
function grantedEnv(name: string): string | undefined {
  try {
    const state = Deno.permissions.querySync({ name: "env", variable: name });
    return state.state === "granted" ? Deno.env.get(name) : undefined;
  } catch {
    return undefined;
  }
}

function withSlash(url: string): string {
  return url.endsWith("/") ? url : `${url}/`;
}

/**
 * Resolves import and package names to verified wheels, caching sources and
 * downloads (on disk, by sha256, when a cache folder is given).
 */
export class PackageResolver {
  #sources: PackageSources;
  #loaded?: Promise<Source[]>;
  #memory = new Map<string, Promise<Uint8Array>>();
  #disk?: WheelCache;
  #testBase?: string;
  #testLock?: string;

  /**
   * Creates a resolver; nothing is read or fetched until a resolve.
   *
   * @param sources Where to look.
   */
  constructor(sources: PackageSources) {
    this.#sources = sources;
    if (sources.cacheDir !== undefined) {
      this.#disk = new WheelCache(
        sources.cacheDir,
        sources.packageCacheMb ?? DEFAULT_PACKAGE_CACHE_MB,
      );
    }
    this.#testBase = grantedEnv(TEST_INDEX_ENV.baseUrl);
    this.#testLock = grantedEnv(TEST_INDEX_ENV.lockPath);
  }

  /** Whether any source is configured. */
  get enabled(): boolean {
    return this.#sources.packageDir !== undefined ||
      this.#sources.packageIndexUrls.length > 0;
  }

  #loadSources(): Promise<Source[]> {
    this.#loaded ??= (async () => {
      const sources: Source[] = [];
      const dir = this.#sources.packageDir;
      if (dir !== undefined) sources.push(await this.#dirSource(dir));
      for (const url of this.#sources.packageIndexUrls) {
        sources.push(
          withSlash(url) === DEFAULT_PACKAGE_INDEX_URL
            ? await this.#defaultSource()
            : await this.#indexSource(url),
        );
      }
      return sources;
    })();
    const loaded = this.#loaded;
    // A failure is not kept for the sandbox's lifetime: an index that was
    // down (or a folder that could not be read) is tried again next time.
    loaded.then(
      (sources) => {
        if (sources.some((s) => s.unreachable) && this.#loaded === loaded) {
          this.#loaded = undefined;
        }
      },
      () => {
        if (this.#loaded === loaded) this.#loaded = undefined;
      },
    );
    return loaded;
  }

  /** The Pyodide distribution: the local lock, wheels from the CDN. */
  async #defaultSource(): Promise<Source> {
    const base = withSlash(this.#testBase ?? DEFAULT_PACKAGE_INDEX_URL);
    let lockPath = this.#testLock ?? this.#sources.localLockPath;
    try {
      if (lockPath === undefined) {
        const { denoPath, cacheDir } = this.#sources;
        if (denoPath === undefined || cacheDir === undefined) {
          throw new Error("no local Pyodide package is known");
        }
        lockPath = join(
          resolveEnvironment(denoPath, cacheDir).pyodideDir,
          "pyodide-lock.json",
        );
      }
      const lock = JSON.parse(await Deno.readTextFile(lockPath));
      return {
        label: `the Pyodide ${PYODIDE_VERSION} distribution (${base})`,
        entries: entriesFromLock(
          lock,
          (file) => new URL(file, base).href,
          (file) => fetchBytes(new URL(file, base).href),
        ),
      };
    } catch (error) {
      throw new InstallError(
        `The local Pyodide lock file could not be read: ${
          lockPath ?? "unknown path"
        } (${(error as Error).message})`,
      );
    }
  }

  /** A user's index: its lock and its wheels from the network. */
  async #indexSource(url: string): Promise<Source> {
    const base = withSlash(url);
    const lockUrl = new URL("pyodide-lock.json", base).href;
    let lock: unknown;
    try {
      lock = JSON.parse(new TextDecoder().decode(await fetchBytes(lockUrl)));
    } catch (error) {
      return {
        label: `${lockUrl} (unreachable: ${(error as Error).message})`,
        entries: [],
        unreachable: true,
      };
    }
    return {
      label: lockUrl,
      entries: entriesFromLock(
        lock,
        (file) => new URL(file, base).href,
        (file) => fetchBytes(new URL(file, base).href),
      ),
    };
  }

  async #dirSource(dir: string): Promise<Source> {
    const read = (file: string) => Deno.readFile(join(dir, file));
    const where = (file: string) => join(dir, file);
    try {
      const lock = JSON.parse(
        await Deno.readTextFile(join(dir, "pyodide-lock.json")),
      );
      return {
        label: `${dir} (pyodide-lock.json)`,
        entries: entriesFromLock(lock, where, read),
      };
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) {
        throw new InstallError(
          `Invalid package folder: ${dir}/pyodide-lock.json could not be read (${
            (error as Error).message
          })`,
        );
      }
    }
    const entries: Entry[] = [];
    let files: Deno.DirEntry[];
    try {
      files = await Array.fromAsync(Deno.readDir(dir));
    } catch (error) {
      throw new InstallError(
        `Invalid package folder: ${dir} cannot be read (${
          (error as Error).message
        })`,
      );
    }
    for (const file of files) {
      if (!file.isFile || !file.name.endsWith(".whl")) continue;
      try {
        const data = await read(file.name);
        const info = await inspectWheel(file.name, data);
        entries.push({
          ...info,
          fileName: file.name,
          installDir: "site",
          where: where(file.name),
          load: () => read(file.name),
        });
      } catch {
        // Not a readable wheel: leave it out.
      }
    }
    return { label: `${dir} (wheels)`, entries };
  }

  /** Finds the entries to install, dependencies first. */
  #plan(
    sources: Source[],
    imports: string[],
    required: string[],
    installed: string[],
  ): Entry[] {
    const done = new Set(installed.map(normalizeName));
    const order: Entry[] = [];
    const visit = (name: string, mustExist: boolean): void => {
      const key = normalizeName(name);
      if (done.has(key)) return;
      for (const source of sources) {
        const entry = source.entries.find((e) =>
          normalizeName(e.name) === key || e.imports.includes(name)
        );
        if (entry) {
          if (done.has(normalizeName(entry.name))) return;
          done.add(normalizeName(entry.name));
          done.add(key);
          for (const dep of entry.depends) visit(dep, true);
          order.push(entry);
          return;
        }
      }
      if (mustExist) {
        throw new InstallError(
          `Package "${name}" was not found: looked in ${
            sources.map((s) => s.label).join(", ") || "no package source"
          }`,
        );
      }
    };
    for (const name of required) visit(name, true);
    for (const name of imports) visit(name, false);
    return order;
  }

  /**
   * The verified bytes of one entry: from the wheel cache when it holds
   * them (checked by hash), else loaded, checked and stored.
   */
  async #bytes(entry: Entry): Promise<Uint8Array> {
    const sha = entry.sha256;
    if (sha && this.#disk) {
      const cached = await this.#disk.get(sha);
      if (cached) return cached;
    }
    const key = `${entry.where}\0${sha ?? ""}`;
    let pending = this.#memory.get(key);
    if (!pending) {
      pending = entry.load();
      this.#memory.set(key, pending);
      // Hashed wheels live in the disk cache, not in memory.
      pending.then(
        () => sha && this.#disk && this.#memory.delete(key),
        () => this.#memory.delete(key),
      );
    }
    let data: Uint8Array;
    try {
      data = await pending;
    } catch (error) {
      throw new InstallError(
        `Package "${entry.name}" could not be fetched from ${entry.where}: ${
          (error as Error).message
        }`,
      );
    }
    if (sha) {
      if ((await sha256Bytes(data)) !== sha) {
        throw new InstallError(
          `Package "${entry.name}" failed its integrity check: ${entry.where} does not match the sha256 in its lock file`,
        );
      }
      await this.#disk?.put(sha, data);
    }
    return data;
  }

  /**
   * Resolves names to wheels, dependencies included.
   *
   * @param imports Import names the code uses (skipped when not found).
   * @param required Package or import names that must be found.
   * @param installed Normalised names already installed in the child.
   * @returns Wheels in install order (dependencies first).
   * @throws {InstallError} When a required package, a dependency or a wheel
   *   cannot be found, fetched, or verified.
   */
  async resolve(
    imports: string[],
    required: string[],
    installed: string[],
  ): Promise<Wheel[]> {
    const sources = await this.#loadSources();
    const order = this.#plan(sources, imports, required, installed);
    const wheels: Wheel[] = [];
    let total = 0;
    for (const entry of order) {
      const data = await this.#bytes(entry);
      total += Math.ceil(data.length / 3) * 4;
      if (total > MAX_INSTALL_BYTES) {
        throw new InstallError(
          `Package "${entry.name}" could not be installed: the packages of one call are over ${MAX_INSTALL_BYTES} bytes once encoded`,
        );
      }
      wheels.push({
        name: entry.name,
        version: entry.version,
        fileName: entry.fileName,
        installDir: entry.installDir,
        imports: entry.imports,
        native: entry.installDir === "dynlib" || hasNativeCode(data),
        data,
      });
    }
    return wheels;
  }
}
