/**
 * The sandbox classes: {@linkcode BasePyodideSandbox} (options, checks and
 * the child command) and {@linkcode PyodideSandbox} (async execution, warm
 * pool and live sessions).
 *
 * @module
 */

import {
  buildPermissionFlags,
  normalizePermissions,
  type PermissionOptions,
} from "./permissions.ts";
import type {
  CodeExecutionResult,
  ErrorKind,
  JsonValue,
  MimeBundle,
  ResultFile,
  SessionMetadata,
} from "./result.ts";
import {
  type CallOutcome,
  type ChildSpec,
  holdingLoop,
  SandboxChild,
} from "./_child.ts";
import {
  checkDeno,
  childArgs,
  childEnv,
  defaultCacheDir,
  type Environment,
  materializeRunner,
  pyodideReadPaths,
  resolveDenoPath,
  resolveEnvironment,
  snapshotPath,
} from "./_setup.ts";
import { distrustSnapshot, ensureSnapshot } from "./_snapshot.ts";
import { openSession, sealSession, SessionError } from "./_session_bytes.ts";
import { InstallError, PackageResolver } from "./_packages.ts";
import { concatBytes, encodeBase64 } from "./_bytes.ts";
import { resolve } from "node:path";
import {
  INSTALL_CALL,
  MAX_REPLY_BYTES,
  PYODIDE_VERSION,
  ToChild,
  ToParent,
} from "./runner.ts";
import { Semaphore } from "./_semaphore.ts";
import {
  checkInstallArgs,
  decodeFiles,
  type FileLimits,
  type HostCallRequest,
  type ResultHeader,
  type RunnerOut,
  type SavedHeader,
} from "./_protocol.ts";
import {
  type AuditCallback,
  CallGuard,
  checkFilterAuditOptions,
  FILTER_AUDIT_OPTION_NAMES,
  type FilterAuditSettings,
} from "./_audit.ts";

/** Memory the child needs beyond `memoryLimitMb` (V8, Deno, Pyodide's JS). */
const RSS_OVERHEAD_MB = 384;
/** How long a call on a pooled child may run before its replacement starts. */
const REFILL_DELAY_MS = 100;
/** The smallest accepted `memoryLimitMb`: the base snapshot alone is 31 MB. */
const MIN_MEMORY_MB = 64;
/** The largest `memoryLimitMb`: WebAssembly's 32-bit heap tops out at 4 GiB. */
const MAX_MEMORY_MB = 4096;

/**
 * Options of a sandbox. Permissions are fixed for the sandbox's lifetime;
 * limits can be overridden per call.
 *
 * @example
 * ```ts
 * import type { SandboxOptions } from "./sandbox.ts";
 * const options: SandboxOptions = { allowNet: ["api.example.com"], timeoutSeconds: 10 };
 * ```
 */
export interface SandboxOptions extends PermissionOptions {
  /**
   * Return `sessionBytes` and `sessionMetadata` from every `execute`, so the
   * next call can continue from them.
   * @default {false}
   */
  stateful?: boolean;
  /**
   * Limit of a whole call, start-up included, in seconds.
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
   * wheels (e.g. the Pyodide CDN for this version). The host fetches from
   * them; the child never gets network access for installs.
   * @default {[]}
   */
  packageIndexUrls?: string[];
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
 * import type { ExecuteOptions } from "./sandbox.ts";
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

/** One event of {@linkcode PyodideSandbox.executeStream}. */
export type StreamEvent =
  | { type: "stdout" | "stderr"; data: string }
  | { type: "display"; data: MimeBundle }
  | { type: "result"; result: CodeExecutionResult & ExtraResultFields };

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

/** The resolved, validated options of a sandbox. */
interface Settings extends FilterAuditSettings {
  permissions: Required<PermissionOptions>;
  stateful: boolean;
  timeoutSeconds: number;
  memoryLimitMb: number;
  denoPath: string;
  sessionSecret?: Uint8Array;
  cacheDir: string;
  poolSize: number;
  maxConcurrency: number;
  maxOutputBytes: number;
  maxCodeBytes: number;
  functions: Record<string, HostFunction>;
  maxFileBytes: number;
  maxTotalFileBytes: number;
  maxDisplayBytes: number;
  packages: string[];
  packageResolver: PackageResolver;
}

/** The command that starts a child, as built by `buildCommand()`. */
export interface SandboxCommand {
  /** The `deno` binary. */
  command: string;
  /** Its arguments. */
  args: string[];
}

const OPTION_NAMES = new Set([
  "allowEnv",
  "allowRead",
  "allowWrite",
  "allowNet",
  "allowRun",
  "allowFfi",
  "stateful",
  "timeoutSeconds",
  "memoryLimitMb",
  "skipDenoCheck",
  "denoPath",
  "sessionSecret",
  "cacheDir",
  "poolSize",
  "maxConcurrency",
  "maxOutputBytes",
  "maxCodeBytes",
  ...FILTER_AUDIT_OPTION_NAMES,
  "functions",
  "maxFileBytes",
  "maxTotalFileBytes",
  "maxDisplayBytes",
  "packages",
  "packageDir",
  "packageIndexUrls",
]);

const EXECUTE_OPTION_NAMES = new Set([
  "timeoutSeconds",
  "memoryLimitMb",
  "sessionBytes",
  "sessionMetadata",
  "stdin",
  "signal",
  "onStdout",
  "onStderr",
  "onDisplay",
  "files",
]);

function checkNumber(
  name: string,
  value: unknown,
  min: number,
  max: number,
  integer: boolean,
): number {
  if (
    typeof value !== "number" || Number.isNaN(value) ||
    (integer && !Number.isInteger(value))
  ) {
    throw new TypeError(
      `Invalid ${name}: expected ${
        integer ? "an integer" : "a number"
      } from ${min} to ${max}, got ${
        typeof value === "number" ? value : typeof value
      }`,
    );
  }
  if (value < min || value > max) {
    throw new RangeError(
      `Invalid ${name}: expected ${
        integer ? "an integer" : "a number"
      } from ${min} to ${max}, got ${value}`,
    );
  }
  return value;
}

function checkBoolean(name: string, value: unknown): boolean {
  if (typeof value !== "boolean") {
    throw new TypeError(
      `Invalid ${name}: expected a boolean, got ${typeof value}`,
    );
  }
  return value;
}

function checkKeys(
  what: string,
  options: object,
  allowed: Set<string>,
): void {
  for (const key of Object.keys(options)) {
    if (!allowed.has(key)) {
      throw new TypeError(
        `Unknown ${what} option: "${key}", expected one of ${
          [...allowed].join(", ")
        }`,
      );
    }
  }
}

function checkTimeout(name: string, value: unknown): number {
  return checkNumber(name, value, 0.001, 86_400, false);
}

function checkMemory(name: string, value: unknown): number {
  return checkNumber(name, value, MIN_MEMORY_MB, MAX_MEMORY_MB, true);
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

function checkStrings(name: string, value: unknown): string[] {
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

function checkFunctions(
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

function checkObject(what: string, value: unknown): void {
  if (value === null || typeof value !== "object") {
    throw new TypeError(
      `Invalid ${what} options: expected an object, got ${
        value === null ? "null" : typeof value
      }`,
    );
  }
}

function settingsFrom(options: SandboxOptions): Settings {
  checkObject("sandbox", options);
  checkKeys("sandbox", options, OPTION_NAMES);
  const o = options;
  if (o.denoPath !== undefined && typeof o.denoPath !== "string") {
    throw new TypeError(
      `Invalid denoPath: expected a string, got ${typeof o.denoPath}`,
    );
  }
  if (o.cacheDir !== undefined && typeof o.cacheDir !== "string") {
    throw new TypeError(
      `Invalid cacheDir: expected a string, got ${typeof o.cacheDir}`,
    );
  }
  let secret: Uint8Array | undefined;
  if (o.sessionSecret !== undefined) {
    if (typeof o.sessionSecret === "string") {
      secret = new TextEncoder().encode(o.sessionSecret);
    } else if (o.sessionSecret instanceof Uint8Array) {
      secret = o.sessionSecret.slice();
    } else {
      throw new TypeError(
        `Invalid sessionSecret: expected a string or a Uint8Array, got ${typeof o
          .sessionSecret}`,
      );
    }
    if (secret.length < 16) {
      throw new RangeError(
        `Invalid sessionSecret: expected at least 16 bytes, got ${secret.length}`,
      );
    }
  }
  return {
    permissions: normalizePermissions(o, Deno.cwd()),
    ...checkFilterAuditOptions(o),
    stateful: checkBoolean("stateful", o.stateful ?? false),
    timeoutSeconds: checkTimeout("timeoutSeconds", o.timeoutSeconds ?? 60),
    memoryLimitMb: checkMemory("memoryLimitMb", o.memoryLimitMb ?? 512),
    denoPath: resolveDenoPath(o.denoPath),
    sessionSecret: secret,
    cacheDir: o.cacheDir ?? defaultCacheDir(),
    poolSize: checkNumber("poolSize", o.poolSize ?? 2, 0, 64, true),
    maxConcurrency: checkNumber(
      "maxConcurrency",
      o.maxConcurrency ?? 4,
      1,
      1024,
      true,
    ),
    maxOutputBytes: checkNumber(
      "maxOutputBytes",
      o.maxOutputBytes ?? 1024 * 1024,
      0,
      1024 ** 3,
      true,
    ),
    maxCodeBytes: checkNumber(
      "maxCodeBytes",
      o.maxCodeBytes ?? 10 * 1024 * 1024,
      1,
      1024 ** 3,
      true,
    ),
    functions: checkFunctions(o.functions ?? {}),
    packages: checkStrings("packages", o.packages ?? []),
    packageResolver: new PackageResolver({
      packageDir: o.packageDir === undefined
        ? undefined
        : resolve(Deno.cwd(), checkStrings("packageDir", [o.packageDir])[0]),
      packageIndexUrls: checkStrings(
        "packageIndexUrls",
        o.packageIndexUrls ?? [],
      ).map((url) => {
        if (!URL.canParse(url) || !/^https?:$/.test(new URL(url).protocol)) {
          throw new TypeError(
            `Invalid packageIndexUrls entry: "${url}" is not an http(s) URL`,
          );
        }
        return url;
      }),
    }),
    maxFileBytes: checkNumber(
      "maxFileBytes",
      o.maxFileBytes ?? 10 * 1024 * 1024,
      0,
      1024 ** 3,
      true,
    ),
    maxTotalFileBytes: checkNumber(
      "maxTotalFileBytes",
      o.maxTotalFileBytes ?? 50 * 1024 * 1024,
      0,
      4 * 1024 ** 3,
      true,
    ),
    maxDisplayBytes: checkNumber(
      "maxDisplayBytes",
      o.maxDisplayBytes ?? 16 * 1024 * 1024,
      0,
      1024 ** 3,
      true,
    ),
  };
}

/** Validated per-call settings. */
interface CallSettings {
  code: string;
  timeoutSeconds: number;
  memoryLimitMb: number;
  stdin?: string;
  sessionBytes?: Uint8Array;
  sessionMetadata?: SessionMetadata;
  signal?: AbortSignal;
  onStdout?: (text: string) => void;
  onStderr?: (text: string) => void;
  onDisplay?: (bundle: MimeBundle) => void;
  files?: { index: { path: string; size: number }[]; bin: Uint8Array };
  /** Receives the child's outcome (the audit trail counts output bytes). */
  onOutcome?: (outcome: CallOutcome) => void;
}

/**
 * What the async and sync sandboxes share: option validation, the Deno
 * check, and the command that starts a child.
 *
 * @example
 * ```ts
 * import { BasePyodideSandbox } from "./sandbox.ts";
 * const sandbox = new BasePyodideSandbox({ allowNet: ["example.com"] });
 * const { command, args } = sandbox.buildCommand();
 * console.log(command, args.includes("--allow-net=example.com"));
 * ```
 */
export class BasePyodideSandbox {
  #settings: Settings;

  /**
   * Validates the options and checks that Deno can be run.
   *
   * @param options Permissions, limits and behaviour.
   * @throws {TypeError} When an option has the wrong type or a permission
   *   entry cannot be expressed.
   * @throws {RangeError} When a number is out of range.
   * @throws {Error} When `deno` cannot be run (message starts with
   *   `Deno is not installed or not in PATH`), unless `skipDenoCheck`.
   */
  constructor(options: SandboxOptions = {}) {
    this.#settings = settingsFrom(options);
    const skip = checkBoolean("skipDenoCheck", options.skipDenoCheck ?? false);
    if (!skip) checkDeno(this.#settings.denoPath);
  }

  /**
   * The validated settings (for subclasses).
   *
   * @ignore
   */
  protected get settings(): Settings {
    return this.#settings;
  }

  /**
   * Validates a call's code and options against the sandbox's settings.
   *
   * @param code Python source.
   * @param options Per-call options.
   * @returns The effective settings of the call.
   * @throws {TypeError} When the code is not a string or an option is
   *   invalid.
   * @throws {RangeError} When the code is too large or a limit is out of
   *   range.
   * @ignore
   */
  protected checkCall(code: unknown, options: ExecuteOptions): CallSettings {
    if (typeof code !== "string") {
      throw new TypeError(
        `Invalid code: expected a string of Python source, got ${
          code === null ? "null" : typeof code
        }`,
      );
    }
    checkObject("execute", options);
    checkKeys("execute", options, EXECUTE_OPTION_NAMES);
    const bytes = new TextEncoder().encode(code).length;
    if (bytes > this.#settings.maxCodeBytes) {
      throw new RangeError(
        `Invalid code: ${bytes} bytes is more than maxCodeBytes (${this.#settings.maxCodeBytes})`,
      );
    }
    if (options.stdin !== undefined && typeof options.stdin !== "string") {
      throw new TypeError(
        `Invalid stdin: expected a string, got ${typeof options.stdin}`,
      );
    }
    if (
      options.signal !== undefined && !(options.signal instanceof AbortSignal)
    ) {
      throw new TypeError("Invalid signal: expected an AbortSignal");
    }
    checkSessionPair(options.sessionBytes, options.sessionMetadata);
    for (const name of ["onStdout", "onStderr", "onDisplay"] as const) {
      if (
        options[name] !== undefined && typeof options[name] !== "function"
      ) {
        throw new TypeError(
          `Invalid ${name}: expected a function, got ${typeof options[name]}`,
        );
      }
    }
    return {
      code,
      timeoutSeconds: options.timeoutSeconds === undefined
        ? this.#settings.timeoutSeconds
        : checkTimeout("timeoutSeconds", options.timeoutSeconds),
      memoryLimitMb: options.memoryLimitMb === undefined
        ? this.#settings.memoryLimitMb
        : checkMemory("memoryLimitMb", options.memoryLimitMb),
      stdin: options.stdin,
      sessionBytes: options.sessionBytes,
      sessionMetadata: options.sessionMetadata,
      signal: options.signal,
      onStdout: options.onStdout,
      onStderr: options.onStderr,
      onDisplay: options.onDisplay,
      files: options.files === undefined
        ? undefined
        : packInputFiles(options.files),
    };
  }

  /**
   * Sends one execution to a child and collects what it produces, answering
   * host-function calls on the way.
   *
   * @param child The child.
   * @param call The call's settings.
   * @param how Deadline, soft interrupts and whether to return state.
   * @returns What the child produced.
   * @ignore
   */
  protected runCall(
    child: SandboxChild,
    call: CallSettings,
    how: { deadline: number; soft: boolean; wantState: boolean },
  ): Promise<CallOutcome> {
    const settings = this.#settings;
    const perms = settings.permissions;
    const request = {
      code: call.code,
      stdin: call.stdin,
      wantState: how.wantState,
      files: call.files?.index,
      functions: Object.keys(settings.functions),
      hostRead: Array.isArray(perms.allowRead) ? perms.allowRead : [],
      hostWrite: Array.isArray(perms.allowWrite) ? perms.allowWrite : [],
      hostWriteDirs: (Array.isArray(perms.allowWrite) ? perms.allowWrite : [])
        .filter(isDirectory),
      maxFileBytes: settings.maxFileBytes,
      maxTotalFileBytes: settings.maxTotalFileBytes,
      install: settings.packageResolver.enabled || settings.packages.length
        ? { packages: settings.packages }
        : undefined,
    };
    return child.call(ToChild.exec, request, call.files?.bin, ToParent.result, {
      deadline: how.deadline,
      soft: how.soft,
      signal: call.signal,
      maxOutputBytes: settings.maxOutputBytes,
      maxDisplayBytes: settings.maxDisplayBytes,
      onStdout: guardCallback(call.onStdout),
      onStderr: guardCallback(call.onStderr),
      onDisplay: guardCallback(call.onDisplay),
      onCall: (request) =>
        request.name === INSTALL_CALL
          ? installPackages(settings.packageResolver, request.args)
          : callHostFunction(settings.functions, request),
    }).then((outcome) => {
      call.onOutcome?.(outcome);
      return outcome;
    });
  }

  /**
   * Resolves the environment (Pyodide's folder in Deno's cache, the cache
   * folder, the runner file). May run `deno info` on first use.
   *
   * @returns The environment.
   * @ignore
   */
  protected environment(): Environment {
    return resolveEnvironment(
      this.#settings.denoPath,
      this.#settings.cacheDir,
    );
  }

  /**
   * Builds the complete child specification for a memory limit.
   *
   * @param memoryLimitMb The limit.
   * @returns Binary, arguments, environment and RSS cap.
   * @ignore
   */
  protected childSpec(memoryLimitMb: number): ChildSpec {
    const { command, args } = this.buildCommand(memoryLimitMb);
    const settings = this.#settings;
    const rssLimitBytes = (memoryLimitMb + RSS_OVERHEAD_MB) * 1024 * 1024;
    return {
      denoPath: command,
      args,
      env: childEnv(this.environment(), this.#passedEnv()),
      rssLimitBytes,
      limits: {
        stateBytes: rssLimitBytes,
        maxDisplayBytes: settings.maxDisplayBytes,
        maxTotalFileBytes: settings.maxTotalFileBytes,
      },
      idleOutputBytes: settings.maxOutputBytes,
    };
  }

  /**
   * Values of the environment variables passed to children (`redactEnv`).
   *
   * @returns The values.
   */
  protected passedEnvValues(): string[] {
    return Object.values(this.#passedEnv());
  }

  #passedEnv(): Record<string, string> {
    const allow = this.#settings.permissions.allowEnv;
    if (allow === false) return {};
    let all: Record<string, string>;
    try {
      all = Deno.env.toObject();
    } catch {
      return {};
    }
    if (allow === true) return all;
    const out: Record<string, string> = {};
    for (const entry of allow) {
      if (entry.endsWith("*")) {
        const prefix = entry.slice(0, -1);
        for (const [k, v] of Object.entries(all)) {
          if (k.startsWith(prefix)) out[k] = v;
        }
      } else if (entry in all) {
        out[entry] = all[entry];
      }
    }
    return out;
  }

  /**
   * Paths the runner itself reads: the Pyodide files and the snapshot.
   * Merged into the user's read grant, never replacing it.
   *
   * @returns Absolute paths.
   * @ignore
   */
  protected runnerReads(): string[] {
    const env = this.environment();
    return [...pyodideReadPaths(env), snapshotPath(env)];
  }

  /**
   * Builds the `deno run` command of a child without running it.
   *
   * @param memoryLimitMb Memory limit to build for.
   * @returns The binary and its arguments.
   * @throws {Error} When the cache folder is unusable or Pyodide cannot be
   *   located in Deno's cache.
   * @example
   * ```ts
   * import { BasePyodideSandbox } from "./sandbox.ts";
   * const { args } = new BasePyodideSandbox().buildCommand();
   * console.log(args.includes("--no-remote")); // true
   * ```
   */
  buildCommand(
    memoryLimitMb: number = this.#settings.memoryLimitMb,
  ): SandboxCommand {
    const env = this.environment();
    const flags = buildPermissionFlags(
      this.#settings.permissions,
      this.runnerReads(),
    );
    return {
      command: env.denoPath,
      args: childArgs(env, checkMemory("memoryLimitMb", memoryLimitMb), flags),
    };
  }
}

/** Keeps the human-readable messages in one place. */
function endMessage(
  kind: ErrorKind,
  call: { timeoutSeconds: number; memoryLimitMb: number },
  detail = "",
): string {
  switch (kind) {
    case "timeout":
      return `Execution timed out after ${call.timeoutSeconds} seconds`;
    case "memory":
      return `Execution exceeded the memory limit of ${call.memoryLimitMb} MB`;
    default:
      return `The sandbox process crashed: ${detail}`;
  }
}

/** Context a result is built in. */
interface ResultContext {
  started: number;
  call: { timeoutSeconds: number; memoryLimitMb: number };
  child?: SandboxChild;
  wantState: boolean;
  previous?: SessionMetadata;
  secret?: Uint8Array;
  /** Where returned files may be, and their caps. */
  files: FileLimits;
}

/** The working folder of every sandbox. */
const SANDBOX_HOME = "/home/pyodide";

/**
 * Where a sandbox's returned files may be, and how large.
 *
 * @param settings The sandbox's settings.
 * @returns The limits the host enforces on the files frame.
 */
function fileLimits(settings: Settings): FileLimits {
  const write = settings.permissions.allowWrite;
  const grants = Array.isArray(write) ? write : [];
  return {
    roots: [SANDBOX_HOME, ...grants],
    exact: grants,
    maxFileBytes: settings.maxFileBytes,
    maxTotalFileBytes: settings.maxTotalFileBytes,
  };
}

/**
 * The message of a call that ended without a reply.
 *
 * @param outcome What the child produced.
 * @param child The child, for its exit description.
 * @returns Why it ended, for a `crash` message.
 */
function endDetail(outcome: CallOutcome, child?: SandboxChild): string {
  if (outcome.ended === "protocol" && child?.violation) {
    return `protocol violation: ${child.violation}`;
  }
  return child?.describeExit() ?? "no result";
}

/**
 * Turns a child's outcome into a {@linkcode CodeExecutionResult}.
 *
 * @param outcome What the child produced.
 * @param ctx The call's context.
 * @returns The result.
 */
export async function resultFromOutcome(
  outcome: CallOutcome,
  ctx: ResultContext,
): Promise<CodeExecutionResult & ExtraResultFields> {
  const files = outcome.files
    ? decodeFiles(outcome.files.bin, ctx.files)
    : { files: [], dropped: 0 };
  const dropped = files.dropped
    ? `Dropped ${files.dropped} file entries the sandbox sent: ${files.reason}\n`
    : "";
  const base = {
    stdout: outcome.stdout,
    stderr: outcome.stderr + dropped,
    stdoutTruncated: outcome.stdoutTruncated,
    stderrTruncated: outcome.stderrTruncated,
    displays: outcome.displays,
    files: files.files,
  };
  const time = () => (performance.now() - ctx.started) / 1000;
  if (!outcome.frame) {
    const kind: ErrorKind = outcome.ended === "timeout"
      ? "timeout"
      : outcome.ended === "memory"
      ? "memory"
      : "crash";
    const message = endMessage(kind, ctx.call, endDetail(outcome, ctx.child));
    return errorResult(base, kind, message, time());
  }
  // Checked by SandboxChild.call: a malformed header never gets here.
  const header = outcome.frame.json as ResultHeader;
  const out: RunnerOut = header.out;
  const result: CodeExecutionResult & ExtraResultFields = {
    status: out.ok ? "success" : "error",
    ...base,
    result: out.ok ? out.result ?? null : null,
    executionTime: 0,
  };
  if (!out.ok && out.error) {
    const e = out.error;
    const kind: ErrorKind = header.installError
      ? "install"
      : e.type === "MemoryError"
      ? "memory"
      : (e.type === "KeyboardInterrupt" || e.type === "CancelledError") &&
          outcome.interrupted
      ? "timeout"
      : "exception";
    result.error = kind === "timeout"
      ? { kind, message: endMessage("timeout", ctx.call) }
      : kind === "install"
      ? { kind, message: e.message }
      : {
        kind,
        type: e.type,
        message: e.message,
        traceback: e.traceback,
      };
    result.stderr += kind === "timeout"
      ? `${endMessage("timeout", ctx.call)}\n`
      : kind === "install"
      ? `${e.message}\n`
      : e.traceback;
  }
  if (ctx.wantState && !header.notRun) {
    if (header.droppedGlobals) {
      result.stderr +=
        `Warning: these globals held live JavaScript objects and were not saved: ${header.droppedGlobals}\n`;
    }
    if (header.stateError || outcome.frame.bin.length === 0) {
      const message = header.stateError ?? "The session state was not saved";
      result.status = "error";
      result.error = { kind: "session", message };
      result.stderr += `${message}\n`;
    } else {
      Object.assign(
        result,
        await sealSession(outcome.frame.bin, ctx.previous, ctx.secret, {
          packages: header.packages ?? [],
        }),
      );
    }
  }
  result.executionTime = time();
  return result;
}

/** Result fields added by the hardening work; always present. */
export interface ExtraResultFields {
  /** Some stdout was dropped because it exceeded `maxOutputBytes`. */
  stdoutTruncated: boolean;
  /** Some stderr was dropped because it exceeded `maxOutputBytes`. */
  stderrTruncated: boolean;
}

function errorResult(
  base: {
    stdout: string;
    stderr: string;
    stdoutTruncated: boolean;
    stderrTruncated: boolean;
    displays?: MimeBundle[];
    files?: ResultFile[];
  },
  kind: ErrorKind,
  message: string,
  executionTime: number,
): CodeExecutionResult & ExtraResultFields {
  return {
    status: "error",
    ...base,
    stderr: `${base.stderr}${
      base.stderr && !base.stderr.endsWith("\n") ? "\n" : ""
    }${message}\n`,
    result: null,
    executionTime,
    error: { kind, message },
  };
}

/**
 * Runs untrusted Python in child `deno run` processes whose permissions are
 * the sandbox. Every stateless call gets a fresh interpreter in a fresh
 * process (from a warm pool when possible).
 *
 * @example
 * ```ts ignore
 * import { PyodideSandbox } from "./sandbox.ts";
 * await using sandbox = new PyodideSandbox();
 * const result = await sandbox.execute("print('hi'); 6 * 7");
 * console.log(result.stdout, result.result); // "hi\n" 42
 * ```
 */
export class PyodideSandbox extends BasePyodideSandbox {
  #pool: SandboxChild[] = [];
  #live = new Set<SandboxChild>();
  #sessions = new Set<PyodideSession>();
  #semaphore: Semaphore;
  #closed = false;
  #prepared?: Promise<string>;
  #guard: CallGuard;

  /**
   * Creates a sandbox. No child starts until the first call or
   * {@linkcode warmup}.
   *
   * @param options Permissions, limits and behaviour.
   * @throws {TypeError} When an option has the wrong type.
   * @throws {RangeError} When a number is out of range.
   * @throws {Error} When `deno` cannot be run (unless `skipDenoCheck`).
   */
  constructor(options: SandboxOptions = {}) {
    super(options);
    this.#semaphore = new Semaphore(this.settings.maxConcurrency);
    this.#guard = new CallGuard({
      settings: this.settings,
      envValues: () => this.passedEnvValues(),
    });
  }

  /** A random id of this sandbox, as in its audit records. */
  get id(): string {
    return this.#guard.sandboxId;
  }

  /** Number of children loaded or loading in the pool. */
  get poolSize(): number {
    return this.#pool.filter((c) => !c.exited).length;
  }

  /** Number of calls waiting for a free slot. */
  get queueLength(): number {
    return this.#semaphore.waiting;
  }

  /** Number of open live sessions. */
  get sessionCount(): number {
    return this.#sessions.size;
  }

  #checkOpen(): void {
    if (this.#closed) throw new Error("The sandbox is closed");
  }

  /** Prepares the environment and the verified snapshot; returns its path. */
  #prepare(): Promise<string> {
    if (!this.#prepared) {
      const env = this.environment();
      this.#prepared = materializeRunner(env).then(() => ensureSnapshot(env));
      this.#prepared.catch(() => this.#prepared = undefined);
    }
    // Re-check the file's fingerprint each time (cheap; rehashes on change).
    return this.#prepared.then(() => ensureSnapshot(this.environment()));
  }

  async #spawn(
    memoryLimitMb: number,
    oneShot: boolean,
    state?: Uint8Array,
    warm = false,
  ): Promise<SandboxChild> {
    // Counted so that close() waits for starts in flight: a call that was
    // queued when close() ran must not start a child after it.
    this.#spawning++;
    try {
      const snapshot = await this.#prepare();
      this.#checkOpen();
      const child = await SandboxChild.spawn(this.childSpec(memoryLimitMb), {
        mode: "serve",
        snapshotPath: snapshot,
        state,
        oneShot,
        revokeRead: this.#revocable(),
        warm,
      });
      // A child that dies before it is ready may have met a corrupted
      // snapshot: hash it again before the next start.
      child.ready.catch(() => distrustSnapshot(snapshot));
      this.#live.add(child);
      child.onExit(() => {
        this.#live.delete(child);
        child.cleanup();
      });
      if (this.#closed) {
        child.kill();
        this.#checkOpen();
      }
      return child;
    } finally {
      this.#spawning--;
    }
  }

  #spawning = 0;

  /** Runner paths the user did not grant: the child revokes them after loading. */
  #revocable(): string[] {
    const read = this.settings.permissions.allowRead;
    if (read === true) return [];
    return this.runnerReads().filter((p) => !(read || []).includes(p));
  }

  #refill(): void {
    if (this.#closed || this.settings.poolSize === 0) return;
    this.#pool = this.#pool.filter((c) => !c.exited);
    while (this.#pool.length + this.#pending < this.settings.poolSize) {
      this.#pending++;
      this.#spawn(this.settings.memoryLimitMb, true, undefined, true)
        .then((child) => {
          if (this.#closed) child.close();
          else this.#pool.push(child);
        })
        .catch(() => {})
        .finally(() => this.#pending--);
    }
  }

  #pending = 0;

  /**
   * Fills the warm pool now instead of on the first call, and waits until
   * its children are ready.
   *
   * @returns Settles when the pool is ready.
   * @throws {Error} When the sandbox is closed or Pyodide cannot be prepared.
   * @example
   * ```ts ignore
   * import { PyodideSandbox } from "./sandbox.ts";
   * const sandbox = new PyodideSandbox({ poolSize: 2 });
   * await sandbox.warmup();
   * ```
   */
  async warmup(): Promise<void> {
    this.#checkOpen();
    await this.#prepare();
    this.#refill();
    while (this.#pending > 0) {
      await new Promise((r) => setTimeout(r, 10));
    }
    await holdingLoop(
      Promise.all(this.#pool.map((c) => c.ready.catch(() => {}))),
    );
  }

  /** Takes a ready (or loading) pooled child, or spawns one. */
  async #acquire(call: CallSettings, wantState: boolean): Promise<{
    child: SandboxChild;
    previous?: SessionMetadata;
    pooled?: boolean;
  }> {
    if (call.sessionBytes) {
      const payload = await openSession(
        call.sessionBytes,
        call.sessionMetadata!,
        this.settings.sessionSecret,
      );
      return {
        child: await this.#spawn(call.memoryLimitMb, true, payload),
        previous: call.sessionMetadata,
      };
    }
    if (
      call.memoryLimitMb === this.settings.memoryLimitMb &&
      this.settings.poolSize > 0
    ) {
      this.#pool = this.#pool.filter((c) => !c.exited);
      const child = this.#pool.shift();
      // A child taken from the pool is replaced once the call is done (see
      // #run): one loading now would compete with the call for the CPU.
      if (child) return { child, pooled: true };
      this.#refill();
    }
    void wantState;
    return { child: await this.#spawn(call.memoryLimitMb, true) };
  }

  /**
   * Runs Python code in a fresh interpreter (or continues from
   * `sessionBytes`) and returns what happened. Failures inside the sandbox
   * are returned as an error result, never thrown.
   *
   * @param code Python source; top-level `await` works.
   * @param options Per-call limits, stdin, session state and abort signal.
   * @returns The result.
   * @throws {TypeError} When the code or an option is invalid, or the
   *   sandbox is closed.
   * @throws {RangeError} When the code is too large or a limit is out of
   *   range.
   * @throws {unknown} The signal's reason when `options.signal` aborts.
   * @example
   * ```ts ignore
   * import { PyodideSandbox } from "./sandbox.ts";
   * const sandbox = new PyodideSandbox();
   * const r = await sandbox.execute("sum(range(10))", { timeoutSeconds: 5 });
   * console.log(r.status, r.result); // "success" 45
   * await sandbox.close();
   * ```
   */
  async execute(
    code: string,
    options: ExecuteOptions = {},
  ): Promise<CodeExecutionResult & ExtraResultFields> {
    const started = performance.now();
    const call = this.checkCall(code, options);
    this.#checkOpen();
    call.signal?.throwIfAborted();
    return await this.#guard.run(
      call,
      undefined,
      () => this.#run(call, started),
    );
  }

  /** Runs a validated call (redaction and audit are done by the guard). */
  async #run(
    call: CallSettings,
    started: number,
  ): Promise<CodeExecutionResult & ExtraResultFields> {
    const deadline = started + call.timeoutSeconds * 1000;
    const wantState = this.settings.stateful;
    call.signal?.throwIfAborted();
    const release = await this.#semaphore.acquire(call.signal, deadline);
    let child: SandboxChild | undefined;
    let delivered = false;
    let refillTimer: ReturnType<typeof setTimeout> | undefined;
    try {
      if (release === "timeout") {
        return errorResult(
          emptyOutput(),
          "timeout",
          endMessage("timeout", call),
          (performance.now() - started) / 1000,
        );
      }
      let acquired;
      try {
        acquired = await this.#acquire(call, wantState);
      } catch (error) {
        if (error instanceof SessionError) {
          return errorResult(
            emptyOutput(),
            "session",
            error.message,
            (performance.now() - started) / 1000,
          );
        }
        throw error;
      }
      child = acquired.child;
      if (acquired.pooled) {
        // Replace the pooled child when the call ends, or now if it runs
        // long.
        refillTimer = setTimeout(() => this.#refill(), REFILL_DELAY_MS);
      }
      const outcome = await this.runCall(child, call, {
        deadline,
        soft: false,
        wantState,
      });
      delivered = outcome.frame !== undefined;
      if (outcome.ended === "abort") {
        throw call.signal?.reason ?? new DOMException("Aborted", "AbortError");
      }
      return await resultFromOutcome(outcome, {
        started,
        call,
        child,
        wantState,
        previous: acquired.previous,
        secret: this.settings.sessionSecret,
        files: fileLimits(this.settings),
      });
    } finally {
      if (release !== "timeout") release();
      if (child && delivered) {
        // The work is done and the result is in hand: SIGKILL is certain
        // and immediate (no graceful shutdown to wait for), and waiting for
        // the reap keeps the promise that no child outlives the call.
        await child.kill("exit", { hard: true });
        await child.cleanup();
      } else if (child) {
        child.kill();
        await child.cleanup();
      }
      if (refillTimer !== undefined) {
        clearTimeout(refillTimer);
        this.#refill();
      }
    }
  }

  /**
   * Runs code like {@linkcode execute} and yields its output as it comes:
   * `stdout`/`stderr` text, `display` bundles, and finally the `result`.
   *
   * @param code Python source.
   * @param options Per-call options (callbacks given here are called too).
   * @returns An async iterable of events.
   * @throws {TypeError} When the code or an option is invalid.
   * @throws {RangeError} When the code is too large or a limit is out of
   *   range.
   * @example
   * ```ts ignore
   * import { PyodideSandbox } from "./sandbox.ts";
   * const sandbox = new PyodideSandbox();
   * for await (const event of sandbox.executeStream("print('step 1')")) {
   *   if (event.type === "stdout") console.log(event.data);
   * }
   * ```
   */
  executeStream(
    code: string,
    options: ExecuteOptions = {},
  ): AsyncIterable<StreamEvent> {
    this.checkCall(code, options);
    this.#checkOpen();
    const queue: StreamEvent[] = [];
    let wake: (() => void) | undefined;
    const push = (event: StreamEvent) => {
      queue.push(event);
      wake?.();
    };
    let failure: { error: unknown } | undefined;
    let finished = false;
    this.execute(code, {
      ...options,
      onStdout: (data) => {
        options.onStdout?.(data);
        push({ type: "stdout", data });
      },
      onStderr: (data) => {
        options.onStderr?.(data);
        push({ type: "stderr", data });
      },
      onDisplay: (data) => {
        options.onDisplay?.(data);
        push({ type: "display", data });
      },
    }).then(
      (result) => push({ type: "result", result }),
      (error) => failure = { error },
    ).finally(() => {
      finished = true;
      wake?.();
    });
    return {
      async *[Symbol.asyncIterator]() {
        for (;;) {
          if (queue.length > 0) {
            yield queue.shift()!;
            continue;
          }
          if (finished) break;
          await new Promise<void>((resolve) => wake = resolve);
          wake = undefined;
        }
        if (failure) throw failure.error;
      },
    };
  }

  /**
   * Opens a live session: one child and one interpreter kept for many
   * `execute` calls, optionally resumed from saved bytes.
   *
   * @param options Saved state to resume from and the memory limit.
   * @returns The session.
   * @throws {TypeError} When the options are invalid or the sandbox is
   *   closed.
   * @example
   * ```ts ignore
   * import { PyodideSandbox } from "./sandbox.ts";
   * const sandbox = new PyodideSandbox();
   * const session = await sandbox.openSession();
   * await session.execute("x = 1");
   * console.log((await session.execute("x + 1")).result); // 2
   * await session.close();
   * ```
   */
  async openSession(options: SessionOptions = {}): Promise<PyodideSession> {
    this.#checkOpen();
    checkObject("session", options);
    checkKeys(
      "session",
      options,
      new Set(["sessionBytes", "sessionMetadata", "memoryLimitMb"]),
    );
    checkSessionPair(options.sessionBytes, options.sessionMetadata);
    const memoryLimitMb = options.memoryLimitMb === undefined
      ? this.settings.memoryLimitMb
      : checkMemory("memoryLimitMb", options.memoryLimitMb);
    let payload: Uint8Array | undefined;
    if (options.sessionBytes) {
      payload = await openSession(
        options.sessionBytes,
        options.sessionMetadata!,
        this.settings.sessionSecret,
      );
    }
    const child = await this.#spawn(memoryLimitMb, false, payload);
    const session = new PyodideSession(
      child,
      {
        settings: this.settings,
        memoryLimitMb,
        previous: options.sessionMetadata,
        checkCall: (code, opts) => this.checkCall(code, opts),
        run: (child, call, how) => this.runCall(child, call, how),
        semaphore: this.#semaphore,
        onClose: () => this.#sessions.delete(session),
        guard: this.#guard,
      },
    );
    this.#sessions.add(session);
    try {
      await holdingLoop(child.ready);
    } catch (error) {
      await session.close();
      throw new SessionError(
        `The session could not be started: ${child.describeExit()}`,
        { cause: error },
      );
    }
    return session;
  }

  /**
   * Stops every child (pooled, running and in sessions) and rejects further
   * calls.
   *
   * @returns Settles when all children are gone.
   * @example
   * ```ts ignore
   * import { PyodideSandbox } from "./sandbox.ts";
   * const sandbox = new PyodideSandbox();
   * await sandbox.close();
   * ```
   */
  async close(): Promise<void> {
    this.#closed = true;
    const sessions = [...this.#sessions].map((s) => s.close());
    const children = [...this.#live].map((c) => {
      c.kill();
      return c.cleanup();
    });
    this.#pool = [];
    await Promise.all([...sessions, ...children]);
    while (this.#pending > 0 || this.#spawning > 0) {
      await new Promise((r) => setTimeout(r, 10));
      await Promise.all([...this.#live].map((c) => {
        c.kill();
        return c.cleanup();
      }));
    }
  }

  /** Same as {@linkcode close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

function emptyOutput() {
  return {
    stdout: "",
    stderr: "",
    stdoutTruncated: false,
    stderrTruncated: false,
    displays: [],
    files: [],
  };
}

/**
 * Wraps an output callback so that an exception it throws is ignored: it
 * runs inside the child's frame reader, which must keep reading.
 */
function guardCallback<T>(
  callback: ((value: T) => void) | undefined,
): ((value: T) => void) | undefined {
  if (!callback) return undefined;
  return (value) => {
    try {
      callback(value);
    } catch {
      // A failing callback must not break the call.
    }
  };
}

function isDirectory(path: string): boolean {
  try {
    return Deno.statSync(path).isDirectory;
  } catch {
    return false;
  }
}

/**
 * Resolves the packages a child asks for and encodes the wheels.
 *
 * @param resolver The sandbox's resolver.
 * @param args `[imports, required, installed]` from the child.
 * @returns The reply as JSON text.
 */
async function installPackages(
  resolver: PackageResolver,
  args: unknown[],
): Promise<string> {
  const checked = checkInstallArgs(args);
  if (!checked.ok) {
    return JSON.stringify({
      ok: false,
      message: `Invalid install request: ${checked.error}`,
    });
  }
  const [imports, required, installed] = checked.value;
  try {
    if (!resolver.enabled && required.length > 0) {
      throw new InstallError(
        `Package "${
          required[0]
        }" was not found: no packageDir or packageIndexUrls is configured`,
      );
    }
    const wheels = resolver.enabled
      ? await resolver.resolve(imports, required, installed)
      : [];
    return JSON.stringify({
      ok: true,
      value: wheels.map((w) => ({
        name: w.name,
        version: w.version,
        fileName: w.fileName,
        data: encodeBase64(w.data),
      })),
    });
  } catch (error) {
    return JSON.stringify({
      ok: false,
      message: error instanceof Error ? error.message : String(error),
    });
  }
}

/**
 * Runs a host function for the child and encodes the reply.
 *
 * @param functions The sandbox's functions.
 * @param request The call from Python.
 * @returns The reply as JSON text.
 */
async function callHostFunction(
  functions: Record<string, HostFunction>,
  request: HostCallRequest,
): Promise<string> {
  const fn = Object.hasOwn(functions, request.name)
    ? functions[request.name]
    : undefined;
  if (!fn) {
    return JSON.stringify({
      ok: false,
      message: `No host function named ${request.name}`,
    });
  }
  try {
    const value = await fn(...request.args);
    const text = JSON.stringify({ ok: true, value: value ?? null });
    if (text.length > MAX_REPLY_BYTES / 2) {
      return JSON.stringify({
        ok: false,
        message: `Host function ${request.name} returned more than ${
          MAX_REPLY_BYTES / 2
        } characters`,
      });
    }
    return text;
  } catch (error) {
    return JSON.stringify({
      ok: false,
      message: error instanceof Error ? error.message : String(error),
    });
  }
}

/** What a session needs from its sandbox. */
interface SessionContext {
  settings: Settings;
  memoryLimitMb: number;
  previous?: SessionMetadata;
  checkCall: (code: unknown, options: ExecuteOptions) => CallSettings;
  run: (
    child: SandboxChild,
    call: CallSettings,
    how: { deadline: number; soft: boolean; wantState: boolean },
  ) => Promise<CallOutcome>;
  semaphore: Semaphore;
  onClose: () => void;
  guard: CallGuard;
}

/** The saved state of a session. */
export interface SavedSession {
  /** Bytes to resume from. */
  sessionBytes: Uint8Array;
  /** Their metadata. */
  sessionMetadata: SessionMetadata;
}

/**
 * A live session: one child process and one interpreter kept across calls.
 * A timeout first interrupts Python (the session survives with its state);
 * if the code does not stop, the child is killed and the session is lost.
 *
 * @example
 * ```ts ignore
 * import { PyodideSandbox } from "./sandbox.ts";
 * const sandbox = new PyodideSandbox();
 * const session = await sandbox.openSession();
 * await session.execute("import math; r = 2");
 * console.log((await session.execute("math.pi * r ** 2")).result);
 * const saved = await session.save();
 * await session.close();
 * ```
 */
export class PyodideSession {
  #child: SandboxChild;
  #ctx: SessionContext;
  #lost?: string;
  #closed = false;
  #busy: Promise<unknown> = Promise.resolve();
  /** A random id, for logs. */
  readonly id: string = crypto.randomUUID();

  /**
   * Use `PyodideSandbox.openSession()` instead.
   *
   * @param child The session's child.
   * @param ctx Settings from the sandbox.
   */
  constructor(child: SandboxChild, ctx: SessionContext) {
    this.#child = child;
    this.#ctx = ctx;
    child.onExit(() => {
      this.#lost ??=
        `The session was lost: its process ended (${child.describeExit()}); reopen it from saved sessionBytes`;
    });
  }

  /** Whether the session can still run code. */
  get alive(): boolean {
    return !this.#closed && this.#lost === undefined;
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#busy.then(fn, fn);
    this.#busy = run.catch(() => {});
    return run;
  }

  /**
   * Runs code in the session's interpreter. Calls on one session run one
   * after another.
   *
   * @param code Python source.
   * @param options `timeoutSeconds`, `stdin` and `signal` apply; state
   *   options do not.
   * @returns The result; kind `"session"` once the session is lost.
   * @throws {TypeError} When the code or an option is invalid, or the
   *   session is closed.
   * @throws {unknown} The signal's reason when `options.signal` aborts.
   */
  execute(
    code: string,
    options: ExecuteOptions = {},
  ): Promise<CodeExecutionResult & ExtraResultFields> {
    const started = performance.now();
    const call = this.#ctx.checkCall(code, options);
    if (call.sessionBytes) {
      throw new TypeError(
        "Invalid execute options: a live session takes sessionBytes in openSession(), not in execute()",
      );
    }
    if (this.#closed) throw new TypeError("The session is closed");
    return this.#ctx.guard.run(call, this.id, () => this.#run(call, started));
  }

  #run(
    call: CallSettings,
    started: number,
  ): Promise<CodeExecutionResult & ExtraResultFields> {
    return this.#serial(async () => {
      if (this.#lost) {
        return errorResult(
          emptyOutput(),
          "session",
          this.#lost,
          (performance.now() - started) / 1000,
        );
      }
      const deadline = started + call.timeoutSeconds * 1000;
      const release = await this.#ctx.semaphore.acquire(call.signal, deadline);
      if (release === "timeout") {
        return errorResult(
          emptyOutput(),
          "timeout",
          endMessage("timeout", call),
          (performance.now() - started) / 1000,
        );
      }
      try {
        const outcome = await this.#ctx.run(this.#child, call, {
          deadline,
          soft: true,
          wantState: false,
        });
        if (!outcome.frame) {
          this.#lost = `The session was lost: its process was ended after ${
            outcome.ended === "timeout"
              ? "a timeout the code did not stop for"
              : outcome.ended === "memory"
              ? "exceeding the memory limit"
              : outcome.ended === "abort"
              ? "an abort"
              : outcome.ended === "protocol"
              ? `a protocol violation (${this.#child.violation})`
              : "a crash"
          }; reopen it from saved sessionBytes`;
        }
        if (outcome.ended === "abort") {
          throw call.signal?.reason ??
            new DOMException("Aborted", "AbortError");
        }
        return await resultFromOutcome(outcome, {
          started,
          call,
          child: this.#child,
          wantState: false,
          files: fileLimits(this.#ctx.settings),
        });
      } finally {
        release();
      }
    });
  }

  /**
   * Saves the session's state (interpreter memory and working-folder files).
   *
   * @returns Bytes and metadata to resume from with `openSession()` or a
   *   stateful `execute`.
   * @throws {SessionError} When the session is lost or its state cannot be
   *   saved.
   * @throws {TypeError} When the session is closed.
   */
  save(): Promise<SavedSession> {
    if (this.#closed) throw new TypeError("The session is closed");
    return this.#serial(async () => {
      if (this.#lost) throw new SessionError(this.#lost);
      const outcome = await this.#child.call(
        ToChild.save,
        null,
        undefined,
        ToParent.saved,
        {
          deadline: performance.now() +
            this.#ctx.settings.timeoutSeconds * 1000,
          soft: false,
          maxOutputBytes: 0,
          maxDisplayBytes: 0,
        },
      );
      // Checked by SandboxChild.call.
      const header = outcome.frame?.json as SavedHeader | undefined;
      if (!outcome.frame || header?.stateError || !outcome.frame.bin.length) {
        if (!outcome.frame) {
          this.#lost =
            `The session was lost while saving: ${this.#child.describeExit()}`;
        }
        throw new SessionError(
          header?.stateError ?? this.#lost ?? "The session state was not saved",
        );
      }
      const sealed = await sealSession(
        outcome.frame.bin,
        this.#ctx.previous,
        this.#ctx.settings.sessionSecret,
        { packages: header?.packages ?? [] },
      );
      this.#ctx.previous = sealed.sessionMetadata;
      return sealed;
    });
  }

  /**
   * Ends the session's child.
   *
   * @returns Settles when the child is gone.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#ctx.onClose();
    await this.#child.close();
  }

  /** Same as {@linkcode close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

export { PYODIDE_VERSION, SessionError };
