/**
 * Byte helpers shared by the host side: concatenation, hex, a
 * constant-time comparison, base64 for bytes in JSON (CLI output, HTTP
 * API), and SharedArrayBuffers for moving bytes
 * between threads (Deno's `node:worker_threads` ports copy large typed
 * arrays slowly — seconds for 20 MB — while a shared buffer is passed by
 * reference).
 *
 * @module
 */

/**
 * Joins byte arrays.
 *
 * @param parts The arrays, in order.
 * @returns One array holding them all.
 */
export function concatBytes(parts: Uint8Array[]): Uint8Array {
  let size = 0;
  for (const part of parts) size += part.length;
  const out = new Uint8Array(size);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/**
 * Formats bytes as lowercase hex.
 *
 * @param bytes Input.
 * @returns Two hex digits a byte.
 */
export function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Compares two byte arrays in time that does not depend on where they
 * differ (only on their length).
 *
 * @param a One array.
 * @param b The other.
 * @returns True when they have the same length and bytes.
 */
export function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

/**
 * Encodes bytes as standard base64.
 *
 * @param bytes Input.
 * @returns Base64 text.
 */
export function encodeBase64(bytes: Uint8Array): string {
  let binary = "";
  const chunk = 0x8000;
  for (let i = 0; i < bytes.length; i += chunk) {
    binary += String.fromCharCode(...bytes.subarray(i, i + chunk));
  }
  return btoa(binary);
}

/**
 * Decodes standard base64.
 *
 * @param text Base64 text.
 * @returns The bytes.
 * @throws {TypeError} When the text is not valid base64.
 */
export function decodeBase64(text: string): Uint8Array {
  let binary: string;
  try {
    binary = atob(text);
  } catch {
    throw new TypeError("Invalid base64: the text is not valid base64");
  }
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

/**
 * Copies bytes into a new SharedArrayBuffer.
 *
 * @param bytes Input.
 * @returns A shared buffer with the same bytes.
 */
export function toShared(bytes: Uint8Array): SharedArrayBuffer {
  const shared = new SharedArrayBuffer(bytes.length);
  new Uint8Array(shared).set(bytes);
  return shared;
}

/**
 * Copies a shared buffer back into an ordinary Uint8Array.
 *
 * @param shared Input.
 * @returns The bytes.
 */
export function fromShared(shared: SharedArrayBuffer): Uint8Array {
  return new Uint8Array(shared).slice();
}

/**
 * A 64-bit FNV-1a hash as 16 hex digits: a cache key, never a security check.
 *
 * @param text The text to hash.
 * @returns 16 lowercase hex digits.
 */
export function fnv(text: string): string {
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
