/**
 * The child's end of the parent-to-child channel: a Worker reads the
 * frames from stdin (so an interrupt reaches Python while it runs, and a
 * closed stdin ends the process at once), answers host calls through
 * shared memory, and posts the other frames to the main thread.
 *
 * @module
 */

import { FRAME_HEAD_BYTES, MAX_REPLY_BYTES, ToChild } from "./_protocol.ts";

/** Code of the Worker that reads the parent's frames from stdin. */
const STDIN_WORKER = `
const HEAD = ${FRAME_HEAD_BYTES};
const CALL_REPLY = ${ToChild.callReply};
const INTERRUPT = ${ToChild.interrupt};
let interrupt;
let replyControl;
let replyData;
// Unread bytes: a view into a buffer that grows by doubling, so a large
// frame (session state) arriving in many chunks is not copied once per chunk.
let store = new Uint8Array(1 << 16);
let buf = store.subarray(0, 0);
function append(chunk) {
  let start = buf.byteOffset;
  const length = buf.length;
  if (start + length + chunk.length > store.length) {
    if (length + chunk.length > store.length) {
      const next = new Uint8Array(
        Math.max(length + chunk.length, store.length * 2),
      );
      next.set(buf, 0);
      store = next;
    } else {
      store.copyWithin(0, start, start + length);
    }
    start = 0;
  }
  store.set(chunk, start + length);
  buf = store.subarray(start, start + length + chunk.length);
}
self.onmessage = (e) => {
  interrupt = new Uint8Array(e.data.interrupt);
  replyControl = new Int32Array(e.data.replyControl);
  replyData = e.data.replyData;
};
function reply(bytes) {
  // A host function's answer: the main thread is blocked in Atomics.wait
  // inside Python, so it goes through shared memory, not a message.
  if (replyData.byteLength < bytes.length) replyData.grow(bytes.length);
  new Uint8Array(replyData).set(bytes);
  Atomics.store(replyControl, 1, bytes.length);
  Atomics.add(replyControl, 0, 1);
  Atomics.notify(replyControl, 0);
}
(async () => {
  const chunk = new Uint8Array(1 << 16);
  for (;;) {
    let n = null;
    try { n = await Deno.stdin.read(chunk); } catch { n = null; }
    if (n === null) break;
    append(chunk.subarray(0, n));
    while (buf.length >= HEAD) {
      const view = new DataView(buf.buffer, buf.byteOffset, buf.length);
      const jsonLength = view.getUint32(1);
      const binLength = view.getUint32(5);
      const total = HEAD + jsonLength + binLength;
      if (buf.length < total) break;
      const type = buf[0];
      if (type === CALL_REPLY) {
        reply(buf.slice(HEAD, HEAD + jsonLength));
      } else if (type === INTERRUPT) {
        if (interrupt) { interrupt[0] = 2; }
        // Also tell the main thread: code that is awaiting (not running
        // bytecode) never sees the interrupt buffer, so it is cancelled.
        self.postMessage({ type, json: "null", bin: new Uint8Array(0) });
      } else {
        const json = new TextDecoder().decode(buf.subarray(HEAD, HEAD + jsonLength));
        const bin = buf.slice(HEAD + jsonLength, total);
        self.postMessage({ type, json, bin }, [bin.buffer]);
      }
      buf = buf.subarray(total);
    }
    if (buf.length === 0) {
      if (store.length > (1 << 20)) store = new Uint8Array(1 << 16);
      buf = store.subarray(0, 0);
    }
  }
  // The parent is gone: nobody will read a result, so stop at once, even
  // while Python is busy on the main thread.
  Deno.kill(Deno.pid, "SIGKILL");
})();
`;

/** One parent-to-child frame, as the worker posts it. */
export interface InMessage {
  type: number;
  json: string;
  bin: Uint8Array;
}

/** The parent's frames, read by the stdin worker. */
export interface Channel {
  next(): Promise<InMessage>;
  /** Set to 2 by the worker on an interrupt frame (Python's buffer). */
  interruptBuffer: SharedArrayBuffer;
  /** `[counter, length]` of the latest host-call reply. */
  replyControl: SharedArrayBuffer;
  replyData: SharedArrayBuffer;
  /** Called on an interrupt frame (set once Python is loaded). */
  onInterrupt: () => void;
}

/**
 * Starts the stdin worker.
 *
 * @returns The channel.
 */
export function openChannel(): Channel {
  const worker = new Worker(
    URL.createObjectURL(
      new Blob([STDIN_WORKER], { type: "application/javascript" }),
    ),
    { type: "module", name: "pyodide-sandbox-stdin" },
  );
  const inbox: InMessage[] = [];
  let wake: (() => void) | undefined;
  const channel: Channel = {
    interruptBuffer: new SharedArrayBuffer(1),
    replyControl: new SharedArrayBuffer(8),
    replyData: new SharedArrayBuffer(1 << 16, {
      maxByteLength: MAX_REPLY_BYTES,
    }),
    onInterrupt: () => {},
    async next(): Promise<InMessage> {
      while (inbox.length === 0) {
        await new Promise<void>((resolve) => wake = resolve);
        wake = undefined;
      }
      return inbox.shift()!;
    },
  };
  const { interruptBuffer, replyControl, replyData } = channel;
  worker.postMessage({ interrupt: interruptBuffer, replyControl, replyData });
  worker.onmessage = (e: MessageEvent<InMessage>) => {
    if (e.data.type === ToChild.interrupt) return channel.onInterrupt();
    inbox.push(e.data);
    wake?.();
  };
  return channel;
}
