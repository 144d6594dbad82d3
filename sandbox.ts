/**
 * {@linkcode PyodideSandbox}: async execution over the shared
 * {@linkcode BasePyodideSandbox}, with the queue, the warm pool and live
 * sessions.
 *
 * @module
 */

import { BasePyodideSandbox } from "./base_sandbox.ts";
import type { CodeExecutionResult, SessionMetadata } from "./result.ts";
import type {
  ExecuteOptions,
  SandboxOptions,
  SessionOptions,
  StreamEvent,
} from "./options.ts";
import type { CallOutcome, SandboxChild } from "./_child.ts";
import { snapshotPath } from "./_setup.ts";
import { SessionError } from "./_session_bytes.ts";
import { Semaphore } from "./_semaphore.ts";
import { CallGuard } from "./_audit.ts";
import { type CallSettings, sessionSettingsFrom } from "./_settings.ts";
import { ChildPool } from "./_pool.ts";
import { ensurePreload } from "./_snapshot.ts";
import { InstallError } from "./_packages.ts";
import { type PyodideSession, startSession } from "./session.ts";
import {
  CallClock,
  emptyOutput,
  endMessage,
  errorResult,
  eventStream,
  fileLimits,
  resultFromOutcome,
  type SandboxResult,
} from "./_outcome.ts";

/** The child of one stateless call. */
interface Acquired {
  child: SandboxChild;
  /** The metadata of the session bytes it was started from. */
  previous?: SessionMetadata;
  /** It came from the warm pool. */
  pooled?: boolean;
  /** The call refills the pool (see `ChildPool.refillAfter`). */
  refill?: boolean;
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
  #pool: ChildPool;
  #sessions = new Set<PyodideSession>();
  #semaphore: Semaphore;
  #closed = false;
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
    this.#pool = new ChildPool({
      size: this.settings.poolSize,
      memoryLimitMb: this.settings.memoryLimitMb,
      stateful: this.settings.stateful,
      environment: () => this.environment(),
      childSpec: (memoryLimitMb, extraReads) =>
        this.childSpec(memoryLimitMb, extraReads),
      revokeRead: () => this.#revocable(),
      preload: () =>
        this.settings.preload.length === 0
          ? Promise.resolve(undefined)
          : ensurePreload(
            this.environment(),
            this.settings.preload,
            this.settings.packageResolver,
          ),
    });
  }

  /** A random id of this sandbox, as in its audit records. */
  get id(): string {
    return this.#guard.sandboxId;
  }

  /** Number of children loaded or loading in the pool. */
  get poolSize(): number {
    return this.#pool.size;
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

  /**
   * Runner paths the user did not grant: the child revokes them after
   * loading. The base snapshot is not among them: the child reads it again
   * to save its state as a diff (SECURITY.md).
   */
  #revocable(): string[] {
    const read = this.settings.permissions.allowRead;
    if (read === true) return [];
    const base = snapshotPath(this.environment());
    return this.runnerReads().filter((p) =>
      p !== base && !(read || []).includes(p)
    );
  }

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
    await this.#pool.warmup();
  }

  /**
   * The child of a call: with session bytes, the child whose last call
   * returned them if it is kept, else one restored from them.
   */
  async #acquire(call: CallSettings): Promise<Acquired> {
    const previous = call.sessionMetadata;
    let state;
    if (call.sessionBytes) {
      // Checked first, kept child or not: bad bytes are refused alike.
      state = await this.openBytes(call.sessionBytes, previous!);
      const kept = this.#pool.takeKept(
        call.sessionBytes,
        call.memoryLimitMb,
      );
      if (kept) return { child: kept, previous };
    }
    const acquired = await this.#pool.acquire(call.memoryLimitMb, state);
    return { ...acquired, previous };
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
  ): Promise<CodeExecutionResult> {
    const clock = new CallClock();
    const call = this.checkCall(code, options);
    this.#checkOpen();
    call.signal?.throwIfAborted();
    return await this.#guard.run(
      call,
      undefined,
      () => this.#run(call, clock),
    );
  }

  /** Runs a validated call (redaction and audit are done by the guard). */
  async #run(call: CallSettings, clock: CallClock): Promise<SandboxResult> {
    const deadline = clock.started + call.timeoutSeconds * 1000;
    call.signal?.throwIfAborted();
    const release = await this.#semaphore.acquire(call.signal, deadline);
    if (release === "timeout") {
      const message = endMessage("timeout", call, clock);
      return errorResult(emptyOutput(), "timeout", message, clock);
    }
    clock.gotSlot();
    let acquired;
    try {
      acquired = await this.#acquire(call);
    } catch (error) {
      release();
      if (error instanceof InstallError) {
        return errorResult(emptyOutput(), "install", error.message, clock);
      }
      if (!(error instanceof SessionError)) throw error;
      return errorResult(emptyOutput(), "session", error.message, clock);
    }
    return await this.#runInChild(call, clock, deadline, acquired, release);
  }

  /**
   * Runs a call on its child, then frees the slot, ends the child and
   * refills the pool.
   */
  async #runInChild(
    call: CallSettings,
    clock: CallClock,
    deadline: number,
    acquired: Acquired,
    release: () => void,
  ): Promise<SandboxResult> {
    const { child } = acquired;
    clock.watch(child);
    const wantState = this.settings.stateful;
    let delivered = false;
    // Refill the pool when the call ends, or soon after its child is ready
    // if it runs long: never while the call's own child loads.
    const refillLater = acquired.refill
      ? this.#pool.refillAfter(child)
      : undefined;
    let kept = false;
    try {
      const outcome = await this.runCall(child, call, {
        deadline,
        soft: false,
        wantState,
      });
      delivered = outcome.frame !== undefined;
      if (outcome.ended === "abort") {
        throw call.signal?.reason ?? new DOMException("Aborted", "AbortError");
      }
      const result = await resultFromOutcome(outcome, {
        clock,
        call,
        child,
        wantState,
        previous: acquired.previous,
        secret: this.settings.sessionSecret,
        files: fileLimits(this.settings),
      });
      kept = this.#keep(child, outcome, result, call);
      return result;
    } finally {
      release();
      // With the result in hand, SIGKILL is certain and immediate (no
      // graceful shutdown to wait for); waiting for the reap keeps the
      // promise that no child outlives the call (but a kept one).
      if (!kept) {
        await child.kill("exit", { hard: delivered });
        await child.cleanup();
      }
      refillLater?.();
    }
  }

  /**
   * Keeps the child of a stateful call that ended well, for the call that
   * continues from the bytes it returned.
   */
  #keep(
    child: SandboxChild,
    outcome: CallOutcome,
    result: SandboxResult,
    call: CallSettings,
  ): boolean {
    const bytes = result.sessionBytes;
    const ok = result.status === "success" ||
      result.error?.kind === "exception";
    if (!bytes || !ok || outcome.ended !== undefined) return false;
    if (child.exited || child.violation !== undefined) return false;
    return this.#pool.keep(child, bytes, call.memoryLimitMb);
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
    return eventStream(
      options,
      (callbacks) => this.execute(code, { ...options, ...callbacks }),
    );
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
    const o = sessionSettingsFrom(this.settings, options);
    const state = o.sessionBytes
      ? await this.openBytes(o.sessionBytes, o.sessionMetadata!)
      : undefined;
    const child = await this.#pool.spawn(o.memoryLimitMb, {
      oneShot: false,
      state,
    });
    return await startSession(child, {
      settings: this.settings,
      memoryLimitMb: o.memoryLimitMb,
      previous: o.sessionMetadata,
      checkCall: (code, opts) => this.checkCall(code, opts),
      run: (child, call, how) => this.runCall(child, call, how),
      semaphore: this.#semaphore,
      sessions: this.#sessions,
      guard: this.#guard,
    });
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
    await Promise.all([
      ...[...this.#sessions].map((s) => s.close()),
      this.#pool.close(),
    ]);
  }

  /** Same as {@linkcode close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
