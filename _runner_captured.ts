/**
 * The child's captured built-ins, frame output and the helpers built on
 * them. Everything here is taken when the runner loads, before any user
 * code runs: afterwards user code may have replaced any global or prototype
 * method, so frames, headers and indexes are built only from these.
 *
 * @module
 */

import {
  encodeToParent,
  NONCE_BYTES,
  STREAM_FRAME_BYTES,
} from "./_protocol.ts";

// Captured before any user code runs: user code can replace globals and
// prototype methods, and must never see the nonce pass through them.
export const writeStdout = Deno.stdout.writeSync.bind(Deno.stdout);
export const U8 = Uint8Array;
export const u8Set = Uint8Array.prototype.set;
export const apply = Reflect.apply;
export const stringify = JSON.stringify;
export const encoder = new TextEncoder();
export const encode = TextEncoder.prototype.encode;
// Typed-array accessors, captured: a replaced getter would otherwise be
// called with the frame being built (which holds the nonce) as `this`.
export const typedArrayProto = Object.getPrototypeOf(Uint8Array.prototype);
export const getLength = Object.getOwnPropertyDescriptor(
  typedArrayProto,
  "length",
)!
  .get!;
export const getBuffer = Object.getOwnPropertyDescriptor(
  typedArrayProto,
  "buffer",
)!
  .get!;
export const getByteOffset = Object.getOwnPropertyDescriptor(
  typedArrayProto,
  "byteOffset",
)!.get!;
export const parse = JSON.parse;
export const objectKeys = Object.keys;
export const createObject = Object.create;
export const defineProperty = Reflect.defineProperty;
export const strStartsWith = String.prototype.startsWith;
export const strEndsWith = String.prototype.endsWith;
export const mapGet = Map.prototype.get;
export const mapSet = Map.prototype.set;
export const mapForEach = Map.prototype.forEach;
/** Largest stdout/stderr frame: bigger writes are split. */

// Frames, their headers and the files index are built only with the values
// captured above (after user code ran, every global and prototype method may
// be the attacker's): no JSON.stringify of an object (toJSON), no Math, no
// Array or String methods, no typed-array getters or methods.

/** Appends without Array.prototype.push (or a setter planted on it). */
export function append<T>(array: T[], item: T): void {
  defineProperty(array, array.length, {
    __proto__: null,
    value: item,
    writable: true,
    enumerable: true,
    configurable: true,
  } as PropertyDescriptor);
}

/** A fresh object with no prototype, for headers and index entries. */
export function record(): Record<string, unknown> {
  return createObject(null);
}

export function encodeText(text: string): Uint8Array {
  return apply(encode, encoder, [text]);
}

export function byteLength(bytes: Uint8Array): number {
  return apply(getLength, bytes, []);
}

/** `bytes.subarray(start, end)` without the (replaceable) method. */
export function view(
  bytes: Uint8Array,
  start: number,
  end: number,
): Uint8Array {
  const buffer: ArrayBuffer = apply(getBuffer, bytes, []);
  const offset: number = apply(getByteOffset, bytes, []);
  return new U8(buffer, offset + start, end - start);
}

/** Sorts strings (merge sort) without Array.prototype.sort. */
export function sortStrings(items: string[]): string[] {
  if (items.length < 2) return items;
  const half = items.length >> 1;
  const left: string[] = [];
  const right: string[] = [];
  for (let i = 0; i < items.length; i++) {
    append(i < half ? left : right, items[i]);
  }
  const a = sortStrings(left);
  const b = sortStrings(right);
  const out: string[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    if (j >= b.length || (i < a.length && a[i] <= b[j])) append(out, a[i++]);
    else append(out, b[j++]);
  }
  return out;
}

let nonce: Uint8Array = new U8(NONCE_BYTES);

/** Sets the frame nonce (from the init frame). */
export function setNonce(bytes: Uint8Array): void {
  nonce = bytes;
}

export function send(type: number, json: unknown, bin?: Uint8Array): void {
  // Only captured functions touch the frame: no getter, species constructor
  // or method that user code can replace ever sees it (or the nonce in it).
  const frame = encodeToParent(nonce, type, json, bin);
  const total = byteLength(frame);
  const buffer: ArrayBuffer = apply(getBuffer, frame, []);
  let offset = 0;
  while (offset < total) {
    offset += writeStdout(new U8(buffer, offset));
  }
}

/**
 * Sends a stdout or stderr write as frames of at most 64 KiB, so the
 * parent never has to buffer a huge frame (it keeps only maxOutputBytes).
 */
export function sendStream(type: number, buf: Uint8Array): void {
  const length: number = apply(getLength, buf, []);
  const buffer: ArrayBuffer = apply(getBuffer, buf, []);
  const byteOffset: number = apply(getByteOffset, buf, []);
  for (let i = 0; i < length; i += STREAM_FRAME_BYTES) {
    const n = length - i < STREAM_FRAME_BYTES ? length - i : STREAM_FRAME_BYTES;
    send(type, null, new U8(buffer, byteOffset + i, n));
  }
}

// deno-lint-ignore no-explicit-any
export type Pyodide = any;
// deno-lint-ignore no-explicit-any
export type Loose = any;
