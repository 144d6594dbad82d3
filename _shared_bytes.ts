/**
 * Moves bytes between threads through SharedArrayBuffers: Deno's
 * `node:worker_threads` ports copy large typed arrays slowly (seconds for
 * 20 MB), while a shared buffer is passed by reference.
 *
 * @module
 */

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
