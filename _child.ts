/**
 * One child `deno run` process running `runner.ts`: spawning, the framed
 * channel, deadlines, interrupts, the memory watchdog and certain death.
 *
 * @module
 */

import { holdingLoop } from "./_holding_loop.ts";
import {
  encodeToChild,
  type InitRequest,
  NONCE_BYTES,
  STATE_REJECTED_EXIT,
  ToChild,
  ToParent,
} from "./_protocol.ts";
import {
  checkResultHeader,
  checkSavedHeader,
  type FrameLimits,
} from "./_protocol_checks.ts";
import { type Frame, FrameParser } from "./_frame_parser.ts";
import {
  type CallOptions,
  type CallOutcome,
  type EndReason,
  IdleOutput,
  RunningCall,
} from "./_running_call.ts";

export type { Frame } from "./_frame_parser.ts";
export type { CallOptions, CallOutcome, EndReason } from "./_running_call.ts";

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
  /** The sha256 of `snapshotPath`: what the child's saved state needs. */
  baseSha256?: string;
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
  #wasReady = false;

  private constructor(spec: ChildSpec, cwd: string) {
    this.#cwd = cwd;
    this.#spec = spec;
    this.#nonce = crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
    this.#parser = new FrameParser(this.#nonce, spec.limits);
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
    this.ready.then(() => {
      this.#wasReady = true;
      if (this.#pauseUntilSent && !this.#sentAny) {
        clearInterval(this.#watchdog);
        this.#watchdog = undefined;
      }
    }, () => {});
  }

  #spec: ChildSpec;
  #nonce: Uint8Array;
  #started = false;
  #baseSha256?: string;

  /** The sha256 of the base snapshot its saved state is a diff from. */
  get baseSha256(): string | undefined {
    return this.#baseSha256;
  }

  /**
   * Sends the init frame: the child loads what it says. A paused child
   * (see {@linkcode spawnPaused}) has loaded all it can before it.
   *
   * @param init What to load.
   * @throws {Error} When the child was started already.
   */
  start(init: ChildInit): void {
    if (this.#started) throw new Error("The child was started already");
    this.#started = true;
    this.#baseSha256 = init.baseSha256;
    // The nonce travels as the first bytes of the init frame's attachment,
    // never as text: a JS string would sit in the child's heap, where a heap
    // snapshot taken by user code could find it.
    const initBin = new Uint8Array(NONCE_BYTES + (init.state?.length ?? 0));
    initBin.set(this.#nonce, 0);
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
          maxStateBytes: init.maxStateBytes,
          maxImageBytes: init.maxImageBytes,
        } satisfies InitRequest,
        initBin,
      ),
    ).catch(() => {});
    initBin.fill(0);
    // A one-shot child runs nothing between ready and its one request (no
    // user code has run), so its memory cannot grow: an idle pooled child
    // costs the host no /proc reads. The first frame sent restarts it.
    if (init.oneShot && this.#watchdog !== undefined) {
      const limit = this.#spec.rssLimitBytes;
      this.#pauseUntilSent = () => this.#startWatchdog(limit);
    }
  }

  /** Restarts a paused watchdog (see {@linkcode start}). */
  #pauseUntilSent?: () => void;
  /** Whether a frame was sent after the init frame. */
  #sentAny = false;

  /**
   * Spawns a child in a fresh, empty temporary working folder.
   *
   * @param spec How to start it.
   * @param init What to load.
   * @returns The child.
   */
  static async spawn(spec: ChildSpec, init: ChildInit): Promise<SandboxChild> {
    const child = await SandboxChild.spawnPaused(spec);
    child.start(init);
    return child;
  }

  /**
   * Spawns a child that loads Pyodide as far as it can without knowing
   * what to load, then waits for {@linkcode start}.
   *
   * @param spec How to start it.
   * @returns The child.
   */
  static async spawnPaused(spec: ChildSpec): Promise<SandboxChild> {
    const cwd = await Deno.makeTempDir({ prefix: "pyodide-sandbox-" });
    try {
      return new SandboxChild(spec, cwd);
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
   * Registers a function called once when the process exits.
   *
   * @param fn The callback.
   */
  onExit(fn: () => void): void {
    if (this.exited) fn();
    else this.#exitListeners.add(fn);
  }

  /**
   * Whether the child exited before it was ready because the session state
   * it was given could not be restored (not a crash).
   *
   * @returns True when the state was refused.
   */
  get stateRejected(): boolean {
    return !this.#wasReady && this.#exitCode === STATE_REJECTED_EXIT;
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
   *   done).
   * @returns Settles when the process is gone.
   */
  kill(
    reason: EndReason = "exit",
    options: KillOptions = {},
  ): Promise<number> {
    if (this.exited) return this.#exited;
    this.#killedFor ??= reason;
    const signal = reason === "memory" || options.hard ? "SIGKILL" : "SIGTERM";
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
    if (!this.#sentAny) {
      this.#sentAny = true;
      if (this.#watchdog === undefined && !this.exited) {
        this.#pauseUntilSent?.();
      }
    }
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
