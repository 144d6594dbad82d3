/**
 * Host-side validation of everything a child sends: caps on frame headers,
 * and checks of host-call and install requests, result and saved-state
 * headers, displays and the files index. The child is hostile: each check
 * returns either the checked value or a description of what was wrong, and
 * never throws into the host.
 *
 * The wire format itself (constants, typed messages, codecs) is in
 * `_protocol.ts`, which the child also runs; this file is the host's only.
 *
 * @module
 */

import {
  type HostCallRequest,
  isCount,
  isRecord,
  MAX_RESULT_HEADER_BYTES,
  type ResultHeader,
  type RunnerOut,
  type SavedHeader,
  STREAM_FRAME_BYTES,
  ToParent,
  type WireJson,
} from "./_protocol.ts";

/** Largest result or saved-state header (the result value travels in it). */
export const MAX_HEADER_BYTES = MAX_RESULT_HEADER_BYTES;

/** Largest host-function request (its JSON arguments). */
export const MAX_CALL_BYTES = 64 * 1024 * 1024;
/** Slack above `maxTotalFileBytes` for the files index. */
export const FILES_INDEX_SLACK = 16 * 1024 * 1024;
/** Host-function requests that may wait for an answer at once. */
export const MAX_PENDING_CALLS = 16;
/** Longest host-function name. */
export const MAX_CALL_NAME = 256;
/** A fatal frame's message is cut to this many characters. */
export const MAX_FATAL_CHARS = 4096;
/** Longest MIME type key of a display. */
export const MAX_MIME_CHARS = 128;
/** Entries of a files index. */
export const MAX_FILE_ENTRIES = 100_000;
/** Entries and name length of the installed-packages list. */
const MAX_PACKAGES = 10_000;
const MAX_PACKAGE_CHARS = 1024;
/** Short frames (ready, stdout, ...) carry at most this much JSON. */
const SMALL_JSON = 64;
const SMALL_FRAME_JSON = 64 * 1024;

/** Caps of one child's frames. */
export interface FrameLimits {
  /** The child's memory cap: session state and snapshots stay below it. */
  stateBytes: number;
  /** `maxDisplayBytes` of the sandbox. */
  maxDisplayBytes: number;
  /** `maxTotalFileBytes` of the sandbox. */
  maxTotalFileBytes: number;
}

/**
 * The largest JSON header and attachment a frame of this type may declare.
 *
 * @param type The frame type.
 * @param limits The child's caps.
 * @returns The caps, or `undefined` for an unknown type.
 */
export function frameCaps(
  type: number,
  limits: FrameLimits,
): { json: number; bin: number } | undefined {
  switch (type) {
    case ToParent.stdout:
    case ToParent.stderr:
      return { json: SMALL_JSON, bin: STREAM_FRAME_BYTES };
    case ToParent.ready:
      return { json: SMALL_FRAME_JSON, bin: 0 };
    case ToParent.snapshot:
      return { json: SMALL_FRAME_JSON, bin: limits.stateBytes };
    case ToParent.result:
    case ToParent.saved:
      return { json: MAX_HEADER_BYTES, bin: limits.stateBytes };
    case ToParent.call:
      return { json: MAX_CALL_BYTES, bin: 0 };
    case ToParent.display:
      return { json: limits.maxDisplayBytes + 1024, bin: 0 };
    case ToParent.fatal:
      return { json: SMALL_FRAME_JSON, bin: 0 };
    case ToParent.files:
      return {
        json: SMALL_JSON,
        bin: limits.maxTotalFileBytes + FILES_INDEX_SLACK,
      };
    default:
      return undefined;
  }
}

/** A checked value, or what was wrong with it. */
export type Checked<T> = { ok: true; value: T } | { ok: false; error: string };

function fail<T>(error: string): Checked<T> {
  return { ok: false, error };
}

function isStringArray(value: unknown, max: number, chars: number): boolean {
  return Array.isArray(value) && value.length <= max &&
    value.every((v) => typeof v === "string" && v.length <= chars);
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return typeof value === "object" ? "an object" : typeof value;
}

/**
 * Checks a host-function request.
 *
 * @param json The call frame's header.
 * @returns The request, or why it is invalid.
 */
export function checkHostCall(json: unknown): Checked<HostCallRequest> {
  if (!isRecord(json)) {
    return fail(`expected an object, got ${describe(json)}`);
  }
  const { name, args } = json;
  if (typeof name !== "string") {
    return fail(`name must be a string, got ${describe(name)}`);
  }
  if (name.length === 0 || name.length > MAX_CALL_NAME) {
    return fail(`name must have 1 to ${MAX_CALL_NAME} characters`);
  }
  if (!Array.isArray(args)) {
    return fail(`args must be an array, got ${describe(args)}`);
  }
  return { ok: true, value: { name, args: args as WireJson[] } };
}

/**
 * Checks the arguments of the runner's package request.
 *
 * @param args `[imports, required, installed]`.
 * @returns The three lists, or why they are invalid.
 */
export function checkInstallArgs(
  args: unknown[],
): Checked<[string[], string[], string[]]> {
  if (
    args.length !== 3 ||
    !args.every((list) => isStringArray(list, MAX_PACKAGES, MAX_PACKAGE_CHARS))
  ) {
    return fail(
      `expected three lists of package names (imports, required, installed)`,
    );
  }
  return { ok: true, value: args as [string[], string[], string[]] };
}

function optional(
  json: Record<string, unknown>,
  name: string,
  type: "string" | "boolean",
): string | undefined {
  const value = json[name];
  if (value === undefined || typeof value === type) return undefined;
  return `${name} must be a ${type}, got ${describe(value)}`;
}

function checkSaved(json: unknown): Checked<SavedHeader> {
  if (!isRecord(json)) return fail(`expected an object, got ${describe(json)}`);
  const wrong = optional(json, "stateError", "string") ??
    optional(json, "droppedGlobals", "string");
  if (wrong) return fail(wrong);
  const packages = json.packages;
  if (
    packages !== undefined &&
    !isStringArray(packages, MAX_PACKAGES, MAX_PACKAGE_CHARS)
  ) {
    return fail("packages must be a list of package names");
  }
  return {
    ok: true,
    value: {
      packages: packages as string[] | undefined,
      stateError: json.stateError as string | undefined,
      droppedGlobals: json.droppedGlobals as string | undefined,
    },
  };
}

/**
 * Checks a saved-state frame header.
 *
 * @param json The header.
 * @returns The header, or why it is invalid.
 */
export function checkSavedHeader(json: unknown): Checked<SavedHeader> {
  const checked = checkSaved(json);
  return checked.ok ? checked : fail(`invalid saved state: ${checked.error}`);
}

function checkRunnerOut(wire: unknown): Checked<RunnerOut> {
  // An object, or (older runners) its JSON text.
  let out: unknown = wire;
  if (typeof wire === "string") {
    try {
      out = JSON.parse(wire);
    } catch {
      return fail("out is not JSON");
    }
  } else if (!isRecord(wire)) {
    return fail(`out must be an object, got ${describe(wire)}`);
  }
  if (!isRecord(out) || typeof out.ok !== "boolean") {
    return fail("out must be an object with a boolean ok");
  }
  const error = out.error;
  if (!out.ok && error === undefined) return fail("a failed run has no error");
  if (error !== undefined) {
    if (
      !isRecord(error) || typeof error.type !== "string" ||
      typeof error.message !== "string" ||
      (error.traceback !== undefined && typeof error.traceback !== "string")
    ) {
      return fail("error must have string type, message and traceback");
    }
  }
  return {
    ok: true,
    value: {
      ok: out.ok,
      result: out.result as WireJson | undefined,
      error: error as RunnerOut["error"],
    },
  };
}

/**
 * Checks a result frame header, including the run report inside it.
 *
 * @param json The header.
 * @returns The header, or why it is invalid.
 */
export function checkResultHeader(json: unknown): Checked<ResultHeader> {
  const saved = checkSaved(json);
  if (!saved.ok) return fail(`invalid result: ${saved.error}`);
  const header = json as Record<string, unknown>;
  const wrong = optional(header, "installError", "boolean") ??
    optional(header, "notRun", "boolean");
  if (wrong) return fail(`invalid result: ${wrong}`);
  const out = checkRunnerOut(header.out);
  if (!out.ok) return fail(`invalid result: ${out.error}`);
  return {
    ok: true,
    value: {
      ...saved.value,
      out: out.value,
      installError: header.installError === true,
      notRun: header.notRun === true,
    },
  };
}

/**
 * A fatal frame's message, as text of bounded length.
 *
 * @param json The header.
 * @returns The message.
 */
export function fatalMessage(json: unknown): string {
  const message = isRecord(json) ? json.message : undefined;
  const text = typeof message === "string" ? message : "no message";
  return text.length > MAX_FATAL_CHARS
    ? `${text.slice(0, MAX_FATAL_CHARS)}...`
    : text;
}

const MIME = /^[a-z0-9][a-z0-9!#$&^_.+-]*\/[a-z0-9][a-z0-9!#$&^_.+-]*$/i;

function isJsonMime(mime: string): boolean {
  const type = mime.toLowerCase();
  return type === "application/json" || type.endsWith("+json");
}

/**
 * Checks a display: an object of MIME type to data, where the data is a
 * string (any JSON value for JSON types).
 *
 * @param json The display frame's header.
 * @returns The bundle, or why it is invalid.
 */
export function checkDisplay(json: unknown): Checked<Record<string, WireJson>> {
  if (!isRecord(json)) {
    return fail(
      `expected an object of MIME type to data, got ${describe(json)}`,
    );
  }
  const entries = Object.entries(json);
  if (entries.length === 0) return fail("it has no MIME type");
  for (const [mime, data] of entries) {
    if (mime.length > MAX_MIME_CHARS || !MIME.test(mime)) {
      return fail(`${JSON.stringify(mime.slice(0, 40))} is not a MIME type`);
    }
    if (typeof data !== "string" && !isJsonMime(mime)) {
      return fail(`the data of ${mime} must be a string`);
    }
  }
  return { ok: true, value: json as Record<string, WireJson> };
}

/** Where returned files may be and how large they may be. */
export interface FileLimits {
  /** Folders files may be under (the working folder, write grants). */
  roots: string[];
  /** Paths files may be exactly (write grants that are files). */
  exact: string[];
  maxFileBytes: number;
  maxTotalFileBytes: number;
}

/** A returned file (the same shape as `ResultFile` in `result.ts`). */
export interface ReceivedFile {
  path: string;
  size: number;
  content: Uint8Array;
  truncated: boolean;
}

/** Checked files, and what was dropped. */
export interface CheckedFiles {
  files: ReceivedFile[];
  dropped: number;
  /** Why the first entry was dropped. */
  reason?: string;
}

/**
 * Checks a sandbox path: absolute, normalized, without NUL, inside a root.
 *
 * @param path The path.
 * @param roots Folders the path may be below.
 * @param exact Paths it may be exactly (granted files).
 * @returns Why it is not acceptable, or `undefined`.
 */
export function checkSandboxPath(
  path: unknown,
  roots: string[],
  exact: string[] = [],
): string | undefined {
  if (typeof path !== "string") return "a path is not a string";
  if (path.length === 0 || path.length > 4096) return "a path is too long";
  if (path.includes("\0")) return "a path contains NUL";
  if (!path.startsWith("/")) return "a path is not absolute";
  const parts = path.slice(1).split("/");
  if (parts.some((p) => p === "" || p === "." || p === "..")) {
    return `${JSON.stringify(path.slice(0, 200))} is not a normalized path`;
  }
  const inside = exact.includes(path) || roots.some((root) => {
    const base = root.endsWith("/") ? root : `${root}/`;
    return path.startsWith(base);
  });
  return inside
    ? undefined
    : `${JSON.stringify(path.slice(0, 200))} is outside the sandbox's folders`;
}

/**
 * Decodes the files frame: `[u32 index length][index JSON][contents]`. Bad
 * entries are dropped; sizes and caps are enforced here, not trusted.
 *
 * @param bin The frame's attachment.
 * @param limits Roots and caps.
 * @returns The files and what was dropped.
 */
export function decodeFiles(bin: Uint8Array, limits: FileLimits): CheckedFiles {
  const out: CheckedFiles = { files: [], dropped: 0 };
  const drop = (reason: string) => {
    out.dropped++;
    out.reason ??= reason;
  };
  if (bin.length < 4) {
    drop("the index is missing");
    return out;
  }
  const length = new DataView(bin.buffer, bin.byteOffset).getUint32(0);
  let index: unknown;
  try {
    if (4 + length > bin.length) throw new RangeError("past the end");
    index = JSON.parse(new TextDecoder().decode(bin.subarray(4, 4 + length)));
  } catch {
    drop("the index is not JSON");
    return out;
  }
  if (!Array.isArray(index) || index.length > MAX_FILE_ENTRIES) {
    drop(`the index must be a list, got ${describe(index)}`);
    return out;
  }
  let offset = 4 + length;
  let total = 0;
  const seen = new Set<string>();
  for (const entry of index) {
    const file = checkFileEntry(entry, limits, seen);
    if (typeof file === "string") {
      drop(file);
      // Without a usable length the rest cannot be located.
      if (!isRecord(entry) || !isCount(entry.length)) break;
      offset += entry.length;
      continue;
    }
    if (offset + file.length > bin.length) {
      drop("an entry runs past the attached bytes");
      break;
    }
    const keep = Math.min(
      file.length,
      limits.maxFileBytes,
      Math.max(0, limits.maxTotalFileBytes - total),
    );
    // A file the child says is whole is as long as its bytes, whatever size
    // it claims; a cut one is at least as long.
    const truncated = file.truncated || keep < file.length;
    total += keep;
    out.files.push({
      path: file.path,
      size: truncated ? Math.max(file.size, file.length) : keep,
      content: bin.slice(offset, offset + keep),
      truncated,
    });
    offset += file.length;
  }
  return out;
}

function checkFileEntry(
  entry: unknown,
  limits: FileLimits,
  seen: Set<string>,
): string | { path: string; size: number; length: number; truncated: boolean } {
  if (!isRecord(entry)) return `an entry is ${describe(entry)}`;
  const { path, size, length, truncated } = entry;
  const bad = checkSandboxPath(path, limits.roots, limits.exact);
  if (bad) return bad;
  if (!isCount(size) || !isCount(length) || typeof truncated !== "boolean") {
    return "an entry has no valid size, length or truncated flag";
  }
  if (seen.has(path as string)) return "a path is listed twice";
  seen.add(path as string);
  return { path: path as string, size, length, truncated };
}
