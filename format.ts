/**
 * The text and image parts an LLM should see for one execution:
 * {@linkcode formatResult}, used by the MCP server and by
 * {@linkcode pythonTool}.
 *
 * @module
 */

import type { CodeExecutionResult, MimeBundle } from "./result.ts";

/** A text part of a tool result. */
export interface TextPart {
  /** Always `"text"`. */
  type: "text";
  /** The text. */
  text: string;
}

/** An image part of a tool result. */
export interface ImagePart {
  /** Always `"image"`. */
  type: "image";
  /** The image's bytes, base64-encoded. */
  data: string;
  /** The image's MIME type, e.g. `"image/png"`. */
  mimeType: string;
}

/**
 * One part of what a model sees: text, or a base64 image. The same shape
 * as MCP's text and image content blocks.
 */
export type ContentPart = TextPart | ImagePart;

/** Image MIME types sent as image parts by default. */
export const IMAGE_MIME_TYPES: readonly string[] = [
  "image/png",
  "image/jpeg",
  "image/gif",
  "image/webp",
];

/** Options of {@linkcode formatResult}. */
export interface FormatResultOptions {
  /**
   * Characters at most in the body of each text part (stdout, stderr or
   * the error, each display, the result). Longer text keeps its start and
   * its end around a `[... N characters omitted ...]` line, so the last
   * lines of output and of a traceback stay visible. `Infinity` keeps all.
   * @default {20000}
   */
  maxTextChars?: number;
  /**
   * Send image displays as image parts. When false (for models without
   * vision), each image is described by a text part instead.
   * @default {true}
   */
  images?: boolean;
  /**
   * Displays shown at most (text and images); the rest are counted in one
   * `[N more displays not shown]` part, so code that displays in a loop
   * cannot flood the model.
   * @default {20}
   */
  maxDisplays?: number;
  /**
   * Image parts at most; later images are described by a text part.
   * @default {8}
   */
  maxImages?: number;
  /**
   * Decoded bytes at most of one image part; a larger image is described
   * by a text part (model APIs reject large images: Anthropic's limit is
   * 5 MB).
   * @default {5000000}
   */
  maxImageBytes?: number;
  /**
   * Image MIME types sent as image parts, in order of preference when a
   * display has several.
   * @default {["image/png", "image/jpeg", "image/gif", "image/webp"]}
   */
  imageMimeTypes?: readonly string[];
  /**
   * List the files the code created or changed (path and size; never
   * their contents).
   * @default {true}
   */
  files?: boolean;
}

interface Settings {
  maxTextChars: number;
  images: boolean;
  maxDisplays: number;
  maxImages: number;
  maxImageBytes: number;
  imageMimeTypes: readonly string[];
  files: boolean;
}

function countOption(
  options: FormatResultOptions,
  name: "maxTextChars" | "maxDisplays" | "maxImages" | "maxImageBytes",
  fallback: number,
  min: number,
): number {
  const value = options[name];
  if (value === undefined) return fallback;
  if (
    typeof value !== "number" || Number.isNaN(value) || value < min ||
    (!Number.isInteger(value) && value !== Infinity)
  ) {
    throw new RangeError(
      `Invalid ${name}: expected an integer >= ${min} or Infinity, got ${
        String(value)
      }`,
    );
  }
  return value;
}

function booleanOption(
  options: FormatResultOptions,
  name: "images" | "files",
): boolean {
  const value = options[name];
  if (value === undefined) return true;
  if (typeof value !== "boolean") {
    throw new TypeError(`Invalid ${name}: expected a boolean`);
  }
  return value;
}

function settingsOf(options: FormatResultOptions): Settings {
  if (typeof options !== "object" || options === null) {
    throw new TypeError("Invalid options: expected an object");
  }
  const types = options.imageMimeTypes ?? IMAGE_MIME_TYPES;
  if (
    !Array.isArray(types) ||
    !types.every((t) => typeof t === "string" && t.startsWith("image/"))
  ) {
    throw new TypeError(
      'Invalid imageMimeTypes: expected an array of "image/..." strings',
    );
  }
  return {
    maxTextChars: countOption(options, "maxTextChars", 20_000, 100),
    images: booleanOption(options, "images"),
    maxDisplays: countOption(options, "maxDisplays", 20, 0),
    maxImages: countOption(options, "maxImages", 8, 0),
    maxImageBytes: countOption(options, "maxImageBytes", 5_000_000, 1),
    imageMimeTypes: types,
    files: booleanOption(options, "files"),
  };
}

/**
 * Checks format options the way {@linkcode formatResult} does, so a tool
 * or server can refuse bad ones when it is created rather than at its
 * first call.
 *
 * @param options The options to check.
 * @throws {TypeError} When an option has the wrong type.
 * @throws {RangeError} When a limit is out of range.
 * @example
 * ```ts
 * import { checkFormatOptions } from "./format.ts";
 * checkFormatOptions({ maxTextChars: 1000 });
 * ```
 */
export function checkFormatOptions(options: FormatResultOptions): void {
  settingsOf(options);
}

/**
 * Cuts text longer than `max` characters to its start and end around a
 * marker line, never splitting a surrogate pair.
 */
function clip(text: string, max: number): string {
  if (text.length <= max) return text;
  const marker = (n: number) => `\n[... ${n} characters omitted ...]\n`;
  const room = Math.max(0, max - marker(text.length).length);
  let head = Math.ceil(room / 2);
  let tail = text.length - Math.floor(room / 2);
  if (/[\udc00-\udfff]/.test(text[head] ?? "")) head--;
  if (/[\udc00-\udfff]/.test(text[tail] ?? "")) tail++;
  return text.slice(0, head) + marker(tail - head) + text.slice(tail);
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** Leading bytes of each binary image type. */
const MAGIC: Record<string, (b: Uint8Array) => boolean> = {
  "image/png": (b) =>
    [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a].every((v, i) =>
      b[i] === v
    ),
  "image/jpeg": (b) => b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff,
  "image/gif": (b) => String.fromCharCode(...b.slice(0, 4)) === "GIF8",
  "image/webp": (b) =>
    String.fromCharCode(...b.slice(0, 4)) === "RIFF" &&
    String.fromCharCode(...b.slice(8, 12)) === "WEBP",
};

/**
 * Why base64 `data` cannot be sent as a `mimeType` image part, or
 * undefined when it can: it must be well-formed base64 within the size
 * cap whose first bytes match the type (model APIs reject a mislabelled
 * image, which would fail the whole conversation turn).
 */
function imageProblem(
  data: string,
  mimeType: string,
  maxBytes: number,
): string | undefined {
  const bytes = Math.floor(data.length / 4) * 3 -
    (data.endsWith("==") ? 2 : data.endsWith("=") ? 1 : 0);
  if (data.length === 0 || data.length % 4 !== 0 || !BASE64.test(data)) {
    return "not valid base64";
  }
  if (bytes > maxBytes) return `${bytes} bytes, over the ${maxBytes} limit`;
  const check = MAGIC[mimeType];
  if (check) {
    const head = Uint8Array.from(
      atob(data.slice(0, 16)),
      (c) => c.charCodeAt(0),
    );
    if (!check(head)) return `its bytes are not ${mimeType}`;
  }
  return undefined;
}

function displayText(bundle: MimeBundle): string | undefined {
  for (const type of ["text/markdown", "text/plain"]) {
    if (typeof bundle[type] === "string") return bundle[type] as string;
  }
  return undefined;
}

function displayParts(
  displays: readonly MimeBundle[],
  s: Settings,
): ContentPart[] {
  const parts: ContentPart[] = [];
  let images = 0;
  let hidden = 0;
  for (const bundle of displays) {
    if (typeof bundle !== "object" || bundle === null) continue;
    // Each display gives at most one part.
    if (parts.length >= s.maxDisplays) {
      hidden++;
      continue;
    }
    const mimeType = s.imageMimeTypes.find((t) =>
      typeof bundle[t] === "string"
    );
    const text = displayText(bundle);
    if (mimeType === undefined) {
      if (text !== undefined) {
        parts.push({
          type: "text",
          text: `display:\n${clip(text, s.maxTextChars)}`,
        });
      }
      continue;
    }
    const data = bundle[mimeType] as string;
    const problem = !s.images
      ? "images are off"
      : imageProblem(data, mimeType, s.maxImageBytes) ??
        (images >= s.maxImages ? `more than ${s.maxImages} images` : undefined);
    if (problem === undefined) {
      images++;
      parts.push({ type: "image", data, mimeType });
      continue;
    }
    const alt = text === undefined ? "" : `\n${clip(text, s.maxTextChars)}`;
    parts.push({
      type: "text",
      text: `display: [${mimeType} image not shown: ${problem}]${alt}`,
    });
  }
  if (hidden) {
    parts.push({
      type: "text",
      text: `[${hidden} more display${hidden === 1 ? "" : "s"} not shown]`,
    });
  }
  return parts;
}

/** The error part: stderr plus the traceback or message, once. */
function errorPart(
  r: CodeExecutionResult,
  stderrCut: boolean,
  max: number,
): TextPart {
  const e = r.error;
  let text = typeof r.stderr === "string" ? r.stderr : "";
  if (e?.traceback && !text.includes(e.traceback)) text += e.traceback;
  if (e && !e.traceback && e.message && !text.includes(e.message)) {
    text += `${e.message}\n`;
  }
  const label = `${e?.kind ?? "crash"}${e?.type ? `: ${e.type}` : ""}`;
  return {
    type: "text",
    text: `error (${label}):\n${clip(text.trimEnd(), max)}${
      stderrCut ? "\n[stderr truncated]" : ""
    }`,
  };
}

function resultPart(
  r: CodeExecutionResult,
  max: number,
): TextPart | undefined {
  if (r.status !== "success" || r.result === null || r.result === undefined) {
    return undefined;
  }
  const value = r.result as { type?: unknown; repr?: unknown };
  if (value.type === "not_serializable" && typeof value.repr === "string") {
    // Shown as its repr, unless it was already shown as a display.
    const shown = (r.displays ?? []).some((d) =>
      d?.["text/plain"] === value.repr
    );
    return shown
      ? undefined
      : { type: "text", text: `result:\n${clip(value.repr, max)}` };
  }
  let json: string;
  try {
    json = JSON.stringify(r.result, null, 2) ?? String(r.result);
  } catch {
    json = "(a value that could not be shown)";
  }
  return { type: "text", text: `result:\n${clip(json, max)}` };
}

/**
 * Turns a {@linkcode CodeExecutionResult} into what a model should see:
 * text parts for stdout, stderr (or, for an error, the error kind and
 * type with stderr and the traceback), each display and the value of the
 * last expression, and image parts for PNG, JPEG, GIF and WebP displays.
 * A part reads `"(no output)"` when there is nothing else. Long text is
 * cut in the middle (see `maxTextChars`); an image that is malformed,
 * mislabelled or too large becomes a text part saying so, so the parts
 * are always safe to send to a model API.
 *
 * Whether the call failed is `result.status === "error"`; tools report it
 * as their `isError`.
 *
 * @param result The result of an execution.
 * @param options Text and image limits.
 * @returns The parts, in output order; never empty.
 * @throws {TypeError} When an option has the wrong type.
 * @throws {RangeError} When a limit is out of range.
 * @example
 * ```ts
 * import { formatResult } from "./mod.ts";
 * const parts = formatResult({
 *   status: "success",
 *   stdout: "hi\n",
 *   stderr: "",
 *   result: 42,
 *   executionTime: 0.1,
 * });
 * console.log(parts); // [{ type: "text", text: "stdout:\nhi\n" }, { type: "text", text: "result:\n42" }]
 * ```
 */
export function formatResult(
  result: CodeExecutionResult,
  options: FormatResultOptions = {},
): ContentPart[] {
  const s = settingsOf(options);
  if (typeof result !== "object" || result === null) {
    throw new TypeError("Invalid result: expected a CodeExecutionResult");
  }
  const parts: ContentPart[] = [];
  if (typeof result.stdout === "string" && result.stdout) {
    parts.push({
      type: "text",
      text: `stdout:\n${clip(result.stdout, s.maxTextChars)}${
        result.stdoutTruncated === true ? "\n[stdout truncated]" : ""
      }`,
    });
  }
  const stderrCut = result.stderrTruncated === true;
  if (result.status === "error") {
    parts.push(errorPart(result, stderrCut, s.maxTextChars));
  } else if (typeof result.stderr === "string" && result.stderr) {
    parts.push({
      type: "text",
      text: `stderr:\n${clip(result.stderr, s.maxTextChars)}${
        stderrCut ? "\n[stderr truncated]" : ""
      }`,
    });
  }
  if (Array.isArray(result.displays)) {
    parts.push(...displayParts(result.displays, s));
  }
  if (s.files && Array.isArray(result.files) && result.files.length) {
    const list = result.files.map((f) =>
      `${f.path} (${f.size} bytes${f.truncated ? ", truncated" : ""})`
    ).join("\n");
    parts.push({ type: "text", text: `files:\n${clip(list, s.maxTextChars)}` });
  }
  const value = resultPart(result, s.maxTextChars);
  if (value) parts.push(value);
  if (parts.length === 0) parts.push({ type: "text", text: "(no output)" });
  return parts;
}
