/**
 * The public option types of the sandboxes: {@linkcode SandboxOptions},
 * {@linkcode ExecuteOptions}, {@linkcode SessionOptions} and the types they
 * use. Defaults and accepted ranges are enforced in `_settings.ts`.
 *
 * @module
 */

import type { PermissionOptions } from "./permissions.ts";
import type {
  CodeExecutionResult,
  JsonValue,
  MimeBundle,
  SessionMetadata,
} from "./result.ts";
import type { AuditCallback } from "./_audit.ts";

/**
 * Options of a sandbox. Permissions are fixed for the sandbox's lifetime;
 * limits can be overridden per call.
 *
 * @example
 * ```ts
 * import type { SandboxOptions } from "./options.ts";
 * const options: SandboxOptions = { allowNet: ["api.example.com"], timeoutSeconds: 10 };
 * ```
 */
export interface SandboxOptions extends PermissionOptions {
  /**
   * Return `sessionBytes` and `sessionMetadata` from every `execute`, so the
   * next call can continue from them. Up to `poolSize` children whose call
   * ended well are kept for 30 s: a call given exactly the bytes one of them
   * returned continues in it (same state, no restore). One that runs code
   * while it waits (a timer its call left) is ended; other bytes restore in
   * a new child.
   * @default {false}
   */
  stateful?: boolean;
  /**
   * Limit of a whole call in seconds: the wait for a free slot, the child's
   * start-up and the code itself (`result.timing` says where it went).
   * @default {60}
   */
  timeoutSeconds?: number;
  /**
   * Memory limit of the Python heap in MB (64 to 4096). The child process as
   * a whole is killed when its resident memory exceeds this plus 384 MB.
   * @default {512}
   */
  memoryLimitMb?: number;
  /**
   * Do not check in the constructor that the `deno` binary runs.
   * @default {false}
   */
  skipDenoCheck?: boolean;
  /**
   * The `deno` binary the children run.
   * @default {Deno.execPath(), or "deno" from PATH under `deno compile`}
   */
  denoPath?: string;
  /**
   * Key that signs session bytes with HMAC-SHA256; bytes not signed with it
   * are rejected.
   * @default {undefined}
   */
  sessionSecret?: string | Uint8Array;
  /**
   * Folder for the snapshot and other caches (created with mode 0700).
   * @default {"$XDG_CACHE_HOME/pyodide-sandbox" or "~/.cache/pyodide-sandbox"}
   */
  cacheDir?: string;
  /**
   * Children kept loaded and waiting for stateless calls; each serves exactly
   * one call. `0` disables the pool.
   * @default {2}
   */
  poolSize?: number;
  /**
   * Executions running at once; further calls wait in a FIFO queue (their
   * timeouts count from the call).
   * @default {4}
   */
  maxConcurrency?: number;
  /**
   * Output kept per stream and call, in bytes; the rest is dropped and
   * `stdoutTruncated`/`stderrTruncated` say so.
   * @default {1048576}
   */
  maxOutputBytes?: number;
  /**
   * Largest accepted code, in UTF-8 bytes.
   * @default {10485760}
   */
  maxCodeBytes?: number;
  /**
   * Secrets replaced by `[REDACTED]` in stdout, stderr (streamed chunks
   * too, also when a secret spans two chunks), `result`, `error`, display
   * text and returned text files, before anything leaves the sandbox
   * object. Strings match exactly; a RegExp matches everywhere in the
   * result, and in streamed chunks when the match does not span a line
   * break. A guard against accidental disclosure, not against code that
   * leaks on purpose (encoded or split secrets pass). `sessionBytes` are
   * not redacted.
   * @default {[]}
   */
  redact?: (string | RegExp)[];
  /**
   * Also redact the values of the environment variables passed to the code
   * through `allowEnv` (values shorter than 4 characters are skipped).
   * @default {false}
   */
  redactEnv?: boolean;
  /**
   * Called with one audit record per execution (timeouts, crashes, aborts
   * and live-session calls included) before the call settles. A returned
   * promise is awaited; if the callback throws, the call rejects.
   * @default {undefined}
   */
  onAudit?: AuditCallback;
  /**
   * File that receives one JSON line per audit record, appended (created
   * with mode 0600; a relative path resolves against the working directory
   * at construction). Opened in the constructor to check it; when a record
   * cannot be written later, the call rejects.
   * @default {undefined}
   */
  auditLog?: string;
  /**
   * Include the code itself in audit records.
   * @default {false}
   */
  auditCode?: boolean;
  /**
   * Host functions Python can call as ordinary synchronous functions, as
   * global names and from the module `host` (`from host import add`).
   * Arguments and results are JSON-safe; a thrown error is raised in Python
   * as `host.HostError` with its message.
   * @default {{}}
   */
  functions?: Record<string, HostFunction>;
  /**
   * Packages installed before every run (distribution or import names), in
   * addition to the ones detected from the code's imports.
   * @default {[]}
   */
  packages?: string[];
  /**
   * A local folder of wheels (with or without a `pyodide-lock.json`), the
   * first place packages are looked for. Works with no network at all.
   * @default {undefined}
   */
  packageDir?: string;
  /**
   * Base URLs of package indexes serving a `pyodide-lock.json` and its
   * wheels. The host fetches from them; the child never gets network
   * access for installs. The default is the Pyodide distribution
   * (`DEFAULT_PACKAGE_INDEX_URL`, the CDN for exactly this Pyodide), whose
   * wheels are checked against the lock file inside the local `pyodide`
   * npm package. A list replaces the default; `[]` means no index at all.
   * @default {["https://cdn.jsdelivr.net/pyodide/v314.0.7/full/"]}
   */
  packageIndexUrls?: string[];
  /**
   * Size cap of the host's wheel cache in `cacheDir` (verified wheels by
   * sha256, least recently used evicted first), in MiB; 0 turns it off.
   * @default {1024}
   */
  packageCacheMb?: number;
  /**
   * Packages installed and imported in a preloaded snapshot that pooled
   * children and sessions start from, so that calls importing them do not
   * install anything (built once per package set and Pyodide version).
   * @default {[]}
   */
  preload?: string[];
  /**
   * Largest returned file content in `result.files`, in bytes.
   * @default {10485760}
   */
  maxFileBytes?: number;
  /**
   * Largest total of returned file contents per call, in bytes.
   * @default {52428800}
   */
  maxTotalFileBytes?: number;
  /**
   * Largest total of rich displays (`result.displays`) per call, counted as
   * the bytes of their JSON. Displays past it are dropped, with a line on
   * stderr saying so. Enforced by the host, whatever the child sends.
   * @default {16777216}
   */
  maxDisplayBytes?: number;
}

/** A host function callable from Python. */
export type HostFunction = (
  ...args: JsonValue[]
) => JsonValue | undefined | void | Promise<JsonValue | undefined | void>;

/**
 * Per-call options of `execute`.
 *
 * @example
 * ```ts
 * import type { ExecuteOptions } from "./options.ts";
 * const options: ExecuteOptions = { timeoutSeconds: 5, stdin: "42\n" };
 * ```
 */
export interface ExecuteOptions {
  /**
   * Limit of this call in seconds.
   * @default {the sandbox's `timeoutSeconds`}
   */
  timeoutSeconds?: number;
  /**
   * Memory limit of this call in MB (a call with a limit other than the
   * sandbox's runs in a child of its own, not a pooled one).
   * @default {the sandbox's `memoryLimitMb`}
   */
  memoryLimitMb?: number;
  /**
   * State to continue from (stateful use).
   * @default {undefined}
   */
  sessionBytes?: Uint8Array;
  /**
   * Metadata returned with `sessionBytes`; required with them.
   * @default {undefined}
   */
  sessionMetadata?: SessionMetadata;
  /**
   * Text that `input()` and `sys.stdin` read; without it `input()` raises
   * `EOFError`.
   * @default {undefined}
   */
  stdin?: string;
  /**
   * Aborts the call: the child is killed and the promise rejects with the
   * signal's reason (async API only).
   * @default {undefined}
   */
  signal?: AbortSignal;
  /**
   * Files written into the sandbox before the run: sandbox path (relative
   * paths land in the working folder `/home/pyodide`) to contents.
   * @default {undefined}
   */
  files?: Record<string, Uint8Array | string>;
  /**
   * Receives stdout text while the code runs, in order and byte-exact (the
   * result still carries the whole, capped, output).
   * @default {undefined}
   */
  onStdout?: (text: string) => void;
  /**
   * Receives stderr text while the code runs.
   * @default {undefined}
   */
  onStderr?: (text: string) => void;
  /**
   * Receives each rich display (MIME bundle) as the code shows it.
   * @default {undefined}
   */
  onDisplay?: (bundle: MimeBundle) => void;
}

/** One event of `PyodideSandbox.executeStream()`. */
export type StreamEvent =
  | { type: "stdout" | "stderr"; data: string }
  | { type: "display"; data: MimeBundle }
  | { type: "result"; result: CodeExecutionResult };

/** Options of a live session. */
export interface SessionOptions {
  /**
   * State to resume from, as returned by `save()` or a stateful `execute`.
   * @default {undefined}
   */
  sessionBytes?: Uint8Array;
  /**
   * Metadata that belongs to `sessionBytes`; required with them.
   * @default {undefined}
   */
  sessionMetadata?: SessionMetadata;
  /**
   * Memory limit of the session's child in MB.
   * @default {the sandbox's `memoryLimitMb`}
   */
  memoryLimitMb?: number;
}

/** The command that starts a child, as built by `buildCommand()`. */
export interface SandboxCommand {
  /** The `deno` binary. */
  command: string;
  /** Its arguments. */
  args: string[];
}

/** The saved state of a session. */
export interface SavedSession {
  /** Bytes to resume from. */
  sessionBytes: Uint8Array;
  /** Their metadata. */
  sessionMetadata: SessionMetadata;
}
