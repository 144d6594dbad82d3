/**
 * Live sessions held by a server (HTTP or MCP) under random ids, with a
 * count limit and idle expiry.
 *
 * @module
 */

import type { PyodideSandbox } from "./sandbox.ts";
import type { PyodideSession } from "./session.ts";
import type {
  ExecuteOptions,
  SavedSession,
  SessionOptions,
} from "./options.ts";
import type { CodeExecutionResult } from "./result.ts";

/** Thrown when a session must be opened and `maxSessions` are live. */
export class SessionLimitError extends Error {
  /**
   * Creates the error.
   *
   * @param max The limit.
   */
  constructor(max: number) {
    super(
      `Too many sessions: the limit is ${max}; close one (or wait for idle ones to expire) and retry`,
    );
    this.name = "SessionLimitError";
  }
}

/** One stored session. */
interface Entry {
  id: string;
  session: PyodideSession;
  createdAt: number;
  lastUsed: number;
  busy: number;
  executions: number;
  sizeBytes: number | null;
}

/** What a session listing shows. */
export interface SessionInfo {
  /** The session's id. */
  id: string;
  /** When it was created (ISO 8601). */
  createdAt: string;
  /** Seconds since it was created. */
  ageSeconds: number;
  /** Seconds since it was last used. */
  idleSeconds: number;
  /** Executions run in it. */
  executions: number;
  /** Size of its last imported or exported session bytes, if any. */
  sizeBytes: number | null;
  /** Whether it can still run code (false once its process was lost). */
  alive: boolean;
}

/** Limits of a store. */
export interface SessionStoreOptions {
  /** Live sessions at most. */
  maxSessions: number;
  /** Sessions unused for this many seconds are closed. */
  idleSeconds: number;
}

/** Sessions by id, with a count limit and idle expiry. */
export class SessionStore {
  #sandbox: PyodideSandbox;
  #options: SessionStoreOptions;
  #entries = new Map<string, Entry>();
  #reserved = 0;
  #timer: ReturnType<typeof setInterval>;
  #closed = false;

  /**
   * @param sandbox The sandbox sessions are opened in.
   * @param options Limits.
   */
  constructor(sandbox: PyodideSandbox, options: SessionStoreOptions) {
    this.#sandbox = sandbox;
    this.#options = options;
    this.#timer = startSweep(options.idleSeconds, () => this.#sweep());
  }

  /** Number of live sessions. */
  get size(): number {
    return this.#entries.size;
  }

  /**
   * Opens a session (optionally from saved bytes) and stores it.
   *
   * @param options Saved state to resume from.
   * @returns The new session's id.
   * @throws {SessionLimitError} When the limit is reached.
   */
  async create(options: SessionOptions = {}): Promise<string> {
    if (this.#closed) throw new Error("The server is shutting down");
    if (this.#entries.size + this.#reserved >= this.#options.maxSessions) {
      throw new SessionLimitError(this.#options.maxSessions);
    }
    this.#reserved++;
    let session: PyodideSession;
    try {
      session = await this.#sandbox.openSession(options);
    } finally {
      this.#reserved--;
    }
    if (this.#closed) {
      await session.close();
      throw new Error("The server is shutting down");
    }
    const id = crypto.randomUUID();
    const now = Date.now();
    this.#entries.set(id, {
      id,
      session,
      createdAt: now,
      lastUsed: now,
      busy: 0,
      executions: 0,
      sizeBytes: options.sessionBytes?.length ?? null,
    });
    return id;
  }

  /**
   * Whether a session exists.
   *
   * @param id The session's id.
   * @returns True when stored.
   */
  has(id: string): boolean {
    return this.#entries.has(id);
  }

  async #use<T>(id: string, fn: (e: Entry) => Promise<T>): Promise<T> {
    const entry = this.#entries.get(id);
    if (!entry) throw new UnknownSessionError(id);
    entry.busy++;
    entry.lastUsed = Date.now();
    try {
      return await fn(entry);
    } finally {
      entry.busy--;
      entry.lastUsed = Date.now();
    }
  }

  /**
   * Runs code in a stored session.
   *
   * @param id The session's id.
   * @param code Python source.
   * @param options Per-call options.
   * @returns The result.
   * @throws {UnknownSessionError} When there is no such session.
   */
  execute(
    id: string,
    code: string,
    options: ExecuteOptions,
  ): Promise<CodeExecutionResult> {
    return this.#use(id, async (entry) => {
      const result = await entry.session.execute(code, options);
      entry.executions++;
      return result;
    });
  }

  /**
   * Saves a stored session's state.
   *
   * @param id The session's id.
   * @returns Bytes and metadata.
   * @throws {UnknownSessionError} When there is no such session.
   * @throws {SessionError} When the session was lost.
   */
  export(id: string): Promise<SavedSession> {
    return this.#use(id, async (entry) => {
      const saved = await entry.session.save();
      entry.sizeBytes = saved.sessionBytes.length;
      return saved;
    });
  }

  /**
   * Closes and forgets a session.
   *
   * @param id The session's id.
   * @returns False when there was no such session.
   */
  async delete(id: string): Promise<boolean> {
    const entry = this.#entries.get(id);
    if (!entry) return false;
    this.#entries.delete(id);
    await entry.session.close();
    return true;
  }

  /**
   * Lists the stored sessions.
   *
   * @returns One entry per session, oldest first.
   */
  list(): SessionInfo[] {
    const now = Date.now();
    return [...this.#entries.values()].map((e) => ({
      id: e.id,
      createdAt: new Date(e.createdAt).toISOString(),
      ageSeconds: (now - e.createdAt) / 1000,
      idleSeconds: e.busy > 0 ? 0 : (now - e.lastUsed) / 1000,
      executions: e.executions,
      sizeBytes: e.sizeBytes,
      alive: e.session.alive,
    }));
  }

  #sweep(): void {
    for (const id of idleKeys(this.#entries, this.#options.idleSeconds)) {
      const entry = this.#entries.get(id)!;
      this.#entries.delete(id);
      entry.session.close().catch(() => {});
    }
  }

  /**
   * Closes every session and stops the expiry timer.
   *
   * @returns Settles when all sessions are closed.
   */
  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#timer);
    const entries = [...this.#entries.values()];
    this.#entries.clear();
    await Promise.all(entries.map((e) => e.session.close().catch(() => {})));
  }
}

/** Thrown for an id that names no stored session. */
export class UnknownSessionError extends Error {
  /**
   * @param id The id.
   */
  constructor(id: string) {
    super(
      `Unknown session: "${id}" does not exist (it may have been closed or expired)`,
    );
    this.name = "UnknownSessionError";
  }
}

/**
 * Calls `sweep` every quarter of `idleSeconds` (50 ms to 30 s), without
 * keeping the process alive: the idle-expiry timer every session table
 * shares.
 *
 * @param idleSeconds How long an entry may stay unused.
 * @param sweep What to run.
 * @returns The interval's id (for `clearInterval`).
 */
export function startSweep(
  idleSeconds: number,
  sweep: () => void,
): ReturnType<typeof setInterval> {
  const every = Math.max(50, Math.min(30_000, (idleSeconds * 1000) / 4));
  const timer = setInterval(sweep, every);
  Deno.unrefTimer(timer);
  return timer;
}

/**
 * The keys of the entries that are not busy and were last used more than
 * `idleSeconds` ago.
 *
 * @param entries Entries with a busy count and a last-use time.
 * @param idleSeconds The idle limit.
 * @returns Their keys (a copy: the map may be changed while iterating).
 */
export function idleKeys<K>(
  entries: ReadonlyMap<K, { busy: number; lastUsed: number }>,
  idleSeconds: number,
): K[] {
  const limit = Date.now() - idleSeconds * 1000;
  return [...entries].filter(([, e]) => e.busy === 0 && e.lastUsed < limit)
    .map(([key]) => key);
}
