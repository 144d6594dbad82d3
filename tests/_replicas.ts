/**
 * Helpers of the replica tests and the replicas benchmark: `server.ts`
 * processes sharing one Redis (each with its own cacheDir and free port),
 * and direct looks at the Redis keys.
 *
 * @module
 */

import assert from "node:assert/strict";
import { Redis } from "ioredis";
import { childrenOf, isRunning } from "./_fixtures/procs.ts";
import { eventually } from "./_helpers.ts";
import { readUntil, SERVER_TS, serverEnv } from "./_http_helpers.ts";
import type { TestRedis } from "./_redis.ts";

/** The session secret every replica of the tests shares. */
export const REPLICA_SECRET = "replica-test-secret-0123456789";

/** One server.ts process using the store. */
export class Replica {
  /** The process. */
  readonly child: Deno.ChildProcess;
  /** Its whole stderr, once it ended. */
  readonly stderr: Promise<string>;
  /** Its own cache folder (removed by `stop()`). */
  readonly cacheDir: string;
  /** Its base URL. */
  base = "";
  /** Every child process seen under it (checked gone by `stop()`). */
  children: number[] = [];

  /**
   * @param child The process.
   * @param cacheDir Its cache folder.
   */
  constructor(child: Deno.ChildProcess, cacheDir: string) {
    this.child = child;
    this.cacheDir = cacheDir;
    this.stderr = new Response(child.stderr).text();
  }

  /**
   * Starts a replica and waits for its listening line.
   *
   * @param url The Redis URL.
   * @param extra More flags.
   * @returns The replica.
   */
  static async start(url: string, extra: string[] = []): Promise<Replica> {
    const cacheDir = await Deno.makeTempDir({ prefix: "sandbox-replica-" });
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        ...["run", "-A", SERVER_TS, "--port", "0", "--pool-size", "0"],
        ...["--cache-dir", cacheDir, "--timeout", "120"],
        ...["--session-store", url, ...extra],
      ],
      env: serverEnv({ SANDBOX_SESSION_SECRET: REPLICA_SECRET }),
      clearEnv: true,
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const replica = new Replica(child, cacheDir);
    const m = await readUntil(
      child.stdout,
      /listening on http:\/\/127\.0\.0\.1:(\d+)\//,
    );
    replica.base = `http://127.0.0.1:${m[1]}`;
    return replica;
  }

  /**
   * POSTs JSON.
   *
   * @param path The path.
   * @param body The body.
   * @returns The response.
   */
  async post(path: string, body?: unknown): Promise<Response> {
    return await fetch(`${this.base}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  }

  /**
   * Creates a session.
   *
   * @returns Its id.
   */
  async create(): Promise<string> {
    const r = await this.post("/v1/sessions");
    const text = await r.text();
    assert.equal(r.status, 201, text);
    return JSON.parse(text).id;
  }

  /**
   * Runs one step of a session; asserts 200.
   *
   * @param id The session.
   * @param code Python source.
   * @returns The result.
   */
  async step(id: string, code: string): Promise<Record<string, unknown>> {
    const r = await this.post(`/v1/sessions/${id}/execute`, { code });
    const text = await r.text();
    assert.equal(r.status, 200, text);
    this.children = [
      ...new Set([...this.children, ...childrenOf(this.child.pid)]),
    ];
    return JSON.parse(text);
  }

  /**
   * DELETEs a session; asserts 204.
   *
   * @param id The session.
   */
  async delete(id: string): Promise<void> {
    const r = await fetch(`${this.base}/v1/sessions/${id}`, {
      method: "DELETE",
    });
    assert.equal(r.status, 204, await r.text());
  }

  /**
   * GETs JSON.
   *
   * @param path The path.
   * @returns The status and the body's fields.
   */
  async get(path: string): Promise<Record<string, unknown>> {
    const r = await fetch(`${this.base}${path}`);
    return { status: r.status, ...(await r.json()) };
  }

  /** SIGTERM, exit 0, every child gone, folder removed. */
  async stop(): Promise<void> {
    this.children.push(...childrenOf(this.child.pid));
    try {
      this.child.kill("SIGTERM");
    } catch {
      // Already gone.
    }
    const status = await this.child.status;
    await this.child.stdout.cancel().catch(() => {});
    const stderr = await this.stderr;
    await eventually(
      "every child of the replica to end",
      () => this.children.every((pid) => !isRunning(pid)),
      20,
    );
    await Deno.remove(this.cacheDir, { recursive: true });
    if (status.signal !== "SIGKILL") assert.equal(status.code, 0, stderr);
    assert.doesNotMatch(stderr, new RegExp(REPLICA_SECRET));
  }
}

/**
 * Asserts a step succeeded with a result.
 *
 * @param step The step's answer.
 * @param result The expected result.
 */
export function ok(step: Record<string, unknown>, result: unknown): void {
  assert.equal(step.status, "success", JSON.stringify(step));
  assert.deepEqual(step.result, result);
}

/**
 * Runs `fn` with a direct client of a test Redis.
 *
 * @param redis The instance.
 * @param fn What to do.
 * @returns What `fn` returned.
 */
export async function withRedisClient<T>(
  redis: TestRedis,
  fn: (c: Redis) => Promise<T>,
): Promise<T> {
  const c = new Redis(redis.port, "127.0.0.1", {
    lazyConnect: true,
    ...(redis.url.includes("@") ? { password: passwordOf(redis.url) } : {}),
  });
  try {
    await c.connect();
    return await fn(c);
  } finally {
    c.disconnect();
  }
}

function passwordOf(url: string): string {
  return decodeURIComponent(new URL(url).password);
}

/**
 * The keys matching a pattern.
 *
 * @param redis The instance.
 * @param pattern E.g. `pysb:l:*`.
 * @returns The keys, sorted.
 */
export async function redisKeys(
  redis: TestRedis,
  pattern: string,
): Promise<string[]> {
  return (await withRedisClient(redis, (c) => c.keys(pattern))).sort();
}

/**
 * The lease keys.
 *
 * @param redis The instance.
 * @returns The keys.
 */
export function leaseKeys(redis: TestRedis): Promise<string[]> {
  return redisKeys(redis, "pysb:l:*");
}

/**
 * The stored version of a session (0 when absent).
 *
 * @param redis The instance.
 * @param id The session.
 * @returns The version.
 */
export async function storedVersion(
  redis: TestRedis,
  id: string,
): Promise<number> {
  return Number(
    await withRedisClient(redis, (c) => c.hget(`pysb:s:${id}`, "version")),
  );
}
