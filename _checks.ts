/**
 * Small checks shared by the option validation of the sandboxes: numbers
 * against a range, session-bytes pairs, string lists, host functions, the
 * session secret and input files.
 *
 * @module
 */

import type { HostFunction } from "./options.ts";
import { concatBytes } from "./_bytes.ts";

/** The accepted values of a numeric option. */
export interface NumberRange {
  /** The smallest accepted value. */
  min: number;
  /** The largest accepted value. */
  max: number;
  /** Only integers are accepted. */
  integer: boolean;
}

/**
 * Checks a number against a range.
 *
 * @param name The option, for the message.
 * @param value The value given.
 * @param r The accepted range.
 * @returns The value.
 * @throws {TypeError} When it is not a number (or not an integer).
 * @throws {RangeError} When it is out of range.
 */
export function checkNumber(
  name: string,
  value: unknown,
  r: NumberRange,
): number {
  const what = `${
    r.integer ? "an integer" : "a number"
  } from ${r.min} to ${r.max}`;
  if (
    typeof value !== "number" || Number.isNaN(value) ||
    (r.integer && !Number.isInteger(value))
  ) {
    throw new TypeError(
      `Invalid ${name}: expected ${what}, got ${
        typeof value === "number" ? value : typeof value
      }`,
    );
  }
  if (value < r.min || value > r.max) {
    throw new RangeError(`Invalid ${name}: expected ${what}, got ${value}`);
  }
  return value;
}

/**
 * Checks `sessionBytes`/`sessionMetadata` as a pair.
 *
 * @param bytes Session bytes, or undefined.
 * @param metadata Their metadata, or undefined.
 * @throws {TypeError} When bytes come without metadata or a value has the
 *   wrong type.
 */
export function checkSessionPair(bytes: unknown, metadata: unknown): void {
  if (bytes === undefined && metadata === undefined) return;
  if (!(bytes instanceof Uint8Array)) {
    throw new TypeError(
      `Invalid sessionBytes: expected a Uint8Array, got ${
        bytes === undefined
          ? "undefined (metadata without bytes)"
          : typeof bytes
      }`,
    );
  }
  if (
    metadata === null || typeof metadata !== "object" ||
    Array.isArray(metadata)
  ) {
    throw new TypeError(
      `Invalid sessionMetadata: session bytes need the sessionMetadata object returned with them, got ${
        metadata === null ? "null" : typeof metadata
      }`,
    );
  }
}

const PYTHON_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * Checks a list of non-empty strings.
 *
 * @param name The option, for the message.
 * @param value The value given.
 * @returns A copy.
 * @throws {TypeError} When it is not such a list.
 */
export function checkStrings(name: string, value: unknown): string[] {
  if (
    !Array.isArray(value) ||
    value.some((v) => typeof v !== "string" || v === "")
  ) {
    throw new TypeError(
      `Invalid ${name}: expected ${
        name === "packageDir" ? "a path" : "an array of non-empty strings"
      }`,
    );
  }
  return [...value];
}

/**
 * Checks the `functions` option: Python identifiers to functions.
 *
 * @param functions The value given.
 * @returns A copy.
 * @throws {TypeError} When a name or value is invalid.
 */
export function checkFunctions(
  functions: unknown,
): Record<string, HostFunction> {
  if (
    functions === null || typeof functions !== "object" ||
    Array.isArray(functions)
  ) {
    throw new TypeError(
      "Invalid functions: expected an object mapping names to functions",
    );
  }
  const out: Record<string, HostFunction> = {};
  for (const [name, fn] of Object.entries(functions)) {
    if (!PYTHON_NAME.test(name)) {
      throw new TypeError(
        `Invalid functions entry: "${name}" is not a valid Python identifier`,
      );
    }
    if (typeof fn !== "function") {
      throw new TypeError(
        `Invalid functions entry: "${name}" is ${typeof fn}, expected a function`,
      );
    }
    out[name] = fn as HostFunction;
  }
  return out;
}

/**
 * Checks a `sessionSecret` (at least 16 bytes).
 *
 * @param secret The value given.
 * @returns Its bytes (a copy), or undefined.
 * @throws {TypeError} When it is not a string or a Uint8Array.
 * @throws {RangeError} When it is too short.
 */
export function checkSecret(secret: unknown): Uint8Array | undefined {
  if (secret === undefined) return undefined;
  let bytes: Uint8Array;
  if (typeof secret === "string") bytes = new TextEncoder().encode(secret);
  else if (secret instanceof Uint8Array) bytes = secret.slice();
  else {
    throw new TypeError(
      `Invalid sessionSecret: expected a string or a Uint8Array, got ${typeof secret}`,
    );
  }
  if (bytes.length < 16) {
    throw new RangeError(
      `Invalid sessionSecret: expected at least 16 bytes, got ${bytes.length}`,
    );
  }
  return bytes;
}

/**
 * Checks the `files` option and packs it for the child.
 *
 * @param files Sandbox path to contents.
 * @returns The index and the concatenated bytes.
 * @throws {TypeError} When a path or content is invalid.
 */
export function packInputFiles(
  files: unknown,
): { index: { path: string; size: number }[]; bin: Uint8Array } {
  if (files === null || typeof files !== "object" || Array.isArray(files)) {
    throw new TypeError(
      "Invalid files: expected an object mapping sandbox paths to Uint8Array or string contents",
    );
  }
  const index: { path: string; size: number }[] = [];
  const blobs: Uint8Array[] = [];
  for (const [path, content] of Object.entries(files)) {
    if (path === "" || path.includes("\0")) {
      throw new TypeError(
        `Invalid files entry: ${JSON.stringify(path)} is not a usable path`,
      );
    }
    let bytes: Uint8Array;
    if (typeof content === "string") bytes = new TextEncoder().encode(content);
    else if (content instanceof Uint8Array) bytes = content;
    else {
      throw new TypeError(
        `Invalid files entry: "${path}" must be a Uint8Array or a string, got ${typeof content}`,
      );
    }
    index.push({ path, size: bytes.length });
    blobs.push(bytes);
  }
  return { index, bin: concatBytes(blobs) };
}
