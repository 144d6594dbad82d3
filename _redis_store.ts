/**
 * The Redis session store: session records (sealed session bytes, a
 * version, metadata, an idle TTL), leases with owner tokens, fenced writes,
 * listing, content-addressed blobs, and time-bounded operations.
 *
 * Keys (under `prefix`): `s:ID` a hash (bytes, meta, version, createdAt,
 * updatedAt, size) with the idle TTL; `l:ID` the lease (owner token, PX
 * TTL); `index` a sorted set of ids by expiry time (for the size limit);
 * `b:SHA256` a blob.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import { SessionError, unsealSession } from "./_session_bytes.ts";
import { RedisConnection } from "./_redis_client.ts";
import { SessionFenceError, SessionStoreFullError } from "./_redis_errors.ts";
import type { RedisTarget } from "./_redis_url.ts";
import * as lua from "./_redis_lua.ts";
import {
  checkId,
  checkSha256,
  checkToken,
  checkTtl,
  checkWrite,
  isId,
  isoTime,
  parseMetadata,
  type RedisSessionStoreSettings,
  sleep,
  type StoredSession,
  type StoredSessionInfo,
  type StoreStats,
  type WaitForLeaseOptions,
  type WriteOptions,
} from "./_redis_types.ts";

/** The slowest transfer rate bulk time bounds allow for (a loaded host). */
const BULK_BYTES_PER_SECOND = 2 * 2 ** 20;

/** A session store shared by server replicas, kept in Redis. */
export class RedisSessionStore {
  #conn: RedisConnection;
  /** Blobs (tens of MB) go over their own connection: not ahead of leases. */
  #blobConn: RedisConnection | undefined;
  #target: RedisTarget;
  #settings: RedisSessionStoreSettings;
  #secret: Uint8Array | undefined;
  #waits = { leaseWaits: 0, leaseWaitTimeouts: 0, leaseWaitMs: 0 };
  #fenceRefusals = 0;

  /**
   * Use {@linkcode redisSessionStore} from `redis_store.ts` instead.
   *
   * @param target Where to connect.
   * @param settings Checked settings.
   * @param secret HMAC key the stored bytes are checked with.
   */
  constructor(
    target: RedisTarget,
    settings: RedisSessionStoreSettings,
    secret: Uint8Array | undefined,
  ) {
    this.#settings = settings;
    this.#secret = secret;
    this.#target = target;
    this.#conn = new RedisConnection(target, settings);
  }

  #blobs(): RedisConnection {
    return this.#blobConn ??= new RedisConnection(
      this.#target,
      this.#settings,
    );
  }

  /** The Redis URL, without its password. */
  get url(): string {
    return this.#conn.url;
  }

  /** The idle TTL of session records, in seconds. */
  get idleSeconds(): number {
    return this.#settings.idleSeconds;
  }

  /**
   * Counters for metrics, and whether the client is connected now.
   *
   * @returns A snapshot of the counters.
   */
  stats(): StoreStats {
    return {
      operations: this.#conn.operations + (this.#blobConn?.operations ?? 0),
      errors: this.#conn.errors + (this.#blobConn?.errors ?? 0),
      ...this.#waits,
      fenceRefusals: this.#fenceRefusals,
      reachable: this.#conn.reachable,
    };
  }

  /** The bound of an operation moving `bytes`: more time for more bytes. */
  #bulkTimeout(bytes: number): number {
    const s = this.#settings;
    const extra = Math.ceil((bytes / BULK_BYTES_PER_SECOND) * 1000);
    return Math.min(
      s.operationTimeoutMs + extra,
      Math.max(s.blobTimeoutMs, s.operationTimeoutMs),
    );
  }

  #key(kind: "s" | "l" | "b", name: string): string {
    return `${this.#settings.prefix}${kind}:${name}`;
  }

  /**
   * Checks that Redis answers, within the operation time bound (for
   * health checks). Never throws.
   *
   * @returns True when Redis answered PING.
   */
  async ping(): Promise<boolean> {
    try {
      return (await this.#conn.run("ping", (c) => c.ping())) === "PONG";
    } catch {
      return false;
    }
  }

  /**
   * Takes a session's lease if nobody holds it (`SET NX PX`).
   *
   * @param id The session's id.
   * @param ownerToken A random token naming this holder.
   * @param ttlMs How long the lease lasts unless renewed.
   * @returns True when taken, false when someone else holds it.
   * @throws {SessionStoreUnavailableError} When Redis fails or is too slow.
   */
  async acquireLease(
    id: string,
    ownerToken: string,
    ttlMs: number,
  ): Promise<boolean> {
    checkId(id);
    checkToken(ownerToken);
    checkTtl("ttlMs", ttlMs);
    const key = this.#key("l", id);
    const reply = await this.#conn.run(
      "acquireLease",
      (c) => c.set(key, ownerToken, "PX", ttlMs, "NX"),
    );
    return reply === "OK";
  }

  /**
   * Extends a lease this holder still has (compare-and-expire).
   *
   * @param id The session's id.
   * @param ownerToken The token the lease was taken with.
   * @param ttlMs The new time to live.
   * @returns False when the lease expired or belongs to someone else.
   * @throws {SessionStoreUnavailableError} When Redis fails or is too slow.
   */
  async renewLease(
    id: string,
    ownerToken: string,
    ttlMs: number,
  ): Promise<boolean> {
    checkId(id);
    checkToken(ownerToken);
    checkTtl("ttlMs", ttlMs);
    const keys = [this.#key("l", id)];
    const reply = await this.#conn.run(
      "renewLease",
      (c) => lua.runScript(c, lua.RENEW, keys, [ownerToken, ttlMs]),
    );
    return reply === 1;
  }

  /**
   * Gives a lease back if this holder still has it (compare-and-delete).
   *
   * @param id The session's id.
   * @param ownerToken The token the lease was taken with.
   * @returns False when it was no longer held by this token.
   * @throws {SessionStoreUnavailableError} When Redis fails or is too slow.
   */
  async releaseLease(id: string, ownerToken: string): Promise<boolean> {
    checkId(id);
    checkToken(ownerToken);
    const keys = [this.#key("l", id)];
    const reply = await this.#conn.run(
      "releaseLease",
      (c) => lua.runScript(c, lua.RELEASE, keys, [ownerToken]),
    );
    return reply === 1;
  }

  /**
   * Takes a session's lease, waiting (polling with backoff) while another
   * holder has it, until the deadline.
   *
   * @param id The session's id.
   * @param ownerToken A random token naming this holder.
   * @param ttlMs How long the lease lasts unless renewed.
   * @param options The deadline and an abort signal.
   * @returns True when taken, false when the deadline passed first.
   * @throws {SessionStoreUnavailableError} When Redis fails or is too slow.
   * @throws {DOMException} `AbortError` when the signal aborts.
   */
  async waitForLease(
    id: string,
    ownerToken: string,
    ttlMs: number,
    options: WaitForLeaseOptions,
  ): Promise<boolean> {
    const deadline = options.deadline ??
      Date.now() + (options.timeoutMs ?? this.#settings.operationTimeoutMs);
    if (!Number.isFinite(deadline)) {
      throw new TypeError(
        "Invalid waitForLease options: expected a finite deadline (epoch ms) or timeoutMs",
      );
    }
    options.signal?.throwIfAborted();
    if (await this.acquireLease(id, ownerToken, ttlMs)) return true;
    this.#waits.leaseWaits++;
    const started = Date.now();
    let delay = 5;
    try {
      while (true) {
        const left = deadline - Date.now();
        if (left <= 0) {
          this.#waits.leaseWaitTimeouts++;
          return false;
        }
        await sleep(
          Math.min(left, delay * (0.5 + Math.random())),
          options.signal,
        );
        if (await this.acquireLease(id, ownerToken, ttlMs)) return true;
        delay = Math.min(delay * 2, 100);
      }
    } finally {
      this.#waits.leaseWaitMs += Date.now() - started;
    }
  }

  /**
   * Reads a session's latest record and checks its checksum or HMAC.
   *
   * @param id The session's id.
   * @returns The record, or null when there is none (never created,
   *   deleted, or expired).
   * @throws {SessionError} When the stored bytes or metadata were altered
   *   (kind `"session"`), or are too large.
   * @throws {SessionStoreUnavailableError} When Redis fails or is too slow.
   */
  async read(id: string): Promise<StoredSession | null> {
    checkId(id);
    const key = this.#key("s", id);
    // The size first, so the bound of the bulk read can grow with it.
    const size = await this.#conn.run("read", (c) => c.hget(key, "size"));
    if (size === null) return null;
    const fields = await this.#conn.run(
      "read",
      (c) =>
        c.hmgetBuffer(
          key,
          "bytes",
          "meta",
          "version",
          "createdAt",
          "updatedAt",
        ),
      this.#bulkTimeout(Number(size) || 0),
    );
    const [bytes, meta, version, createdAt, updatedAt] = fields;
    if (bytes === null && version === null) return null;
    const sessionMetadata = parseMetadata(bytes, meta, this.#settings);
    const sessionBytes = new Uint8Array(bytes!);
    if (this.#settings.verify) {
      await unsealSession(sessionBytes, sessionMetadata, this.#secret);
    }
    const stored = Number(version?.toString());
    if (!Number.isSafeInteger(stored) || stored < 1) {
      throw new SessionError(
        "Invalid session record in the store: malformed version",
      );
    }
    return {
      id,
      sessionBytes,
      sessionMetadata,
      version: stored,
      createdAt: isoTime(createdAt?.toString()),
      updatedAt: isoTime(updatedAt?.toString()),
    };
  }

  /**
   * Reads only a session's version: a replica that kept the live child
   * checks it after taking the lease, and restores only when it moved on.
   *
   * @param id The session's id.
   * @returns The version, or null when there is no record.
   * @throws {SessionStoreUnavailableError} When Redis fails or is too slow.
   */
  async version(id: string): Promise<number | null> {
    checkId(id);
    const key = this.#key("s", id);
    const v = await this.#conn.run("version", (c) => c.hget(key, "version"));
    if (v === null) return null;
    const n = Number(v);
    return Number.isSafeInteger(n) && n >= 1 ? n : null;
  }

  /**
   * Writes a session's new bytes if the caller still holds its lease and
   * the stored version is `expectedVersion` (0 to create), in one atomic
   * script; the version becomes `expectedVersion + 1` and the idle TTL
   * starts again.
   *
   * @param id The session's id.
   * @param sessionBytes Sealed session bytes (from `session.save()`).
   * @param options The expected version, lease token and metadata.
   * @returns The new version.
   * @throws {SessionFenceError} When the lease was lost or the version
   *   moved on: drop the local copy of the session.
   * @throws {SessionStoreFullError} When creating beyond `maxSessions`.
   * @throws {RangeError} When the bytes exceed `maxSessionBytes`.
   * @throws {SessionStoreUnavailableError} When Redis fails or is too slow;
   *   the write may or may not have happened.
   */
  async write(
    id: string,
    sessionBytes: Uint8Array,
    options: WriteOptions,
  ): Promise<number> {
    checkId(id);
    const meta = checkWrite(sessionBytes, options, this.#settings);
    const s = this.#settings;
    const keys = [this.#key("s", id), this.#key("l", id), `${s.prefix}index`];
    const data = Buffer.from(
      sessionBytes.buffer,
      sessionBytes.byteOffset,
      sessionBytes.length,
    );
    const args = [
      options.leaseToken,
      options.expectedVersion,
      data,
      meta,
      s.idleSeconds * 1000,
      s.maxSessions,
      id,
    ];
    const reply = await this.#conn.run(
      "write",
      (c) => lua.runScript(c, lua.WRITE, keys, args),
      this.#bulkTimeout(data.length),
    ) as [number, string, number];
    if (reply[0] === 1) return reply[2];
    if (reply[1] === "full") throw new SessionStoreFullError(s.maxSessions);
    this.#fenceRefusals++;
    const reason = reply[1] === "lease" ? "lease" : "version";
    throw new SessionFenceError(
      id,
      reason,
      reason === "lease" ? null : reply[2],
    );
  }

  /**
   * Restarts a session's idle TTL without writing it.
   *
   * @param id The session's id.
   * @returns False when there is no such record.
   * @throws {SessionStoreUnavailableError} When Redis fails or is too slow.
   */
  async touch(id: string): Promise<boolean> {
    checkId(id);
    const keys = [this.#key("s", id), `${this.#settings.prefix}index`];
    const ttl = this.#settings.idleSeconds * 1000;
    const reply = await this.#conn.run(
      "touch",
      (c) => lua.runScript(c, lua.TOUCH, keys, [ttl, id]),
    );
    return reply === 1;
  }

  /**
   * Deletes a session's record and lease (a holder's next write is then
   * refused).
   *
   * @param id The session's id.
   * @returns False when there was no record.
   * @throws {SessionStoreUnavailableError} When Redis fails or is too slow.
   */
  async delete(id: string): Promise<boolean> {
    checkId(id);
    const keys = [
      this.#key("s", id),
      this.#key("l", id),
      `${this.#settings.prefix}index`,
    ];
    const reply = await this.#conn.run(
      "delete",
      (c) => lua.runScript(c, lua.DELETE, keys, [id]),
    );
    return reply === 1;
  }

  /**
   * Counts the unexpired sessions of the whole group.
   *
   * @returns The count.
   * @throws {SessionStoreUnavailableError} When Redis fails or is too slow.
   */
  async count(): Promise<number> {
    const keys = [`${this.#settings.prefix}index`];
    return Number(
      await this.#conn.run(
        "count",
        (c) => lua.runScript(c, lua.COUNT, keys, []),
      ),
    );
  }

  /**
   * Lists the sessions of the whole group (SCAN over the key prefix).
   *
   * @param limit At most this many.
   * @returns One entry per session, in no particular order.
   * @throws {SessionStoreUnavailableError} When Redis fails or is too slow.
   */
  list(limit = 10_000): Promise<StoredSessionInfo[]> {
    const match = `${this.#settings.prefix}s:*`;
    const skip = this.#settings.prefix.length + 2;
    return this.#conn.run("list", async (c) => {
      const out: StoredSessionInfo[] = [];
      let cursor = "0";
      do {
        const [next, keys] = await c.scan(cursor, "MATCH", match, "COUNT", 200);
        cursor = next;
        if (keys.length === 0) continue;
        const batch = c.pipeline();
        for (const key of keys) {
          batch.hmget(key, "version", "size", "createdAt", "updatedAt");
          batch.pttl(key);
          batch.exists(this.#key("l", key.slice(skip)));
        }
        const replies = (await batch.exec()) ?? [];
        keys.forEach((key, i) => {
          const [f, ttl, leased] = replies.slice(3 * i, 3 * i + 3).map((r) =>
            r[1]
          );
          const [version, size, created, updated] =
            (f ?? []) as (string | null)[];
          const id = key.slice(skip);
          const n = Number(version);
          // Anything odd under the prefix is left out, never thrown on.
          if (!isId(id) || !Number.isSafeInteger(n) || n < 1) return;
          if (out.length >= limit) return;
          out.push({
            id,
            version: n,
            sizeBytes: Number(size) || 0,
            createdAt: isoTime(created),
            updatedAt: isoTime(updated),
            expiresInMs: Number(ttl) || 0,
            leased: leased === 1,
          });
        });
      } while (cursor !== "0" && out.length < limit);
      return out;
    });
  }

  /**
   * Stores a content-addressed blob (a base snapshot) once: a second write
   * of the same hash leaves the first in place.
   *
   * @param sha256 The bytes' SHA-256, lowercase hex.
   * @param bytes The bytes.
   * @returns True when written now, false when it was already there.
   * @throws {TypeError} When the hash is malformed or does not match.
   * @throws {SessionStoreUnavailableError} When Redis fails or is too slow.
   */
  async putBlob(sha256: string, bytes: Uint8Array): Promise<boolean> {
    checkSha256(sha256);
    if (!(bytes instanceof Uint8Array)) {
      throw new TypeError("Invalid blob: expected a Uint8Array");
    }
    const actual = createHash("sha256").update(bytes).digest("hex");
    if (actual !== sha256) {
      throw new TypeError(
        `Invalid blob: its SHA-256 is ${actual}, not the ${sha256} it was stored under`,
      );
    }
    const key = this.#key("b", sha256);
    const data = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
    const blobs = this.#blobs();
    if (await blobs.run("putBlob", (c) => c.exists(key)) === 1) return false;
    const reply = await blobs.run(
      "putBlob",
      (c) => c.set(key, data, "NX"),
      this.#settings.blobTimeoutMs,
    );
    return reply === "OK";
  }

  /**
   * Reads a blob and checks it against its hash.
   *
   * @param sha256 The bytes' SHA-256, lowercase hex.
   * @returns The bytes, or null when there is no such blob.
   * @throws {SessionError} When the stored bytes do not match the hash.
   * @throws {SessionStoreUnavailableError} When Redis fails or is too slow.
   */
  async getBlob(sha256: string): Promise<Uint8Array | null> {
    checkSha256(sha256);
    const key = this.#key("b", sha256);
    const data = await this.#blobs().run(
      "getBlob",
      (c) => c.getBuffer(key),
      this.#settings.blobTimeoutMs,
    );
    if (data === null) return null;
    if (createHash("sha256").update(data).digest("hex") !== sha256) {
      throw new SessionError(
        `Invalid blob in the session store: its bytes do not match their SHA-256 ${sha256} (corrupted or tampered)`,
      );
    }
    return new Uint8Array(data);
  }

  /**
   * Disconnects. Later operations fail with
   * {@linkcode SessionStoreUnavailableError}.
   *
   * @returns Settles once the connection is closed.
   */
  async close(): Promise<void> {
    await Promise.all([this.#conn.close(), this.#blobConn?.close()]);
  }

  /**
   * Runs `await using` cleanup.
   *
   * @returns Settles once closed.
   */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
