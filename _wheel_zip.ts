/**
 * Reading wheels (zip archives) in the host: entry names, single files, the
 * distribution's name, version, imports and dependencies, and whether it
 * holds compiled code.
 *
 * @module
 */

/** What a wheel provides and needs. */
export interface WheelInfo {
  /** Distribution name. */
  name: string;
  /** Version. */
  version: string;
  /** Top-level import names. */
  imports: string[];
  /** Unconditional dependencies (`Requires-Dist` without a marker). */
  depends: string[];
}

/** Reads the entry names and single files of a zip archive (a wheel). */
export class ZipReader {
  #data: Uint8Array;
  #view: DataView;
  /** Entries by name: where each starts, its sizes and its compression. */
  entries = new Map<
    string,
    { offset: number; size: number; method: number; compressed: number }
  >();

  /**
   * Reads the central directory.
   *
   * @param data The archive.
   * @throws {Error} When it is not a readable zip archive.
   */
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

  /**
   * Extracts one file (stored or deflated).
   *
   * @param name Its name in the archive.
   * @returns Its bytes, or `undefined` when there is no such entry.
   * @throws {Error} On an unsupported compression method.
   */
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
): Promise<WheelInfo> {
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

/** Whether a wheel (zip) holds compiled extension modules. */
export function hasNativeCode(data: Uint8Array): boolean {
  try {
    return [...new ZipReader(data).entries.keys()].some((n) =>
      /\.so(\.[0-9.]+)?$/.test(n)
    );
  } catch {
    return false;
  }
}
