/**
 * Children a stateful sandbox keeps after a call, each under the session
 * bytes that call returned: the next call given exactly those bytes
 * continues in the child whose state they are, instead of restoring them
 * into another. A kept child that works while it waits (its code left a
 * timer or task running) is ended, as is one no call takes in time.
 *
 * @module
 */

import type { SandboxChild } from "./_child.ts";
import { sessionSeal } from "./_session_bytes.ts";

/** How long a kept child waits for its next call before it is ended. */
const KEPT_IDLE_MS = 30_000;

/** How often kept children's CPU time is read. */
const CHECK_MS = 1000;

/**
 * CPU time a kept child may use between two readings (about a second
 * apart) while it waits, in clock ticks (10 ms at the usual 100 Hz): an
 * idle runner uses about none, so more means the last call's code is
 * still running. The first seconds after a call are not counted: the
 * runtime finishes its own work then (measured: up to 160 ms of compiling
 * and collecting on an idle machine, spread out on a loaded one).
 */
const BUSY_TICKS = 20;

/** The grace after a call (see {@linkcode BUSY_TICKS}). */
const GRACE_MS = 2000;

interface Kept {
  child: SandboxChild;
  /** CPU ticks at the last reading. */
  cpu: number;
  /** When (`performance.now()`) that reading was made. */
  cpuAt: number;
  /** Readings from then on are counted. */
  countFrom: number;
  timer: ReturnType<typeof setTimeout>;
}

/**
 * The key of a child kept for session bytes: their seal (already computed
 * over the whole bytes, and unique per seal), not another hash of them.
 *
 * @param bytes The session bytes the child's last call returned, or bytes
 *   already checked against their seal.
 * @param memoryLimitMb The child's memory limit.
 * @returns The key.
 */
export function keptKey(bytes: Uint8Array, memoryLimitMb: number): string {
  return `${memoryLimitMb}:${sessionSeal(bytes)}`;
}

/**
 * User plus system CPU time of a process, from `/proc`.
 *
 * @param pid The process.
 * @returns Clock ticks, or undefined without `/proc`.
 */
function cpuTicks(pid: number): number | undefined {
  let text: string;
  try {
    text = Deno.readTextFileSync(`/proc/${pid}/stat`);
  } catch {
    return undefined;
  }
  // Fields after the command name (which may hold spaces): the state is
  // field 3, utime 14 and stime 15.
  const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
  const ticks = Number(fields[11]) + Number(fields[12]);
  return Number.isFinite(ticks) ? ticks : undefined;
}

/**
 * At most `max` kept children, the oldest ended first.
 *
 * @example
 * ```ts ignore
 * const kept = new KeptChildren(2);
 * if (!kept.keep(keptKey(bytes, 512), child)) await child.kill();
 * const next = kept.take(keptKey(bytes, 512));
 * ```
 */
export class KeptChildren {
  #max: number;
  #kept = new Map<string, Kept>();
  #check?: ReturnType<typeof setInterval>;

  /**
   * @param max How many children may be kept at once (0: none).
   */
  constructor(max: number) {
    this.#max = max;
  }

  /**
   * Keeps a child whose call just returned session bytes.
   *
   * @param key The bytes' {@linkcode keptKey}.
   * @param child The child: alive, its call done.
   * @returns False when it cannot be kept (none may be, or no `/proc` to
   *   watch its CPU time): the caller ends it.
   */
  keep(key: string, child: SandboxChild): boolean {
    const cpu = cpuTicks(child.pid);
    if (this.#max === 0 || cpu === undefined || child.exited) return false;
    this.#drop(key)?.kill("exit", { hard: true });
    while (this.#kept.size >= this.#max) {
      const oldest = this.#kept.keys().next().value!;
      this.#drop(oldest)?.kill("exit", { hard: true });
    }
    const timer = setTimeout(() => {
      this.#drop(key)?.kill("exit", { hard: true });
    }, KEPT_IDLE_MS);
    Deno.unrefTimer(timer);
    const now = performance.now();
    this.#kept.set(key, {
      child,
      cpu,
      cpuAt: now,
      countFrom: now + GRACE_MS,
      timer,
    });
    child.onExit(() => {
      if (this.#kept.get(key)?.child === child) this.#drop(key);
    });
    this.#watch();
    return true;
  }

  /**
   * Takes the child kept for `key`, if it is alive and stayed idle.
   *
   * @param key The bytes' {@linkcode keptKey}.
   * @returns The child, now the caller's, or undefined.
   */
  take(key: string): SandboxChild | undefined {
    const entry = this.#kept.get(key);
    if (!entry) return undefined;
    this.#drop(key);
    const child = entry.child;
    // A child that broke the protocol while it waited is being killed, but
    // may not be reaped yet.
    if (child.exited || child.violation !== undefined || this.#busy(entry)) {
      child.kill("exit", { hard: true });
      return undefined;
    }
    return child;
  }

  /** Forgets every kept child (the pool's close() ends them). */
  clear(): void {
    for (const key of [...this.#kept.keys()]) this.#drop(key);
  }

  /**
   * Whether it worked since the last reading, if that was made after the
   * grace; reads again.
   */
  #busy(entry: Kept): boolean {
    const cpu = cpuTicks(entry.child.pid);
    if (cpu === undefined) return true;
    const busy = entry.cpuAt >= entry.countFrom &&
      cpu - entry.cpu > BUSY_TICKS;
    entry.cpu = cpu;
    entry.cpuAt = performance.now();
    return busy;
  }

  #drop(key: string): SandboxChild | undefined {
    const entry = this.#kept.get(key);
    if (!entry) return undefined;
    this.#kept.delete(key);
    clearTimeout(entry.timer);
    if (this.#kept.size === 0) {
      clearInterval(this.#check);
      this.#check = undefined;
    }
    return entry.child;
  }

  /**
   * Ends kept children that work while they wait: checked once a second,
   * and when taken.
   */
  #watch(): void {
    if (this.#check !== undefined) return;
    this.#check = setInterval(() => {
      for (const [key, entry] of [...this.#kept]) {
        if (this.#busy(entry)) this.#drop(key)?.kill("exit", { hard: true });
      }
    }, CHECK_MS);
    Deno.unrefTimer(this.#check);
  }
}
