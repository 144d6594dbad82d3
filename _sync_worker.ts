/**
 * The worker behind {@linkcode SyncPyodideSandbox}: it hosts an async
 * {@linkcode PyodideSandbox} and answers requests from the blocked caller
 * thread through a MessagePort plus a shared counter the caller waits on.
 *
 * @module
 */

import { workerData } from "node:worker_threads";
import type { MessagePort } from "node:worker_threads";
import {
  type HostFunction,
  PyodideSandbox,
  type PyodideSession,
} from "./sandbox.ts";
import { fromShared, toShared } from "./_bytes.ts";

interface Data {
  port: MessagePort;
  control: SharedArrayBuffer;
  options: Record<string, unknown>;
  functionNames: string[];
}

const { port, control, options, functionNames } = workerData as Data;

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
const counter = new Int32Array(control);
const pendingCalls = new Map<
  number,
  { resolve: (value: unknown) => void; reject: (error: Error) => void }
>();
let nextCall = 1;

/** Host functions live on the caller's thread: ask it, wait for its reply. */
function callerFunction(name: string) {
  return (...args: unknown[]): Promise<unknown> =>
    new Promise((resolve, reject) => {
      const callId = nextCall++;
      pendingCalls.set(callId, { resolve, reject });
      post({ event: "call", callId, name, args });
    });
}

const { auditEvents, ...sandboxOptions } = options;
const sandbox = new PyodideSandbox({
  ...sandboxOptions,
  ...(auditEvents
    ? { onAudit: (data: unknown) => post({ event: "audit", data }) }
    : {}),
  skipDenoCheck: true,
  functions: Object.fromEntries(
    functionNames.map((name) => [name, callerFunction(name) as HostFunction]),
  ),
});
const sessions = new Map<string, PyodideSession>();

function post(message: unknown): void {
  port.postMessage(message);
  Atomics.add(counter, 0, 1);
  Atomics.notify(counter, 0);
}

function errorInfo(error: unknown): Record<string, unknown> {
  if (error instanceof Error) {
    return { name: error.name, message: error.message };
  }
  return { name: "Error", message: String(error) };
}

function sharedResult(result: Record<string, unknown>): unknown {
  const out = { ...result };
  if (out.sessionBytes instanceof Uint8Array) {
    out.sessionBytes = toShared(out.sessionBytes);
  }
  return out;
}

// deno-lint-ignore no-explicit-any
async function handle(request: any): Promise<unknown> {
  const opts = { ...(request.options ?? {}) };
  if (opts.sessionBytes) opts.sessionBytes = fromShared(opts.sessionBytes);
  // Callbacks stay on the caller's thread: forward the events to it.
  for (
    const [flag, event] of [
      ["onStdout", "stdout"],
      ["onStderr", "stderr"],
      ["onDisplay", "display"],
    ]
  ) {
    if (opts[flag]) {
      opts[flag] = (data: unknown) =>
        post({ event, request: request.id, data });
    }
  }
  switch (request.op) {
    case "execute":
      return sharedResult(
        { ...await sandbox.execute(request.code, opts) },
      );
    case "openSession": {
      const session = await sandbox.openSession(opts);
      sessions.set(session.id, session);
      return session.id;
    }
    case "sessionExecute": {
      const session = sessions.get(request.session);
      if (!session) throw new TypeError("The session is closed");
      return sharedResult(
        { ...await session.execute(request.code, opts) },
      );
    }
    case "sessionSave": {
      const session = sessions.get(request.session);
      if (!session) throw new TypeError("The session is closed");
      const saved = await session.save();
      return sharedResult({ ...saved });
    }
    case "sessionClose": {
      const session = sessions.get(request.session);
      sessions.delete(request.session);
      await session?.close();
      return null;
    }
    case "close":
      await sandbox.close();
      return null;
  }
  throw new TypeError(`Unknown request: ${request.op}`);
}

// deno-lint-ignore no-explicit-any
port.on("message", async (request: any) => {
  if (request.op === "callReply") {
    const pending = pendingCalls.get(request.callId);
    pendingCalls.delete(request.callId);
    if (request.ok) pending?.resolve(request.value);
    else pending?.reject(new Error(request.message));
    return;
  }
  try {
    post({ id: request.id, ok: true, value: await handle(request) });
  } catch (error) {
    post({ id: request.id, ok: false, error: errorInfo(error) });
  }
});
post({ id: 0, ok: true, value: "ready" });
