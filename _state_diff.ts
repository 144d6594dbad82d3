/**
 * Session state as a difference from the base snapshot: pure functions on
 * bytes, used by the child (it runs with `--no-config`, so this file imports
 * nothing but `node:buffer`, for its native compare) and by the tests.
 *
 * A Pyodide 314.0.7 snapshot (`makeMemorySnapshot()`, read back by its
 * `API.restoreSnapshot`) is a header and the wasm memory image. The header
 * is little-endian 32-bit words: `[0]` the magic {@linkcode SNAPSHOT_MAGIC},
 * `[1]` the byte offset of the memory image (a multiple of 16), `[2]` the
 * byte length of the JSON (`hiwireKeys`, `immortalKeys`) that starts at
 * byte 48, `[3]` zero, `[4..12)` the build id; then the JSON, padding, and
 * the image from the offset to the end (`HEAP8`, a whole number of 64 KiB
 * wasm pages).
 *
 * A diff keeps the new snapshot's header whole and its image as the 4 KiB
 * pages that differ from the base's image, each stored XOR the base page
 * (pages past the end of the base image are compared with zeros, so a heap
 * that grew stores only its non-zero pages), then the working-folder files.
 *
 * Layout (little-endian u32): `"PYSBDIFF"`, page size, header length, image
 * length, changed page count, files length; the header; the page numbers
 * (ascending); the XORed pages; the files.
 *
 * @module
 */

/** The first word of a Pyodide 314.0.7 snapshot. */
export const SNAPSHOT_MAGIC = 1886286592;

/** Bytes of a snapshot's fixed header (before its JSON). */
export const SNAPSHOT_FIXED_BYTES = 48;

/** Pages compared and stored by a diff. */
export const PAGE_BYTES = 4096;

import { Buffer } from "node:buffer";

const DIFF_MAGIC = [0x50, 0x59, 0x53, 0x42, 0x44, 0x49, 0x46, 0x46];
const DIFF_HEAD_BYTES = 8 + 5 * 4;

function word(bytes: Uint8Array, offset: number): number {
  return (bytes[offset] | (bytes[offset + 1] << 8) |
    (bytes[offset + 2] << 16) | (bytes[offset + 3] << 24)) >>> 0;
}

function setWord(bytes: Uint8Array, offset: number, value: number): void {
  bytes[offset] = value & 0xff;
  bytes[offset + 1] = (value >>> 8) & 0xff;
  bytes[offset + 2] = (value >>> 16) & 0xff;
  bytes[offset + 3] = (value >>> 24) & 0xff;
}

/**
 * Where a snapshot's memory image starts, after checking its header.
 *
 * @param snapshot A snapshot, or at least its first bytes.
 * @param total The snapshot's whole length (default: `snapshot.length`).
 * @returns The image offset, or a message saying what is wrong.
 */
export function snapshotImageOffset(
  snapshot: Uint8Array,
  total: number = snapshot.length,
): number | string {
  if (snapshot.length < SNAPSHOT_FIXED_BYTES) return "too short";
  if (word(snapshot, 0) !== SNAPSHOT_MAGIC) return "wrong magic number";
  const offset = word(snapshot, 4);
  const json = word(snapshot, 8);
  if (
    offset % 16 !== 0 || offset < SNAPSHOT_FIXED_BYTES + json ||
    offset > total
  ) {
    return "inconsistent header";
  }
  if ((total - offset) % PAGE_BYTES !== 0) {
    return "the memory image is not a whole number of pages";
  }
  return offset;
}

/**
 * The build id words of a snapshot (bytes 16 to 48), as hex.
 *
 * @param snapshot A snapshot's first 48 bytes or more.
 * @returns The build id.
 */
export function snapshotBuildId(snapshot: Uint8Array): string {
  let id = "";
  for (let i = 16; i < SNAPSHOT_FIXED_BYTES; i += 4) {
    id += word(snapshot, i).toString(16).padStart(8, "0");
  }
  return id;
}

function words(bytes: Uint8Array): Uint32Array {
  const aligned = bytes.byteOffset % 4 === 0 ? bytes : bytes.slice();
  return new Uint32Array(
    aligned.buffer,
    aligned.byteOffset,
    aligned.length >>> 2,
  );
}

/**
 * Fills `into` with the base image's bytes from byte `start` on, and with
 * zeros past the image's end.
 */
export type ImageReader = (start: number, into: Uint8Array) => void;

/**
 * An {@linkcode ImageReader} over an image held in memory.
 *
 * @param image The base memory image.
 * @returns The reader.
 */
export function arrayImageReader(image: Uint8Array): ImageReader {
  return (start, into) => {
    const n = Math.max(0, Math.min(into.length, image.length - start));
    into.set(image.subarray(start, start + n));
    into.fill(0, n);
  };
}

/** Pages read from the base at a time (1 MiB). */
const CHUNK_PAGES = 256;

/** Whether two byte ranges are equal (native memcmp). */
function same(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(a, b) === 0;
}

/**
 * A wasm function `x(dst, src, len)`: XORs `len` bytes (a multiple of 8) at
 * `src` into `dst`, in a memory of 33 pages (two chunks and a spare page).
 * A child saves or restores once, with its JS still cold: an XOR loop in
 * JS then runs in V8's interpreter (about 100 ms for a thousand pages),
 * and this one, compiled by Liftoff at once, in about a millisecond.
 */
const XOR_HEX =
  "0061736d0100000001070160037f7f7f00030201000503010021070902016d02" +
  "00017800000a35013301017f02400340200320024f0d01200020036a20002003" +
  "6a290300200120036a29030085370300200341086a21030c000b0b0b";
const XOR_WASM = Uint8Array.from(
  XOR_HEX.match(/../g)!,
  (h) => parseInt(h, 16),
);
const Wasm = globalThis.WebAssembly;

/** The XOR engine: its memory and its function; null when unavailable. */
let engine:
  | { mem: Uint8Array; xor(d: number, s: number, n: number): void }
  | null
  | undefined;

function xorEngine(): typeof engine {
  if (engine !== undefined) return engine;
  try {
    const instance = new Wasm.Instance(new Wasm.Module(XOR_WASM));
    const memory = instance.exports.m as WebAssembly.Memory;
    engine = {
      mem: new Uint8Array(memory.buffer),
      xor: instance.exports.x as (d: number, s: number, n: number) => void,
    };
  } catch {
    engine = null;
  }
  return engine;
}

/** `a` XOR `b` into `out` (equal lengths, a multiple of 8). */
function xorInto(out: Uint8Array, a: Uint8Array, b: Uint8Array): void {
  const e = xorEngine();
  const chunk = CHUNK_PAGES * PAGE_BYTES;
  if (e) {
    for (let at = 0; at < a.length; at += chunk) {
      const n = Math.min(chunk, a.length - at);
      e.mem.set(a.subarray(at, at + n), 0);
      e.mem.set(b.subarray(at, at + n), chunk);
      e.xor(0, chunk, n);
      out.set(e.mem.subarray(0, n), at);
    }
    return;
  }
  for (let i = 0; i < a.length; i++) out[i] = a[i] ^ b[i];
}

/**
 * The pages of an image that differ from the base, in two passes that
 * allocate nothing of the diff's size: page numbers first, then each page
 * XOR the base page, written by `put` (fresh memory costs a page fault per
 * 4 KiB, a real cost on some VMs).
 */
function changedPages(
  image: Uint8Array,
  readBase: ImageReader,
): Uint32Array {
  const chunk = new Uint8Array(CHUNK_PAGES * PAGE_BYTES);
  let pages = new Uint32Array(256);
  let count = 0;
  for (let start = 0; start < image.length; start += chunk.length) {
    const length = Math.min(chunk.length, image.length - start);
    const read = chunk.subarray(0, length);
    readBase(start, read);
    // Most chunks are unchanged: one native compare each.
    if (same(image.subarray(start, start + length), read)) continue;
    for (let at = 0; at < length; at += PAGE_BYTES) {
      const from = start + at;
      if (
        same(
          image.subarray(from, from + PAGE_BYTES),
          chunk.subarray(at, at + PAGE_BYTES),
        )
      ) continue;
      if (count === pages.length) {
        const grown = new Uint32Array(pages.length * 2);
        grown.set(pages);
        pages = grown;
      }
      pages[count++] = from / PAGE_BYTES;
    }
  }
  return pages.subarray(0, count);
}

/** Writes each changed page XOR its base page into `out`, in order. */
function xorPages(
  image: Uint8Array,
  readBase: ImageReader,
  pages: Uint32Array,
  out: Uint8Array,
): void {
  const chunk = new Uint8Array(CHUNK_PAGES * PAGE_BYTES);
  let loaded = -1;
  for (let i = 0; i < pages.length; i++) {
    const from = pages[i] * PAGE_BYTES;
    const start = from - (from % chunk.length);
    if (start !== loaded) {
      readBase(
        start,
        chunk.subarray(0, Math.min(chunk.length, image.length - start)),
      );
      loaded = start;
    }
    const at = from - start;
    xorInto(
      out.subarray(i * PAGE_BYTES, (i + 1) * PAGE_BYTES),
      image.subarray(from, from + PAGE_BYTES),
      chunk.subarray(at, at + PAGE_BYTES),
    );
  }
}

/**
 * Encodes a snapshot, given as its header and its memory image (the live
 * wasm heap will do: nothing is copied whole), and the working-folder
 * files, as a diff from a base image read a chunk at a time.
 *
 * @param header The snapshot's header (its first `offset` bytes).
 * @param image The memory image (a whole number of pages, 4-byte aligned).
 * @param readBase Reads the base snapshot's memory image.
 * @param files The packed working-folder files.
 * @returns The diff (not compressed).
 * @throws {Error} When the header is malformed.
 */
export function encodeImageDiff(
  header: Uint8Array,
  image: Uint8Array,
  readBase: ImageReader,
  files: Uint8Array,
): Uint8Array {
  const offset = header.length;
  if (snapshotImageOffset(header, offset + image.length) !== offset) {
    throw new Error("Bad snapshot: inconsistent header");
  }
  const pages = changedPages(image, readBase);
  const count = pages.length;
  const total = DIFF_HEAD_BYTES + offset + count * (4 + PAGE_BYTES) +
    files.length;
  const out = new Uint8Array(total);
  out.set(DIFF_MAGIC, 0);
  setWord(out, 8, PAGE_BYTES);
  setWord(out, 12, offset);
  setWord(out, 16, image.length);
  setWord(out, 20, count);
  setWord(out, 24, files.length);
  out.set(header, DIFF_HEAD_BYTES);
  let at = DIFF_HEAD_BYTES + offset;
  for (let i = 0; i < count; i++, at += 4) setWord(out, at, pages[i]);
  xorPages(image, readBase, pages, out.subarray(at, at + count * PAGE_BYTES));
  out.set(files, at + count * PAGE_BYTES);
  return out;
}

/**
 * Encodes a snapshot and the working-folder files as a diff from a base
 * snapshot.
 *
 * @param snapshot The new snapshot (`makeMemorySnapshot()`).
 * @param base The base snapshot the diff is made against.
 * @param files The packed working-folder files.
 * @returns The diff (not compressed).
 * @throws {Error} When either snapshot's header is malformed.
 */
export function encodeDiff(
  snapshot: Uint8Array,
  base: Uint8Array,
  files: Uint8Array,
): Uint8Array {
  const offset = snapshotImageOffset(snapshot);
  const baseOffset = snapshotImageOffset(base);
  if (typeof offset === "string") throw new Error(`Bad snapshot: ${offset}`);
  if (typeof baseOffset === "string") {
    throw new Error(`Bad base snapshot: ${baseOffset}`);
  }
  return encodeImageDiff(
    snapshot.subarray(0, offset),
    snapshot.subarray(offset),
    arrayImageReader(base.subarray(baseOffset)),
    files,
  );
}

/**
 * Whether bytes are a diff made by {@linkcode encodeDiff} (by their magic).
 *
 * @param bytes Inflated session state.
 * @returns True for a diff.
 */
export function isDiff(bytes: Uint8Array): boolean {
  if (bytes.length < DIFF_HEAD_BYTES) return false;
  for (let i = 0; i < 8; i++) if (bytes[i] !== DIFF_MAGIC[i]) return false;
  return true;
}

/** A diff whose lengths, header and page numbers were checked. */
export interface ParsedDiff {
  /** The new snapshot's header. */
  header: Uint8Array;
  /** The byte length of the new memory image. */
  imageBytes: number;
  /** The changed page numbers, ascending. */
  pages: Uint32Array;
  /** The changed pages, each XOR the base page. */
  data: Uint32Array;
  /** The packed working-folder files. */
  files: Uint8Array;
}

/**
 * Checks a diff made by {@linkcode encodeDiff} without a base: every
 * length, the header and every page number. Never throws.
 *
 * @param diff The diff.
 * @param maxImageBytes The largest memory image accepted (the memory limit).
 * @returns The parsed diff, or a message saying why it is unusable.
 */
export function parseDiff(
  diff: Uint8Array,
  maxImageBytes: number,
): ParsedDiff | string {
  if (!isDiff(diff)) return "not a session diff";
  const pageBytes = word(diff, 8);
  const head = word(diff, 12);
  const imageBytes = word(diff, 16);
  const count = word(diff, 20);
  const filesBytes = word(diff, 24);
  if (pageBytes !== PAGE_BYTES) return "unsupported page size";
  if (imageBytes > maxImageBytes) {
    return `the memory image (${imageBytes} bytes) is over the memory limit (${maxImageBytes} bytes)`;
  }
  const total = imageBytes / PAGE_BYTES;
  const expected = DIFF_HEAD_BYTES + head + count * (4 + PAGE_BYTES) +
    filesBytes;
  if (!Number.isInteger(total) || count > total || expected !== diff.length) {
    return "inconsistent lengths";
  }
  const header = diff.subarray(DIFF_HEAD_BYTES, DIFF_HEAD_BYTES + head);
  if (snapshotImageOffset(header, head + imageBytes) !== head) {
    return "the snapshot header is malformed";
  }
  const at = DIFF_HEAD_BYTES + head;
  const pages = new Uint32Array(count);
  let last = -1;
  for (let i = 0; i < count; i++) {
    const page = word(diff, at + i * 4);
    if (page <= last || page >= total) return "bad page numbers";
    pages[i] = last = page;
  }
  const data = words(
    diff.subarray(at + count * 4, at + count * (4 + PAGE_BYTES)),
  );
  return {
    header,
    imageBytes,
    pages,
    data,
    files: diff.subarray(diff.length - filesBytes),
  };
}

/**
 * Applies a parsed diff's pages to a copy of its base image, in place.
 *
 * @param image The base image (zeros past its end), at least
 *   `diff.imageBytes` long and 4-byte aligned: the wasm heap will do.
 * @param diff The parsed diff.
 */
export function applyPages(image: Uint8Array, diff: ParsedDiff): void {
  const { pages, data } = diff;
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.length * 4);
  for (let i = 0; i < pages.length; i++) {
    const page = image.subarray(
      pages[i] * PAGE_BYTES,
      (pages[i] + 1) * PAGE_BYTES,
    );
    xorInto(page, page, bytes.subarray(i * PAGE_BYTES, (i + 1) * PAGE_BYTES));
  }
}

/**
 * Rebuilds a snapshot from a diff and its base. Never throws.
 *
 * @param diff The diff.
 * @param base The base snapshot it was made against.
 * @param maxImageBytes The largest memory image accepted (the memory limit).
 * @returns The rebuilt snapshot and the files, or a message saying why the
 *   diff is unusable.
 */
export function applyDiff(
  diff: Uint8Array,
  base: Uint8Array,
  maxImageBytes: number,
): { snapshot: Uint8Array; files: Uint8Array } | string {
  const parsed = parseDiff(diff, maxImageBytes);
  if (typeof parsed === "string") return parsed;
  const baseOffset = snapshotImageOffset(base);
  if (typeof baseOffset === "string") return `bad base snapshot: ${baseOffset}`;
  const head = parsed.header.length;
  const out = new Uint8Array(head + parsed.imageBytes);
  out.set(parsed.header, 0);
  const image = out.subarray(head);
  arrayImageReader(base.subarray(baseOffset))(0, image);
  applyPages(image, parsed);
  return { snapshot: out, files: parsed.files };
}
