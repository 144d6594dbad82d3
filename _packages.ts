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

import { join } from "node:path";
import { sha256Hex } from "./_setup.ts";

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
  /** Base URLs of indexes serving `pyodide-lock.json` and wheels. */
  packageIndexUrls: string[];
}

/** One installable wheel. */
export interface Wheel {
  name: string;
  version: string;
  fileName: string;
  data: Uint8Array;
}

interface Entry {
  name: string;
  version: string;
  fileName: string;
  imports: string[];
  depends: string[];
  sha256?: string;
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

/** Reads the entry names and single files of a zip archive (a wheel). */
class ZipReader {
  #data: Uint8Array;
  #view: DataView;
  entries = new Map<
    string,
    { offset: number; size: number; method: number; compressed: number }
  >();

  constructor(data: Uint8Array) {
    this.#data = data;
    this.#view = new DataView(data.buffer, data.byteOffset, data.length);
    let eocd = -1;
    for (let i = data.length - 22; i >= Math.max(0, data.length - 65557); i--) {
      if (this.#view.getUint32(i, true) === 0x06054b50) {
        eocd = i;
        break;
      }
    }
    if (eocd < 0) throw new Error("not a zip archive");
    const count = this.#view.getUint16(eocd + 10, true);
    let p = this.#view.getUint32(eocd + 16, true);
    for (let i = 0; i < count; i++) {
      if (this.#view.getUint32(p, true) !== 0x02014b50) {
        throw new Error("corrupt zip directory");
      }
      const method = this.#view.getUint16(p + 10, true);
      const compressed = this.#view.getUint32(p + 20, true);
      const size = this.#view.getUint32(p + 24, true);
      const nameLength = this.#view.getUint16(p + 28, true);
      const extraLength = this.#view.getUint16(p + 30, true);
      const commentLength = this.#view.getUint16(p + 32, true);
      const offset = this.#view.getUint32(p + 42, true);
      const name = new TextDecoder().decode(
        data.subarray(p + 46, p + 46 + nameLength),
      );
      this.entries.set(name, { offset, size, method, compressed });
      p += 46 + nameLength + extraLength + commentLength;
    }
  }

  async read(name: string): Promise<Uint8Array | undefined> {
    const entry = this.entries.get(name);
    if (!entry) return undefined;
    const v = this.#view;
    const start = entry.offset + 30 + v.getUint16(entry.offset + 26, true) +
      v.getUint16(entry.offset + 28, true);
    const raw = this.#data.subarray(start, start + entry.compressed);
    if (entry.method === 0) return raw.slice();
    if (entry.method !== 8) throw new Error("unsupported zip compression");
    const stream = new Blob([raw as Uint8Array<ArrayBuffer>]).stream()
      .pipeThrough(new DecompressionStream("deflate-raw"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }
}

/**
 * Reads a wheel's distribution name, version, top-level import names and
 * unconditional dependencies.
 *
 * @param fileName The wheel's file name.
 * @param data Its bytes.
 * @returns What the wheel provides and needs.
 */
export async function inspectWheel(
  fileName: string,
  data: Uint8Array,
): Promise<Omit<Entry, "load" | "sha256" | "fileName">> {
  const zip = new ZipReader(data);
  const names = [...zip.entries.keys()];
  const distInfo = names.find((n) => /^[^/]+\.dist-info\/METADATA$/.test(n));
  let name = fileName.split("-")[0];
  let version = fileName.split("-")[1] ?? "0";
  const depends: string[] = [];
  if (distInfo) {
    const meta = new TextDecoder().decode(await zip.read(distInfo));
    for (const line of meta.split(/\r?\n/)) {
      if (line === "") break;
      const [key, ...rest] = line.split(":");
      const value = rest.join(":").trim();
      if (key === "Name") name = value;
      else if (key === "Version") version = value;
      else if (key === "Requires-Dist" && !value.includes(";")) {
        const dep = /^[A-Za-z0-9._-]+/.exec(value)?.[0];
        if (dep) depends.push(dep);
      }
    }
  }
  const imports = new Set<string>();
  const topLevel = names.find((n) =>
    /^[^/]+\.dist-info\/top_level\.txt$/.test(n)
  );
  if (topLevel) {
    for (
      const line of new TextDecoder().decode(await zip.read(topLevel)).split(
        /\s+/,
      )
    ) {
      if (line) imports.add(line);
    }
  }
  if (imports.size === 0) {
    for (const entry of names) {
      const first = entry.split("/")[0];
      if (first.endsWith(".dist-info") || first.endsWith(".data")) continue;
      if (entry.includes("/")) imports.add(first);
      else if (first.endsWith(".py")) imports.add(first.slice(0, -3));
    }
  }
  return { name, version, imports: [...imports], depends };
}

interface LockFile {
  packages: Record<string, {
    name: string;
    version: string;
    file_name: string;
    imports?: string[];
    depends?: string[];
    sha256?: string;
  }>;
}

function entriesFromLock(
  lock: LockFile,
  load: (fileName: string) => Promise<Uint8Array>,
): Entry[] {
  return Object.values(lock.packages ?? {}).map((p) => ({
    name: p.name,
    version: p.version,
    fileName: p.file_name,
    imports: p.imports ?? [],
    depends: p.depends ?? [],
    sha256: p.sha256,
    load: () => load(p.file_name),
  }));
}

async function fetchBytes(url: string): Promise<Uint8Array> {
  const response = await fetch(url);
  if (!response.ok) {
    await response.body?.cancel();
    throw new Error(`HTTP ${response.status} from ${url}`);
  }
  return new Uint8Array(await response.arrayBuffer());
}

/**
 * Resolves import and package names to verified wheels, caching sources and
 * downloads for the life of the sandbox.
 */
export class PackageResolver {
  #sources: PackageSources;
  #loaded?: Promise<Source[]>;
  #cache = new Map<string, Promise<Uint8Array>>();

  /**
   * @param sources Where to look.
   */
  constructor(sources: PackageSources) {
    this.#sources = sources;
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
        const base = url.endsWith("/") ? url : `${url}/`;
        const lockUrl = new URL("pyodide-lock.json", base).href;
        let lock: LockFile;
        try {
          lock = JSON.parse(
            new TextDecoder().decode(await fetchBytes(lockUrl)),
          );
        } catch (error) {
          sources.push({
            label: `${lockUrl} (unreachable: ${(error as Error).message})`,
            entries: [],
            unreachable: true,
          });
          continue;
        }
        sources.push({
          label: lockUrl,
          entries: entriesFromLock(
            lock,
            (file) => fetchBytes(new URL(file, base).href),
          ),
        });
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

  async #dirSource(dir: string): Promise<Source> {
    const read = (file: string) => Deno.readFile(join(dir, file));
    try {
      const lock = JSON.parse(
        await Deno.readTextFile(join(dir, "pyodide-lock.json")),
      ) as LockFile;
      return {
        label: `${dir} (pyodide-lock.json)`,
        entries: entriesFromLock(lock, read),
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
          load: () => read(file.name),
        });
      } catch {
        // Not a readable wheel: leave it out.
      }
    }
    return { label: `${dir} (wheels)`, entries };
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
    const done = new Set(installed.map(normalizeName));
    const order: { entry: Entry; source: Source }[] = [];
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
          order.push({ entry, source });
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
    const wheels: Wheel[] = [];
    for (const { entry, source } of order) {
      const key = `${source.label}\0${entry.fileName}`;
      let pending = this.#cache.get(key);
      if (!pending) {
        pending = entry.load();
        this.#cache.set(key, pending);
        pending.catch(() => this.#cache.delete(key));
      }
      let data: Uint8Array;
      try {
        data = await pending;
      } catch (error) {
        throw new InstallError(
          `Package "${entry.name}" could not be fetched from ${source.label}: ${
            (error as Error).message
          }`,
        );
      }
      if (entry.sha256 && (await sha256Hex(data)) !== entry.sha256) {
        throw new InstallError(
          `Package "${entry.name}" failed its integrity check: ${entry.fileName} does not match the sha256 in ${source.label}`,
        );
      }
      wheels.push({
        name: entry.name,
        version: entry.version,
        fileName: entry.fileName,
        data,
      });
    }
    return wheels;
  }
}
