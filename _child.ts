/**
 * One child `deno run` process running `runner.ts`: spawning, the framed
 * channel, deadlines, interrupts, the memory watchdog and certain death.
 *
 * @module
 */

import { concatBytes } from "./_bytes.ts";
import {
  encodeToChild,
  FRAME_MAGIC,
  NONCE_BYTES,
  ToChild,
  ToParent,
} from "./runner.ts";

/** Grace between SIGTERM and SIGKILL. */
const KILL_GRACE_MS = 250;
/** How often the memory watchdog samples the child's RSS. */
const WATCHDOG_MS = 50;
/** How long a soft interrupt may take before the child is killed. */
export const SOFT_INTERRUPT_GRACE_MS = 1000;
/** Diagnostic stderr of the child kept for crash messages. */
const DIAG_CAP = 16 * 1024;

/** One frame received from the child. */
export interface Frame {
  type: number;
  json: unknown;
  bin: Uint8Array;
}

/**
 * Splits the child's stdout into frames. Bytes that are not a frame carrying
 * this child's nonce (anything untrusted code wrote to the real stdout) are
 * dropped; a frame whose trailer does not match is treated as corrupt.
 */
class FrameParser {
  #marker: Uint8Array;
  #nonce: Uint8Array;
  /** Bytes received and not yet parsed, and their total length. */
  #chunks: Uint8Array[] = [];
  #size = 0;
  /** Bytes needed (from the first kept byte) before parsing again. */
  #need = 0;
  strayBytes = 0;
  corrupt = false;

  constructor(nonce: Uint8Array) {
    this.#nonce = nonce;
    this.#marker = new Uint8Array(FRAME_MAGIC.length + NONCE_BYTES);
    this.#marker.set(FRAME_MAGIC, 0);
    this.#marker.set(nonce, FRAME_MAGIC.length);
  }

  push(chunk: Uint8Array): Frame[] {
    // Chunks are only joined once enough bytes for the pending frame have
    // arrived, and frames are cut by offset: a big frame arriving in many
    // chunks costs linear, not quadratic, time and memory.
    this.#chunks.push(chunk);
    this.#size += chunk.length;
    if (this.#size < this.#need) return [];
    const buf = this.#chunks.length === 1
      ? this.#chunks[0]
      : concatBytes(this.#chunks);
    const frames: Frame[] = [];
    const marker = this.#marker;
    let pos = 0;
    let need = 0;
    for (;;) {
      const at = indexOf(buf, marker, pos);
      if (at < 0) {
        // Keep a possible partial marker at the end; drop the rest.
        const keep = Math.min(buf.length - pos, marker.length - 1);
        this.strayBytes += buf.length - pos - keep;
        pos = buf.length - keep;
        break;
      }
      this.strayBytes += at - pos;
      pos = at;
      const start = at + marker.length;
      if (buf.length < start + 9) {
        need = start + 9 - at;
        break;
      }
      const view = new DataView(buf.buffer, buf.byteOffset + start, 9);
      const type = view.getUint8(0);
      const jsonLength = view.getUint32(1);
      const binLength = view.getUint32(5);
      const end = start + 9 + jsonLength + binLength + NONCE_BYTES;
      if (buf.length < end) {
        need = end - at;
        break;
      }
      const trailer = buf.subarray(end - NONCE_BYTES, end);
      if (!equalBytes(trailer, this.#nonce)) {
        this.corrupt = true;
        pos = start;
        continue;
      }
      let json: unknown;
      try {
        json = JSON.parse(
          new TextDecoder().decode(
            buf.subarray(start + 9, start + 9 + jsonLength),
          ),
        );
      } catch {
        this.corrupt = true;
        pos = end;
        continue;
      }
      const bin = buf.slice(start + 9 + jsonLength, end - NONCE_BYTES);
      frames.push({ type, json, bin });
      pos = end;
    }
    const rest = buf.slice(pos);
    this.#chunks = rest.length > 0 ? [rest] : [];
    this.#size = rest.length;
    this.#need = need;
    return frames;
  }
}

function indexOf(
  haystack: Uint8Array,
  needle: Uint8Array,
  from = 0,
): number {
  const first = needle[0];
  const last = haystack.length - needle.length;
  for (let i = haystack.indexOf(first, from); i >= 0 && i <= last;) {
    let j = 1;
    while (j < needle.length && haystack[i + j] === needle[j]) j++;
    if (j === needle.length) return i;
    i = haystack.indexOf(first, i + 1);
  }
  return -1;
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

/** How the child is started. */
export interface ChildSpec {
  denoPath: string;
  args: string[];
  env: Record<string, string>;
  /** Kill the child when its RSS exceeds this many bytes (0: no watchdog). */
  rssLimitBytes: number;
}

/** What the runner is told before it loads Pyodide. */
export interface ChildInit {
  mode: "serve" | "snapshot";
  snapshotPath?: string;
  /** Packed session state to restore instead of the base snapshot. */
  state?: Uint8Array;
  oneShot: boolean;
  revokeRead?: string[];
  /** Warm the call path before reporting ready (pooled children). */
  warm?: boolean;
}

/** Why a call ended without a result frame. */
export type EndReason = "timeout" | "memory" | "exit" | "abort" | "corrupt";

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
  /** MIME bundles the code displayed, in order. */
  displays: Record<string, unknown>[];
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
  /** Receives each display as it arrives. */
  onDisplay?: (bundle: Record<string, unknown>) => void;
  /** Answers a host-function call; resolves to the reply JSON text. */
  onCall?: (request: { name: string; args: unknown[] }) => Promise<string>;
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

/**
 * A child process serving the runner protocol. It starts loading Pyodide at
 * once; {@linkcode ready} settles when it can take work.
 */
export class SandboxChild {
  #process: Deno.ChildProcess;
  #parser: FrameParser;
  #stdin: WritableStreamDefaultWriter<Uint8Array>;
  #listener?: (frame: Frame) => void;
  #pending: Frame[] = [];
  #diag = "";
  #cwd: string;
  #watchdog?: ReturnType<typeof setInterval>;
  #killedFor?: EndReason;
  #exitCode?: number;
  #exited: Promise<number>;
  #exitListeners = new Set<() => void>();
  /** Settles when the child has loaded Pyodide (or failed to). */
  readonly ready: Promise<Frame>;
  /** Process id. */
  readonly pid: number;
  /** When the child was spawned (`performance.now()`). */
  readonly spawnedAt: number = performance.now();

  private constructor(
    spec: ChildSpec,
    cwd: string,
    init: ChildInit,
  ) {
    this.#cwd = cwd;
    const nonce = crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
    this.#parser = new FrameParser(nonce);
    this.#process = new Deno.Command(spec.denoPath, {
      args: spec.args,
      env: spec.env,
      clearEnv: true,
      cwd,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#process.unref();
    this.pid = this.#process.pid;
    this.#stdin = this.#process.stdin.getWriter();
    // The nonce travels as the first bytes of the init frame's attachment,
    // never as text: a JS string would sit in the child's heap, where a heap
    // snapshot taken by user code could find it.
    const initBin = new Uint8Array(NONCE_BYTES + (init.state?.length ?? 0));
    initBin.set(nonce, 0);
    if (init.state) initBin.set(init.state, NONCE_BYTES);
    this.#stdin.write(
      encodeToChild(ToChild.init, {
        mode: init.mode,
        snapshotPath: init.snapshotPath,
        oneShot: init.oneShot,
        revokeRead: init.revokeRead,
        warm: init.warm,
      }, initBin),
    ).catch(() => {});
    initBin.fill(0);
    this.#readStdout();
    this.#readStderr();
    this.#exited = this.#process.status.then((status) => {
      this.#exitCode = status.code;
      if (this.#watchdog !== undefined) clearInterval(this.#watchdog);
      // Release the parent's end of the stdin pipe (else one fd per child).
      this.#stdin.abort().catch(() => {});
      for (const fn of [...this.#exitListeners]) fn();
      return status.code;
    });
    if (spec.rssLimitBytes > 0) this.#startWatchdog(spec.rssLimitBytes);
    let resolveReady!: (frame: Frame) => void;
    let rejectReady!: (error: Error) => void;
    this.ready = new Promise<Frame>((resolve, reject) => {
      resolveReady = resolve;
      rejectReady = reject;
    });
    this.#resolveReady = resolveReady;
    this.#exited.then(() =>
      rejectReady(
        new Error(
          `The sandbox process failed to start: ${this.describeExit()}`,
        ),
      )
    );
    this.ready.catch(() => {});
  }

  /**
   * Spawns a child in a fresh, empty temporary working folder.
   *
   * @param spec How to start it.
   * @param init What to load.
   * @returns The child.
   */
  static async spawn(spec: ChildSpec, init: ChildInit): Promise<SandboxChild> {
    const cwd = await Deno.makeTempDir({ prefix: "pyodide-sandbox-" });
    try {
      return new SandboxChild(spec, cwd, init);
    } catch (error) {
      await Deno.remove(cwd, { recursive: true }).catch(() => {});
      throw error;
    }
  }

  /** Whether the process has exited. */
  get exited(): boolean {
    return this.#exitCode !== undefined;
  }

  /** Settles with the exit code once the process is gone and cleaned up. */
  get closed(): Promise<number> {
    return this.#exited;
  }

  /**
   * Registers a function called once when the process exits.
   *
   * @param fn The callback.
   */
  onExit(fn: () => void): void {
    if (this.exited) fn();
    else this.#exitListeners.add(fn);
  }

  /** A short description of how the child ended, for error messages. */
  describeExit(): string {
    const code = this.#exitCode;
    const diag = this.#diag.trim().split("\n").slice(-40).join("\n");
    let text = code === undefined
      ? "the process is still running"
      : `the process exited with code ${code}`;
    if (this.#parser.corrupt) text += " after sending a corrupt frame";
    if (diag) text += `: ${diag}`;
    return text;
  }

  async #readStdout(): Promise<void> {
    try {
      for await (const chunk of this.#process.stdout) {
        for (const frame of this.#parser.push(chunk)) this.#dispatch(frame);
      }
    } catch {
      // The process is gone.
    }
  }

  async #readStderr(): Promise<void> {
    const decoder = new TextDecoder();
    try {
      for await (const chunk of this.#process.stderr) {
        this.#diag += decoder.decode(chunk, { stream: true });
        if (this.#diag.length > DIAG_CAP) {
          this.#diag = this.#diag.slice(-DIAG_CAP);
        }
      }
    } catch {
      // The process is gone.
    }
  }

  #resolveReady: (frame: Frame) => void;

  #dispatch(frame: Frame): void {
    if (frame.type === ToParent.ready || frame.type === ToParent.snapshot) {
      this.#resolveReady(frame);
      return;
    }
    if (this.#listener) this.#listener(frame);
    else this.#pending.push(frame);
  }

  #startWatchdog(limit: number): void {
    const path = `/proc/${this.pid}/status`;
    try {
      Deno.readTextFileSync(path);
    } catch {
      return; // No /proc or no permission to read it: rely on the wasm cap.
    }
    this.#watchdog = setInterval(() => {
      let rss = 0;
      try {
        const match = /VmRSS:\s+(\d+) kB/.exec(Deno.readTextFileSync(path));
        if (match) rss = Number(match[1]) * 1024;
      } catch {
        return;
      }
      if (rss > limit) this.kill("memory");
    }, WATCHDOG_MS);
    Deno.unrefTimer(this.#watchdog as unknown as number);
  }

  /**
   * Ends the child for certain: SIGTERM, then SIGKILL after a short grace.
   *
   * @param reason Recorded as the reason a running call ended.
   * @param hard Send SIGKILL at once (for a child whose work is done).
   * @returns Settles when the process is gone.
   */
  kill(reason: EndReason = "exit", hard = false): Promise<number> {
    if (this.exited) return this.#exited;
    this.#killedFor ??= reason;
    const signal = reason === "memory" || hard ? "SIGKILL" : "SIGTERM";
    try {
      this.#process.kill(signal);
    } catch {
      // Already gone.
    }
    if (signal === "SIGTERM") {
      const timer = setTimeout(() => {
        try {
          this.#process.kill("SIGKILL");
        } catch {
          // Already gone.
        }
      }, KILL_GRACE_MS);
      this.#exited.finally(() => clearTimeout(timer));
    }
    return holdingLoop(this.#exited);
  }

  /**
   * Closes stdin (the runner then exits at once), waits for the exit with a
   * kill behind it, and removes the working folder.
   *
   * @returns Settles when the child is gone and cleaned up.
   */
  async close(): Promise<void> {
    if (!this.exited) {
      this.#stdin.close().catch(() => {});
      const timer = setTimeout(() => this.kill(), 2000);
      await this.#exited;
      clearTimeout(timer);
    }
    await this.cleanup();
  }

  /** Removes the working folder once the process is gone. */
  async cleanup(): Promise<void> {
    await this.#exited;
    await Deno.remove(this.#cwd, { recursive: true }).catch(() => {});
  }

  /**
   * Sends a frame to the runner.
   *
   * @param type A {@linkcode ToChild} type.
   * @param json Header.
   * @param bin Attachment.
   */
  send(type: number, json: unknown, bin?: Uint8Array): void {
    this.#stdin.write(encodeToChild(type, json, bin)).catch(() => {});
  }

  /**
   * Sends a request and collects output until the matching reply frame, the
   * deadline, an abort, or the child's death.
   *
   * @param type Request frame type.
   * @param json Request header.
   * @param bin Request attachment.
   * @param replyType The frame type that ends the call.
   * @param options Deadline, output limits and callbacks.
   * @returns What happened.
   */
  call(
    type: number,
    json: unknown,
    bin: Uint8Array | undefined,
    replyType: number,
    options: CallOptions,
  ): Promise<CallOutcome> {
    const out = new OutputCollector(options.maxOutputBytes, options.onStdout);
    const err = new OutputCollector(options.maxOutputBytes, options.onStderr);
    let interrupted = false;
    const displays: Record<string, unknown>[] = [];
    let files: Frame | undefined;
    return new Promise<CallOutcome>((resolve) => {
      const timers: ReturnType<typeof setTimeout>[] = [];
      let settled = false;
      const finish = (frame?: Frame, ended?: EndReason) => {
        if (settled) return;
        settled = true;
        for (const timer of timers) clearTimeout(timer);
        this.#exitListeners.delete(onExit);
        options.signal?.removeEventListener("abort", onAbort);
        this.#listener = undefined;
        out.finish();
        err.finish();
        resolve({
          frame,
          ended,
          stdout: out.text,
          stderr: err.text,
          stdoutTruncated: out.truncated,
          stderrTruncated: err.truncated,
          stdoutBytes: out.bytes,
          stderrBytes: err.bytes,
          exitCode: this.#exitCode,
          interrupted,
          displays,
          files,
        });
      };
      const endBy = (reason: EndReason) => {
        this.kill(reason).then(() =>
          finish(undefined, this.#killedFor ?? reason)
        );
      };
      const onAbort = () => endBy("abort");
      // Let frames already read be dispatched before giving up.
      const onExit = () =>
        setTimeout(() => finish(undefined, this.#killedFor ?? "exit"), 0);
      this.#exitListeners.add(onExit);
      const listener = (frame: Frame) => {
        if (frame.type === ToParent.stdout) out.push(frame.bin);
        else if (frame.type === ToParent.stderr) err.push(frame.bin);
        else if (frame.type === replyType) finish(frame);
        else if (frame.type === ToParent.display) {
          const bundle = frame.json as Record<string, unknown>;
          displays.push(bundle);
          options.onDisplay?.(bundle);
        } else if (frame.type === ToParent.files) files = frame;
        else if (frame.type === ToParent.call) {
          const request = frame.json as { name: string; args: unknown[] };
          const answer = options.onCall
            ? options.onCall(request)
            : Promise.resolve(JSON.stringify({
              ok: false,
              message: `No host function named ${request.name}`,
            }));
          answer.then((text) => {
            if (!settled) this.send(ToChild.callReply, JSON.parse(text));
          });
        } else if (frame.type === ToParent.fatal) {
          err.push(
            new TextEncoder().encode(
              `Sandbox runtime error: ${
                (frame.json as { message: string }).message
              }\n`,
            ),
          );
        }
      };
      this.#listener = listener;
      for (const frame of this.#pending.splice(0)) listener(frame);
      if (options.signal?.aborted) return onAbort();
      options.signal?.addEventListener("abort", onAbort, { once: true });

      const wait = Math.max(0, options.deadline - performance.now());
      timers.push(setTimeout(() => {
        if (!options.soft) return endBy("timeout");
        interrupted = true;
        this.send(ToChild.interrupt, null);
        timers.push(
          setTimeout(() => endBy("timeout"), SOFT_INTERRUPT_GRACE_MS),
        );
      }, wait));
      if (this.exited) return;
      this.send(type, json, bin);
    });
  }
}

/**
 * Awaits a promise while keeping the event loop alive. Children are unref'd
 * (so idle ones never keep the host running); without this, a program or
 * test whose only pending work is a child's start or exit would end (or
 * report an unresolved promise) before it settles.
 *
 * @param promise What to wait for.
 * @returns Its value.
 */
export async function holdingLoop<T>(promise: Promise<T>): Promise<T> {
  const timer = setInterval(() => {}, 60_000);
  try {
    return await promise;
  } finally {
    clearInterval(timer);
  }
}
