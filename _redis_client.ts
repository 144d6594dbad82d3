/**
 * The Redis connection of the session store: one ioredis client that
 * connects on first use and reconnects by itself, and time-bounded
 * operations that fail with {@linkcode SessionStoreUnavailableError}
 * (password-free) instead of hanging or queueing while Redis is away.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { isIP } from "node:net";
import type { ConnectionOptions } from "node:tls";
// Exact npm: specifier, not the bare one: URL importers have no import map
// (tests/remote_import_test.ts checks the entry points use no bare one).
// deno-lint-ignore no-import-prefix
import { Redis } from "npm:ioredis@6.0.0";
import {
  scrub,
  scrubbedCause,
  SessionStoreUnavailableError,
  toStoreError,
} from "./_redis_errors.ts";
import type { RedisTarget } from "./_redis_url.ts";
import type {
  RedisSessionStoreSettings,
  RedisTlsOptions,
} from "./_redis_types.ts";

type Pem = string | Uint8Array;

function pem(v: Pem | Pem[] | undefined): unknown {
  if (Array.isArray(v)) return v.map(pem);
  return v instanceof Uint8Array ? Buffer.from(v) : v;
}

function tlsOptions(host: string, tls: RedisTlsOptions): ConnectionOptions {
  return {
    // A server name must be a DNS name (RFC 6066), never an IP address.
    servername: tls.servername ?? (isIP(host) ? undefined : host),
    ca: pem(tls.ca),
    cert: pem(tls.cert),
    key: pem(tls.key),
  } as ConnectionOptions;
}

const LOOP_TICK_MS = 100;
let loopBlocked = 0;
let loopMonitor: ReturnType<typeof setInterval> | undefined;

/**
 * Milliseconds this process's event loop was blocked (by CPU work of the
 * host, not by Redis), summed; sampled every 100 ms once first asked.
 */
function loopBlockedMs(): number {
  if (loopMonitor === undefined) {
    let last = performance.now();
    loopMonitor = setInterval(() => {
      const now = performance.now();
      loopBlocked += Math.max(0, now - last - LOOP_TICK_MS * 1.5);
      last = now;
    }, LOOP_TICK_MS);
    Deno.unrefTimer(loopMonitor);
  }
  return loopBlocked;
}

/** One Redis client with bounded operations and their counters. */
export class RedisConnection {
  #client: Redis;
  #target: RedisTarget;
  #settings: RedisSessionStoreSettings;
  #waiters = new Set<() => void>();
  #lastError: Error | undefined;
  #closed = false;
  #operations = 0;
  #errors = 0;

  /**
   * Creates the client (it connects on first use).
   *
   * @param target Where to connect.
   * @param settings Time bounds and TLS settings.
   */
  constructor(target: RedisTarget, settings: RedisSessionStoreSettings) {
    this.#target = target;
    this.#settings = settings;
    this.#client = new Redis({
      host: target.host,
      port: target.port,
      db: target.db,
      username: target.username,
      password: target.password,
      tls: target.tls ? tlsOptions(target.host, settings.tls) : undefined,
      lazyConnect: true,
      enableOfflineQueue: false,
      autoResendUnfulfilledCommands: false,
      maxRetriesPerRequest: 0,
      connectTimeout: settings.connectTimeoutMs,
      commandTimeout: settings.blobTimeoutMs,
      connectionName: "pyodide-sandbox",
      retryStrategy: (times: number) => Math.min(50 * times, 1000),
      reconnectOnError: () => false,
      showFriendlyErrorStack: false,
    });
    // Without a listener, the client prints every connection error.
    this.#client.on("error", (error: unknown) => {
      this.#lastError = scrubbedCause(error, target.secrets);
    });
    this.#client.on("ready", () => {
      this.#lastError = undefined;
      for (const wake of [...this.#waiters]) wake();
    });
  }

  /** The Redis URL, without its password. */
  get url(): string {
    return this.#target.display;
  }

  /** Operations started. */
  get operations(): number {
    return this.#operations;
  }

  /** Operations that failed. */
  get errors(): number {
    return this.#errors;
  }

  /**
   * Whether the client is connected now. The socket is checked too: just
   * after Redis goes away the status can still say "ready" for a moment.
   */
  get reachable(): boolean {
    const client = this.#client;
    return client.status === "ready" && client.stream?.writable !== false;
  }

  /**
   * Makes an unavailability error with secrets scrubbed from its text.
   *
   * @param detail What failed.
   * @param cause A scrubbed cause.
   * @returns The error.
   */
  unavailable(detail: string, cause?: Error): SessionStoreUnavailableError {
    const message = scrub(detail, this.#target.secrets);
    return new SessionStoreUnavailableError(message, cause && { cause });
  }

  #ready(timeoutMs: number): Promise<void> {
    const client = this.#client;
    if (this.#closed) return Promise.reject(this.unavailable("it is closed"));
    if (this.reachable) return Promise.resolve();
    if (client.status === "wait" || client.status === "end") {
      client.connect().catch(() => {});
    }
    return new Promise((resolve, reject) => {
      const wake = () => {
        clearTimeout(timer);
        this.#waiters.delete(wake);
        resolve();
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(wake);
        const cause = this.#lastError;
        const last = cause ? ` (${cause.message})` : "";
        reject(
          this.unavailable(
            `cannot reach ${this.#target.display} within ${timeoutMs} ms${last}`,
            cause,
          ),
        );
      }, timeoutMs);
      this.#waiters.add(wake);
    });
  }

  /**
   * Runs one operation with a time bound (waiting for the connection
   * counts), counting it.
   *
   * @param what The operation's name, for messages.
   * @param fn The commands.
   * @param timeoutMs The bound.
   * @returns What `fn` returned.
   * @throws {SessionStoreUnavailableError} When Redis is unreachable,
   *   fails, or is too slow.
   */
  async run<T>(
    what: string,
    fn: (client: Redis) => Promise<T>,
    timeoutMs: number = this.#settings.operationTimeoutMs,
  ): Promise<T> {
    this.#operations++;
    const started = Date.now();
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      await this.#ready(Math.min(timeoutMs, this.#settings.connectTimeoutMs));
      if (this.#closed) throw this.unavailable("it is closed");
      const left = Math.max(1, timeoutMs - (Date.now() - started));
      // Time the host's own event loop was blocked does not count against
      // Redis (up to the bound again): a reply may be waiting unread.
      const blocked = loopBlockedMs();
      let extended = 0;
      const timeout = new Promise<never>((_, reject) => {
        const arm = (ms: number) => {
          timer = setTimeout(() => {
            const owed = Math.min(timeoutMs, loopBlockedMs() - blocked) -
              extended;
            if (owed >= 1) {
              extended += owed;
              return arm(owed);
            }
            reject(this.unavailable(`${what} timed out after ${timeoutMs} ms`));
          }, ms);
        };
        arm(left);
      });
      return await Promise.race([fn(this.#client), timeout]);
    } catch (error) {
      this.#errors++;
      throw toStoreError(error, what, this.#target.secrets);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Disconnects. Later operations fail with
   * {@linkcode SessionStoreUnavailableError}.
   *
   * @returns Settles once the connection is closed.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const wake of [...this.#waiters]) wake();
    const client = this.#client;
    if (client.status === "ready") {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        client.quit().catch(() => {}),
        new Promise((r) => timer = setTimeout(r, 1000)),
      ]);
      clearTimeout(timer);
    }
    client.disconnect();
  }
}
