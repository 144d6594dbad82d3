/**
 * Live sessions under keys of your choosing (a conversation id, a user
 * id), with a count limit and idle expiry: {@linkcode SessionPool}, the
 * session store the HTTP and MCP servers use, for library users. A tool
 * keeps one session per conversation with it (see `pythonTool`'s
 * `sessions` option).
 *
 * @module
 */

import {
  SessionLimitError,
  SessionStore,
  UnknownSessionError as StoreUnknownError,
} from "./_session_store.ts";
import { PyodideSandbox } from "./sandbox.ts";
import type {
  ExecuteOptions,
  SavedSession,
  SessionOptions,
} from "./options.ts";
import type { CodeExecutionResult } from "./result.ts";

export { SessionLimitError };

/** Thrown for a key that has no session. */
export class UnknownSessionError extends Error {
  /**
   * Creates the error.
   *
   * @param key The key.
   */
  constructor(key: string) {
    super(
      `Unknown session: "${key}" has no session (it may have been closed or expired)`,
    );
    this.name = "UnknownSessionError";
  }
}

/** The store's unknown-key error as the public one (it names the key). */
function publicError(error: unknown, key: string): unknown {
  if (error instanceof StoreUnknownError) return new UnknownSessionError(key);
  return error;
}

/** Options of a {@linkcode SessionPool}. */
export interface SessionPoolOptions {
  /**
   * Live sessions at most; opening one more throws
   * {@linkcode SessionLimitError}.
   * @default {16}
   */
  maxSessions?: number;
  /**
   * Sessions unused for this many seconds are closed (checked every
   * quarter of it, at most every 30 seconds). A session is never closed
   * while it runs code.
   * @default {600}
   */
  idleSeconds?: number;
}

/** Per-call options of {@linkcode SessionPool.execute}. */
export interface SessionPoolExecuteOptions extends ExecuteOptions {
  /**
   * Open a session for the key when it has none (first use, or after it
   * expired, was closed or was lost). When false, an unknown key throws
   * {@linkcode UnknownSessionError}, as the servers do.
   * @default {true}
   */
  create?: boolean;
}

/** What {@linkcode SessionPool.list} shows of a session. */
export interface SessionPoolEntry {
  /** The session's key. */
  key: string;
  /** When it was opened (ISO 8601). */
  createdAt: string;
  /** Seconds since it was last used (0 while it runs code). */
  idleSeconds: number;
  /** Executions run in it. */
  executions: number;
  /** Whether it can still run code (false once its process was lost). */
  alive: boolean;
}

const MAX_KEY_LENGTH = 256;

function seconds(n: number): string {
  return n === 1 ? "1 second" : `${n} seconds`;
}

function checkKey(key: unknown): string {
  if (typeof key !== "string" || key === "" || key.length > MAX_KEY_LENGTH) {
    throw new TypeError(
      `Invalid session key: expected a string of 1 to ${MAX_KEY_LENGTH} characters, got ${
        typeof key === "string" ? `${key.length} characters` : typeof key
      }`,
    );
  }
  return key;
}

function checkLimit(
  name: string,
  value: unknown,
  fallback: number,
  integer: boolean,
): number {
  if (value === undefined) return fallback;
  if (
    typeof value !== "number" || !Number.isFinite(value) || value <= 0 ||
    (integer && !Number.isInteger(value))
  ) {
    throw new RangeError(
      `Invalid ${name}: expected a positive ${
        integer ? "integer" : "number"
      }, got ${String(value)}`,
    );
  }
  return value;
}

/**
 * Live sessions of one sandbox under keys, with a count limit and idle
 * expiry: one interpreter per key, kept between calls. `execute(key, ...)`
 * opens the key's session on first use and again after it expired or was
 * lost; such a call's `stderr` starts with a line saying that a new
 * session was started, so a model learns that its variables are gone.
 *
 * @example
 * ```ts ignore
 * import { PyodideSandbox, SessionPool } from "./mod.ts";
 * await using sandbox = new PyodideSandbox({ timeoutSeconds: 30 });
 * await using pool = new SessionPool(sandbox, { idleSeconds: 300 });
 * await pool.execute("conversation-1", "x = 21");
 * console.log((await pool.execute("conversation-1", "x * 2")).result); // 42
 * ```
 */
export class SessionPool {
  #sandbox: PyodideSandbox;
  #store: SessionStore;
  #maxSessions: number;
  #idleSeconds: number;
  /** Key to store id; ids of expired sessions stay to tell expiry apart. */
  #keys = new Map<string, string>();
  #opening = new Map<string, Promise<string>>();
  #closed = false;

  /**
   * Creates an empty pool; sessions are opened on first use.
   *
   * @param sandbox The sandbox sessions are opened in (not closed by the
   *   pool).
   * @param options Session limit and idle expiry.
   * @throws {TypeError} When `sandbox` is not a `PyodideSandbox`.
   * @throws {RangeError} When a limit is not a positive number.
   */
  constructor(sandbox: PyodideSandbox, options: SessionPoolOptions = {}) {
    if (!(sandbox instanceof PyodideSandbox)) {
      throw new TypeError("Invalid sandbox: expected a PyodideSandbox");
    }
    if (typeof options !== "object" || options === null) {
      throw new TypeError("Invalid options: expected an object");
    }
    this.#sandbox = sandbox;
    this.#maxSessions = checkLimit(
      "maxSessions",
      options.maxSessions,
      16,
      true,
    );
    this.#idleSeconds = checkLimit(
      "idleSeconds",
      options.idleSeconds,
      600,
      false,
    );
    this.#store = new SessionStore(sandbox, {
      maxSessions: this.#maxSessions,
      idleSeconds: this.#idleSeconds,
    });
  }

  /** The sandbox the sessions run in. */
  get sandbox(): PyodideSandbox {
    return this.#sandbox;
  }

  /** Live sessions at most. */
  get maxSessions(): number {
    return this.#maxSessions;
  }

  /** Seconds of idleness after which a session is closed. */
  get idleSeconds(): number {
    return this.#idleSeconds;
  }

  /** Number of live sessions. */
  get size(): number {
    return this.#store.size;
  }

  /**
   * Whether a key has a session (that has not expired or been closed).
   *
   * @param key The key.
   * @returns True when the key has a session.
   */
  has(key: string): boolean {
    const id = this.#keys.get(key);
    return id !== undefined && this.#store.has(id);
  }

  /**
   * Opens a session under a key, optionally from saved state.
   *
   * @param key The key (1 to 256 characters); without it a random UUID.
   * @param options Saved state to resume from, memory limit.
   * @returns The key.
   * @throws {TypeError} When the key is invalid or already has a session,
   *   or the pool is closed.
   * @throws {SessionLimitError} When `maxSessions` sessions are live.
   * @throws {SessionError} When the saved state is rejected.
   */
  async open(
    key: string = crypto.randomUUID(),
    options: SessionOptions = {},
  ): Promise<string> {
    checkKey(key);
    if (this.has(key) || this.#opening.has(key)) {
      throw new TypeError(
        `Invalid session key: "${key}" already has a session`,
      );
    }
    await this.#open(key, options);
    return key;
  }

  #open(key: string, options: SessionOptions): Promise<string> {
    if (this.#closed) throw new TypeError("The session pool is closed");
    const opening = this.#store.create(options).catch((error) => {
      throw publicError(error, key);
    }).then((id) => {
      if (this.#closed) {
        this.#store.delete(id).catch(() => {});
        throw new TypeError("The session pool is closed");
      }
      this.#keys.delete(key); // Re-inserted last: the newest key.
      this.#keys.set(key, id);
      this.#prune();
      return id;
    }).finally(() => this.#opening.delete(key));
    this.#opening.set(key, opening);
    return opening;
  }

  /** Forgets the ids of expired sessions beyond a bound, oldest first. */
  #prune(): void {
    const bound = this.#maxSessions * 4 + 64;
    if (this.#keys.size <= bound) return;
    for (const [key, id] of this.#keys) {
      if (this.#keys.size <= bound) break;
      if (!this.#store.has(id)) this.#keys.delete(key);
    }
  }

  #alive(id: string): boolean {
    return this.#store.list().find((e) => e.id === id)?.alive ?? false;
  }

  /**
   * The key's live session id, opening one when allowed; with the reason
   * when a new one replaced an earlier session.
   */
  async #resolve(
    key: string,
    create: boolean,
  ): Promise<{ id: string; replaced?: string }> {
    const pending = this.#opening.get(key);
    if (pending) return { id: await pending };
    const id = this.#keys.get(key);
    let replaced: string | undefined;
    if (id !== undefined && this.#store.has(id)) {
      if (!create || this.#alive(id)) return { id };
      // Removed from the store at once; its process ends in the background.
      this.#store.delete(id).catch(() => {});
      replaced = "the previous one was lost";
    } else if (id !== undefined) {
      replaced = `the previous one expired after ${
        seconds(this.#idleSeconds)
      } idle`;
    }
    if (!create) throw new UnknownSessionError(key);
    return { id: await this.#open(key, {}), replaced };
  }

  /**
   * Runs code in the key's session; calls with one key run one after
   * another. Opens the session first when the key has none (unless
   * `create` is false); when it replaces one that expired or was lost,
   * `stderr` starts with a line that says so.
   *
   * @param key The key, e.g. a conversation id (1 to 256 characters).
   * @param code Python source.
   * @param options Per-call options (`timeoutSeconds`, `stdin`, `signal`,
   *   callbacks) and `create`.
   * @returns The result.
   * @throws {TypeError} When the key, code or an option is invalid, or the
   *   pool is closed.
   * @throws {UnknownSessionError} When `create` is false and the key has
   *   no session.
   * @throws {SessionLimitError} When a session must be opened and
   *   `maxSessions` are live.
   * @throws {unknown} The signal's reason when `options.signal` aborts
   *   (the session is lost; the next call opens a new one).
   */
  async execute(
    key: string,
    code: string,
    options: SessionPoolExecuteOptions = {},
  ): Promise<CodeExecutionResult> {
    checkKey(key);
    if (typeof options !== "object" || options === null) {
      throw new TypeError("Invalid execute options: expected an object");
    }
    const { create = true, ...rest } = options;
    if (typeof create !== "boolean") {
      throw new TypeError(`Invalid create: expected a boolean`);
    }
    if (this.#closed) throw new TypeError("The session pool is closed");
    const { id, replaced } = await this.#resolve(key, create);
    const result = await this.#store.execute(id, code, rest).catch(
      (error) => {
        throw publicError(error, key);
      },
    );
    if (replaced) {
      result.stderr =
        `[A new Python session was started: ${replaced}; its variables, imports and files are gone]\n${result.stderr}`;
    }
    return result;
  }

  /**
   * Saves the state of the key's session.
   *
   * @param key The key.
   * @returns Bytes and metadata to resume from with `open(key, saved)`.
   * @throws {UnknownSessionError} When the key has no session.
   * @throws {SessionError} When the session was lost.
   */
  save(key: string): Promise<SavedSession> {
    checkKey(key);
    const id = this.#keys.get(key);
    if (id === undefined || !this.#store.has(id)) {
      return Promise.reject(new UnknownSessionError(key));
    }
    return this.#store.export(id).catch((error) => {
      throw publicError(error, key);
    });
  }

  /**
   * Closes the key's session.
   *
   * @param key The key.
   * @returns False when the key had no session.
   */
  async delete(key: string): Promise<boolean> {
    const pending = this.#opening.get(key);
    if (pending) await pending.catch(() => {});
    const id = this.#keys.get(key);
    if (id === undefined) return false;
    this.#keys.delete(key);
    return await this.#store.delete(id);
  }

  /**
   * Lists the live sessions.
   *
   * @returns One entry per session, oldest first.
   */
  list(): SessionPoolEntry[] {
    const keyOf = new Map([...this.#keys].map(([key, id]) => [id, key]));
    return this.#store.list().flatMap((e) => {
      const key = keyOf.get(e.id);
      return key === undefined ? [] : [{
        key,
        createdAt: e.createdAt,
        idleSeconds: e.idleSeconds,
        executions: e.executions,
        alive: e.alive,
      }];
    });
  }

  /**
   * Closes every session and stops the expiry timer; the sandbox stays
   * open.
   *
   * @returns Settles when all sessions are closed.
   */
  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all(
      [...this.#opening.values()].map((p) => p.catch(() => {})),
    );
    this.#keys.clear();
    await this.#store.close();
  }

  /** Same as {@linkcode close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
