/**
 * A held lease: taken (waiting up to a deadline), renewed in the
 * background every third of its TTL while the replica keeps the session's
 * live child, and reported lost (an aborted signal) when a renewal is
 * refused or Redis cannot be reached before the lease would expire.
 *
 * @module
 */

import type { RedisSessionStore } from "./_redis_store.ts";
import type { WaitForLeaseOptions } from "./_redis_types.ts";

/** A lease this replica holds, renewed until released or lost. */
export class HeldLease {
  readonly #store: RedisSessionStore;
  readonly #lost = new AbortController();
  #timer: ReturnType<typeof setTimeout> | undefined;
  #renewedAt = Date.now();
  #released = false;
  /** The session's id. */
  readonly id: string;
  /** The owner token (pass it as `leaseToken` to `write()`). */
  readonly token: string;
  /** The lease's time to live, in milliseconds. */
  readonly ttlMs: number;

  /**
   * Starts renewing a lease that was just taken.
   *
   * @param store The store.
   * @param id The session's id.
   * @param token The owner token.
   * @param ttlMs The lease's TTL.
   */
  constructor(
    store: RedisSessionStore,
    id: string,
    token: string,
    ttlMs: number,
  ) {
    this.#store = store;
    this.id = id;
    this.token = token;
    this.ttlMs = ttlMs;
    this.#schedule();
  }

  /** Aborted when the lease is lost; its reason says why. */
  get signal(): AbortSignal {
    return this.#lost.signal;
  }

  /** Whether the lease is known lost. */
  get lost(): boolean {
    return this.#lost.signal.aborted;
  }

  #schedule(): void {
    if (this.#released || this.lost) return;
    this.#timer = setTimeout(() => this.#renew(), Math.max(10, this.ttlMs / 3));
    Deno.unrefTimer(this.#timer);
  }

  #lose(why: string): void {
    if (!this.lost) {
      this.#lost.abort(new Error(`Lease lost on "${this.id}": ${why}`));
    }
  }

  async #renew(): Promise<void> {
    this.#timer = undefined;
    if (this.#released) return;
    try {
      if (await this.#store.renewLease(this.id, this.token, this.ttlMs)) {
        this.#renewedAt = Date.now();
      } else {
        this.#lose("it expired or another replica holds it");
      }
    } catch (error) {
      // Redis away: the lease may still be ours until its TTL runs out.
      if (Date.now() - this.#renewedAt >= this.ttlMs) {
        this.#lose(`it could not be renewed in time (${error})`);
      }
    }
    this.#schedule();
  }

  /**
   * Stops renewing and gives the lease back (best effort: if Redis is
   * away, the lease expires by itself).
   *
   * @returns True when it was released now.
   */
  async release(): Promise<boolean> {
    if (this.#released) return false;
    this.#released = true;
    clearTimeout(this.#timer);
    if (this.lost) return false;
    try {
      return await this.#store.releaseLease(this.id, this.token);
    } catch {
      return false;
    }
  }
}

/**
 * Takes a session's lease (waiting while another replica holds it, up to
 * the deadline) and keeps renewing it until released.
 *
 * @param store The store.
 * @param id The session's id.
 * @param ttlMs The lease's TTL: how long a crashed holder blocks others.
 * @param options The deadline and an abort signal.
 * @returns The held lease, or null when the deadline passed first.
 * @throws {SessionStoreUnavailableError} When Redis fails or is too slow.
 */
export async function holdLease(
  store: RedisSessionStore,
  id: string,
  ttlMs: number,
  options: WaitForLeaseOptions,
): Promise<HeldLease | null> {
  const token = crypto.randomUUID();
  if (!(await store.waitForLease(id, token, ttlMs, options))) return null;
  return new HeldLease(store, id, token, ttlMs);
}
