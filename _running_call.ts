/**
 * The host's side of one call to a child: output collectors, checked
 * displays, the files frame and the host-call queue, and the output a live
 * child sends between calls. Nothing a child sends can make it throw.
 *
 * @module
 */

import type { MimeBundle } from "./result.ts";
import {
  type HostCallRequest,
  INSTALL_CALL,
  ToChild,
  ToParent,
} from "./_protocol.ts";
import {
  checkDisplay,
  checkHostCall,
  fatalMessage,
  MAX_PENDING_CALLS,
} from "./_protocol_checks.ts";
import type { Frame } from "./_frame_parser.ts";

/** Why a call ended without a result frame. */
export type EndReason = "timeout" | "memory" | "exit" | "abort" | "protocol";

/** What a call to the child produced. */
export interface CallOutcome {
  /** The result frame, when one arrived. */
  frame?: Frame;
  /** Set when no result frame arrived. */
  ended?: EndReason;
  stdout: string;
  stderr: string;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  stdoutBytes: number;
  stderrBytes: number;
  /** The child's exit code, when it exited. */
  exitCode?: number;
  /** A soft interrupt was sent because the deadline passed. */
  interrupted: boolean;
  /** MIME bundles the code displayed, in order (checked, within caps). */
  displays: MimeBundle[];
  /** The files frame (index in `json`, contents in `bin`), if any. */
  files?: Frame;
}

/** Per-call settings of {@linkcode SandboxChild.call}. */
export interface CallOptions {
  /** `performance.now()` value at which the call times out. */
  deadline: number;
  /** Interrupt Python first and kill only if it does not stop. */
  soft: boolean;
  signal?: AbortSignal;
  maxOutputBytes: number;
  onStdout?: (text: string) => void;
  onStderr?: (text: string) => void;
  /** Total bytes of displays kept; the rest is dropped with a note. */
  maxDisplayBytes: number;
  /** Receives each display as it arrives. */
  onDisplay?: (bundle: MimeBundle) => void;
  /**
   * Answers a checked host-function call; resolves to the reply JSON text.
   * It may throw or reject: the child then gets an error reply.
   */
  onCall?: (request: HostCallRequest) => Promise<string>;
}

/** Stream output that arrived while no call was running. */
export class IdleOutput {
  #max: number;
  chunks: { type: number; bin: Uint8Array }[] = [];
  kept = [0, 0];
  truncated = [false, false];

  constructor(max: number) {
    this.#max = max;
  }

  push(type: number, bin: Uint8Array): void {
    const i = type === ToParent.stdout ? 0 : 1;
    const room = this.#max - this.kept[i];
    if (bin.length > room) this.truncated[i] = true;
    if (room <= 0) return;
    const part = bin.length > room ? bin.slice(0, room) : bin;
    this.kept[i] += part.length;
    this.chunks.push({ type, bin: part });
  }
}

class OutputCollector {
  #decoder = new TextDecoder();
  #max: number;
  #onText?: (text: string) => void;
  text = "";
  bytes = 0;
  kept = 0;
  truncated = false;

  constructor(max: number, onText?: (text: string) => void) {
    this.#max = max;
    this.#onText = onText;
  }

  push(chunk: Uint8Array): void {
    this.bytes += chunk.length;
    if (this.kept >= this.#max) {
      this.truncated = true;
      return;
    }
    let part = chunk;
    if (this.kept + chunk.length > this.#max) {
      part = chunk.subarray(0, this.#max - this.kept);
      this.truncated = true;
    }
    this.kept += part.length;
    const text = this.#decoder.decode(part, { stream: true });
    if (text) {
      this.text += text;
      this.#onText?.(text);
    }
  }

  finish(): void {
    const text = this.#decoder.decode();
    if (text) {
      this.text += text;
      this.#onText?.(text);
    }
  }
}

/** What a running call needs of its child: a way to reply and to end it. */
export interface CallPeer {
  /**
   * Ends the child for breaking the protocol.
   *
   * @param detail What was wrong.
   */
  violate(detail: string): void;
  /**
   * Sends a frame to the runner.
   *
   * @param type A `ToChild` type.
   * @param json Header.
   * @param bin Attachment.
   */
  send(type: number, json: unknown, bin?: Uint8Array): void;
}

/**
 * The host's side of one call: output collectors, checked displays, the
 * files frame and the host-call queue. Frames other than the reply go
 * through {@linkcode handle}, which never throws.
 */
export class RunningCall {
  #child: CallPeer;
  #options: CallOptions;
  #out: OutputCollector;
  #err: OutputCollector;
  #displays: MimeBundle[] = [];
  #displayBytes = 0;
  #files?: Frame;
  #calls: unknown[] = [];
  #answering = false;
  settled = false;
  interrupted = false;

  constructor(child: CallPeer, options: CallOptions, idle: IdleOutput) {
    this.#child = child;
    this.#options = options;
    this.#out = new OutputCollector(options.maxOutputBytes, options.onStdout);
    this.#err = new OutputCollector(options.maxOutputBytes, options.onStderr);
    for (const { type, bin } of idle.chunks) {
      (type === ToParent.stdout ? this.#out : this.#err).push(bin);
    }
    if (idle.truncated[0]) this.#out.truncated = true;
    if (idle.truncated[1]) this.#err.truncated = true;
  }

  /**
   * Takes one frame that is not the reply.
   *
   * @param frame The frame (already checked against its type's caps).
   */
  handle(frame: Frame): void {
    switch (frame.type) {
      case ToParent.stdout:
        return this.#out.push(frame.bin);
      case ToParent.stderr:
        return this.#err.push(frame.bin);
      case ToParent.display:
        return this.#display(frame);
      case ToParent.files:
        if (this.#files) {
          return this.#child.violate("a second files frame in one call");
        }
        this.#files = frame;
        return;
      case ToParent.call:
        return this.#queueCall(frame.json);
      case ToParent.fatal:
        return this.note(
          `Sandbox runtime error: ${fatalMessage(frame.json)}`,
        );
    }
    // ready, snapshot, a stray saved or result frame: nothing to do.
  }

  /**
   * Adds a line of the host's own to the call's stderr.
   *
   * @param text The line, without its newline.
   */
  note(text: string): void {
    this.#err.push(new TextEncoder().encode(`${text}\n`));
  }

  #display(frame: Frame): void {
    const checked = checkDisplay(frame.json);
    if (!checked.ok) return this.note(`Dropped a display: ${checked.error}`);
    const max = this.#options.maxDisplayBytes;
    if (this.#displayBytes + frame.jsonBytes > max) {
      return this.note(`Dropped a display: over maxDisplayBytes (${max})`);
    }
    this.#displayBytes += frame.jsonBytes;
    this.#displays.push(checked.value);
    this.#options.onDisplay?.(checked.value);
  }

  #queueCall(json: unknown): void {
    if (this.#calls.length + (this.#answering ? 1 : 0) >= MAX_PENDING_CALLS) {
      return this.#child.violate(
        `more than ${MAX_PENDING_CALLS} host calls are waiting`,
      );
    }
    this.#calls.push(json);
    this.#nextCall();
  }

  /** Answers queued host calls one at a time; never rejects. */
  #nextCall(): void {
    if (this.#answering || this.#calls.length === 0) return;
    this.#answering = true;
    const json = this.#calls.shift();
    answerCall(json, this.#options.onCall).then((reply) => {
      if (!this.settled) this.#child.send(ToChild.callReply, reply);
    }).finally(() => {
      this.#answering = false;
      this.#nextCall();
    });
  }

  /**
   * What the call produced.
   *
   * @param frame The checked reply frame, if one arrived.
   * @param ended Why it ended without one.
   * @param exitCode The child's exit code, if it exited.
   * @returns The outcome.
   */
  outcome(
    frame: Frame | undefined,
    ended: EndReason | undefined,
    exitCode: number | undefined,
  ): CallOutcome {
    this.#out.finish();
    this.#err.finish();
    return {
      frame,
      ended,
      stdout: this.#out.text,
      stderr: this.#err.text,
      stdoutTruncated: this.#out.truncated,
      stderrTruncated: this.#err.truncated,
      stdoutBytes: this.#out.bytes,
      stderrBytes: this.#err.bytes,
      exitCode,
      interrupted: this.interrupted,
      displays: this.#displays,
      files: this.#files,
    };
  }
}

/**
 * The reply to one host-call frame. A malformed request, a missing handler
 * or a handler that throws or rejects gives an error reply: nothing the
 * child sends can make this reject.
 *
 * @param json The call frame's header, unchecked.
 * @param onCall The sandbox's dispatcher.
 * @returns The reply header.
 */
async function answerCall(
  json: unknown,
  onCall: CallOptions["onCall"],
): Promise<{ ok: boolean; value?: unknown; message?: string }> {
  const checked = checkHostCall(json);
  if (!checked.ok) {
    const install = json !== null && typeof json === "object" &&
      (json as { name?: unknown }).name === INSTALL_CALL;
    return {
      ok: false,
      message: `Invalid ${
        install ? "install" : "host call"
      } request: ${checked.error}`,
    };
  }
  if (!onCall) {
    return {
      ok: false,
      message: `No host function named ${checked.value.name}`,
    };
  }
  try {
    const reply = JSON.parse(await onCall(checked.value));
    if (reply !== null && typeof reply === "object") return reply;
    return { ok: false, message: "The host call gave no reply" };
  } catch (error) {
    return {
      ok: false,
      message: `The host call failed: ${
        error instanceof Error ? error.message : String(error)
      }`,
    };
  }
}
