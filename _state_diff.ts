/**
 * Session state as a difference from the base snapshot: pure functions on
 * bytes, used by the child (it runs with `--no-config`, so this file imports
 * nothing) and by the tests.
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

const DIFF_MAGIC = [0x50, 0x59, 0x53, 0x42, 0x44, 0x49, 0x46, 0x46];
const DIFF_HEAD_BYTES = 8 + 5 * 4;
const PAGE_WORDS = PAGE_BYTES / 4;

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

/** Whether a page differs from the base image (zeros past its end). */
function pageChanged(
  image: Uint32Array,
  base: Uint32Array,
  start: number,
): boolean {
  const end = start + PAGE_WORDS;
  if (end <= base.length) {
    for (let i = start; i < end; i++) if (image[i] !== base[i]) return true;
    return false;
  }
  for (let i = start; i < end; i++) {
    if (image[i] !== (i < base.length ? base[i] : 0)) return true;
  }
  return false;
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
  const image = words(snapshot.subarray(offset));
  const baseImage = words(base.subarray(baseOffset));
  const pages = image.length / PAGE_WORDS;
  const changed = new Uint32Array(pages);
  let count = 0;
  for (let p = 0; p < pages; p++) {
    if (pageChanged(image, baseImage, p * PAGE_WORDS)) changed[count++] = p;
  }
  const total = DIFF_HEAD_BYTES + offset + count * (4 + PAGE_BYTES) +
    files.length;
  const out = new Uint8Array(total);
  out.set(DIFF_MAGIC, 0);
  setWord(out, 8, PAGE_BYTES);
  setWord(out, 12, offset);
  setWord(out, 16, image.length * 4);
  setWord(out, 20, count);
  setWord(out, 24, files.length);
  out.set(snapshot.subarray(0, offset), DIFF_HEAD_BYTES);
  let at = DIFF_HEAD_BYTES + offset;
  for (let i = 0; i < count; i++, at += 4) setWord(out, at, changed[i]);
  const data = words(out.subarray(at, at + count * PAGE_BYTES));
  for (let i = 0; i < count; i++) {
    const start = changed[i] * PAGE_WORDS;
    const to = i * PAGE_WORDS;
    for (let j = 0; j < PAGE_WORDS; j++) {
      const k = start + j;
      data[to + j] = image[k] ^ (k < baseImage.length ? baseImage[k] : 0);
    }
  }
  out.set(files, at + count * PAGE_BYTES);
  return out;
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
  const pages = imageBytes / PAGE_BYTES;
  const expected = DIFF_HEAD_BYTES + head + count * (4 + PAGE_BYTES) +
    filesBytes;
  if (!Number.isInteger(pages) || count > pages || expected !== diff.length) {
    return "inconsistent lengths";
  }
  const headBytes = diff.subarray(DIFF_HEAD_BYTES, DIFF_HEAD_BYTES + head);
  if (snapshotImageOffset(headBytes, head + imageBytes) !== head) {
    return "the snapshot header is malformed";
  }
  const baseOffset = snapshotImageOffset(base);
  if (typeof baseOffset === "string") return `bad base snapshot: ${baseOffset}`;
  const out = new Uint8Array(head + imageBytes);
  out.set(headBytes, 0);
  const baseImage = base.subarray(baseOffset);
  out.set(
    baseImage.subarray(0, Math.min(baseImage.length, imageBytes)),
    head,
  );
  const image = words(out.subarray(head));
  let at = DIFF_HEAD_BYTES + head;
  const data = words(
    diff.subarray(at + count * 4, at + count * (4 + PAGE_BYTES)),
  );
  let last = -1;
  for (let i = 0; i < count; i++, at += 4) {
    const page = word(diff, at);
    if (page <= last || page >= pages) return "bad page numbers";
    last = page;
    const start = page * PAGE_WORDS;
    const from = i * PAGE_WORDS;
    for (let j = 0; j < PAGE_WORDS; j++) image[start + j] ^= data[from + j];
  }
  return {
    snapshot: out,
    files: diff.subarray(diff.length - filesBytes),
  };
}
