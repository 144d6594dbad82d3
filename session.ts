/**
 * {@linkcode PyodideSession}: a live session, one child process and one
 * interpreter kept across calls, opened with `PyodideSandbox.openSession()`.
 *
 * @module
 */

import type { CodeExecutionResult, SessionMetadata } from "./result.ts";
import type { ExecuteOptions, SavedSession } from "./options.ts";
import type { CallOutcome, SandboxChild } from "./_child.ts";
import { holdingLoop } from "./_holding_loop.ts";
import { type SavedHeader, ToChild, ToParent } from "./_protocol.ts";
import { sealSession, SessionError } from "./_session_bytes.ts";
import type { Semaphore } from "./_semaphore.ts";
import type { CallGuard } from "./_audit.ts";
import type { CallSettings, Settings } from "./_settings.ts";
import type { RunHow } from "./_host_calls.ts";
import {
  CallClock,
  emptyOutput,
  endMessage,
  errorResult,
  fileLimits,
  resultFromOutcome,
  type SandboxResult,
} from "./_outcome.ts";

/** What a session needs from its sandbox. */
export interface SessionContext {
  settings: Settings;
  memoryLimitMb: number;
  previous?: SessionMetadata;
  checkCall: (code: unknown, options: ExecuteOptions) => CallSettings;
  run: (
    child: SandboxChild,
    call: CallSettings,
    how: RunHow,
  ) => Promise<CallOutcome>;
  semaphore: Semaphore;
  /** The sandbox's open sessions: a session is in it until closed. */
  sessions: Set<PyodideSession>;
  guard: CallGuard;
}

/**
 * Opens a session on a child that is starting, once the child is ready.
 *
 * @param child The session's child, spawned with its state.
 * @param ctx Settings from the sandbox.
 * @returns The session.
 * @throws {SessionError} When the child dies before it is ready.
 */
export async function startSession(
  child: SandboxChild,
  ctx: SessionContext,
): Promise<PyodideSession> {
  const session = new PyodideSession(child, ctx);
  ctx.sessions.add(session);
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
 * Why a session's child is gone after a call that got no reply.
 *
 * @param ended How the call ended.
 * @param child The child, for a protocol violation.
 * @returns The message every later call returns.
 */
function lostMessage(
  ended: CallOutcome["ended"],
  child: SandboxChild,
): string {
  const why = ended === "timeout"
    ? "a timeout the code did not stop for"
    : ended === "memory"
    ? "exceeding the memory limit"
    : ended === "abort"
    ? "an abort"
    : ended === "protocol"
    ? `a protocol violation (${child.violation})`
    : "a crash";
  return `The session was lost: its process was ended after ${why}; reopen it from saved sessionBytes`;
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
  ): Promise<CodeExecutionResult> {
    const clock = new CallClock();
    const call = this.#ctx.checkCall(code, options);
    if (call.sessionBytes) {
      throw new TypeError(
        "Invalid execute options: a live session takes sessionBytes in openSession(), not in execute()",
      );
    }
    if (this.#closed) throw new TypeError("The session is closed");
    return this.#ctx.guard.run(call, this.id, () => this.#run(call, clock));
  }

  #run(call: CallSettings, clock: CallClock): Promise<SandboxResult> {
    return this.#serial(async () => {
      if (this.#lost) {
        return errorResult(emptyOutput(), "session", this.#lost, clock);
      }
      const deadline = clock.started + call.timeoutSeconds * 1000;
      const release = await this.#ctx.semaphore.acquire(call.signal, deadline);
      if (release === "timeout") {
        const message = endMessage("timeout", call, clock);
        return errorResult(emptyOutput(), "timeout", message, clock);
      }
      try {
        clock.watch(this.#child);
        const outcome = await this.#ctx.run(this.#child, call, {
          deadline,
          soft: true,
          wantState: false,
        });
        if (!outcome.frame) {
          this.#lost = lostMessage(outcome.ended, this.#child);
        }
        if (outcome.ended === "abort") {
          throw call.signal?.reason ??
            new DOMException("Aborted", "AbortError");
        }
        return await resultFromOutcome(outcome, {
          clock,
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
        this.#child.baseSha256,
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
    this.#ctx.sessions.delete(this);
    await this.#child.close();
  }

  /** Same as {@linkcode close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
