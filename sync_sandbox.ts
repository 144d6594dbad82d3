/**
 * {@linkcode SyncPyodideSandbox}: the blocking twin of `PyodideSandbox`, for
 * code that cannot await. The caller's thread waits (`Atomics.wait`) while a
 * worker thread runs the async sandbox, so timeouts, the memory watchdog and
 * aborts of children work exactly as in the async API.
 *
 * @module
 */

import {
  MessageChannel,
  type MessagePort,
  receiveMessageOnPort,
  Worker,
} from "node:worker_threads";
import { BasePyodideSandbox } from "./base_sandbox.ts";
import type {
  ExecuteOptions,
  HostFunction,
  SandboxOptions,
  SavedSession,
  SessionOptions,
} from "./options.ts";
import type { CodeExecutionResult, MimeBundle } from "./result.ts";
import { callHostFunctionSync } from "./_host_calls.ts";
import {
  errorFrom,
  type FromWorker,
  shareBytes,
  STREAM_CALLBACKS,
  type SyncEvent,
  type SyncReply,
  type SyncRequestBody,
  type ToWorker,
  unshareBytes,
  type WireOptions,
} from "./_sync_protocol.ts";
import type { AuditCallback, AuditRecord } from "./_audit.ts";
// A static import: the worker's module is loaded (downloaded, for a remote
// import) with this one, before any caller blocks (see _sync_worker.ts).
import { SYNC_WORKER_MARKER } from "./_sync_worker.ts";

/** How long the caller waits for the worker thread to start. */
const WORKER_START_MS = 20_000;

/** Extra time the caller waits for the worker beyond a call's own timeout. */
const WORKER_MARGIN_MS = 30_000;

/**
 * Result of the sync API: a {@linkcode CodeExecutionResult} whose
 * `stdoutTruncated` and `stderrTruncated` are always set.
 */
export type SyncResult =
  & CodeExecutionResult
  & Required<Pick<CodeExecutionResult, "stdoutTruncated" | "stderrTruncated">>;

/** Callbacks of one request, run on the caller's thread. */
interface Handlers {
  onStdout?: (text: string) => void;
  onStderr?: (text: string) => void;
  onDisplay?: (bundle: MimeBundle) => void;
}

/**
 * The URL the worker thread starts from. `node:worker_threads` starts only
 * `file:` and `data:` modules: when this module was imported from elsewhere
 * (JSR, an http server, an import map pointing at one), the worker is a
 * `data:` module that imports `_sync_worker.ts` by its URL. The worker has
 * the process's permissions, so the host's `--allow-import` covers it; the
 * modules it loads are already in Deno's cache (this module imports them)
 * and use no bare specifiers (no import map needed).
 *
 * @returns A `file:` or `data:` URL.
 */
function workerUrl(): URL {
  const url = new URL("./_sync_worker.ts", import.meta.url);
  if (url.protocol === "file:" || url.protocol === "data:") return url;
  return new URL(
    `data:text/javascript,${
      encodeURIComponent(`import ${JSON.stringify(url.href)};`)
    }`,
  );
}

/** The worker, its port, and the shared counter the caller waits on. */
class Bridge {
  #worker: Worker;
  #port: MessagePort;
  #counter: Int32Array;
  #seen = 0;
  #nextId = 1;
  #replies = new Map<number, SyncReply>();
  #handlers = new Map<number, Handlers>();
  #functions: Record<string, HostFunction>;
  #closed = false;

  #onAudit?: AuditCallback;

  constructor(
    options: Record<string, unknown>,
    functions: Record<string, HostFunction>,
    onAudit?: AuditCallback,
  ) {
    this.#functions = functions;
    this.#onAudit = onAudit;
    const { port1, port2 } = new MessageChannel();
    const control = new SharedArrayBuffer(4);
    this.#counter = new Int32Array(control);
    this.#port = port1;
    this.#worker = new Worker(workerUrl(), {
      workerData: {
        [SYNC_WORKER_MARKER]: true,
        port: port2,
        control,
        options,
        functionNames: Object.keys(functions),
      },
      transferList: [port2],
    });
    this.#worker.unref();
    this.#port.unref?.();
    try {
      this.#wait(0, WORKER_START_MS);
    } catch (error) {
      this.#closed = true;
      this.#worker.terminate();
      throw new Error(
        `The sandbox worker did not start within ${
          WORKER_START_MS / 1000
        } seconds: its module failed to load or is blocked (a module imported from a URL is fetched again under --reload while this thread waits: run without --reload)`,
        { cause: error },
      );
    }
  }

  get closed(): boolean {
    return this.#closed;
  }

  #drain(): void {
    for (;;) {
      const message = receiveMessageOnPort(this.#port);
      if (!message) break;
      const data = message.message as FromWorker;
      if ("event" in data) this.#onEvent(data);
      else this.#replies.set(data.id, data);
    }
  }

  #onEvent(event: SyncEvent): void {
    if (event.event === "audit") {
      try {
        this.#onAudit?.(event.data as AuditRecord);
      } catch {
        // The record is also in the auditLog, if one is set.
      }
      return;
    }
    if (event.event === "call") {
      this.#post({
        op: "callReply",
        callId: event.callId,
        ...callHostFunctionSync(this.#functions, event.name, event.args ?? []),
      });
      return;
    }
    const handlers = this.#handlers.get(event.request);
    try {
      if (event.event === "stdout") handlers?.onStdout?.(event.data as string);
      else if (event.event === "stderr") {
        handlers?.onStderr?.(event.data as string);
      } else handlers?.onDisplay?.(event.data as MimeBundle);
    } catch {
      // A failing callback must not break the call.
    }
  }

  #post(message: ToWorker): void {
    this.#port.postMessage(message);
  }

  #wait(id: number, timeoutMs: number): unknown {
    const end = performance.now() + timeoutMs;
    for (;;) {
      this.#drain();
      const reply = this.#replies.get(id);
      if (reply) {
        this.#replies.delete(id);
        if (reply.ok) return reply.value;
        throw errorFrom(reply.error);
      }
      const left = end - performance.now();
      if (left <= 0) {
        throw new Error(
          "The sandbox worker did not answer: it stopped responding within the call's timeout plus 30 seconds",
        );
      }
      const seen = Atomics.load(this.#counter, 0);
      if (seen === this.#seen) Atomics.wait(this.#counter, 0, seen, left);
      this.#seen = Atomics.load(this.#counter, 0);
    }
  }

  request(
    message: SyncRequestBody,
    timeoutMs: number,
    handlers?: Handlers,
  ): unknown {
    if (this.#closed) throw new TypeError("The sandbox is closed");
    const id = this.#nextId++;
    if (handlers) this.#handlers.set(id, handlers);
    try {
      this.#post({ ...message, id });
      return this.#wait(id, timeoutMs);
    } finally {
      this.#handlers.delete(id);
    }
  }

  close(): void {
    if (this.#closed) return;
    try {
      this.request({ op: "close" }, WORKER_MARGIN_MS);
    } finally {
      this.#closed = true;
      this.#worker.terminate();
      this.#port.close();
    }
  }
}

/** How long the caller waits for a call with this timeout. */
function waitMs(timeoutSeconds: number): number {
  return timeoutSeconds * 1000 + WORKER_MARGIN_MS;
}

/** Options as they cross to the worker (see `WireOptions`). */
function toWire(options: ExecuteOptions | SessionOptions): WireOptions {
  const out: WireOptions = shareBytes(options);
  for (const [name] of STREAM_CALLBACKS) {
    if (typeof out[name] === "function") out[name] = true;
  }
  return out;
}

/** A result or saved state as the worker posted it. */
function fromWire<T extends SyncResult | SavedSession>(value: unknown): T {
  return unshareBytes(value as T) as T;
}

/**
 * Runs untrusted Python like `PyodideSandbox`, but blocks the calling thread
 * until the result is there. Timeouts are real: the child is killed when
 * they pass.
 *
 * @example
 * ```ts ignore
 * import { SyncPyodideSandbox } from "./sync_sandbox.ts";
 * using sandbox = new SyncPyodideSandbox();
 * const result = sandbox.execute("print('hi'); 1 + 1");
 * console.log(result.stdout, result.result); // "hi\n" 2
 * ```
 */
export class SyncPyodideSandbox extends BasePyodideSandbox {
  #options: SandboxOptions;
  #bridge?: Bridge;

  /**
   * Creates a sandbox. The worker thread starts on the first call.
   *
   * @param options The same options as `PyodideSandbox`.
   * @throws {TypeError} When an option has the wrong type.
   * @throws {RangeError} When a number is out of range.
   * @throws {Error} When `deno` cannot be run (unless `skipDenoCheck`).
   */
  constructor(options: SandboxOptions = {}) {
    super(options);
    this.#options = { ...options, cacheDir: this.settings.cacheDir };
  }

  #worker(): Bridge {
    if (this.#bridge?.closed) throw new TypeError("The sandbox is closed");
    // Functions cannot be copied into the worker: host functions and the
    // audit callback stay here and the worker forwards their calls.
    const { functions, onAudit, ...rest } = this.#options;
    this.#bridge ??= new Bridge(
      { ...rest, auditEvents: onAudit !== undefined },
      functions ?? {},
      onAudit,
    );
    return this.#bridge;
  }

  /**
   * Runs Python code and blocks until it is done.
   *
   * @param code Python source.
   * @param options Per-call options (no `signal`: the caller is blocked).
   * @returns The result.
   * @throws {TypeError} When the code or an option is invalid, `signal` is
   *   given, or the sandbox is closed.
   * @throws {RangeError} When the code is too large or a limit is out of
   *   range.
   * @example
   * ```ts ignore
   * import { SyncPyodideSandbox } from "./sync_sandbox.ts";
   * const sandbox = new SyncPyodideSandbox();
   * console.log(sandbox.execute("2 ** 10").result); // 1024
   * sandbox.close();
   * ```
   */
  execute(code: string, options: ExecuteOptions = {}): SyncResult {
    if (options?.signal !== undefined) {
      throw new TypeError(
        "Invalid execute options: signal is only supported by the async PyodideSandbox",
      );
    }
    const call = this.checkCall(code, options);
    return fromWire<SyncResult>(
      this.#worker().request(
        {
          op: "execute",
          code,
          options: toWire(options),
        },
        waitMs(call.timeoutSeconds),
        options,
      ),
    );
  }

  /**
   * Opens a live session (one child and interpreter kept across calls).
   *
   * @param options Saved state to resume from and the memory limit.
   * @returns The session.
   * @throws {TypeError} When the options are invalid or the sandbox is
   *   closed.
   * @throws {SessionError} When the saved state is unusable or the child
   *   cannot start.
   * @example
   * ```ts ignore
   * import { SyncPyodideSandbox } from "./sync_sandbox.ts";
   * const sandbox = new SyncPyodideSandbox();
   * const session = sandbox.openSession();
   * session.execute("x = 41");
   * console.log(session.execute("x + 1").result); // 42
   * session.close();
   * ```
   */
  openSession(options: SessionOptions = {}): SyncPyodideSession {
    const bridge = this.#worker();
    const id = bridge.request({
      op: "openSession",
      options: toWire(options),
    }, waitMs(this.settings.timeoutSeconds)) as string;
    return new SyncPyodideSession(
      bridge,
      id,
      (code, opts) => this.checkCall(code, opts).timeoutSeconds,
      this.settings.timeoutSeconds,
    );
  }

  /**
   * Stops every child and the worker thread.
   *
   * @example
   * ```ts ignore
   * import { SyncPyodideSandbox } from "./sync_sandbox.ts";
   * new SyncPyodideSandbox().close();
   * ```
   */
  close(): void {
    this.#bridge?.close();
  }

  /** Same as {@linkcode close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * A live session of {@linkcode SyncPyodideSandbox}.
 *
 * @example
 * ```ts ignore
 * import { SyncPyodideSandbox } from "./sync_sandbox.ts";
 * const session = new SyncPyodideSandbox().openSession();
 * session.execute("y = 2");
 * const saved = session.save();
 * session.close();
 * ```
 */
export class SyncPyodideSession {
  #bridge: Bridge;
  #check: (code: unknown, options: ExecuteOptions) => number;
  #timeoutSeconds: number;
  /** The session's id. */
  readonly id: string;

  /**
   * Use `SyncPyodideSandbox.openSession()` instead.
   *
   * @param bridge The worker bridge.
   * @param id The session's id in the worker.
   * @param check Validates a call and returns its timeout.
   * @param timeoutSeconds The sandbox's default timeout.
   */
  constructor(
    bridge: Bridge,
    id: string,
    check: (code: unknown, options: ExecuteOptions) => number,
    timeoutSeconds: number,
  ) {
    this.#bridge = bridge;
    this.id = id;
    this.#check = check;
    this.#timeoutSeconds = timeoutSeconds;
  }

  /**
   * Runs code in the session and blocks until it is done.
   *
   * @param code Python source.
   * @param options `timeoutSeconds` and `stdin`.
   * @returns The result; kind `"session"` once the session is lost.
   * @throws {TypeError} When the code or an option is invalid or the
   *   session is closed.
   */
  execute(code: string, options: ExecuteOptions = {}): SyncResult {
    if (options?.signal !== undefined) {
      throw new TypeError(
        "Invalid execute options: signal is only supported by the async API",
      );
    }
    const timeout = this.#check(code, options);
    return fromWire<SyncResult>(this.#bridge.request(
      {
        op: "sessionExecute",
        session: this.id,
        code,
        options: toWire(options),
      },
      waitMs(timeout),
      options,
    ));
  }

  /**
   * Saves the session's state.
   *
   * @returns Bytes and metadata to resume from.
   * @throws {SessionError} When the session is lost or cannot be saved.
   */
  save(): SavedSession {
    const saved = fromWire<SavedSession>(this.#bridge.request({
      op: "sessionSave",
      session: this.id,
    }, waitMs(this.#timeoutSeconds)));
    return {
      sessionBytes: saved.sessionBytes,
      sessionMetadata: saved.sessionMetadata,
    };
  }

  /** Ends the session's child. */
  close(): void {
    if (this.#bridge.closed) return;
    this.#bridge.request(
      { op: "sessionClose", session: this.id },
      WORKER_MARGIN_MS,
    );
  }

  /** Same as {@linkcode close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}
