/**
 * The messages between {@linkcode SyncPyodideSandbox}'s caller thread
 * (`sync_sandbox.ts`) and its worker thread (`_sync_worker.ts`), both
 * directions, with the conversions both sides share: session bytes cross
 * as `SharedArrayBuffer`s, callbacks as flags, errors as name and message.
 *
 * @module
 */

import type { HostCallReply } from "./_protocol.ts";
import { fromShared, toShared } from "./_bytes.ts";
import { SessionError } from "./_session_bytes.ts";

/**
 * The per-call callbacks that stay on the caller's thread, and the event
 * the worker sends for each.
 */
export const STREAM_CALLBACKS = [
  ["onStdout", "stdout"],
  ["onStderr", "stderr"],
  ["onDisplay", "display"],
] as const;

/** An output event: the name of one of {@linkcode STREAM_CALLBACKS}. */
export type StreamEventName = typeof STREAM_CALLBACKS[number][1];

/**
 * Call or session options as they cross to the worker: callbacks are
 * `true` (the worker forwards their events), session bytes are shared.
 */
export type WireOptions = Record<string, unknown>;

/** A request from the caller; the worker answers with a {@linkcode SyncReply} of the same id. */
export type SyncRequest =
  | { id: number; op: "execute"; code: string; options: WireOptions }
  | { id: number; op: "openSession"; options: WireOptions }
  | {
    id: number;
    op: "sessionExecute";
    session: string;
    code: string;
    options: WireOptions;
  }
  | { id: number; op: "sessionSave"; session: string }
  | { id: number; op: "sessionClose"; session: string }
  | { id: number; op: "close" };

/** A request without its id (the bridge adds it). */
export type SyncRequestBody = WithoutId<SyncRequest>;

/** Each member of a union without its `id`. */
type WithoutId<T> = T extends unknown ? Omit<T, "id"> : never;

/** The caller's answer to a host-function call of the worker. */
export type SyncCallReply = { op: "callReply"; callId: number } & HostCallReply;

/** Whatever the caller posts to the worker. */
export type ToWorker = SyncRequest | SyncCallReply;

/** An error as it crosses threads. */
export interface ErrorInfo {
  /** The error's class name (`TypeError`, `SessionError`, ...). */
  name: string;
  /** Its message. */
  message: string;
}

/** The worker's answer to one {@linkcode SyncRequest} (id 0: started). */
export type SyncReply =
  | { id: number; ok: true; value: unknown }
  | { id: number; ok: false; error: ErrorInfo };

/** Something the worker tells the caller while a request runs. */
export type SyncEvent =
  | { event: StreamEventName; request: number; data: unknown }
  | { event: "call"; callId: number; name: string; args: unknown[] }
  | { event: "audit"; data: unknown };

/** Whatever the worker posts to the caller. */
export type FromWorker = SyncReply | SyncEvent;

/**
 * An error as name and message.
 *
 * @param error What was thrown.
 * @returns Its name and message.
 */
export function errorInfo(error: unknown): ErrorInfo {
  if (error instanceof Error) {
    return { name: error.name, message: error.message };
  }
  return { name: "Error", message: String(error) };
}

/**
 * The error to throw on the caller's thread: the classes the API documents
 * keep their class, others become `Error`.
 *
 * @param info The worker's error.
 * @returns An error of the same class and message.
 */
export function errorFrom(info: ErrorInfo): Error {
  const ErrorClass = info.name === "TypeError"
    ? TypeError
    : info.name === "RangeError"
    ? RangeError
    : info.name === "SessionError"
    ? SessionError
    : Error;
  return new ErrorClass(info.message);
}

/**
 * A shallow copy whose `sessionBytes` (when a Uint8Array) is shared memory,
 * ready to post.
 *
 * @param value Options, a result or saved state.
 * @returns The copy.
 */
export function shareBytes(value: object): Record<string, unknown> {
  const out: Record<string, unknown> = { ...value };
  if (out.sessionBytes instanceof Uint8Array) {
    out.sessionBytes = toShared(out.sessionBytes);
  }
  return out;
}

/**
 * A shallow copy whose `sessionBytes` (when shared memory) is an ordinary
 * Uint8Array again.
 *
 * @param value A posted object.
 * @returns The copy.
 */
export function unshareBytes(value: object): Record<string, unknown> {
  const out: Record<string, unknown> = { ...value };
  if (out.sessionBytes instanceof SharedArrayBuffer) {
    out.sessionBytes = fromShared(out.sessionBytes);
  }
  return out;
}
