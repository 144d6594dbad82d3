/**
 * The children of one `PyodideSandbox`: starting them (after the verified
 * snapshot is in place), the warm pool of loaded one-shot children, and
 * ending them all on close. Every start in flight is a tracked promise, so
 * `warmup()` and `close()` wait for exactly what is running.
 *
 * @module
 */

import { type ChildInit, type ChildSpec, SandboxChild } from "./_child.ts";
import { holdingLoop } from "./_holding_loop.ts";
import { type Environment, materializeRunner } from "./_setup.ts";
import {
  type BaseSnapshot,
  distrustPreload,
  distrustSnapshot,
  ensureBase,
} from "./_snapshot.ts";
import { KeptChildren, keptKey } from "./_kept_children.ts";

/**
 * How long a call's child runs (once ready) before the pool's replacement
 * starts, if the call has not ended by then.
 */
const REFILL_DELAY_MS = 100;

/**
 * Pooled children loading at once: one per core. One at a time on 2 cores
 * measured slower at an agent's pace under load (the pool drained faster
 * than one child at a time could refill it); what must not happen, a
 * call's own child loading next to the pool's, {@linkcode
 * ChildPool.refillAfter} prevents.
 */
const LOAD_PARALLELISM = Math.max(
  1,
  globalThis.navigator?.hardwareConcurrency ?? 2,
);

/** How long a paused child waits for a restore before it is ended. */
const PAUSED_IDLE_MS = 30_000;

/**
 * How long a restored child that stays (a live session's) runs before the
 * next paused child starts.
 */
const PAUSE_HEAD_START_MS = 1000;

/**
 * What restored state may inflate to beyond the memory limit: the snapshot
 * header and the working-folder files.
 */
const STATE_SLACK_MB = 64;

/** What the pool needs from its sandbox. */
export interface PoolContext {
  /** Children kept loaded for stateless calls (`poolSize`). */
  size: number;
  /** The memory limit of pooled children. */
  memoryLimitMb: number;
  /** Resolves the environment (Pyodide's files, the cache folder). */
  environment(): Environment;
  /**
   * The complete start specification of a child; `extraReads` are granted
   * too (an imported base snapshot the child restores from).
   */
  childSpec(memoryLimitMb: number, extraReads?: string[]): ChildSpec;
  /** Read grants the child drops once Pyodide is loaded. */
  revokeRead(): string[];
  /** The preloaded state children start from (`preload`), if any. */
  preload?(): Promise<{ state: Uint8Array; path: string } | undefined>;
  /**
   * Calls return session state: their children serve more than one exec,
   * so that up to `size` of them can be kept for the next step.
   */
  stateful?: boolean;
}

/** Session state for a child to restore, checked by the host. */
export interface RestoredState {
  /** The deflated state (a diff from `base`, or a whole format-1 state). */
  payload: Uint8Array;
  /** The base snapshot a diff needs; none for a format-1 state. */
  base?: BaseSnapshot;
}

/** How to start one child. */
export interface SpawnOptions {
  /** End the child after one exec. */
  oneShot: boolean;
  /** Session state to restore. */
  state?: RestoredState;
  /** Run the runner's call path once before reporting ready (pool). */
  warm?: boolean;
}

/**
 * Starts and tracks the children of one sandbox, with a warm pool.
 *
 * @example
 * ```ts ignore
 * const pool = new ChildPool(context);
 * const child = pool.take() ?? await pool.spawn(512, { oneShot: true });
 * await pool.close();
 * ```
 */
export class ChildPool {
  #ctx: PoolContext;
  #idle: SandboxChild[] = [];
  #live = new Set<SandboxChild>();
  /** Starts in flight (`spawn()` calls), awaited by `close()`. */
  #starts = new Set<Promise<unknown>>();
  /** Pool fillers running, awaited by `warmup()`. */
  #fills = new Set<Promise<void>>();
  /** Pooled children being spawned (not yet in `#idle`). */
  #starting = 0;
  #prepared?: Promise<BaseSnapshot>;
  /** A child spawned ahead of the next restore, not yet started. */
  #paused?: SandboxChild;
  /** Ends the paused child when no restore took it in time. */
  #pausedTimer?: ReturnType<typeof setTimeout>;
  /** Restored children whose call's end starts the next paused child. */
  #callDone = new Map<SandboxChild, () => void>();
  /** Children kept under the session bytes their last call returned. */
  #kept: KeptChildren;
  #closed = false;

  /**
   * Creates the pool; nothing starts until {@linkcode spawn},
   * {@linkcode refill} or {@linkcode warmup}.
   *
   * @param ctx The sandbox's side.
   */
  constructor(ctx: PoolContext) {
    this.#ctx = ctx;
    this.#kept = new KeptChildren(ctx.stateful ? ctx.size : 0);
  }

  /** Number of pooled children loaded or loading. */
  get size(): number {
    return this.#idle.filter((c) => !c.exited).length;
  }

  #checkOpen(): void {
    if (this.#closed) throw new Error("The sandbox is closed");
  }

  /**
   * Prepares the environment and the verified snapshot.
   *
   * @returns The snapshot's path and sha256.
   */
  prepare(): Promise<BaseSnapshot> {
    if (!this.#prepared) {
      const env = this.#ctx.environment();
      this.#prepared = materializeRunner(env).then(() => ensureBase(env));
      this.#prepared.catch(() => this.#prepared = undefined);
    }
    // Re-check the file's fingerprint each time (cheap; rehashes on change).
    return this.#prepared.then(() => ensureBase(this.#ctx.environment()));
  }

  #track<T>(start: Promise<T>): Promise<T> {
    this.#starts.add(start);
    start.catch(() => {}).finally(() => this.#starts.delete(start));
    return start;
  }

  /**
   * Starts a child (not a pooled one).
   *
   * @param memoryLimitMb Its memory limit.
   * @param options One-shot or not, state to restore.
   * @returns The child, possibly still loading.
   * @throws {Error} When the sandbox is closed or Pyodide cannot be
   *   prepared.
   */
  spawn(memoryLimitMb: number, options: SpawnOptions): Promise<SandboxChild> {
    if (this.#closed) {
      return Promise.reject(new Error("The sandbox is closed"));
    }
    return this.#track(this.#spawn(memoryLimitMb, options));
  }

  async #spawn(
    memoryLimitMb: number,
    options: SpawnOptions,
  ): Promise<SandboxChild> {
    const own = await this.prepare();
    // Without state of its own, a child starts from the preloaded state (a
    // diff from this host's base, like the session bytes it makes).
    const preload = options.state ? undefined : await this.#ctx.preload?.();
    this.#checkOpen();
    // The base the child restores from, diffs against when it saves, and
    // keeps its read grant on: the state's (an imported one) or this
    // host's.
    const base = options.state?.base ?? own;
    const extra = base.path === own.path ? [] : [base.path];
    const init: ChildInit = {
      mode: "serve",
      snapshotPath: base.path,
      baseSha256: base.sha256,
      state: options.state?.payload ?? preload?.state,
      oneShot: options.oneShot,
      revokeRead: this.#ctx.revokeRead(),
      warm: options.warm ?? false,
      // A diff never inflates to more than its image (at most the memory
      // limit), its header and the working-folder files: a zip bomb stops
      // there, well under the child's RSS cap.
      maxStateBytes: (memoryLimitMb + STATE_SLACK_MB) * 1024 * 1024,
      maxImageBytes: memoryLimitMb * 1024 * 1024,
    };
    // A restore with the pool's limit and this host's base takes the
    // paused child, and leaves another paused for the next one.
    const restore = options.state !== undefined && extra.length === 0 &&
      memoryLimitMb === this.#ctx.memoryLimitMb;
    const paused = restore ? this.#takePaused() : undefined;
    let child: SandboxChild;
    if (paused) {
      paused.start(init);
      child = paused;
    } else {
      child = await SandboxChild.spawn(
        this.#ctx.childSpec(memoryLimitMb, extra),
        init,
      );
      this.#register(child);
    }
    // A child that dies before it is ready may have met a corrupted
    // snapshot: hash it again before the next start. Not when it refused
    // its state (the caller's bytes; no rehash for them to trigger).
    child.ready.catch(() => {
      if (child.stateRejected) return;
      distrustSnapshot(base.path);
      if (preload) distrustPreload(preload.path);
    });
    if (restore) this.#pauseAfter(child);
    if (this.#closed) {
      child.kill();
      this.#checkOpen();
    }
    return child;
  }

  /** Tracks a child until it exits, and removes its folder then. */
  #register(child: SandboxChild): void {
    this.#live.add(child);
    child.onExit(() => {
      this.#live.delete(child);
      child.cleanup();
    });
  }

  /** The paused child, if one is waiting and alive. */
  #takePaused(): SandboxChild | undefined {
    const paused = this.#paused;
    this.#paused = undefined;
    clearTimeout(this.#pausedTimer);
    return paused && !paused.exited ? paused : undefined;
  }

  /**
   * Spawns a paused child once `child` is ready (so that it does not
   * compete with that child's load), unless one is waiting already: from
   * a sandbox's first restore on, the next restore finds Pyodide loaded
   * up to its memory image. One no restore takes within
   * `PAUSED_IDLE_MS` is ended.
   */
  #pauseAfter(child: SandboxChild): void {
    const spawnPaused = async () => {
      if (this.#closed || (this.#paused && !this.#paused.exited)) return;
      const spec = this.#ctx.childSpec(this.#ctx.memoryLimitMb, []);
      const paused = await SandboxChild.spawnPaused(spec);
      this.#register(paused);
      if (this.#closed || (this.#paused && !this.#paused.exited)) {
        paused.kill();
        return;
      }
      this.#paused = paused;
      // Kept while restores keep coming: a sandbox that stops restoring
      // holds no child ahead of need for long.
      this.#pausedTimer = setTimeout(() => {
        if (this.#paused !== paused) return;
        this.#paused = undefined;
        paused.kill();
      }, PAUSED_IDLE_MS);
      Deno.unrefTimer(this.#pausedTimer);
    };
    // After the restored child's call (its exit, or keep()), or, for a
    // live session's child that stays, a while after it is ready: a child
    // loading next to a call's first save doubled its time (measured).
    const headStart = child.ready.then(() =>
      new Promise<void>((resolve) => {
        Deno.unrefTimer(setTimeout(resolve, PAUSE_HEAD_START_MS));
      })
    );
    Promise.race([
      headStart,
      child.whenExited,
      new Promise<void>((resolve) => this.#callDone.set(child, resolve)),
    ]).catch(() => {}).then(() => {
      this.#callDone.delete(child);
      this.#track(spawnPaused()).catch(() => {});
    });
  }

  /**
   * Takes a ready (or loading) pooled child: the one started first, so the
   * furthest along. It is not replaced here: one loading now would compete
   * with the call for the CPU (see {@linkcode refillAfter}).
   *
   * @returns The child, or undefined when the pool is empty or disabled.
   */
  take(): SandboxChild | undefined {
    if (this.#ctx.size === 0) return undefined;
    this.#idle = this.#idle.filter((c) => !c.exited);
    return this.#idle.shift();
  }

  /**
   * The child of one stateless call: a pooled one when it needs no state
   * and has the pool's memory limit, else a new one. The pool is not
   * refilled here, so that the call's own child (when the pool was empty,
   * as on a fresh sandbox's first call) loads alone: see
   * {@linkcode refillAfter}.
   *
   * @param memoryLimitMb The call's memory limit.
   * @param state Session state to restore.
   * @returns The child, possibly still loading, where it came from, and
   *   whether the call should refill the pool.
   * @throws {Error} When the sandbox is closed or Pyodide cannot be
   *   prepared.
   */
  async acquire(
    memoryLimitMb: number,
    state?: RestoredState,
  ): Promise<{ child: SandboxChild; pooled: boolean; refill: boolean }> {
    const refill = !state && memoryLimitMb === this.#ctx.memoryLimitMb &&
      this.#ctx.size > 0;
    if (refill) {
      const child = this.take();
      if (child) return { child, pooled: true, refill };
    }
    const child = await this.spawn(memoryLimitMb, {
      oneShot: !this.#ctx.stateful,
      state,
    });
    return { child, pooled: false, refill };
  }

  /**
   * Keeps the child of a stateful call for the call that continues from
   * the bytes it returned (see {@linkcode takeKept}).
   *
   * @param child The call's child: its call done, nothing wrong with it.
   * @param bytes The session bytes the call returned.
   * @param memoryLimitMb The call's memory limit.
   * @returns False when the child was not kept: the caller ends it.
   */
  keep(
    child: SandboxChild,
    bytes: Uint8Array,
    memoryLimitMb: number,
  ): boolean {
    this.#callDone.get(child)?.();
    return !this.#closed &&
      this.#kept.keep(keptKey(bytes, memoryLimitMb), child);
  }

  /**
   * The child whose last call returned exactly these session bytes, if it
   * is kept: its state is theirs, so a call continues in it as if they had
   * been restored.
   *
   * @param bytes Session bytes (already checked).
   * @param memoryLimitMb The call's memory limit.
   * @returns The child, or undefined.
   */
  takeKept(
    bytes: Uint8Array,
    memoryLimitMb: number,
  ): SandboxChild | undefined {
    return this.#kept.take(keptKey(bytes, memoryLimitMb));
  }

  /**
   * Refills the pool once the call on `child` has had its head start: when
   * the returned function is called (the call ended), or
   * `REFILL_DELAY_MS` after the child is ready, whichever comes first.
   *
   * @param child The call's child.
   * @returns Call it when the call ends.
   */
  refillAfter(child: SandboxChild): () => void {
    let timer: ReturnType<typeof setTimeout> | undefined;
    let ended = false;
    child.ready.then(() => {
      if (!ended) timer = setTimeout(() => this.refill(), REFILL_DELAY_MS);
    }, () => {});
    return () => {
      ended = true;
      if (timer !== undefined) clearTimeout(timer);
      this.refill();
    };
  }

  /**
   * Starts children until the pool is full again, at most
   * `LOAD_PARALLELISM` (one per core) loading at once: each filler starts
   * its next child when the last one is ready.
   */
  refill(): void {
    if (this.#closed || this.#ctx.size === 0) return;
    while (this.#fills.size < LOAD_PARALLELISM && this.#missing() > 0) {
      const fill: Promise<void> = this.#fill().finally(() =>
        this.#fills.delete(fill)
      );
      this.#fills.add(fill);
    }
  }

  /** Pooled children still needed, counting the ones being started. */
  #missing(): number {
    this.#idle = this.#idle.filter((c) => !c.exited);
    return this.#ctx.size - this.#idle.length - this.#starting;
  }

  /** One filler: starts a child, waits until it is loaded, repeats. */
  async #fill(): Promise<void> {
    while (!this.#closed && this.#missing() > 0) {
      let child: SandboxChild;
      this.#starting++;
      try {
        child = await this.spawn(this.#ctx.memoryLimitMb, {
          oneShot: !this.#ctx.stateful,
          warm: true,
        });
      } catch {
        return; // Closed, or Pyodide cannot be prepared: the next call retries.
      } finally {
        this.#starting--;
      }
      if (this.#closed) {
        child.close();
        return;
      }
      this.#idle.push(child);
      // A child that fails to load stops this filler (no busy loop of
      // failing starts); the next call's refill tries again.
      if (!await child.ready.then(() => true, () => false)) return;
    }
  }

  /**
   * Fills the pool and waits until its children are ready (see
   * {@linkcode refill}). A call that arrives meanwhile takes the child
   * started first, so it never waits for a start of its own.
   *
   * @returns Settles when the pool is ready.
   * @throws {Error} When the sandbox is closed or Pyodide cannot be
   *   prepared.
   */
  async warmup(): Promise<void> {
    this.#checkOpen();
    await holdingLoop(this.prepare());
    this.refill();
    while (this.#fills.size > 0) {
      await holdingLoop(Promise.all(this.#fills));
    }
    await holdingLoop(
      Promise.all(this.#idle.map((c) => c.ready.catch(() => {}))),
    );
  }

  /**
   * Ends every child this pool started, pooled or not, and every start in
   * flight; further starts throw.
   *
   * @returns Settles when all children are gone.
   */
  async close(): Promise<void> {
    this.#closed = true;
    this.#idle = [];
    this.#paused = undefined;
    clearTimeout(this.#pausedTimer);
    this.#kept.clear();
    await this.#endLive();
    // A call that was queued when close() ran must not leave a child: wait
    // for the starts in flight (they see the flag and end their child).
    while (this.#starts.size > 0) {
      await holdingLoop(Promise.allSettled(this.#starts));
      await this.#endLive();
    }
  }

  #endLive(): Promise<unknown> {
    return Promise.all([...this.#live].map((c) => {
      c.kill();
      return c.cleanup();
    }));
  }
}
