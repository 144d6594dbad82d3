/**
 * The sandbox classes: {@linkcode BasePyodideSandbox} (options, checks and
 * the child command) and {@linkcode PyodideSandbox} (async execution, the
 * queue, the warm pool and live sessions).
 *
 * @module
 */

import { buildPermissionFlags } from "./permissions.ts";
import type { CodeExecutionResult, SessionMetadata } from "./result.ts";
import type {
  ExecuteOptions,
  SandboxCommand,
  SandboxOptions,
  SessionOptions,
  StreamEvent,
} from "./options.ts";
import type { CallOutcome, ChildSpec, SandboxChild } from "./_child.ts";
import {
  checkDeno,
  childArgs,
  childEnv,
  type Environment,
  pyodideReadPaths,
  resolveEnvironment,
  snapshotPath,
} from "./_setup.ts";
import { SessionError, unsealSession } from "./_session_bytes.ts";
import { PYODIDE_VERSION } from "./runner.ts";
import { Semaphore } from "./_semaphore.ts";
import { CallGuard } from "./_audit.ts";
import {
  type CallSettings,
  callSettingsFrom,
  checkMemory,
  passedEnv,
  sessionSettingsFrom,
  type Settings,
  settingsFrom,
} from "./_settings.ts";
import { runExec, type RunHow } from "./_host_calls.ts";
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

export type {
  ExecuteOptions,
  HostFunction,
  SandboxCommand,
  SandboxOptions,
  SavedSession,
  SessionOptions,
  StreamEvent,
} from "./options.ts";
export { PyodideSession } from "./session.ts";
export { PYODIDE_VERSION, SessionError };

/** Memory the child needs beyond `memoryLimitMb` (V8, Deno, Pyodide's JS). */
const RSS_OVERHEAD_MB = 384;

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
    if (!this.#settings.skipDenoCheck) checkDeno(this.#settings.denoPath);
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
    return callSettingsFrom(this.#settings, code, options);
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
    how: RunHow,
  ): Promise<CallOutcome> {
    return runExec(child, this.#settings, call, how);
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
      env: childEnv(
        this.environment(),
        passedEnv(settings.permissions.allowEnv),
      ),
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
    return Object.values(passedEnv(this.#settings.permissions.allowEnv));
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
      args: childArgs(env, checkMemory(memoryLimitMb), flags),
    };
  }
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
      environment: () => this.environment(),
      childSpec: (memoryLimitMb) => this.childSpec(memoryLimitMb),
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

  /** Runner paths the user did not grant: the child revokes them after loading. */
  #revocable(): string[] {
    const read = this.settings.permissions.allowRead;
    if (read === true) return [];
    return this.runnerReads().filter((p) => !(read || []).includes(p));
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

  /** The child of a stateless call, restored from its session bytes. */
  async #acquire(call: CallSettings): Promise<Acquired> {
    const state = call.sessionBytes && await unsealSession(
      call.sessionBytes,
      call.sessionMetadata!,
      this.settings.sessionSecret,
    );
    const acquired = await this.#pool.acquire(call.memoryLimitMb, state);
    return { ...acquired, previous: call.sessionMetadata };
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
      return await resultFromOutcome(outcome, {
        clock,
        call,
        child,
        wantState,
        previous: acquired.previous,
        secret: this.settings.sessionSecret,
        files: fileLimits(this.settings),
      });
    } finally {
      release();
      // With the result in hand, SIGKILL is certain and immediate (no
      // graceful shutdown to wait for); waiting for the reap keeps the
      // promise that no child outlives the call.
      await child.kill("exit", { hard: delivered });
      await child.cleanup();
      refillLater?.();
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
    const payload = o.sessionBytes
      ? await unsealSession(
        o.sessionBytes,
        o.sessionMetadata!,
        this.settings.sessionSecret,
      )
      : undefined;
    const child = await this.#pool.spawn(o.memoryLimitMb, {
      oneShot: false,
      state: payload,
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
