/**
 * The worker behind {@linkcode SyncPyodideSandbox}: it hosts an async
 * {@linkcode PyodideSandbox} and answers requests from the blocked caller
 * thread through a MessagePort plus a shared counter the caller waits on.
 *
 * `sync_sandbox.ts` imports this module statically, so that it is part of
 * the module graph the host loads (and caches) before the caller's thread
 * blocks: a worker that had to download it while the main thread waits in
 * `Atomics.wait` would never start. Imported on the main thread it does
 * nothing; in a worker started with {@linkcode SYNC_WORKER_MARKER} in its
 * `workerData` it starts serving.
 *
 * @module
 */

import { isMainThread, workerData } from "node:worker_threads";
import type { MessagePort } from "node:worker_threads";
import { PyodideSandbox } from "./sandbox.ts";
import type { PyodideSession } from "./session.ts";
import type { HostFunction } from "./options.ts";
import {
  errorInfo,
  type FromWorker,
  shareBytes,
  STREAM_CALLBACKS,
  type SyncRequest,
  type ToWorker,
  unshareBytes,
} from "./_sync_protocol.ts";

/** The `workerData` field that makes a worker thread start serving. */
export const SYNC_WORKER_MARKER = "pyodideSandboxSyncWorker";

interface Data {
  [SYNC_WORKER_MARKER]: true;
  port: MessagePort;
  control: SharedArrayBuffer;
  options: Record<string, unknown>;
  functionNames: string[];
}

/** One worker thread's sandbox, sessions and pending host calls. */
class SyncWorker {
  #port: MessagePort;
  #counter: Int32Array;
  #pendingCalls = new Map<
    number,
    { resolve: (value: unknown) => void; reject: (error: Error) => void }
  >();
  #nextCall = 1;
  #sandbox: PyodideSandbox;
  #sessions = new Map<string, PyodideSession>();

  constructor({ port, control, options, functionNames }: Data) {
    this.#port = port;
    this.#counter = new Int32Array(control);
    const { auditEvents, ...sandboxOptions } = options;
    this.#sandbox = new PyodideSandbox({
      ...sandboxOptions,
      ...(auditEvents
        ? {
          onAudit: (data: unknown) => this.#post({ event: "audit", data }),
        }
        : {}),
      skipDenoCheck: true,
      functions: Object.fromEntries(
        functionNames.map((
          name,
        ) => [name, this.#callerFunction(name) as HostFunction]),
      ),
    });
    port.on("message", (message: ToWorker) => this.#onMessage(message));
    this.#post({ id: 0, ok: true, value: "ready" });
  }

  /** Host functions live on the caller's thread: ask it, wait for its reply. */
  #callerFunction(name: string) {
    return (...args: unknown[]): Promise<unknown> =>
      new Promise((resolve, reject) => {
        const callId = this.#nextCall++;
        this.#pendingCalls.set(callId, { resolve, reject });
        this.#post({ event: "call", callId, name, args });
      });
  }

  #post(message: FromWorker): void {
    this.#port.postMessage(message);
    Atomics.add(this.#counter, 0, 1);
    Atomics.notify(this.#counter, 0);
  }

  #session(id: string): PyodideSession {
    const session = this.#sessions.get(id);
    if (!session) throw new TypeError("The session is closed");
    return session;
  }

  /** A request's options as the async API takes them. */
  #options(request: SyncRequest): Record<string, unknown> {
    const opts = "options" in request ? unshareBytes(request.options) : {};
    // Callbacks stay on the caller's thread: forward the events to it.
    for (const [flag, event] of STREAM_CALLBACKS) {
      if (opts[flag]) {
        opts[flag] = (data: unknown) =>
          this.#post({ event, request: request.id, data });
      }
    }
    return opts;
  }

  async #handle(request: SyncRequest): Promise<unknown> {
    const opts = this.#options(request);
    switch (request.op) {
      case "execute":
        return shareBytes(await this.#sandbox.execute(request.code, opts));
      case "openSession": {
        const session = await this.#sandbox.openSession(opts);
        this.#sessions.set(session.id, session);
        return session.id;
      }
      case "sessionExecute":
        return shareBytes(
          await this.#session(request.session).execute(request.code, opts),
        );
      case "sessionSave":
        return shareBytes(await this.#session(request.session).save());
      case "sessionClose": {
        const session = this.#sessions.get(request.session);
        this.#sessions.delete(request.session);
        await session?.close();
        return null;
      }
      case "close":
        await this.#sandbox.close();
        return null;
    }
    throw new TypeError(
      `Unknown request: ${(request as { op: unknown }).op}`,
    );
  }

  async #onMessage(request: ToWorker): Promise<void> {
    if (request.op === "callReply") {
      const pending = this.#pendingCalls.get(request.callId);
      this.#pendingCalls.delete(request.callId);
      if (request.ok) pending?.resolve(request.value);
      else pending?.reject(new Error(request.message));
      return;
    }
    try {
      this.#post({
        id: request.id,
        ok: true,
        value: await this.#handle(request),
      });
    } catch (error) {
      this.#post({ id: request.id, ok: false, error: errorInfo(error) });
    }
  }
}

function startSyncWorker(data: Data): void {
  // Nothing a child sends may end this thread: a dead worker would leave the
  // caller blocked until its timeout. The host code is written not to reject
  // unhandled; this is the net behind it.
  globalThis.addEventListener("unhandledrejection", (event) => {
    event.preventDefault();
    console.error(
      `pyodide-sandbox: unhandled error in the sync worker: ${
        event.reason instanceof Error ? event.reason.message : event.reason
      }`,
    );
  });
  new SyncWorker(data);
}

if (
  !isMainThread &&
  (workerData as Partial<Data> | null)?.[SYNC_WORKER_MARKER] === true
) {
  startSyncWorker(workerData as Data);
}
