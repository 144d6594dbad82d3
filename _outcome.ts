/**
 * Turning what a child produced (a {@linkcode CallOutcome}) into a
 * {@linkcode CodeExecutionResult}: error kinds, messages, returned files,
 * sealed session state, where the call's time went, and the result as a
 * stream of events.
 *
 * @module
 */

import type {
  CodeExecutionResult,
  ErrorKind,
  ExecutionTiming,
  MimeBundle,
  ResultFile,
  SessionMetadata,
} from "./result.ts";
import type { ExecuteOptions, StreamEvent } from "./options.ts";
import type { CallOutcome, SandboxChild } from "./_child.ts";
import type { ResultHeader, RunnerOut } from "./_protocol.ts";
import { decodeFiles, type FileLimits } from "./_protocol_checks.ts";
import { sealSession } from "./_session_bytes.ts";
import type { Settings } from "./_settings.ts";

/** The working folder of every sandbox. */
const SANDBOX_HOME = "/home/pyodide";

/** A result as the sandboxes make it: the optional fields are all set. */
export type SandboxResult = CodeExecutionResult & {
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  timing: ExecutionTiming;
};

/** The output part of a result. */
export interface ResultOutput {
  stdout: string;
  stderr: string;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  displays?: MimeBundle[];
  files?: ResultFile[];
}

/**
 * Where one call's time goes: queued for a slot, starting the child until
 * it is ready, running the code. Marks are taken as the call moves on.
 */
export class CallClock {
  /** When the call was made (`performance.now()`). */
  readonly started: number = performance.now();
  #slot?: number;
  #ready?: number;

  /** Marks the end of the wait for a slot. */
  gotSlot(): void {
    this.#slot ??= performance.now();
  }

  /**
   * Marks the start of the run once the child is ready (at once for a
   * child that already is).
   *
   * @param child The call's child.
   */
  watch(child: SandboxChild): void {
    this.gotSlot();
    child.ready.then(() => this.#ready ??= performance.now(), () => {});
  }

  /**
   * The phases so far.
   *
   * @param now The end of the call.
   * @returns Milliseconds per phase.
   */
  timing(now: number = performance.now()): ExecutionTiming {
    const slot = Math.min(this.#slot ?? now, now);
    const ready = Math.max(slot, Math.min(this.#ready ?? now, now));
    return {
      queuedMs: round(slot - this.started),
      startMs: round(ready - slot),
      runMs: round(now - ready),
    };
  }

  /**
   * How a call's budget was spent: the phases up to its deadline (a call
   * that timed out takes a little longer to end).
   *
   * @param call The call's limit.
   * @returns Milliseconds per phase, adding up to at most the limit.
   */
  budget(call: { timeoutSeconds: number }): ExecutionTiming {
    const deadline = this.started + call.timeoutSeconds * 1000;
    return this.timing(Math.min(performance.now(), deadline));
  }

  /**
   * Ends the clock.
   *
   * @returns `executionTime` (seconds) and `timing`, taken at one moment.
   */
  stop(): { executionTime: number; timing: ExecutionTiming } {
    const now = performance.now();
    return {
      executionTime: (now - this.started) / 1000,
      timing: this.timing(now),
    };
  }
}

function round(ms: number): number {
  return Math.max(0, Math.round(ms * 1000) / 1000);
}

/** @returns The output of a call that produced nothing. */
export function emptyOutput(): ResultOutput {
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
 * The message of a call that ended without a result of its own.
 *
 * @param kind `"timeout"`, `"memory"` or a crash.
 * @param call The call's limits.
 * @param detail Why it crashed; for a timeout, the clock.
 * @returns The message.
 */
export function endMessage(
  kind: ErrorKind,
  call: { timeoutSeconds: number; memoryLimitMb: number },
  detail: string | CallClock = "",
): string {
  switch (kind) {
    case "timeout":
      return `Execution timed out after ${call.timeoutSeconds} seconds${
        detail instanceof CallClock ? phases(detail.budget(call)) : ""
      }`;
    case "memory":
      return `Execution exceeded the memory limit of ${call.memoryLimitMb} MB`;
    default:
      return `The sandbox process crashed: ${detail}`;
  }
}

/** `" (queued 6.1 s, start-up 3.2 s, code 0.7 s)"`. */
function phases(t: ExecutionTiming): string {
  const s = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
  return ` (queued ${s(t.queuedMs)}, start-up ${s(t.startMs)}, code ${
    s(t.runMs)
  })`;
}

/**
 * Where a sandbox's returned files may be, and how large.
 *
 * @param settings The sandbox's settings.
 * @returns The limits the host enforces on the files frame.
 */
export function fileLimits(settings: Settings): FileLimits {
  const write = settings.permissions.allowWrite;
  const grants = Array.isArray(write) ? write : [];
  return {
    roots: [SANDBOX_HOME, ...grants],
    exact: grants,
    maxFileBytes: settings.maxFileBytes,
    maxTotalFileBytes: settings.maxTotalFileBytes,
  };
}

/** Context a result is built in. */
export interface ResultContext {
  clock: CallClock;
  call: { timeoutSeconds: number; memoryLimitMb: number };
  child?: SandboxChild;
  wantState: boolean;
  previous?: SessionMetadata;
  secret?: Uint8Array;
  /** Where returned files may be, and their caps. */
  files: FileLimits;
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
): Promise<SandboxResult> {
  const files = outcome.files
    ? decodeFiles(outcome.files.bin, ctx.files)
    : { files: [], dropped: 0 };
  const dropped = files.dropped
    ? `Dropped ${files.dropped} file entries the sandbox sent: ${files.reason}\n`
    : "";
  const base: ResultOutput = {
    stdout: outcome.stdout,
    stderr: outcome.stderr + dropped,
    stdoutTruncated: outcome.stdoutTruncated,
    stderrTruncated: outcome.stderrTruncated,
    displays: outcome.displays,
    files: files.files,
  };
  if (!outcome.frame && ctx.child?.stateRejected) {
    // The child refused the session state before any user code ran.
    const message =
      `The session bytes could not be restored: ${ctx.child.describeExit()}`;
    return errorResult(base, "session", message, ctx.clock);
  }
  if (!outcome.frame) {
    const kind: ErrorKind = outcome.ended === "timeout"
      ? "timeout"
      : outcome.ended === "memory"
      ? "memory"
      : "crash";
    const detail = kind === "timeout"
      ? ctx.clock
      : endDetail(outcome, ctx.child);
    return errorResult(
      base,
      kind,
      endMessage(kind, ctx.call, detail),
      ctx.clock,
    );
  }
  // Checked by SandboxChild.call: a malformed header never gets here.
  const header = outcome.frame.json as ResultHeader;
  const out: RunnerOut = header.out;
  const result: SandboxResult = {
    status: out.ok ? "success" : "error",
    ...base,
    result: out.ok ? out.result ?? null : null,
    executionTime: 0,
    timing: { queuedMs: 0, startMs: 0, runMs: 0 },
  };
  if (!out.ok && out.error) addError(result, header, outcome, ctx);
  if (ctx.wantState && !header.notRun) {
    await addState(result, header, outcome.frame.bin, ctx);
  }
  return Object.assign(result, ctx.clock.stop());
}

/** Fills in the error of a run that Python ended with an exception. */
function addError(
  result: SandboxResult,
  header: ResultHeader,
  outcome: CallOutcome,
  ctx: ResultContext,
): void {
  const e = header.out.error!;
  const kind: ErrorKind = header.installError
    ? "install"
    : e.type === "MemoryError"
    ? "memory"
    : (e.type === "KeyboardInterrupt" || e.type === "CancelledError") &&
        outcome.interrupted
    ? "timeout"
    : "exception";
  if (kind === "timeout") {
    const message = endMessage("timeout", ctx.call, ctx.clock);
    result.error = { kind, message };
    result.stderr += `${message}\n`;
  } else if (kind === "install") {
    result.error = { kind, message: e.message };
    result.stderr += `${e.message}\n`;
  } else {
    result.error = {
      kind,
      type: e.type,
      message: e.message,
      traceback: e.traceback,
    };
    result.stderr += e.traceback;
  }
}

/** Seals the state a stateful run returned into the result. */
async function addState(
  result: SandboxResult,
  header: ResultHeader,
  state: Uint8Array,
  ctx: ResultContext,
): Promise<void> {
  if (header.droppedGlobals) {
    result.stderr +=
      `Warning: these globals held live JavaScript objects and were not saved: ${header.droppedGlobals}\n`;
  }
  if (header.stateError || state.length === 0) {
    const message = header.stateError ?? "The session state was not saved";
    result.status = "error";
    result.error = { kind: "session", message };
    result.stderr += `${message}\n`;
    return;
  }
  Object.assign(
    result,
    await sealSession(
      state,
      ctx.previous,
      ctx.secret,
      { packages: header.packages ?? [] },
      ctx.child?.baseSha256,
    ),
  );
}

/**
 * An error result with a message of the sandbox's own.
 *
 * @param base The output the call produced, if any.
 * @param kind The error kind.
 * @param message The message (also appended to stderr).
 * @param clock The call's clock, stopped here.
 * @returns The result.
 */
export function errorResult(
  base: ResultOutput,
  kind: ErrorKind,
  message: string,
  clock: CallClock,
): SandboxResult {
  return {
    status: "error",
    ...base,
    stderr: `${base.stderr}${
      base.stderr && !base.stderr.endsWith("\n") ? "\n" : ""
    }${message}\n`,
    result: null,
    error: { kind, message },
    ...clock.stop(),
  };
}

/** The output callbacks of a call. */
type OutputCallbacks = Required<
  Pick<ExecuteOptions, "onStdout" | "onStderr" | "onDisplay">
>;

/**
 * A call's output and result as an async iterable of events. The caller's
 * own callbacks are called too.
 *
 * @param options The call's options (their output callbacks).
 * @param run Starts the call with the given output callbacks.
 * @returns The events: output as it comes, then the result.
 */
export function eventStream(
  options: ExecuteOptions,
  run: (callbacks: OutputCallbacks) => Promise<CodeExecutionResult>,
): AsyncIterable<StreamEvent> {
  const queue: StreamEvent[] = [];
  let wake: (() => void) | undefined;
  const push = (event: StreamEvent) => {
    queue.push(event);
    wake?.();
  };
  let failure: { error: unknown } | undefined;
  let finished = false;
  run({
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
