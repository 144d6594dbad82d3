/**
 * Options, records and checks of the Redis session store.
 *
 * @module
 */

import type { Buffer } from "node:buffer";
import { SessionError } from "./_session_bytes.ts";
import type { SessionMetadata } from "./result.ts";

/** TLS settings for `rediss://` URLs (passed to `node:tls`). */
export interface RedisTlsOptions {
  /** Certificate authorities to trust (PEM). @default the system's */
  ca?: string | Uint8Array | (string | Uint8Array)[];
  /** Client certificate (PEM), for mutual TLS. @default none */
  cert?: string | Uint8Array;
  /** Client key (PEM), for mutual TLS. @default none */
  key?: string | Uint8Array;
  /** Server name to check the certificate against. @default the URL's host */
  servername?: string;
}

/** Options of `redisSessionStore()`. */
export interface RedisSessionStoreOptions {
  /**
   * Prefix of every key (letters, digits, `:_.-`), so several groups can
   * share one Redis.
   * @default "pysb:"
   */
  prefix?: string;
  /** Records unused this many seconds expire (Redis TTL). @default 600 */
  idleSeconds?: number;
  /**
   * Time bound of each operation, in milliseconds (waiting for the
   * connection included). Reads and writes of session records get 1 s
   * more per 2 MiB of bytes, up to `blobTimeoutMs`.
   * @default 2000
   */
  operationTimeoutMs?: number;
  /** Time bound of a connection attempt. @default operationTimeoutMs */
  connectTimeoutMs?: number;
  /**
   * Time bound of blob operations, and the most a record read or write
   * may take.
   * @default 30000
   */
  blobTimeoutMs?: number;
  /** Sessions the store holds at most (the whole group); 0: no limit. @default 0 */
  maxSessions?: number;
  /** Size limit of one session's bytes. @default 268435456 (256 MiB) */
  maxSessionBytes?: number;
  /**
   * The HMAC key stored bytes are checked with on `read()`: the same
   * `sessionSecret` as the sandbox's (at least 16 bytes).
   * @default none (bytes carry a SHA-256 checksum)
   */
  sessionSecret?: string | Uint8Array;
  /** Check the checksum or HMAC of bytes on `read()`. @default true */
  verify?: boolean;
  /** TLS settings for `rediss://`. @default none */
  tls?: RedisTlsOptions;
}

/** Checked options. */
export interface RedisSessionStoreSettings {
  prefix: string;
  idleSeconds: number;
  operationTimeoutMs: number;
  connectTimeoutMs: number;
  blobTimeoutMs: number;
  maxSessions: number;
  maxSessionBytes: number;
  verify: boolean;
  tls: RedisTlsOptions;
}

/** Options of `write()`. */
export interface WriteOptions {
  /** The version the caller read (0 to create the record). */
  expectedVersion: number;
  /** The token the caller's lease was taken with. */
  leaseToken: string;
  /** The session's metadata (from `session.save()`). */
  metadata: SessionMetadata;
}

/** Options of `waitForLease()`: a deadline or a timeout. */
export interface WaitForLeaseOptions {
  /** Give up at this time (epoch milliseconds). @default now + timeoutMs */
  deadline?: number;
  /** Give up after this many milliseconds. @default operationTimeoutMs */
  timeoutMs?: number;
  /** Stops waiting (rejects with an AbortError). @default none */
  signal?: AbortSignal;
}

/** A session's latest record. */
export interface StoredSession {
  /** The session's id. */
  id: string;
  /** Its sealed session bytes. */
  sessionBytes: Uint8Array;
  /** Their metadata. */
  sessionMetadata: SessionMetadata;
  /** The record's version (1 after creation, +1 per write). */
  version: number;
  /** When the record was created (ISO 8601, Redis clock). */
  createdAt: string;
  /** When it was last written (ISO 8601, Redis clock). */
  updatedAt: string;
}

/** A session as listed. */
export interface StoredSessionInfo {
  /** The session's id. */
  id: string;
  /** The record's version. */
  version: number;
  /** Size of its bytes. */
  sizeBytes: number;
  /** When it was created (ISO 8601). */
  createdAt: string;
  /** When it was last written (ISO 8601). */
  updatedAt: string;
  /** Milliseconds until it expires if unused. */
  expiresInMs: number;
  /** Whether a replica holds its lease now. */
  leased: boolean;
}

/** Counters of a store, for metrics. */
export interface StoreStats {
  /** Operations started. */
  operations: number;
  /** Operations that failed (Redis unreachable, failing or too slow). */
  errors: number;
  /** `waitForLease()` calls that found the lease held and had to wait. */
  leaseWaits: number;
  /** Waits that reached their deadline. */
  leaseWaitTimeouts: number;
  /** Milliseconds spent waiting for leases, in total. */
  leaseWaitMs: number;
  /** Writes refused by fencing (lease lost or version moved on). */
  fenceRefusals: number;
  /** Whether the client is connected now. */
  reachable: boolean;
}

const ID = /^[A-Za-z0-9_-]{1,128}$/;
const SHA256 = /^[0-9a-f]{64}$/;
const PREFIX = /^[A-Za-z0-9:_.-]{1,64}$/;

/**
 * @param id A text.
 * @returns Whether it is a valid session id.
 */
export function isId(id: unknown): id is string {
  return typeof id === "string" && ID.test(id);
}

/**
 * @param ms Epoch milliseconds as stored (text), maybe altered.
 * @returns ISO 8601, or the epoch when the value is not a time.
 */
export function isoTime(ms: string | null | undefined): string {
  const date = new Date(Number(ms));
  return Number.isNaN(date.getTime())
    ? new Date(0).toISOString()
    : date.toISOString();
}

/**
 * @param id A session id.
 * @throws {TypeError} Unless 1-128 letters, digits, `_` or `-`.
 */
export function checkId(id: unknown): asserts id is string {
  if (typeof id !== "string" || !ID.test(id)) {
    throw new TypeError(
      "Invalid session id: expected 1-128 letters, digits, '_' or '-'",
    );
  }
}

/**
 * @param token A lease owner token.
 * @throws {TypeError} Unless 1-128 letters, digits, `_` or `-`.
 */
export function checkToken(token: unknown): asserts token is string {
  if (typeof token !== "string" || !ID.test(token)) {
    throw new TypeError(
      "Invalid lease token: expected 1-128 letters, digits, '_' or '-' (crypto.randomUUID() is fine)",
    );
  }
}

/**
 * @param sha256 A blob hash.
 * @throws {TypeError} Unless 64 lowercase hex digits.
 */
export function checkSha256(sha256: unknown): asserts sha256 is string {
  if (typeof sha256 !== "string" || !SHA256.test(sha256)) {
    throw new TypeError(
      "Invalid blob hash: expected a SHA-256 as 64 lowercase hex digits",
    );
  }
}

/**
 * @param name The option's name.
 * @param value Milliseconds.
 * @throws {TypeError} Unless an integer from 1 to 2^31 - 1.
 */
export function checkTtl(
  name: string,
  value: unknown,
): asserts value is number {
  if (
    !Number.isInteger(value) || (value as number) < 1 ||
    (value as number) > 2 ** 31 - 1
  ) {
    throw new TypeError(
      `Invalid ${name}: expected an integer number of milliseconds from 1 to 2147483647, got ${value}`,
    );
  }
}

/**
 * Checks the arguments of `write()`.
 *
 * @param bytes The session bytes.
 * @param options The write options.
 * @param settings The store's settings.
 * @returns The metadata as JSON.
 * @throws {TypeError} For a wrong type or a malformed option.
 * @throws {RangeError} When the bytes exceed `maxSessionBytes`.
 */
export function checkWrite(
  bytes: unknown,
  options: WriteOptions | undefined,
  settings: RedisSessionStoreSettings,
): string {
  if (typeof options !== "object" || options === null) {
    throw new TypeError(
      "Invalid write options: expected { expectedVersion, leaseToken, metadata }",
    );
  }
  checkToken(options.leaseToken);
  const { expectedVersion, metadata } = options;
  if (!Number.isSafeInteger(expectedVersion) || expectedVersion < 0) {
    throw new TypeError(
      `Invalid expectedVersion: expected an integer >= 0 (0 to create), got ${expectedVersion}`,
    );
  }
  if (!(bytes instanceof Uint8Array)) {
    throw new TypeError("Invalid sessionBytes: expected a Uint8Array");
  }
  if (bytes.length > settings.maxSessionBytes) {
    throw new RangeError(
      `Session too large for the store: ${bytes.length} bytes, the limit (maxSessionBytes) is ${settings.maxSessionBytes}`,
    );
  }
  const meta = JSON.stringify(metadata ?? null);
  if (
    typeof metadata !== "object" || metadata === null || meta.length > 65536
  ) {
    throw new TypeError(
      "Invalid metadata: expected the session's metadata object (at most 64 KiB of JSON)",
    );
  }
  return meta;
}

function positiveInt(
  name: string,
  value: unknown,
  fallback: number,
  min = 1,
): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || (value as number) < min) {
    throw new TypeError(
      `Invalid ${name}: expected an integer >= ${min}, got ${value}`,
    );
  }
  return value as number;
}

/**
 * Checks the store's options.
 *
 * @param options What the caller passed.
 * @returns The settings and the HMAC key.
 * @throws {TypeError} For a wrong type or range, saying what is accepted.
 */
export function checkStoreOptions(
  options: RedisSessionStoreOptions = {},
): { settings: RedisSessionStoreSettings; secret: Uint8Array | undefined } {
  if (typeof options !== "object" || options === null) {
    throw new TypeError("Invalid session store options: expected an object");
  }
  const prefix = options.prefix ?? "pysb:";
  if (typeof prefix !== "string" || !PREFIX.test(prefix)) {
    throw new TypeError(
      "Invalid prefix: expected 1-64 letters, digits or ':_.-' (no glob characters)",
    );
  }
  const operationTimeoutMs = positiveInt(
    "operationTimeoutMs",
    options.operationTimeoutMs,
    2000,
  );
  let secret: Uint8Array | undefined;
  const s = options.sessionSecret;
  if (s !== undefined) {
    if (typeof s === "string") secret = new TextEncoder().encode(s);
    else if (s instanceof Uint8Array) secret = s.slice();
    else {throw new TypeError(
        "Invalid sessionSecret: expected a string or a Uint8Array",
      );}
    if (secret.length < 16) {
      throw new TypeError(
        `Invalid sessionSecret: expected at least 16 bytes, got ${secret.length}`,
      );
    }
  }
  if (options.verify !== undefined && typeof options.verify !== "boolean") {
    throw new TypeError("Invalid verify: expected a boolean");
  }
  if (
    options.tls !== undefined &&
    (typeof options.tls !== "object" || options.tls === null)
  ) {
    throw new TypeError("Invalid tls: expected an object of TLS settings");
  }
  return {
    settings: {
      prefix,
      idleSeconds: positiveInt("idleSeconds", options.idleSeconds, 600),
      operationTimeoutMs,
      connectTimeoutMs: positiveInt(
        "connectTimeoutMs",
        options.connectTimeoutMs,
        operationTimeoutMs,
      ),
      blobTimeoutMs: positiveInt(
        "blobTimeoutMs",
        options.blobTimeoutMs,
        30_000,
      ),
      maxSessions: positiveInt("maxSessions", options.maxSessions, 0, 0),
      maxSessionBytes: positiveInt(
        "maxSessionBytes",
        options.maxSessionBytes,
        256 * 2 ** 20,
      ),
      verify: options.verify ?? true,
      tls: { ...options.tls },
    },
    secret,
  };
}

/**
 * Parses a stored record's metadata (Redis content is checked like any
 * input: it may have been altered).
 *
 * @param bytes The stored bytes.
 * @param meta The stored metadata JSON.
 * @param settings The store's settings.
 * @returns The metadata.
 * @throws {SessionError} When either is missing, malformed or too large.
 */
export function parseMetadata(
  bytes: Buffer | null,
  meta: Buffer | null,
  settings: RedisSessionStoreSettings,
): SessionMetadata {
  if (bytes === null || meta === null) {
    throw new SessionError(
      "Invalid session record in the store: fields are missing",
    );
  }
  if (bytes.length > settings.maxSessionBytes || meta.length > 65536) {
    throw new SessionError(
      "Invalid session record in the store: it is too large",
    );
  }
  let value: unknown;
  try {
    value = JSON.parse(meta.toString("utf8"));
  } catch (error) {
    throw new SessionError(
      "Invalid session record in the store: unreadable metadata",
      {
        cause: error,
      },
    );
  }
  const m = value as Record<string, unknown> | null;
  if (
    typeof m !== "object" || m === null || Array.isArray(m) ||
    typeof m.pyodideVersion !== "string" || typeof m.createdAt !== "string" ||
    typeof m.updatedAt !== "string"
  ) {
    throw new SessionError(
      "Invalid session record in the store: malformed metadata",
    );
  }
  return m as SessionMetadata;
}

/**
 * Waits, or rejects when the signal aborts.
 *
 * @param ms Milliseconds.
 * @param signal Stops the wait.
 * @returns Settles after the time.
 */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = () => {
      signal?.removeEventListener("abort", abort);
      resolve();
    };
    const timer = setTimeout(done, ms);
    const abort = () => {
      clearTimeout(timer);
      reject(signal?.reason ?? new DOMException("Aborted", "AbortError"));
    };
    if (signal?.aborted) return abort();
    signal?.addEventListener("abort", abort, { once: true });
  });
}
