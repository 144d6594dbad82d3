/**
 * The Lua scripts of the Redis session store. Each runs atomically in
 * Redis, so a check and the change it guards cannot be split by another
 * replica: compare-and-renew, compare-and-delete of a lease, and the fenced
 * write (lease held and version matching, then version + 1).
 *
 * Times come from Redis (`TIME`), so replicas' clock skew does not matter.
 *
 * @module
 */

import { createHash } from "node:crypto";

/** A script and its SHA-1 (for EVALSHA). */
export interface LuaScript {
  /** Lua source. */
  source: string;
  /** Its SHA-1, hex. */
  sha: string;
}

function script(source: string): LuaScript {
  return { source, sha: createHash("sha1").update(source).digest("hex") };
}

const NOW_MS =
  "local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)";

/** KEYS: lease. ARGV: token, ttlMs. Returns 1 when renewed. */
export const RENEW: LuaScript = script(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0`);

/** KEYS: lease. ARGV: token. Returns 1 when released. */
export const RELEASE: LuaScript = script(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`);

/**
 * KEYS: record, lease, index. ARGV: token, expectedVersion, bytes, meta
 * JSON, idle ttlMs, maxSessions (0: none), id.
 * Returns {1, "ok", newVersion} or {0, reason, currentVersion}.
 */
export const WRITE: LuaScript = script(`
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return {0, 'lease', -1}
end
local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if v ~= tonumber(ARGV[2]) then
  return {0, 'version', v}
end
${NOW_MS}
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', string.format('%d', now))
if v == 0 then
  local max = tonumber(ARGV[6])
  if max > 0 and redis.call('ZCARD', KEYS[3]) >= max then
    return {0, 'full', 0}
  end
  redis.call('HSET', KEYS[1], 'createdAt', string.format('%d', now))
end
redis.call('HSET', KEYS[1], 'bytes', ARGV[3], 'meta', ARGV[4],
  'version', v + 1, 'updatedAt', string.format('%d', now),
  'size', string.len(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[3], string.format('%d', now + tonumber(ARGV[5])), ARGV[7])
return {1, 'ok', v + 1}`);

/** KEYS: record, index. ARGV: idle ttlMs, id. Returns 1 when it exists. */
export const TOUCH: LuaScript = script(`
if redis.call('PEXPIRE', KEYS[1], ARGV[1]) == 1 then
  ${NOW_MS}
  redis.call('ZADD', KEYS[2], string.format('%d', now + tonumber(ARGV[1])), ARGV[2])
  return 1
end
return 0`);

/** KEYS: record, lease, index. ARGV: id. Returns 1 when a record was deleted. */
export const DELETE: LuaScript = script(`
local n = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return n`);

/** KEYS: index. Returns the number of unexpired sessions. */
export const COUNT: LuaScript = script(`
${NOW_MS}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
return redis.call('ZCARD', KEYS[1])`);

/** The client calls a script needs (ioredis' `evalsha`/`eval`). */
export interface ScriptClient {
  evalsha(sha: string, numKeys: number, ...args: unknown[]): Promise<unknown>;
  eval(source: string, numKeys: number, ...args: unknown[]): Promise<unknown>;
}

/**
 * Runs a script by its SHA-1, sending the source when Redis does not have
 * it cached (first use, or after a Redis restart).
 *
 * @param client The Redis client.
 * @param lua The script.
 * @param keys Its keys.
 * @param args Its arguments.
 * @returns Redis' reply.
 */
export async function runScript(
  client: ScriptClient,
  lua: LuaScript,
  keys: string[],
  args: unknown[],
): Promise<unknown> {
  try {
    return await client.evalsha(lua.sha, keys.length, ...keys, ...args);
  } catch (error) {
    if (!(error instanceof Error) || !error.message.startsWith("NOSCRIPT")) {
      throw error;
    }
    return await client.eval(lua.source, keys.length, ...keys, ...args);
  }
}
