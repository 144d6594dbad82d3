/**
 * A session store in Redis shared by several server replicas: any replica
 * can serve any session, and a replica that dies loses nothing that was
 * written. Each session has a record (sealed session bytes, a version,
 * metadata, an idle TTL), a lease (one holder at a time, expiring unless
 * renewed) and fenced writes (refused unless the writer still holds the
 * lease and read the latest version).
 *
 * @example
 * ```ts ignore
 * import { redisSessionStore } from "./redis_store.ts";
 *
 * const store = redisSessionStore("redis://:secret@127.0.0.1:6379/0", {
 *   sessionSecret: Deno.env.get("SANDBOX_SESSION_SECRET"),
 * });
 * const token = crypto.randomUUID();
 * if (await store.waitForLease("abc", token, 30_000, { timeoutMs: 5000 })) {
 *   const record = await store.read("abc");
 *   // ... resume, run, save ...
 *   await store.releaseLease("abc", token);
 * }
 * await store.close();
 * ```
 *
 * @module
 */

import { RedisSessionStore } from "./_redis_store.ts";
import {
  checkStoreOptions,
  type RedisSessionStoreOptions,
} from "./_redis_types.ts";
import { parseRedisUrl } from "./_redis_url.ts";

export { RedisSessionStore } from "./_redis_store.ts";
export type {
  RedisSessionStoreOptions,
  RedisTlsOptions,
  StoredSession,
  StoredSessionInfo,
  StoreStats,
  WaitForLeaseOptions,
  WriteOptions,
} from "./_redis_types.ts";
export type { JsonValue, SessionMetadata } from "./result.ts";
export {
  type FenceReason,
  SessionFenceError,
  SessionStoreFullError,
  SessionStoreUnavailableError,
} from "./_redis_errors.ts";

/**
 * Creates a Redis session store. It connects on first use (so a server
 * can start while Redis is down) and reconnects by itself; every
 * operation is bounded in time and fails with
 * {@linkcode SessionStoreUnavailableError} when Redis is unreachable.
 *
 * @param url `redis://[user][:password]@host[:port][/db]`, or `rediss://`
 *   for TLS. The password is passed to Redis and never shown in messages.
 * @param options Key prefix, idle TTL, time bounds, limits, the HMAC key
 *   stored bytes are checked with, TLS settings.
 * @returns The store; `close()` it when done.
 * @throws {TypeError} When the URL or an option is invalid (the message
 *   shows the URL without its password).
 * @example
 * ```ts ignore
 * import { redisSessionStore } from "./redis_store.ts";
 *
 * const store = redisSessionStore("rediss://:pw@redis.internal:6380", {
 *   idleSeconds: 600,
 *   maxSessions: 10_000,
 * });
 * console.log(store.url); // rediss://:***@redis.internal:6380
 * await store.close();
 * ```
 */
export function redisSessionStore(
  url: string,
  options?: RedisSessionStoreOptions,
): RedisSessionStore {
  const target = parseRedisUrl(url);
  const { settings, secret } = checkStoreOptions(options);
  return new RedisSessionStore(target, settings, secret);
}
