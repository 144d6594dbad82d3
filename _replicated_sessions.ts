/**
 * Sessions shared by several server replicas through a Redis session
 * store (issue 12, durable mode). Each step takes the session's lease
 * (waiting while another replica runs a step of it, up to the request's
 * deadline), restores the latest bytes unless this replica's cached live
 * child is at that version, runs, saves and writes the new bytes with a
 * fenced write before answering, then releases the lease. The live child
 * stays cached (tagged with the version it wrote) so consecutive steps on
 * one replica run at live speed; `maxSessions` bounds that cache, and an
 * idle cached child may be evicted at any time since its state is in Redis.
 *
 * Checkpoint mode (`checkpointSeconds` > 0): a step does not write; the
 * replica keeps the lease while the session has unwritten steps (dirty)
 * and writes it back `checkpointSeconds` after it became dirty, on idle
 * expiry and on `close()` (drain), then releases the lease. Other replicas
 * wait for it meanwhile. A crash loses the steps since the last checkpoint
 * (at most `checkpointSeconds` of acknowledged steps); the store keeps the
 * last checkpoint intact.
 *
 * @module
 */

import type { PyodideSandbox } from "./sandbox.ts";
import type { PyodideSession } from "./session.ts";
import type { ExecuteOptions, SessionOptions } from "./options.ts";
import { SessionError } from "./_session_bytes.ts";
import type { CodeExecutionResult, SessionMetadata } from "./result.ts";
import type { RedisSessionStore } from "./_redis_store.ts";
import { type HeldLease, holdLease } from "./_redis_lease.ts";
import { SessionFenceError } from "./_redis_errors.ts";
import { RedisBases } from "./_redis_bases.ts";
import {
  idleKeys,
  type SessionInfo,
  SessionLimitError,
  startSweep,
  UnknownSessionError,
} from "./_session_store.ts";

/** How long a crashed holder blocks a session, in milliseconds. */
export const LEASE_MS = 15_000;
/** Extra time a step may wait for the lease past its own timeout. */
const LEASE_MARGIN_MS = 10_000;

/** Thrown when the lease could not be taken before the request's deadline. */
export class SessionBusyError extends Error {
  /**
   * @param id The session's id.
   */
  constructor(id: string) {
    super(
      `Session busy: another replica is running a step of "${id}"; retry`,
    );
    this.name = "SessionBusyError";
  }
}

/** A cached live child and the stored version it is at. */
interface Cached {
  session: PyodideSession;
  version: number;
  lastUsed: number;
  busy: number;
  /** Checkpoint mode: the lease kept while there are unwritten steps. */
  lease?: HeldLease;
  /** Checkpoint mode: the timer of the next write-back. */
  timer?: ReturnType<typeof setTimeout>;
}

/** Limits of the replica's cache of live children. */
export interface ReplicatedOptions {
  /** Live children this replica keeps at most. */
  maxSessions: number;
  /** Cached children unused this long are closed. */
  idleSeconds: number;
  /**
   * 0: write every step back before answering (durable). N > 0: write at
   * most every N seconds, on idle expiry and on close (checkpoint mode).
   */
  checkpointSeconds?: number;
}

/** A session-kind error result (tampered or unreadable stored bytes). */
function sessionErrorResult(message: string): CodeExecutionResult {
  return {
    status: "error",
    stdout: "",
    stderr: `${message}\n`,
    result: null,
    executionTime: 0,
    error: { kind: "session", message },
    displays: [],
    files: [],
    stdoutTruncated: false,
    stderrTruncated: false,
  };
}

/** Sessions in a shared store, with a per-replica cache of live children. */
export class ReplicatedSessions {
  readonly #sandbox: PyodideSandbox;
  /** The shared store. */
  readonly store: RedisSessionStore;
  readonly #options: ReplicatedOptions;
  readonly #cache = new Map<string, Cached>();
  readonly #leases = new Set<HeldLease>();
  readonly #locks = new Map<string, Promise<unknown>>();
  readonly #bases: RedisBases;
  readonly #checkpointMs: number;
  #reserved = 0;
  #pruning = false;
  #timer: ReturnType<typeof setInterval>;
  #closed = false;

  /**
   * @param sandbox The sandbox children are opened in.
   * @param store The shared store.
   * @param options Cache limits.
   */
  constructor(
    sandbox: PyodideSandbox,
    store: RedisSessionStore,
    options: ReplicatedOptions,
  ) {
    this.#sandbox = sandbox;
    this.store = store;
    this.#options = options;
    this.#checkpointMs = (options.checkpointSeconds ?? 0) * 1000;
    this.#bases = new RedisBases(store, sandbox);
    this.#timer = startSweep(options.idleSeconds, () => this.#sweep());
  }

  /** Live children cached on this replica. */
  get size(): number {
    return this.#cache.size;
  }

  /** Leases this replica holds now (one per running step). */
  get leasesHeld(): number {
    return this.#leases.size;
  }

  /** Makes room for one more live child, evicting the least recently used idle one. */
  #reserve(): void {
    if (this.#cache.size + this.#reserved >= this.#options.maxSessions) {
      let oldest: [string, Cached] | undefined;
      for (const entry of this.#cache) {
        if (entry[1].busy > 0 || entry[1].lease) continue;
        if (!oldest || entry[1].lastUsed < oldest[1].lastUsed) oldest = entry;
      }
      if (!oldest) throw new SessionLimitError(this.#options.maxSessions);
      this.#drop(oldest[0]);
    }
    this.#reserved++;
  }

  /** Forgets the cached child (and any unwritten steps of it). */
  #drop(id: string): void {
    const cached = this.#cache.get(id);
    if (!cached) return;
    this.#cache.delete(id);
    clearTimeout(cached.timer);
    if (cached.lease) this.#release(cached.lease).catch(() => {});
    cached.session.close().catch(() => {});
  }

  /** Runs `fn` after every earlier locked call for `id` (steps, checkpoints). */
  async #locked<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const before = this.#locks.get(id) ?? Promise.resolve();
    const run = before.then(fn, fn);
    const tail = run.catch(() => {});
    this.#locks.set(id, tail);
    try {
      return await run;
    } finally {
      if (this.#locks.get(id) === tail) this.#locks.delete(id);
    }
  }

  async #lease(id: string, deadline: number): Promise<HeldLease> {
    const lease = await holdLease(this.store, id, LEASE_MS, { deadline });
    if (!lease) throw new SessionBusyError(id);
    this.#leases.add(lease);
    return lease;
  }

  async #release(lease: HeldLease): Promise<void> {
    this.#leases.delete(lease);
    await lease.release();
  }

  /** Saves a live child and writes its bytes, fenced by the lease and version. */
  async #writeBack(
    id: string,
    session: PyodideSession,
    lease: HeldLease,
    expectedVersion: number,
  ): Promise<number> {
    const saved = await session.save();
    await this.#bases.publish(saved.sessionBytes);
    if (lease.lost) throw new SessionFenceError(id, "lease", null);
    return await this.store.write(id, saved.sessionBytes, {
      expectedVersion,
      leaseToken: lease.token,
      metadata: saved.sessionMetadata as SessionMetadata,
    });
  }

  /**
   * Opens a session (optionally from saved bytes), writes it to the store
   * and caches its live child.
   *
   * @param options Saved state to resume from.
   * @returns The new session's id.
   * @throws {SessionLimitError} When every cached child is busy.
   * @throws {SessionStoreUnavailableError} When Redis fails.
   * @throws {SessionStoreFullError} At the store's own limit.
   */
  async create(options: SessionOptions = {}): Promise<string> {
    if (this.#closed) throw new Error("The server is shutting down");
    this.#reserve();
    let session: PyodideSession | undefined;
    try {
      if (options.sessionBytes instanceof Uint8Array) {
        await this.#bases.prepare(options.sessionBytes);
      }
      session = await this.#sandbox.openSession(options);
      const id = crypto.randomUUID();
      const lease = await this.#lease(id, Date.now() + LEASE_MARGIN_MS);
      try {
        const version = await this.#writeBack(id, session, lease, 0);
        this.#cache.set(id, {
          session,
          version,
          lastUsed: Date.now(),
          busy: 0,
        });
        session = undefined;
        return id;
      } finally {
        await this.#release(lease);
      }
    } finally {
      this.#reserved--;
      await session?.close().catch(() => {});
    }
  }

  /** The cached child at `version`, or a child restored from the store. */
  async #childAt(
    id: string,
    version: number,
  ): Promise<Cached | CodeExecutionResult> {
    const cached = this.#cache.get(id);
    if (cached && cached.version === version && cached.session.alive) {
      return cached;
    }
    this.#drop(id);
    let record;
    try {
      record = await this.store.read(id);
    } catch (error) {
      if (error instanceof SessionError) {
        return sessionErrorResult(error.message);
      }
      throw error;
    }
    if (!record) throw new UnknownSessionError(id);
    this.#reserve();
    try {
      await this.#bases.prepare(record.sessionBytes);
      const session = await this.#sandbox.openSession({
        sessionBytes: record.sessionBytes,
        sessionMetadata: record.sessionMetadata,
      });
      const entry = {
        session,
        version: record.version,
        lastUsed: Date.now(),
        busy: 0,
      };
      this.#cache.set(id, entry);
      return entry;
    } catch (error) {
      if (error instanceof SessionError) {
        return sessionErrorResult(error.message);
      }
      throw error;
    } finally {
      this.#reserved--;
    }
  }

  /**
   * Runs one step: lease, restore if needed, run, fenced write, release.
   * In durable mode the answer comes only after the new bytes are written;
   * in checkpoint mode the lease is kept and the write comes later.
   *
   * @param id The session's id.
   * @param code Python source.
   * @param options Per-call options (`timeoutSeconds` bounds the lease wait too).
   * @returns The result.
   * @throws {UnknownSessionError} When the store has no such session.
   * @throws {SessionBusyError} When the lease was not free before the deadline.
   * @throws {SessionFenceError} When the write was refused (the step did not count).
   * @throws {SessionStoreUnavailableError} When Redis fails.
   */
  execute(
    id: string,
    code: string,
    options: ExecuteOptions,
  ): Promise<CodeExecutionResult> {
    if (this.#closed) {
      return Promise.reject(new Error("The server is shutting down"));
    }
    return this.#locked(id, () => this.#step(id, code, options));
  }

  /** The lease kept from an earlier dirty step, or a new one. */
  async #stepLease(id: string, timeoutMs: number): Promise<HeldLease> {
    const kept = this.#cache.get(id)?.lease;
    if (kept && !kept.lost) return kept;
    // A lost kept lease: its unwritten steps are gone (checkpoint mode).
    if (kept) this.#drop(id);
    return await this.#lease(
      id,
      Date.now() + timeoutMs + this.#checkpointMs + LEASE_MARGIN_MS,
    );
  }

  async #step(
    id: string,
    code: string,
    options: ExecuteOptions,
  ): Promise<CodeExecutionResult> {
    const lease = await this.#stepLease(
      id,
      (options.timeoutSeconds ?? 60) * 1000,
    );
    let entry: Cached | undefined;
    let keep = false;
    try {
      const version = await this.store.version(id);
      if (version === null) {
        this.#drop(id);
        throw new UnknownSessionError(id);
      }
      const child = await this.#childAt(id, version);
      if (!("session" in child)) return child;
      entry = child;
      entry.busy++;
      const result = await entry.session.execute(code, options);
      if (!entry.session.alive) {
        // Timed out or crashed: the store keeps the last written state.
        this.#drop(id);
        return result;
      }
      if (this.#checkpointMs > 0) {
        keep = true;
        this.#dirty(id, entry, lease);
        await this.store.touch(id);
      } else {
        entry.version = await this.#writeBack(
          id,
          entry.session,
          lease,
          version,
        );
      }
      return result;
    } catch (error) {
      if (!(error instanceof UnknownSessionError)) this.#drop(id);
      throw error;
    } finally {
      if (entry) {
        entry.busy--;
        entry.lastUsed = Date.now();
      }
      if (!keep && this.#cache.get(id)?.lease !== lease) {
        await this.#release(lease);
      }
    }
  }

  /** Checkpoint mode: keeps the lease and arms the write-back timer. */
  #dirty(id: string, entry: Cached, lease: HeldLease): void {
    entry.lease = lease;
    if (entry.timer !== undefined) return;
    const timer = setTimeout(() => {
      entry.timer = undefined;
      this.#locked(id, () => this.#checkpoint(id, entry)).catch(() => {});
    }, this.#checkpointMs);
    Deno.unrefTimer(timer);
    entry.timer = timer;
  }

  /** Writes a dirty child back and gives its lease up; drops it on failure. */
  async #checkpoint(id: string, entry: Cached): Promise<void> {
    clearTimeout(entry.timer);
    entry.timer = undefined;
    const lease = entry.lease;
    if (!lease || this.#cache.get(id) !== entry) return;
    try {
      entry.version = await this.#writeBack(
        id,
        entry.session,
        lease,
        entry.version,
      );
    } catch {
      // Fenced (deleted, lease lost) or Redis away: the unwritten steps are lost.
      this.#drop(id);
      return;
    }
    entry.lease = undefined;
    await this.#release(lease);
  }

  /**
   * The last written state of a session (no lease needed: it is the last
   * acknowledged step).
   *
   * @param id The session's id.
   * @returns Bytes and metadata.
   * @throws {UnknownSessionError} When the store has no such session.
   * @throws {SessionError} When the stored bytes were altered.
   */
  async export(
    id: string,
  ): Promise<{ sessionBytes: Uint8Array; sessionMetadata: SessionMetadata }> {
    const record = await this.store.read(id);
    if (!record) throw new UnknownSessionError(id);
    return {
      sessionBytes: record.sessionBytes,
      sessionMetadata: record.sessionMetadata,
    };
  }

  /**
   * Deletes a session group-wide (record and lease) and closes its cached child.
   *
   * @param id The session's id.
   * @returns False when the store had no such session.
   */
  async delete(id: string): Promise<boolean> {
    const cached = this.#cache.get(id);
    const deleted = await this.store.delete(id);
    if (cached && cached.busy === 0) this.#drop(id);
    return deleted;
  }

  /**
   * Lists the sessions of the whole group.
   *
   * @returns One entry per stored session.
   */
  async list(): Promise<SessionInfo[]> {
    const now = Date.now();
    const entries = await this.store.list();
    return entries.map((e) => {
      const created = Date.parse(e.createdAt);
      const updated = Date.parse(e.updatedAt);
      return {
        id: e.id,
        createdAt: e.createdAt,
        ageSeconds: Math.max(0, (now - created) / 1000),
        idleSeconds: e.leased ? 0 : Math.max(0, (now - updated) / 1000),
        executions: Math.max(0, e.version - 1),
        sizeBytes: e.sizeBytes,
        alive: true,
      };
    });
  }

  /** Closes idle cached children, writing dirty ones back first. */
  #sweep(): void {
    this.#pruneDeleted().catch(() => {});
    for (const id of idleKeys(this.#cache, this.#options.idleSeconds)) {
      const entry = this.#cache.get(id)!;
      if (!entry.lease) {
        this.#drop(id);
        continue;
      }
      this.#locked(id, async () => {
        await this.#checkpoint(id, entry);
        const idle = entry.busy === 0 && !entry.lease;
        if (idle && this.#cache.get(id) === entry) this.#drop(id);
      }).catch(() => {});
    }
  }

  /**
   * Closes cached children whose session was deleted (or expired) through
   * another replica: one `HGET` per idle cached child and sweep.
   */
  async #pruneDeleted(): Promise<void> {
    if (this.#pruning) return;
    this.#pruning = true;
    try {
      for (const [id, entry] of [...this.#cache]) {
        if (entry.busy > 0 || entry.lease) continue;
        const gone = (await this.store.version(id)) === null;
        const idle = entry.busy === 0 && !entry.lease;
        if (gone && idle && this.#cache.get(id) === entry) this.#drop(id);
      }
    } finally {
      this.#pruning = false;
    }
  }

  /**
   * Writes back every session with unwritten steps (checkpoint mode),
   * closes every cached child and gives back any lease still held. The
   * store itself is left open.
   *
   * @returns Settles when all children are closed.
   */
  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#timer);
    await Promise.all(
      [...this.#cache].filter(([, e]) => e.lease).map(([id, e]) =>
        this.#locked(id, () => this.#checkpoint(id, e)).catch(() => {})
      ),
    );
    await Promise.all([...this.#leases].map((l) => this.#release(l)));
    const entries = [...this.#cache.values()];
    this.#cache.clear();
    await Promise.all(entries.map((e) => e.session.close().catch(() => {})));
  }
}
