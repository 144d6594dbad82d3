/**
 * The parent/child wire protocol, both directions, in one place: frame
 * constants, the typed messages, their encoders and decoders and the blob
 * index. The host-side validation of everything a child sends is in
 * `_protocol_checks.ts`.
 *
 * It has no imports, so the child (`runner.ts`, run with `--no-config`) uses
 * the very same constants and codecs as the host.
 *
 * - parent to child (stdin): `[type u8][jsonLength u32][binLength u32][json][bin]`
 *   ({@linkcode encodeToChild}, {@linkcode decodeToChild}).
 * - child to parent (stdout): `MAGIC nonce [type][jsonLength][binLength] json
 *   bin nonce` ({@linkcode encodeToParent}; the host's streaming decoder is
 *   `FrameParser` in `_child.ts`, whose checks are `frameCaps` in
 *   `_protocol_checks.ts`).
 * - blob index (files frame, packed session state): `[u32 length][index
 *   JSON][blobs]` ({@linkcode concatWithIndex}, {@linkcode splitIndex}).
 *
 * The child is hostile: user code shares the runner's JS realm, so once it
 * holds the nonce every frame is the attacker's, and the host checks every
 * one (`_protocol_checks.ts`).
 *
 * @module
 */

// Captured when this module loads, before any user code runs in the child:
// user code can replace globals and prototype methods, and must never see a
// frame (or the nonce in it) pass through them.
const U8 = Uint8Array;
const AB = ArrayBuffer;
const DV = DataView;
const apply = Reflect.apply;
const stringify = JSON.stringify;
const parse = JSON.parse;
const isArray = Array.isArray;
const objectKeys = Object.keys;
const encoder = new TextEncoder();
const encode = TextEncoder.prototype.encode;
const decoder = new TextDecoder();
const decode = TextDecoder.prototype.decode;
const dvSetUint32 = DataView.prototype.setUint32;
const dvGetUint32 = DataView.prototype.getUint32;
const u8Set = Uint8Array.prototype.set;
const typedArrayProto = Object.getPrototypeOf(Uint8Array.prototype);
const getLength = Object.getOwnPropertyDescriptor(typedArrayProto, "length")!
  .get!;
const getBuffer = Object.getOwnPropertyDescriptor(typedArrayProto, "buffer")!
  .get!;
const getByteOffset = Object.getOwnPropertyDescriptor(
  typedArrayProto,
  "byteOffset",
)!.get!;

/** Marks the start of every child-to-parent frame. */
export const FRAME_MAGIC: Uint8Array = new Uint8Array([0x50, 0x53, 0x42, 0x31]);
/** Byte length of {@linkcode FRAME_MAGIC}. */
const MAGIC_BYTES = 4;
/** Byte length of the per-child secret nonce. */
export const NONCE_BYTES = 16;
/** Bytes of a frame's fixed head: type u8, json length u32, bin length u32. */
export const FRAME_HEAD_BYTES = 9;

/** Frame types sent from the parent to the child. */
export const ToChild = {
  init: 1,
  exec: 2,
  interrupt: 3,
  save: 4,
  callReply: 5,
} as const;

/** Frame types sent from the child to the parent. */
export const ToParent = {
  ready: 1,
  stdout: 2,
  stderr: 3,
  result: 4,
  saved: 5,
  call: 6,
  display: 7,
  snapshot: 8,
  fatal: 9,
  files: 10,
} as const;

/** The call name the runner uses to ask the host for packages. */
export const INSTALL_CALL = "\u0000install";
/**
 * Largest result header (the run report with the result value) the host
 * accepts; the runner turns a bigger result into an error instead.
 */
export const MAX_RESULT_HEADER_BYTES = 128 * 1024 * 1024;
/** Largest host-function reply the child accepts, in bytes. */
export const MAX_REPLY_BYTES = 64 * 1024 * 1024;
/** Largest stdout/stderr frame a runner sends (it splits bigger writes). */
export const STREAM_FRAME_BYTES = 64 * 1024;

/** Any JSON value (the same shape as `JsonValue` in `result.ts`). */
export type WireJson =
  | string
  | number
  | boolean
  | null
  | WireJson[]
  | { [key: string]: WireJson };

/** Header of the init frame (its attachment: the nonce, then packed state). */
export interface InitRequest {
  /** `"snapshot"` builds the base snapshot; `"serve"` runs code. */
  mode: "serve" | "snapshot";
  /**
   * The base snapshot: started from without state, rebuilt from with a
   * diff state, diffed against on save (its read grant is kept).
   */
  snapshotPath?: string;
  /** End the process after one exec. */
  oneShot: boolean;
  /** Read grants the child drops once Pyodide is loaded. */
  revokeRead?: string[];
  /** Run the runner's own call path once before reporting ready. */
  warm?: boolean;
  /** The most bytes the session state may inflate to. */
  maxStateBytes?: number;
  /** The largest memory image a restored state may have (memory limit). */
  maxImageBytes?: number;
}

/**
 * The exit code of a child that could not restore the session state it was
 * given (damaged, inconsistent, too large): the session's fault, not a
 * crash. Used before any user code runs.
 */
export const STATE_REJECTED_EXIT = 65;

/** Header of an exec frame (its attachment: the input files' bytes). */
export interface ExecRequest {
  code: string;
  stdin?: string;
  /** Return the session state with the result. */
  wantState: boolean;
  /** Files to write first (the attachment holds their bytes, in order). */
  files?: { path: string; size: number }[];
  /** Names of host functions to expose. */
  functions?: string[];
  /** Host paths granted for reading/writing, shown to Python's open(). */
  hostRead?: string[];
  hostWrite?: string[];
  /** The write grants that are folders (the child may not stat them). */
  hostWriteDirs?: string[];
  maxFileBytes: number;
  maxTotalFileBytes: number;
  /** Set when package sources are configured. */
  install?: { packages: string[] };
}

/** A parent-to-child message, by frame type. */
export type ToChildMessage =
  | { type: typeof ToChild.init; json: InitRequest; bin: Uint8Array }
  | { type: typeof ToChild.exec; json: ExecRequest; bin?: Uint8Array }
  | { type: typeof ToChild.interrupt; json: null }
  | { type: typeof ToChild.save; json: null }
  /** Goes to shared memory as is: its bytes are the reply's JSON. */
  | { type: typeof ToChild.callReply; json: HostCallReply };

/** The host's answer to a host-function call (a callReply frame). */
export type HostCallReply =
  | { ok: true; value: unknown }
  | { ok: false; message: string; type?: string };

/** Header of the ready and snapshot frames. */
export interface LoadedHeader {
  /** How long loading Pyodide took in the child. */
  loadMs: number;
}

/** The runner's report of one run, as sent in the result header. */
export interface RunnerOutWire {
  ok: boolean;
  result?: WireJson;
  error?: { type: string; message: string; traceback?: string };
}

/** Header of a result frame (its attachment: packed state, if asked). */
export interface ResultWire extends SavedHeader {
  /** The run report (a JSON text of it from older runners). */
  out: RunnerOutWire | string;
  installError?: boolean;
  notRun?: boolean;
}

/** A child-to-parent message, by frame type. */
export type ToParentMessage =
  | { type: typeof ToParent.ready; json: LoadedHeader }
  | { type: typeof ToParent.stdout; json: null; bin: Uint8Array }
  | { type: typeof ToParent.stderr; json: null; bin: Uint8Array }
  | { type: typeof ToParent.result; json: ResultWire; bin?: Uint8Array }
  | { type: typeof ToParent.saved; json: SavedHeader; bin?: Uint8Array }
  | { type: typeof ToParent.call; json: HostCallRequest }
  | { type: typeof ToParent.display; json: Record<string, WireJson> }
  | { type: typeof ToParent.snapshot; json: LoadedHeader; bin: Uint8Array }
  | { type: typeof ToParent.fatal; json: { message: string } }
  /** The attachment is a blob index of {@linkcode FileEntryWire}. */
  | { type: typeof ToParent.files; json: null; bin: Uint8Array };

/** One entry of a files frame's index. */
export interface FileEntryWire {
  path: string;
  /** The file's full size. */
  size: number;
  /** Bytes attached (at most `size`). */
  length: number;
  truncated: boolean;
}

/**
 * JSON text of plain data, built only with values captured when this module
 * loaded: no toJSON, no replaceable method. Keys whose value is undefined or
 * a function are left out, as JSON.stringify does.
 *
 * @param value Plain data.
 * @returns Its JSON text.
 */
export function toJson(value: unknown): string {
  if (value === null || typeof value !== "object") {
    // A primitive: JSON.stringify looks nothing up for it.
    const text: string | undefined = stringify(value);
    return text === undefined ? "null" : text;
  }
  if (isArray(value)) {
    let out = "[";
    for (let i = 0; i < value.length; i++) {
      out += (i > 0 ? "," : "") + toJson(value[i]);
    }
    return out + "]";
  }
  const keys = objectKeys(value);
  let out = "{";
  let first = true;
  for (let i = 0; i < keys.length; i++) {
    const item = (value as Record<string, unknown>)[keys[i]];
    if (item === undefined || typeof item === "function") continue;
    out += (first ? "" : ",") + stringify(keys[i]) + ":" + toJson(item);
    first = false;
  }
  return out + "}";
}

function lengthOf(bytes: Uint8Array): number {
  return apply(getLength, bytes, []);
}

/** A header's JSON bytes and an attachment (empty when absent). */
function frameParts(json: unknown, bin?: Uint8Array): [Uint8Array, Uint8Array] {
  return [apply(encode, encoder, [toJson(json ?? null)]), bin ?? new U8(0)];
}

/** Writes `[type u8][jsonLength u32][binLength u32][json][bin]` at `at`. */
function putFrame(
  buffer: ArrayBuffer,
  at: number,
  type: number,
  [head, body]: [Uint8Array, Uint8Array],
): void {
  const out = new U8(buffer);
  const view = new DV(buffer);
  out[at] = type;
  apply(dvSetUint32, view, [at + 1, lengthOf(head)]);
  apply(dvSetUint32, view, [at + 5, lengthOf(body)]);
  apply(u8Set, out, [head, at + FRAME_HEAD_BYTES]);
  apply(u8Set, out, [body, at + FRAME_HEAD_BYTES + lengthOf(head)]);
}

/**
 * Encodes one parent-to-child frame.
 *
 * @param type One of {@linkcode ToChild}.
 * @param json A JSON-safe header.
 * @param bin Optional binary attachment.
 * @returns The encoded frame.
 */
export function encodeToChild(
  type: number,
  json: unknown,
  bin?: Uint8Array,
): Uint8Array {
  const parts = frameParts(json, bin);
  const buffer = new AB(
    FRAME_HEAD_BYTES + lengthOf(parts[0]) + lengthOf(parts[1]),
  );
  putFrame(buffer, 0, type, parts);
  return new U8(buffer);
}

/** One decoded parent-to-child frame. */
export interface ToChildFrame {
  type: number;
  /** The header's JSON text. */
  json: string;
  bin: Uint8Array;
  /** Bytes the frame took. */
  total: number;
}

/**
 * Decodes the parent-to-child frame at the start of `buf` (the parent is
 * trusted; the stdin worker in `runner.ts` does the same inline).
 *
 * @param buf Received bytes.
 * @returns The frame, or `undefined` while it is incomplete.
 */
export function decodeToChild(buf: Uint8Array): ToChildFrame | undefined {
  if (buf.length < FRAME_HEAD_BYTES) return undefined;
  const view = new DataView(buf.buffer, buf.byteOffset, buf.length);
  const jsonLength = view.getUint32(1);
  const total = FRAME_HEAD_BYTES + jsonLength + view.getUint32(5);
  if (buf.length < total) return undefined;
  const end = FRAME_HEAD_BYTES + jsonLength;
  return {
    type: buf[0],
    json: new TextDecoder().decode(buf.subarray(FRAME_HEAD_BYTES, end)),
    bin: buf.slice(end, total),
    total,
  };
}

/**
 * Encodes one child-to-parent frame with captured functions only (it runs
 * after user code, which may have replaced any global or method).
 *
 * @param nonce The child's secret.
 * @param type One of {@linkcode ToParent}.
 * @param json A JSON-safe header.
 * @param bin Optional attachment.
 * @returns The frame.
 */
export function encodeToParent(
  nonce: Uint8Array,
  type: number,
  json: unknown,
  bin?: Uint8Array,
): Uint8Array {
  const parts = frameParts(json, bin);
  const prefix = MAGIC_BYTES + NONCE_BYTES;
  const total = prefix + FRAME_HEAD_BYTES + lengthOf(parts[0]) +
    lengthOf(parts[1]) + NONCE_BYTES;
  const buffer = new AB(total);
  const out = new U8(buffer);
  apply(u8Set, out, [FRAME_MAGIC, 0]);
  apply(u8Set, out, [nonce, MAGIC_BYTES]);
  putFrame(buffer, prefix, type, parts);
  apply(u8Set, out, [nonce, total - NONCE_BYTES]);
  return out;
}

/**
 * Packs a blob index: `[u32 index length][index JSON][blobs]`, with captured
 * functions only.
 *
 * @param index JSON-safe index describing the blobs.
 * @param blobs The blobs, in order.
 * @returns The packed bytes.
 */
export function concatWithIndex(
  index: unknown,
  blobs: Uint8Array[],
): Uint8Array {
  const head: Uint8Array = apply(encode, encoder, [toJson(index)]);
  const headLength = lengthOf(head);
  let total = 4 + headLength;
  for (let i = 0; i < blobs.length; i++) total += lengthOf(blobs[i]);
  const buffer = new AB(total);
  const out = new U8(buffer);
  apply(dvSetUint32, new DV(buffer), [0, headLength]);
  apply(u8Set, out, [head, 4]);
  let offset = 4 + headLength;
  for (let i = 0; i < blobs.length; i++) {
    apply(u8Set, out, [blobs[i], offset]);
    offset += lengthOf(blobs[i]);
  }
  return out;
}

/**
 * Splits a blob index packed by {@linkcode concatWithIndex}. Never throws.
 *
 * @param packed The packed bytes.
 * @returns The parsed index (unchecked JSON) and the bytes after it, or
 *   `undefined` when the index is truncated or not JSON.
 */
export function splitIndex(
  packed: Uint8Array,
): { index: unknown; data: Uint8Array } | undefined {
  const length = lengthOf(packed);
  if (length < 4) return undefined;
  const buffer: ArrayBufferLike = apply(getBuffer, packed, []);
  const offset: number = apply(getByteOffset, packed, []);
  const size: number = apply(dvGetUint32, new DV(buffer, offset, length), [0]);
  if (size > length - 4) return undefined;
  try {
    const text: string = apply(decode, decoder, [
      new U8(buffer, offset + 4, size),
    ]);
    const data = new U8(buffer, offset + 4 + size, length - 4 - size);
    return { index: parse(text), data };
  } catch {
    return undefined;
  }
}

/**
 * Packs session state: the memory snapshot and the packed files.
 *
 * @param snapshot Pyodide's memory snapshot.
 * @param files The files, packed by {@linkcode concatWithIndex}.
 * @returns The packed state.
 */
export function packState(snapshot: Uint8Array, files: Uint8Array): Uint8Array {
  return concatWithIndex(
    { snapshot: lengthOf(snapshot), files: lengthOf(files) },
    [snapshot, files],
  );
}

/**
 * Unpacks session state packed by {@linkcode packState}. Never throws.
 *
 * @param packed The packed state.
 * @returns Snapshot and files, or `undefined` when the layout is broken.
 */
export function unpackState(
  packed: Uint8Array,
): { snapshot: Uint8Array; files: Uint8Array } | undefined {
  const split = splitIndex(packed);
  if (!split || !isRecord(split.index)) return undefined;
  const { snapshot, files } = split.index;
  const { data } = split;
  if (!isCount(snapshot) || !isCount(files) || snapshot + files > data.length) {
    return undefined;
  }
  return {
    snapshot: data.slice(0, snapshot),
    files: data.subarray(snapshot, snapshot + files),
  };
}

/** What the runner reports about one run of user code. */
export interface RunnerOut {
  ok: boolean;
  result?: WireJson;
  error?: { type: string; message: string; traceback?: string };
}

/** A checked result frame header. */
export interface ResultHeader {
  out: RunnerOut;
  packages?: string[];
  stateError?: string;
  droppedGlobals?: string;
  installError: boolean;
  notRun: boolean;
}

/** A checked saved-state frame header. */
export interface SavedHeader {
  packages?: string[];
  stateError?: string;
  droppedGlobals?: string;
}

/** A host-function request from Python. */
export interface HostCallRequest {
  name: string;
  args: WireJson[];
}

/**
 * Whether a value is a plain JSON object (not null, not an array).
 *
 * @param value Any value.
 * @returns `true` for an object that is not an array.
 */
export function isRecord(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !isArray(value);
}

/**
 * Whether a value is a byte count (a safe, non-negative integer).
 *
 * @param value Any value.
 * @returns `true` for a count.
 */
export function isCount(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) &&
    value >= 0;
}
