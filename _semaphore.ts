/**
 * A counting semaphore with a FIFO queue, deadlines and abort signals.
 *
 * @module
 */

interface Waiter {
  grant: () => void;
}

/** Limits how many executions run at once; callers over the limit queue. */
export class Semaphore {
  #free: number;
  #queue: Waiter[] = [];

  /**
   * @param slots How many holders at once.
   */
  constructor(slots: number) {
    this.#free = slots;
  }

  /** Callers waiting for a slot. */
  get waiting(): number {
    return this.#queue.length;
  }

  /**
   * Waits for a slot.
   *
   * @param signal Rejects with its reason when aborted while waiting.
   * @param deadline `performance.now()` value after which waiting gives up.
   * @returns A release function, or `"timeout"` when the deadline passed.
   */
  acquire(
    signal: AbortSignal | undefined,
    deadline: number,
  ): Promise<(() => void) | "timeout"> {
    signal?.throwIfAborted();
    if (this.#free > 0 && this.#queue.length === 0) {
      this.#free--;
      return Promise.resolve(this.#releaser());
    }
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        grant: () => {
          cleanup();
          resolve(this.#releaser());
        },
      };
      const remove = () => {
        const i = this.#queue.indexOf(waiter);
        if (i >= 0) this.#queue.splice(i, 1);
      };
      const timer = setTimeout(() => {
        remove();
        cleanup();
        resolve("timeout");
      }, Math.max(0, deadline - performance.now()));
      const onAbort = () => {
        remove();
        cleanup();
        reject(signal!.reason);
      };
      const cleanup = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#queue.push(waiter);
    });
  }

  #releaser(): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const next = this.#queue.shift();
      if (next) next.grant();
      else this.#free++;
    };
  }
}
