/**
 * One child `deno run` process running `runner.ts`: spawning, the framed
 * channel, deadlines, interrupts, the memory watchdog and certain death.
 *
 * @module
 */

import { concatBytes } from "./_bytes.ts";
import type { MimeBundle } from "./result.ts";
import {
  checkDisplay,
  checkHostCall,
  checkResultHeader,
  checkSavedHeader,
  encodeToChild,
  fatalMessage,
  FRAME_MAGIC,
  frameCaps,
  type FrameLimits,
  type HostCallRequest,
  type InitRequest,
  INSTALL_CALL,
  MAX_PENDING_CALLS,
  NONCE_BYTES,
  ToChild,
  ToParent,
} from "./_protocol.ts";

/** Grace between SIGTERM and SIGKILL. */
const KILL_GRACE_MS = 250;
/** How long a call that ended waits for output still in the pipe. */
const DRAIN_MS = 1000;
/** How often the memory watchdog samples the child's RSS. */
const WATCHDOG_MS = 50;
/** How long a soft interrupt may take before the child is killed. */
export const SOFT_INTERRUPT_GRACE_MS = 1000;
/** Diagnostic stderr of the child kept for crash messages. */
const DIAG_CAP = 16 * 1024;

/** How {@linkcode SandboxChild.kill} ends a child. */
export interface KillOptions {
  /**
   * Send SIGKILL at once instead of SIGTERM then SIGKILL.
   *
   * @default {false}
   */
  hard?: boolean;
}

/** One frame received from the child. */
export interface Frame {
  type: number;
  json: unknown;
  bin: Uint8Array;
  /** Length of the JSON header in bytes. */
  jsonBytes: number;
}

/** Caps a child's frames are held to when no sandbox settings apply. */
const DEFAULT_LIMITS: FrameLimits = {
  stateBytes: 8 * 1024 ** 3,
  maxDisplayBytes: 16 * 1024 * 1024,
  maxTotalFileBytes: 256 * 1024 * 1024,
};

/**
 * Splits the child's stdout into frames. Bytes that are not a frame carrying
 * this child's nonce (anything untrusted code wrote to the real stdout) are
 * dropped. A frame carrying the nonce that breaks the protocol (an unknown
 * type, lengths over the caps of its type, a wrong trailer, bad JSON) is a
 * violation: parsing stops for good and {@linkcode violation} says why. The
 * caps are checked on the 9-byte header, so an oversized frame is refused
 * before its body is buffered.
 */
export class FrameParser {
  #marker: Uint8Array;
  #nonce: Uint8Array;
  #limits: FrameLimits;
  /** Bytes received and not yet parsed, and their total length. */
  #chunks: Uint8Array[] = [];
  #size = 0;
  /** Bytes needed (from the first kept byte) before parsing again. */
  #need = 0;
  strayBytes = 0;
  /** Why the child broke the protocol, once it did. */
  violation?: string;

  constructor(nonce: Uint8Array, limits: FrameLimits = DEFAULT_LIMITS) {
    this.#nonce = nonce;
    this.#limits = limits;
    this.#marker = new Uint8Array(FRAME_MAGIC.length + NONCE_BYTES);
    this.#marker.set(FRAME_MAGIC, 0);
    this.#marker.set(nonce, FRAME_MAGIC.length);
  }

  push(chunk: Uint8Array): Frame[] {
    if (this.violation !== undefined) return [];
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
      const wrong = this.#checkHeader(type, jsonLength, binLength);
      if (wrong) return this.#stop(wrong, frames);
      const end = start + 9 + jsonLength + binLength + NONCE_BYTES;
      if (buf.length < end) {
        need = end - at;
        break;
      }
      const trailer = buf.subarray(end - NONCE_BYTES, end);
      if (!equalBytes(trailer, this.#nonce)) {
        return this.#stop(
          `a frame of type ${type} has a wrong trailer`,
          frames,
        );
      }
      let json: unknown;
      try {
        json = JSON.parse(
          new TextDecoder("utf-8", { fatal: true }).decode(
            buf.subarray(start + 9, start + 9 + jsonLength),
          ),
        );
      } catch {
        return this.#stop(`a frame of type ${type} has no valid JSON`, frames);
      }
      const bin = buf.slice(start + 9 + jsonLength, end - NONCE_BYTES);
      frames.push({ type, json, bin, jsonBytes: jsonLength });
      pos = end;
    }
    const rest = buf.slice(pos);
    this.#chunks = rest.length > 0 ? [rest] : [];
    this.#size = rest.length;
    this.#need = need;
    return frames;
  }

  #checkHeader(type: number, json: number, bin: number): string | undefined {
    const caps = frameCaps(type, this.#limits);
    if (!caps) return `unknown frame type ${type}`;
    if (json > caps.json) {
      return `a frame of type ${type} declares ${json} header bytes (at most ${caps.json})`;
    }
    if (bin > caps.bin) {
      return `a frame of type ${type} declares ${bin} attached bytes (at most ${caps.bin})`;
    }
    return undefined;
  }

  /** Records a violation; frames before it still count. */
  #stop(reason: string, frames: Frame[]): Frame[] {
    this.violation = reason;
    this.#chunks = [];
    this.#size = 0;
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
  /** Caps of the child's frames (defaults: generous fixed caps). */
  limits?: FrameLimits;
  /**
   * Output bytes per stream kept while no call runs (a live session's
   * background task); the rest is dropped and the next call reports it as
   * truncated.
   * @default {1048576}
   */
  idleOutputBytes?: number;
}

/** What the runner is told before it loads Pyodide. */
export interface ChildInit extends InitRequest {
  /** Packed session state to restore instead of the base snapshot. */
  state?: Uint8Array;
}

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
class IdleOutput {
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

/**
 * A child process serving the runner protocol. It starts loading Pyodide at
 * once; {@linkcode ready} settles when it can take work.
 */
export class SandboxChild {
  #process: Deno.ChildProcess;
  #parser: FrameParser;
  #stdin: WritableStreamDefaultWriter<Uint8Array>;
  #listener?: (frame: Frame) => void;
  #idle: IdleOutput;
  #idleMax: number;
  #violation?: string;
  #diag = "";
  #cwd: string;
  #watchdog?: ReturnType<typeof setInterval>;
  #killedFor?: EndReason;
  #exitCode?: number;
  #exited: Promise<number>;
  #stdoutDone: Promise<void>;
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
    this.#parser = new FrameParser(nonce, spec.limits);
    this.#idleMax = spec.idleOutputBytes ?? 1024 * 1024;
    this.#idle = new IdleOutput(this.#idleMax);
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
      encodeToChild(
        ToChild.init,
        {
          mode: init.mode,
          snapshotPath: init.snapshotPath,
          oneShot: init.oneShot,
          revokeRead: init.revokeRead,
          warm: init.warm,
        } satisfies InitRequest,
        initBin,
      ),
    ).catch(() => {});
    initBin.fill(0);
    this.#stdoutDone = this.#readStdout();
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

  /**
   * Settles with the exit code once the process is gone (its working folder
   * may still be there: {@linkcode cleanup} removes it).
   */
  get whenExited(): Promise<number> {
    return this.#exited;
  }

  /**
   * The old name of {@linkcode whenExited}.
   *
   * @deprecated Use {@linkcode whenExited}: this settles on exit, before
   *   any clean-up.
   */
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
    if (this.violation) {
      text += ` after a protocol violation (${this.violation})`;
    }
    if (diag) text += `: ${diag}`;
    return text;
  }

  async #readStdout(): Promise<void> {
    try {
      for await (const chunk of this.#process.stdout) {
        for (const frame of this.#parser.push(chunk)) this.#dispatch(frame);
        if (this.#parser.violation !== undefined) {
          this.violate(this.#parser.violation);
        }
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
    else if (frame.type === ToParent.stdout || frame.type === ToParent.stderr) {
      // A live session's background task: keep a bounded amount.
      this.#idle.push(frame.type, frame.bin);
    }
    // Anything else outside a call (a late reply, a display) is dropped.
  }

  /** Why the child broke the protocol, if it did. */
  get violation(): string | undefined {
    return this.#violation;
  }

  /**
   * Ends the child for breaking the protocol; a running call ends with
   * reason `"protocol"`.
   *
   * @param reason What it did.
   */
  violate(reason: string): void {
    this.#violation ??= reason;
    this.kill("protocol", { hard: true });
  }

  /** Takes the output kept while no call ran. */
  #takeIdle(): IdleOutput {
    const idle = this.#idle;
    this.#idle = new IdleOutput(this.#idleMax);
    return idle;
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
   * @param options `hard`: send SIGKILL at once (for a child whose work is
   *   done). A bare boolean is the old form of `{ hard }`.
   * @returns Settles when the process is gone.
   */
  kill(reason?: EndReason, options?: KillOptions): Promise<number>;
  /** @deprecated Pass `{ hard: true }` instead of `true`. */
  kill(reason: EndReason, hard: boolean): Promise<number>;
  kill(
    reason: EndReason = "exit",
    options: KillOptions | boolean = {},
  ): Promise<number> {
    if (this.exited) return this.#exited;
    this.#killedFor ??= reason;
    const hard = typeof options === "boolean" ? options : options.hard;
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

  /**
   * Settles when the stdout pipe has been read to its end (frames written
   * before the exit are dispatched), or after a bounded wait.
   */
  #drained(): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const bound = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, DRAIN_MS);
    });
    return Promise.race([this.#stdoutDone, bound]).finally(() =>
      clearTimeout(timer)
    );
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
   * deadline, an abort, or the child's death. Everything the child sends is
   * checked here: a reply header that breaks the protocol, a second files
   * frame or a flood of host calls ends the child (reason `"protocol"`).
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
    const state = new RunningCall(this, options, this.#takeIdle());
    return new Promise<CallOutcome>((resolve) => {
      const timers: ReturnType<typeof setTimeout>[] = [];
      const finish = (frame?: Frame, ended?: EndReason) => {
        if (state.settled) return;
        state.settled = true;
        for (const timer of timers) clearTimeout(timer);
        this.#exitListeners.delete(onExit);
        options.signal?.removeEventListener("abort", onAbort);
        this.#listener = undefined;
        resolve(state.outcome(frame, ended, this.#exitCode));
      };
      // Once the call is given up, output still in the pipe is read (the
      // user sees what was printed before the end) but a late reply is not.
      let ending = false;
      const endBy = (reason: EndReason) => {
        ending = true;
        this.kill(reason).then(() => this.#drained()).then(() =>
          finish(undefined, this.#killedFor ?? reason)
        );
      };
      const onAbort = () => endBy("abort");
      const onExit = () =>
        this.#drained().then(() =>
          finish(undefined, this.#killedFor ?? "exit")
        );
      this.#exitListeners.add(onExit);
      this.#listener = (frame: Frame) => {
        if (frame.type !== replyType) return state.handle(frame);
        if (ending) return;
        const checked = replyType === ToParent.result
          ? checkResultHeader(frame.json)
          : replyType === ToParent.saved
          ? checkSavedHeader(frame.json)
          : { ok: true as const, value: frame.json };
        if (!checked.ok) return this.violate(checked.error);
        finish({ ...frame, json: checked.value });
      };
      if (this.violation !== undefined) return endBy("protocol");
      if (options.signal?.aborted) return onAbort();
      options.signal?.addEventListener("abort", onAbort, { once: true });

      const wait = Math.max(0, options.deadline - performance.now());
      timers.push(setTimeout(() => {
        if (!options.soft) return endBy("timeout");
        state.interrupted = true;
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
 * The host's side of one call: output collectors, checked displays, the
 * files frame and the host-call queue. Frames other than the reply go
 * through {@linkcode handle}, which never throws.
 */
class RunningCall {
  #child: SandboxChild;
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

  constructor(child: SandboxChild, options: CallOptions, idle: IdleOutput) {
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
