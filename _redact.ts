/**
 * Output filtering: replaces secrets (strings and RegExps) by
 * `[REDACTED]` in everything a call hands back (output, streamed chunks,
 * result, error, displays, text files).
 *
 * Redaction guards against accidental disclosure, not against code that
 * wants to leak a secret it can read: an encoded, reversed or split secret
 * passes. `sessionBytes` are never redacted (they are the interpreter's
 * memory; redacting them would corrupt the state).
 *
 * @module
 */

import type { JsonValue, MimeBundle, ResultFile } from "./result.ts";

/** What replaces each secret. */
export const REDACTED = "[REDACTED]";

/** A secret to hide: an exact string, or a pattern. */
export type RedactPattern = string | RegExp;

/**
 * With RegExp patterns, streamed text is released line by line; a line
 * longer than this is released in pieces anyway.
 */
export const STREAM_LINE_HOLD = 64 * 1024;

/** Environment values shorter than this are not redacted (`1`, `yes`...). */
export const MIN_ENV_SECRET_LENGTH = 4;

/**
 * Checks the `redact` option.
 *
 * @param value The option's value.
 * @returns A copy of the patterns.
 * @throws {TypeError} When it is not an array of non-empty strings and
 *   RegExps.
 * @example
 * ```ts
 * import { checkRedactOption } from "./_redact.ts";
 * checkRedactOption(["sk-123", /ghp_[A-Za-z0-9]+/]);
 * ```
 */
export function checkRedactOption(value: unknown): RedactPattern[] {
  if (!Array.isArray(value)) {
    throw new TypeError(
      `Invalid redact: expected an array of non-empty strings and RegExps, got ${
        value === null ? "null" : typeof value
      }`,
    );
  }
  return value.map((entry, i) => {
    if (entry instanceof RegExp) return entry;
    if (typeof entry === "string" && entry.length > 0) return entry;
    throw new TypeError(
      `Invalid redact entry ${i}: expected a non-empty string or a RegExp, got ${
        typeof entry === "string"
          ? "an empty string"
          : entry === null
          ? "null"
          : typeof entry
      }`,
    );
  });
}

/** Copies a RegExp with the `g` flag set and the `y` flag removed. */
function globalCopy(re: RegExp): RegExp {
  const flags = re.flags.replace(/[gy]/g, "") + "g";
  return new RegExp(re.source, flags);
}

/**
 * Replaces secrets in text, JSON values, MIME bundles, files and whole
 * results. All matches of all patterns are found in the original text and
 * overlapping matches are merged, so one `[REDACTED]` covers them and a
 * pattern never matches inside another's replacement.
 *
 * @example
 * ```ts
 * import { Redactor } from "./_redact.ts";
 * const redactor = new Redactor(["hunter2", /sk-[a-z0-9]+/]);
 * redactor.text("pw=hunter2 key=sk-abc1"); // "pw=[REDACTED] key=[REDACTED]"
 * ```
 */
export class Redactor {
  #strings: string[];
  #patterns: RegExp[];
  #longest: number;

  /**
   * Creates a redactor.
   *
   * @param patterns Strings (matched exactly) and RegExps (all matches;
   *   empty matches are ignored).
   */
  constructor(patterns: readonly RedactPattern[]) {
    const strings = new Set<string>();
    this.#patterns = [];
    for (const pattern of patterns) {
      if (typeof pattern === "string") {
        if (pattern.length > 0) strings.add(pattern);
      } else this.#patterns.push(globalCopy(pattern));
    }
    this.#strings = [...strings];
    this.#longest = this.#strings.reduce((n, s) => Math.max(n, s.length), 0);
  }

  /** Whether there is anything to redact. */
  get active(): boolean {
    return this.#strings.length > 0 || this.#patterns.length > 0;
  }

  /** Whether some patterns are RegExps (streams then hold whole lines). */
  get hasRegExps(): boolean {
    return this.#patterns.length > 0;
  }

  /** Length of the longest string secret. */
  get longest(): number {
    return this.#longest;
  }

  /**
   * Finds the merged `[start, end)` ranges of all matches.
   *
   * @param text Input.
   * @returns Sorted, disjoint ranges.
   */
  ranges(text: string): [number, number][] {
    const found: [number, number][] = [];
    for (const secret of this.#strings) {
      for (
        let i = text.indexOf(secret);
        i >= 0;
        i = text.indexOf(secret, i + 1)
      ) {
        found.push([i, i + secret.length]);
      }
    }
    for (const re of this.#patterns) {
      for (const match of text.matchAll(re)) {
        if (match[0].length > 0) {
          found.push([match.index, match.index + match[0].length]);
        }
      }
    }
    if (found.length < 2) return found;
    found.sort((a, b) => a[0] - b[0] || b[1] - a[1]);
    const merged: [number, number][] = [found[0]];
    for (let i = 1; i < found.length; i++) {
      const last = merged[merged.length - 1];
      const [start, end] = found[i];
      if (start < last[1]) last[1] = Math.max(last[1], end);
      else merged.push([start, end]);
    }
    return merged;
  }

  /**
   * Redacts a string.
   *
   * @param text Input.
   * @returns The text with every match replaced by `[REDACTED]`.
   */
  text(text: string): string {
    if (!this.active || text.length === 0) return text;
    return replaceRanges(text, this.ranges(text));
  }

  /**
   * Redacts every string (keys included) in a JSON value, deeply.
   *
   * @param value Input; not modified.
   * @returns A redacted copy (the same value when nothing changed).
   */
  json<T extends JsonValue>(value: T): T {
    if (!this.active) return value;
    return this.#json(value, 0) as T;
  }

  #json(value: JsonValue, depth: number): JsonValue {
    if (typeof value === "string") return this.text(value);
    if (value === null || typeof value !== "object" || depth > 1000) {
      return value;
    }
    if (Array.isArray(value)) return value.map((v) => this.#json(v, depth + 1));
    const out: { [key: string]: JsonValue } = {};
    for (const [key, v] of Object.entries(value)) {
      out[this.text(key)] = this.#json(v, depth + 1);
    }
    return out;
  }

  /**
   * Redacts a rich display. Text types are redacted; binary image types
   * (base64 `image/*` other than `image/svg+xml`) are left alone.
   *
   * @param bundle MIME type to data; not modified.
   * @returns A redacted copy.
   */
  bundle(bundle: MimeBundle): MimeBundle {
    if (!this.active) return bundle;
    const out: MimeBundle = {};
    for (const [mime, data] of Object.entries(bundle)) {
      out[mime] = isBinaryMime(mime) ? data : this.json(data);
    }
    return out;
  }

  /**
   * Redacts a returned file when its content is UTF-8 text (a cut final
   * character is tolerated); binary files are returned unchanged. When the
   * content changes and was not cut, `size` becomes the new length.
   *
   * @param file The file; not modified.
   * @returns A redacted copy, or the same file.
   */
  file(file: ResultFile): ResultFile {
    if (!this.active) return file;
    const text = decodeText(file.content, file.truncated);
    if (text === undefined) return file;
    const redacted = this.text(text.text);
    if (redacted === text.text) return file;
    const content = concat(new TextEncoder().encode(redacted), text.rest);
    return {
      ...file,
      content,
      size: file.truncated ? file.size : content.length,
    };
  }

  /**
   * Redacts everything a result hands out: `stdout`, `stderr`, `result`,
   * `error.message`, `error.traceback`, `displays` and text `files`.
   * `sessionBytes` and `sessionMetadata` are left alone.
   *
   * @param result The result; not modified.
   * @returns A redacted copy.
   */
  result<R extends RedactableResult>(result: R): R {
    if (!this.active) return result;
    const out: R = {
      ...result,
      stdout: this.text(result.stdout),
      stderr: this.text(result.stderr),
      result: this.json(result.result),
    };
    if (result.error) {
      out.error = {
        ...result.error,
        message: this.text(result.error.message),
      };
      if (result.error.traceback !== undefined) {
        out.error.traceback = this.text(result.error.traceback);
      }
    }
    if (result.displays) {
      out.displays = result.displays.map((b) => this.bundle(b));
    }
    if (result.files) out.files = result.files.map((f) => this.file(f));
    return out;
  }

  /**
   * Wraps a text sink so that what reaches it is redacted, even when a
   * secret is split across two pieces. String secrets: up to
   * `longest - 1` characters are held back until the next piece or
   * {@linkcode StreamRedactor.flush}. RegExps: text is released line by
   * line (lines over 64 KiB in pieces), so a match is caught when it does
   * not span a line break (or such a piece boundary). Pieces never carry a
   * whole string secret; when two secrets overlap across a cut, the end of
   * the second may follow the first's `[REDACTED]`.
   *
   * @param sink Receives redacted text.
   * @returns The stream.
   */
  stream(sink: (text: string) => void): StreamRedactor {
    return new StreamRedactor(this, sink);
  }
}

/** What {@linkcode Redactor.result} needs of a result. */
export interface RedactableResult {
  stdout: string;
  stderr: string;
  result: JsonValue;
  error?: { message: string; traceback?: string };
  displays?: MimeBundle[];
  files?: ResultFile[];
}

/**
 * A redacting filter in front of a streaming text sink. See
 * {@linkcode Redactor.stream}.
 */
export class StreamRedactor {
  #redactor: Redactor;
  #sink: (text: string) => void;
  #pending = "";
  /** Where the last line held in `#pending` starts. */
  #lineStart = 0;

  /**
   * Use {@linkcode Redactor.stream} instead.
   *
   * @param redactor The patterns.
   * @param sink Receives redacted text.
   */
  constructor(redactor: Redactor, sink: (text: string) => void) {
    this.#redactor = redactor;
    this.#sink = sink;
  }

  /**
   * Takes the next piece of text; passes on what is safe to release.
   *
   * @param text The piece.
   */
  push(text: string): void {
    const pending = this.#pending + text;
    const newline = text.lastIndexOf("\n");
    if (newline >= 0) this.#lineStart = this.#pending.length + newline + 1;
    let end = pending.length - Math.max(0, this.#redactor.longest - 1);
    if (
      this.#redactor.hasRegExps &&
      pending.length - this.#lineStart <= STREAM_LINE_HOLD
    ) {
      end = Math.min(end, this.#lineStart);
    }
    if (end <= 0) {
      // Nothing to release yet: no scan, so tiny pieces cost linear time.
      this.#pending = pending;
      return;
    }
    const ranges = this.#redactor.ranges(pending);
    // A complete match across the cut is released whole.
    for (const [start, stop] of ranges) {
      if (start < end && stop > end) end = stop;
    }
    const released = ranges.filter(([, stop]) => stop <= end);
    this.#pending = pending.slice(end);
    this.#lineStart = Math.max(0, this.#lineStart - end);
    const out = replaceRanges(pending.slice(0, end), released);
    if (out) this.#sink(out);
  }

  /** Releases (redacted) everything held back. */
  flush(): void {
    const pending = this.#pending;
    this.#pending = "";
    this.#lineStart = 0;
    if (pending) this.#sink(this.#redactor.text(pending));
  }
}

function replaceRanges(text: string, ranges: [number, number][]): string {
  if (ranges.length === 0) return text;
  let out = "";
  let at = 0;
  for (const [start, end] of ranges) {
    out += text.slice(at, start) + REDACTED;
    at = end;
  }
  return out + text.slice(at);
}

function isBinaryMime(mime: string): boolean {
  return mime.startsWith("image/") && mime !== "image/svg+xml";
}

function decodeText(
  bytes: Uint8Array,
  truncated: boolean,
): { text: string; rest: Uint8Array } | undefined {
  const decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
  // A cut file may end inside a character: try without up to 3 final bytes.
  const tries = truncated ? Math.min(3, bytes.length) : 0;
  for (let drop = 0; drop <= tries; drop++) {
    try {
      return {
        text: decoder.decode(bytes.subarray(0, bytes.length - drop)),
        rest: bytes.slice(bytes.length - drop),
      };
    } catch {
      // Not text (yet).
    }
  }
  return undefined;
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  if (b.length === 0) return a;
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

/**
 * Builds the redactor of a call: the sandbox's patterns, plus the values
 * of the environment variables passed to the child when `redactEnv` is on
 * (values shorter than 4 characters are skipped: they would hide ordinary
 * text).
 *
 * @param patterns The `redact` option.
 * @param envValues Values of the passed variables, or `[]`.
 * @returns The redactor.
 * @example
 * ```ts
 * import { callRedactor } from "./_redact.ts";
 * callRedactor(["abc"], ["s3cr3t-value", "1"]).text("s3cr3t-value 1"); // "[REDACTED] 1"
 * ```
 */
export function callRedactor(
  patterns: readonly RedactPattern[],
  envValues: readonly string[],
): Redactor {
  return new Redactor([
    ...patterns,
    ...envValues.filter((v) => v.length >= MIN_ENV_SECRET_LENGTH),
  ]);
}
