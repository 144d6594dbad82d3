/**
 * The result of one execution, and the machine-readable error kinds.
 *
 * @module
 */

/**
 * Why an execution failed.
 *
 * - `"exception"`: Python raised (including `SyntaxError`); `type` is the
 *   exception's class name.
 * - `"timeout"`: the call ran past its `timeoutSeconds`.
 * - `"memory"`: memory ran out: a Python `MemoryError` (`type` is
 *   `"MemoryError"`) or a kill by the memory limit (no `type`).
 * - `"session"`: session bytes were corrupted, tampered with, unsigned,
 *   from another Pyodide version, or a live session was lost.
 * - `"crash"`: the child died or gave no valid result for any other reason.
 * - `"install"`: a package the code needs could not be found, fetched or
 *   verified (the message names it and where it was looked for).
 */
export type ErrorKind =
  | "exception"
  | "timeout"
  | "memory"
  | "session"
  | "crash"
  | "install";

/** All error kinds, for validation and documentation. */
export const ERROR_KINDS: readonly ErrorKind[] = [
  "exception",
  "timeout",
  "memory",
  "session",
  "crash",
  "install",
];

/** Details of a failed execution. */
export interface ExecutionError {
  /** The machine-readable reason. */
  kind: ErrorKind;
  /** The Python exception's class name, when there is one. */
  type?: string;
  /** A human-readable message. */
  message: string;
  /** The Python traceback, limited to the user's own frames. */
  traceback?: string;
}

/** A JSON-safe value: what `result` can hold. */
export type JsonValue =
  | null
  | boolean
  | number
  | string
  | JsonValue[]
  | { [key: string]: JsonValue };

/** Stands in for a last-expression value that is not JSON-safe. */
export interface NotSerializable {
  /** Always `"not_serializable"`. */
  type: "not_serializable";
  /** The value's Python type, e.g. `"set"` or `"fractions.Fraction"`. */
  pythonType: string;
  /** `repr()` of the value, cut at 10,000 characters. */
  repr: string;
}

/** JSON-safe metadata that travels with session bytes. */
export interface SessionMetadata {
  /** The Pyodide version that made the session. */
  pyodideVersion: string;
  /** When the session was created (ISO 8601). */
  createdAt: string;
  /** When the session was last saved (ISO 8601). */
  updatedAt: string;
  /** Other JSON-safe fields. */
  [key: string]: JsonValue;
}

/**
 * A rich display: MIME type to data. Binary types (`image/png`,
 * `image/jpeg`) are base64 strings, text types are strings,
 * `application/json` is the JSON value; `text/plain` is always there.
 */
export type MimeBundle = Record<string, JsonValue>;

/** A file the code created or changed under the working folder. */
export interface ResultFile {
  /** Absolute path inside the sandbox (under `/home/pyodide`). */
  path: string;
  /** The file's full size in bytes. */
  size: number;
  /** Its contents, cut at the file caps when `truncated`. */
  content: Uint8Array;
  /** The contents were cut by `maxFileBytes` or `maxTotalFileBytes`. */
  truncated: boolean;
}

/**
 * Where the time of one call went, in milliseconds. The three phases add up
 * to `executionTime` (in seconds); `timeoutSeconds` covers all three.
 */
export interface ExecutionTiming {
  /** Waiting in the queue for a free slot (`maxConcurrency`). */
  queuedMs: number;
  /**
   * Taking a pooled child or starting a new one, until it was ready to run
   * code (Pyodide loaded, session state restored).
   */
  startMs: number;
  /** The call itself: running the code and collecting its result. */
  runMs: number;
}

/** What every run returns. */
export interface CodeExecutionResult {
  /** `"success"`, or `"error"` with details in `error`. */
  status: "success" | "error";
  /** Everything Python wrote to stdout, byte-exact. */
  stdout: string;
  /** Everything Python wrote to stderr, plus the sandbox's own messages. */
  stderr: string;
  /**
   * The value of the last expression: JSON-safe data, with values that are
   * not JSON-safe replaced by a {@linkcode NotSerializable} marker.
   */
  result: JsonValue;
  /** Wall-clock seconds of the whole call, start-up included. */
  executionTime: number;
  /** The session state to continue from (stateful runs only). */
  sessionBytes?: Uint8Array;
  /** Metadata that belongs to `sessionBytes`. */
  sessionMetadata?: SessionMetadata;
  /** Set when `status` is `"error"`. */
  error?: ExecutionError;
  /** Rich displays (`display(obj)`, `_repr_*_` results), in output order. */
  displays?: MimeBundle[];
  /** Files created or changed under the working folder. */
  files?: ResultFile[];
  /**
   * Some stdout was dropped because it exceeded `maxOutputBytes` (always set
   * by the sandboxes).
   */
  stdoutTruncated?: boolean;
  /**
   * Some stderr was dropped because it exceeded `maxOutputBytes` (always set
   * by the sandboxes).
   */
  stderrTruncated?: boolean;
  /**
   * Where the call's time went: queued, starting the child, running the
   * code (always set by the sandboxes). A timeout's message names the same
   * three phases.
   */
  timing?: ExecutionTiming;
}
