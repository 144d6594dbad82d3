/**
 * Builds small pure-Python wheels for tests (a wheel is a zip with a
 * `*.dist-info/` folder), stored uncompressed.
 *
 * @module
 */

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(data: Uint8Array): number {
  let c = 0xffffffff;
  for (const byte of data) c = CRC_TABLE[(c ^ byte) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/**
 * Builds a zip archive.
 *
 * @param files Path to text contents.
 * @returns The archive.
 */
export function buildZip(files: Record<string, string>): Uint8Array {
  const encoder = new TextEncoder();
  const local: Uint8Array[] = [];
  const central: Uint8Array[] = [];
  let offset = 0;
  for (const [name, text] of Object.entries(files)) {
    const nameBytes = encoder.encode(name);
    const data = encoder.encode(text);
    const crc = crc32(data);
    const head = new Uint8Array(30 + nameBytes.length);
    const h = new DataView(head.buffer);
    h.setUint32(0, 0x04034b50, true);
    h.setUint16(4, 20, true);
    h.setUint32(14, crc, true);
    h.setUint32(18, data.length, true);
    h.setUint32(22, data.length, true);
    h.setUint16(26, nameBytes.length, true);
    head.set(nameBytes, 30);
    const dir = new Uint8Array(46 + nameBytes.length);
    const d = new DataView(dir.buffer);
    d.setUint32(0, 0x02014b50, true);
    d.setUint16(4, 20, true);
    d.setUint16(6, 20, true);
    d.setUint32(16, crc, true);
    d.setUint32(20, data.length, true);
    d.setUint32(24, data.length, true);
    d.setUint16(28, nameBytes.length, true);
    d.setUint32(42, offset, true);
    dir.set(nameBytes, 46);
    local.push(head, data);
    central.push(dir);
    offset += head.length + data.length;
  }
  const centralSize = central.reduce((n, c) => n + c.length, 0);
  const end = new Uint8Array(22);
  const e = new DataView(end.buffer);
  e.setUint32(0, 0x06054b50, true);
  e.setUint16(8, central.length, true);
  e.setUint16(10, central.length, true);
  e.setUint32(12, centralSize, true);
  e.setUint32(16, offset, true);
  const parts = [...local, ...central, end];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/**
 * Builds a pure-Python wheel.
 *
 * @param dist Distribution name.
 * @param version Version.
 * @param modules Paths inside the wheel (e.g. `pkg/__init__.py`) to source.
 * @param requires Unconditional dependencies.
 * @returns The file name and bytes.
 */
export function buildWheel(
  dist: string,
  version: string,
  modules: Record<string, string>,
  requires: string[] = [],
): { fileName: string; data: Uint8Array } {
  const base = dist.replace(/-/g, "_");
  const info = `${base}-${version}.dist-info`;
  const metadata = [
    "Metadata-Version: 2.1",
    `Name: ${dist}`,
    `Version: ${version}`,
    ...requires.map((r) => `Requires-Dist: ${r}`),
    "",
  ].join("\n");
  const files: Record<string, string> = {
    ...modules,
    [`${info}/METADATA`]: metadata,
    [`${info}/WHEEL`]:
      "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
  };
  files[`${info}/RECORD`] = Object.keys(files).map((f) => `${f},,`).join("\n") +
    `\n${info}/RECORD,,\n`;
  return {
    fileName: `${base}-${version}-py3-none-any.whl`,
    data: buildZip(files),
  };
}

/** One package of a test `pyodide-lock.json`. */
export interface LockEntry {
  /** Distribution name. */
  name: string;
  /** Version. */
  version: string;
  /** The wheel's file name (or URL). */
  fileName: string;
  /** Import names. */
  imports: string[];
  /** Distribution names it depends on. */
  depends: string[];
  /** The sha256 the lock lists (hex). */
  sha256: string;
}

/**
 * A `pyodide-lock.json` document listing pure-Python site packages.
 *
 * @param info The lock's `info` object.
 * @param entries The packages.
 * @returns The document (to `JSON.stringify`).
 */
export function pyodideLock(
  info: Record<string, string>,
  entries: LockEntry[],
): { info: Record<string, string>; packages: Record<string, unknown> } {
  const packages: Record<string, unknown> = {};
  for (const entry of entries) {
    packages[entry.name] = {
      name: entry.name,
      version: entry.version,
      file_name: entry.fileName,
      install_dir: "site",
      package_type: "package",
      imports: entry.imports,
      depends: entry.depends,
      sha256: entry.sha256,
    };
  }
  return { info, packages };
}

/**
 * The sha256 of some bytes, in hex (as a lock file lists it).
 *
 * @param data The bytes.
 * @returns The hex digest.
 */
export async function sha256Hex(data: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest(
    "SHA-256",
    data as Uint8Array<ArrayBuffer>,
  );
  return [...new Uint8Array(digest)]
    .map((b) => b.toString(16).padStart(2, "0")).join("");
}
