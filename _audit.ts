/**
 * The audit trail and the output filter around every execution: one
 * {@linkcode AuditRecord} per call (to `onAudit` and/or the `auditLog`
 * file), and redaction of everything the call hands back.
 *
 * @module
 */

import { resolve } from "node:path";
import type { PermissionOptions } from "./permissions.ts";
import type { ErrorKind, MimeBundle } from "./result.ts";
import type { CallOutcome } from "./_child.ts";
import { toHex } from "./_bytes.ts";
import {
  callRedactor,
  checkRedactOption,
  type RedactableResult,
  type RedactPattern,
  type StreamRedactor,
} from "./_redact.ts";

/**
 * One execution, as recorded by the audit trail. The code itself is only
 * included with `auditCode: true`; output is never included.
 *
 * @example
 * ```ts
 * import type { AuditRecord } from "./_audit.ts";
 * const onAudit = (record: AuditRecord) =>
 *   console.log(record.time, record.status, record.codeSha256);
 * ```
 */
export interface AuditRecord {
  /** When the call started (ISO 8601). */
  time: string;
  /** The sandbox's id (`PyodideSandbox.id`). */
  sandboxId: string;
  /** The live session's id (`PyodideSession.id`), for session calls. */
  sessionId?: string;
  /** SHA-256 of the code's UTF-8 bytes, lowercase hex. */
  codeSha256: string;
  /** Size of the code in UTF-8 bytes. */
  codeBytes: number;
  /** The code, only with `auditCode: true`. */
  code?: string;
  /** The sandbox's permissions (paths resolved). */
  permissions: Required<PermissionOptions>;
  /** The limits the call ran under. */
  limits: AuditLimits;
  /** Wall-clock milliseconds of the whole call, queueing included. */
  durationMs: number;
  /**
   * `"success"` or `"error"` as in the result; `"aborted"` when the call's
   * `signal` aborted it (the promise rejected). A call that rejected for
   * another reason (say, the snapshot could not be built) is recorded as
   * `"error"` with `errorKind` `"crash"`.
   */
  status: "success" | "error" | "aborted";
  /** The result's error kind, when `status` is `"error"`. */
  errorKind?: ErrorKind;
  /** Bytes the code wrote to stdout, including bytes dropped by the cap. */
  stdoutBytes: number;
  /** Bytes the code wrote to stderr, including bytes dropped by the cap. */
  stderrBytes: number;
  /** Some output (or a returned file) was cut by a limit. */
  truncated: boolean;
}

/** The limits recorded in an {@linkcode AuditRecord}. */
export interface AuditLimits {
  /** Limit of the call in seconds. */
  timeoutSeconds: number;
  /** Memory limit of the call in MB. */
  memoryLimitMb: number;
  /** Output kept per stream, in bytes. */
  maxOutputBytes: number;
  /** Largest accepted code, in bytes. */
  maxCodeBytes: number;
}

/** Receives one {@linkcode AuditRecord} per execution. */
export type AuditCallback = (record: AuditRecord) => void | Promise<void>;

/**
 * The output-filtering and audit options as given (documented on
 * `SandboxOptions`); validated by {@linkcode checkFilterAuditOptions}.
 */
export interface FilterAuditOptions {
  redact?: (string | RegExp)[];
  redactEnv?: boolean;
  onAudit?: AuditCallback;
  auditLog?: string;
  auditCode?: boolean;
}

/** The validated {@linkcode FilterAuditOptions}. */
export interface FilterAuditSettings {
  redact: RedactPattern[];
  redactEnv: boolean;
  onAudit?: AuditCallback;
  auditLog?: string;
  auditCode: boolean;
}

/** Option names of {@linkcode FilterAuditOptions}. */
export const FILTER_AUDIT_OPTION_NAMES: readonly string[] = [
  "redact",
  "redactEnv",
  "onAudit",
  "auditLog",
  "auditCode",
];

/**
 * Validates the output-filtering and audit options. The audit log is
 * opened for appending (and created) to prove it is usable.
 *
 * @param options The sandbox options.
 * @returns The settings.
 * @throws {TypeError} When an option has the wrong type.
 * @throws {Error} When the audit log cannot be opened for appending.
 * @example
 * ```ts
 * import { checkFilterAuditOptions } from "./_audit.ts";
 * checkFilterAuditOptions({ redact: ["s3cret"], auditCode: false });
 * ```
 */
export function checkFilterAuditOptions(
  options: FilterAuditOptions,
): FilterAuditSettings {
  const o = options;
  for (const name of ["redactEnv", "auditCode"] as const) {
    if (o[name] !== undefined && typeof o[name] !== "boolean") {
      throw new TypeError(
        `Invalid ${name}: expected a boolean, got ${typeof o[name]}`,
      );
    }
  }
  if (o.onAudit !== undefined && typeof o.onAudit !== "function") {
    throw new TypeError(
      `Invalid onAudit: expected a function, got ${
        o.onAudit === null ? "null" : typeof o.onAudit
      }`,
    );
  }
  let auditLog: string | undefined;
  if (o.auditLog !== undefined) {
    if (
      typeof o.auditLog !== "string" || o.auditLog === "" ||
      o.auditLog.includes("\0")
    ) {
      throw new TypeError(
        `Invalid auditLog: expected a file path, got ${
          typeof o.auditLog === "string"
            ? JSON.stringify(o.auditLog)
            : typeof o.auditLog
        }`,
      );
    }
    auditLog = resolve(o.auditLog);
    try {
      Deno.openSync(auditLog, { append: true, create: true, mode: 0o600 })
        .close();
    } catch (error) {
      throw new Error(
        `Cannot use the audit log: ${auditLog} cannot be opened for appending (${
          error instanceof Error ? error.message : String(error)
        })`,
        { cause: error },
      );
    }
  }
  return {
    redact: o.redact === undefined ? [] : checkRedactOption(o.redact),
    redactEnv: o.redactEnv ?? false,
    onAudit: o.onAudit,
    auditLog,
    auditCode: o.auditCode ?? false,
  };
}

/** What the guard needs of a call (a subset of the sandbox's call settings). */
export interface GuardedCall {
  code: string;
  timeoutSeconds: number;
  memoryLimitMb: number;
  signal?: AbortSignal;
  onStdout?: (text: string) => void;
  onStderr?: (text: string) => void;
  onDisplay?: (bundle: MimeBundle) => void;
  /** Set by the guard: receives the child's outcome (byte counts). */
  onOutcome?: (outcome: CallOutcome) => void;
}

/** What the guard needs of a result. */
export interface GuardedResult extends RedactableResult {
  status: "success" | "error";
  error?: { kind: ErrorKind; message: string; traceback?: string };
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  files?: {
    truncated: boolean;
    content: Uint8Array;
    path: string;
    size: number;
  }[];
}

/** The sandbox's side of a guard. */
export interface GuardContext {
  settings: FilterAuditSettings & {
    permissions: Required<PermissionOptions>;
    maxOutputBytes: number;
    maxCodeBytes: number;
  };
  /** Values of the variables passed to children (for `redactEnv`). */
  envValues: () => string[];
}

/**
 * Replaces a call's output callbacks by redacting ones.
 *
 * @param call The call (changed in place).
 * @param redactor The call's redactor.
 * @returns The stream redactors, to flush when the call ends.
 */
function redactCallbacks(
  call: GuardedCall,
  redactor: ReturnType<typeof callRedactor>,
): StreamRedactor[] {
  const streams: StreamRedactor[] = [];
  if (!redactor.active) return streams;
  for (const name of ["onStdout", "onStderr"] as const) {
    const sink = call[name];
    if (sink) {
      const stream = redactor.stream(sink);
      streams.push(stream);
      call[name] = (text) => stream.push(text);
    }
  }
  const onDisplay = call.onDisplay;
  if (onDisplay) call.onDisplay = (b) => onDisplay(redactor.bundle(b));
  return streams;
}

/**
 * The audit fields that tell how a call ended.
 *
 * @param result The result, or undefined when the call rejected.
 * @param aborted Whether the call's signal aborted.
 * @returns `status`, and `errorKind` when there is one.
 */
function outcomeFields(
  result: GuardedResult | undefined,
  aborted: boolean,
): Pick<AuditRecord, "status" | "errorKind"> {
  if (result) {
    return result.error
      ? { status: result.status, errorKind: result.error.kind }
      : { status: result.status };
  }
  return aborted
    ? { status: "aborted" }
    : { status: "error", errorKind: "crash" };
}

/** Whether any output or file of a result was cut (false without one). */
function truncatedOf(result: GuardedResult | undefined): boolean {
  return result
    ? result.stdoutTruncated || result.stderrTruncated ||
      (result.files ?? []).some((f) => f.truncated)
    : false;
}

/**
 * Wraps each execution of a sandbox: redacts streamed chunks and the
 * result, and writes the audit record.
 *
 * @example
 * ```ts ignore
 * const guard = new CallGuard(context);
 * const result = await guard.run(call, undefined, () => runTheCall(call));
 * ```
 */
export class CallGuard {
  #ctx: GuardContext;
  #writes: Promise<void> = Promise.resolve();
  /** Id of the sandbox, in audit records. */
  readonly sandboxId: string = crypto.randomUUID();

  /**
   * Creates the guard of one sandbox.
   *
   * @param ctx Settings and the passed environment.
   */
  constructor(ctx: GuardContext) {
    this.#ctx = ctx;
  }

  /**
   * Runs one validated call: its output callbacks are replaced by redacting
   * ones, the result is redacted, and the audit record is emitted whether
   * the call returns or rejects.
   *
   * @param call The call's settings (its callbacks are wrapped in place).
   * @param sessionId The live session's id, if any.
   * @param run Executes the call.
   * @returns The redacted result.
   * @throws {Error} What `run` throws, or when the audit record cannot be
   *   delivered.
   */
  async run<R extends GuardedResult>(
    call: GuardedCall,
    sessionId: string | undefined,
    run: () => Promise<R>,
  ): Promise<R> {
    const settings = this.#ctx.settings;
    const auditing = settings.onAudit !== undefined ||
      settings.auditLog !== undefined;
    const redactor = callRedactor(
      settings.redact,
      settings.redactEnv ? this.#ctx.envValues() : [],
    );
    if (!auditing && !redactor.active) return await run();

    const time = new Date();
    const started = performance.now();
    const codeBytes = auditing
      ? new TextEncoder().encode(call.code)
      : new Uint8Array(0);
    const digest = auditing
      ? crypto.subtle.digest("SHA-256", codeBytes)
      : undefined;
    let counts = { stdoutBytes: 0, stderrBytes: 0 };
    call.onOutcome = (outcome) => {
      counts = {
        stdoutBytes: outcome.stdoutBytes,
        stderrBytes: outcome.stderrBytes,
      };
    };
    const streams = redactCallbacks(call, redactor);

    let result: R | undefined;
    let failure: { error: unknown } | undefined;
    try {
      result = redactor.result(await run());
    } catch (error) {
      failure = { error };
    } finally {
      for (const stream of streams) stream.flush();
    }
    if (auditing) {
      await this.#deliver({
        time: time.toISOString(),
        sandboxId: this.sandboxId,
        ...(sessionId === undefined ? {} : { sessionId }),
        codeSha256: toHex(new Uint8Array(await digest!)),
        codeBytes: codeBytes.length,
        ...(settings.auditCode ? { code: call.code } : {}),
        permissions: structuredClone(settings.permissions),
        limits: {
          timeoutSeconds: call.timeoutSeconds,
          memoryLimitMb: call.memoryLimitMb,
          maxOutputBytes: settings.maxOutputBytes,
          maxCodeBytes: settings.maxCodeBytes,
        },
        durationMs: Math.round((performance.now() - started) * 1000) / 1000,
        ...outcomeFields(result, call.signal?.aborted === true),
        ...counts,
        truncated: truncatedOf(result),
      });
    }
    if (failure) throw failure.error;
    return result!;
  }

  async #deliver(record: AuditRecord): Promise<void> {
    const { onAudit, auditLog } = this.#ctx.settings;
    if (auditLog !== undefined) {
      const line = JSON.stringify(record) + "\n";
      const write = this.#writes.then(() =>
        Deno.writeTextFile(auditLog, line, {
          append: true,
          create: true,
          mode: 0o600,
        })
      );
      this.#writes = write.catch(() => {});
      try {
        await write;
      } catch (error) {
        throw new Error(
          `Failed to write the audit log: ${auditLog} (${
            error instanceof Error ? error.message : String(error)
          })`,
          { cause: error },
        );
      }
    }
    if (onAudit) {
      try {
        await onAudit(structuredClone(record));
      } catch (error) {
        throw new Error(
          `The onAudit callback failed: ${
            error instanceof Error ? error.message : String(error)
          }`,
          { cause: error },
        );
      }
    }
  }
}
