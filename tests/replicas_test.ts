// Issue 12: several server.ts replicas (separate processes, separate
// cacheDirs, free loopback ports) sharing sessions through one real Redis.
import assert from "node:assert/strict";
import { Redis } from "ioredis";
import { childrenOf, isRunning } from "./_fixtures/procs.ts";
import { eventually } from "./_helpers.ts";
import {
  readUntil,
  SERVER_TS,
  serverEnv,
  withIdleHandler,
} from "./_http_helpers.ts";
import { createHandler } from "../handler.ts";
import { redisSessionStore } from "../server.ts";
import { liveRedisServers, startRedis, type TestRedis } from "./_redis.ts";

const SECRET = "replica-test-secret-0123456789";

/** One server.ts process using the store. */
class Replica {
  readonly child: Deno.ChildProcess;
  readonly stderr: Promise<string>;
  readonly cacheDir: string;
  base = "";
  children: number[] = [];

  constructor(child: Deno.ChildProcess, cacheDir: string) {
    this.child = child;
    this.cacheDir = cacheDir;
    this.stderr = new Response(child.stderr).text();
  }

  static async start(url: string, extra: string[] = []): Promise<Replica> {
    const cacheDir = await Deno.makeTempDir({ prefix: "sandbox-replica-" });
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        ...["run", "-A", SERVER_TS, "--port", "0", "--pool-size", "0"],
        ...["--cache-dir", cacheDir, "--timeout", "120"],
        ...["--session-store", url, ...extra],
      ],
      env: serverEnv({ SANDBOX_SESSION_SECRET: SECRET }),
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

  async post(path: string, body?: unknown): Promise<Response> {
    return await fetch(`${this.base}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  }

  async step(id: string, code: string): Promise<Record<string, unknown>> {
    const r = await this.post(`/v1/sessions/${id}/execute`, { code });
    const text = await r.text();
    assert.equal(r.status, 200, text);
    this.children = [
      ...new Set([...this.children, ...childrenOf(this.child.pid)]),
    ];
    return JSON.parse(text);
  }

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
    assert.doesNotMatch(stderr, new RegExp(SECRET));
  }
}

function ok(step: Record<string, unknown>, result: unknown): void {
  assert.equal(step.status, "success", JSON.stringify(step));
  assert.deepEqual(step.result, result);
}

async function leaseKeys(redis: TestRedis): Promise<string[]> {
  const c = new Redis(redis.port, "127.0.0.1", { lazyConnect: true });
  try {
    await c.connect();
    return await c.keys("pysb:l:*");
  } finally {
    c.disconnect();
  }
}

async function tamper(redis: TestRedis, id: string): Promise<void> {
  const c = new Redis(redis.port, "127.0.0.1", { lazyConnect: true });
  try {
    await c.connect();
    const bytes = await c.hgetBuffer(`pysb:s:${id}`, "bytes");
    assert.ok(bytes && bytes.length > 100);
    bytes[Math.floor(bytes.length / 2)] ^= 0x5a;
    await c.hset(`pysb:s:${id}`, "bytes", bytes);
  } finally {
    c.disconnect();
  }
}

Deno.test("server.ts refuses --session-store without --session-secret unless --insecure-store, and hides the password", async () => {
  const run = async (extra: string[]) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", SERVER_TS, "--port", "0", ...extra],
      env: serverEnv(),
      clearEnv: true,
      stdout: "piped",
      stderr: "piped",
    }).output();
    return { code: out.code, text: new TextDecoder().decode(out.stderr) };
  };
  const refused = await run([
    "--session-store",
    "redis://:hunter2-pw@127.0.0.1:1/0",
  ]);
  assert.equal(refused.code, 2);
  assert.match(refused.text, /without --session-secret.*--insecure-store/);
  assert.doesNotMatch(refused.text, /hunter2-pw/);
  const bad = await run([
    ...["--session-store", "redis://:hunter2-pw@127.0.0.1:1/0?x=1"],
    "--insecure-store",
  ]);
  assert.equal(bad.code, 2);
  assert.doesNotMatch(bad.text, /hunter2-pw/);
  const help = await run(["--help"]);
  assert.equal(help.code, 0);
});

Deno.test("createHandler({ sessionStore }) lists the group's sessions and reports the store in /healthz and /metrics", async () => {
  assert.throws(
    () => createHandler({ sessionStore: {} as never }),
    (e) => e instanceof TypeError && /Invalid sessionStore/.test(e.message),
  );
  const redis = await startRedis({ password: "pw-not-shown-123" });
  const store = redisSessionStore(redis.url, { sessionSecret: SECRET });
  try {
    await withIdleHandler({ sessionStore: store }, async (base) => {
      const list = await (await fetch(`${base}/v1/sessions`)).json();
      assert.deepEqual(list, { sessions: [] });
      const health = await (await fetch(`${base}/healthz`)).text();
      assert.match(
        health,
        /"store":\{"url":"redis:\/\/:\*\*\*@127\.0\.0\.1:\d+[^"]*","reachable":true\}/,
      );
      const metrics = await (await fetch(`${base}/metrics`)).text();
      assert.match(metrics, /pyodide_sandbox_session_store_reachable 1/);
      assert.doesNotMatch(health + metrics, /pw-not-shown-123/);
      const missing = await fetch(`${base}/v1/sessions/nope/execute`, {
        method: "POST",
        body: '{"code": "1"}',
        headers: { "content-type": "application/json" },
      });
      assert.equal(missing.status, 404);
      await missing.body?.cancel();
    });
  } finally {
    await store.close();
    await redis.close();
  }
});

Deno.test("three replicas share one session through Redis: round-robin, SIGKILL failover, concurrent clients, outage, tampering, drain", async (t) => {
  const redis = await startRedis({ appendonly: true });
  const replicas: Replica[] = [];
  try {
    replicas.push(
      ...(await Promise.all([0, 1, 2].map(() => Replica.start(redis.url)))),
    );
    const [r1, r2, r3] = replicas;
    const created = await r1.post("/v1/sessions");
    const { id } = await created.json();
    assert.equal(created.status, 201);

    await t.step("20 round-robin steps keep x and f continuous", async () => {
      ok(await r1.step(id, "x = 0\ndef f(y):\n    return y * 2\nx"), 0);
      for (let i = 1; i <= 20; i++) {
        ok(await replicas[i % 3].step(id, "x += 1\nx"), i);
      }
      ok(await r3.step(id, "f(x)"), 40);
      const listed = await r2.get("/v1/sessions");
      const sessions = listed.sessions as { id: string }[];
      assert.deepEqual(sessions.map((s) => s.id), [id]);
      const health = await r2.get("/healthz");
      const store = health.store as { url: string; reachable: boolean };
      assert.equal(store.reachable, true);
      assert.match(
        store.url,
        new RegExp(`^redis://127\\.0\\.0\\.1:${redis.port}`),
      );
      const metrics = await (await fetch(`${r1.base}/metrics`)).text();
      assert.match(metrics, /session_store_operations_total [1-9]/);
      assert.match(metrics, /session_store_reachable 1/);
    });

    await t.step(
      "SIGKILL of the replica that ran the last step loses nothing",
      async () => {
        r3.children.push(...childrenOf(r3.child.pid));
        r3.child.kill("SIGKILL");
        await r3.child.status;
        ok(await r1.step(id, "x += 1\nx"), 21);
      },
    );

    await t.step(
      "two clients on two replicas at once keep every increment",
      async () => {
        const client = async (r: Replica) => {
          const seen: number[] = [];
          for (let i = 0; i < 5; i++) {
            const s = await r.step(id, "x += 1\nx");
            assert.equal(s.status, "success", JSON.stringify(s));
            seen.push(s.result as number);
          }
          return seen;
        };
        const [a, b] = await Promise.all([client(r1), client(r2)]);
        assert.deepEqual(
          [...a, ...b].sort((p, q) => p - q),
          [22, 23, 24, 25, 26, 27, 28, 29, 30, 31],
        );
        ok(await r2.step(id, "x"), 31);
      },
    );

    await t.step("tampered bytes in Redis give kind session", async () => {
      const other = (await (await r1.post("/v1/sessions")).json()).id;
      await tamper(redis, other);
      const s = await r2.step(other, "1");
      assert.equal(s.status, "error");
      assert.equal((s.error as { kind: string }).kind, "session");
      assert.equal(
        (await fetch(`${r2.base}/v1/sessions/${other}`, {
          method: "DELETE",
        })).status,
        204,
      );
    });

    await t.step(
      "Redis stopped: 503 within a bound, stateless still works; restarted: continues",
      async () => {
        await redis.stop();
        const started = Date.now();
        const r = await r1.post(`/v1/sessions/${id}/execute`, { code: "x" });
        const body = await r.json();
        assert.equal(r.status, 503, JSON.stringify(body));
        assert.match(body.error, /^session store unavailable: /);
        assert.ok(Date.now() - started < 30_000, "503 came too late");
        const stateless = await r2.post("/v1/execute", { code: "6 * 7" });
        assert.equal(stateless.status, 200);
        assert.equal((await stateless.json()).result, 42);
        assert.equal(
          ((await r2.get("/healthz")).store as { reachable: boolean })
            .reachable,
          false,
        );
        await redis.restart();
        await eventually(
          "the store to be reachable again",
          async () =>
            ((await r1.get("/healthz")).store as { reachable: boolean })
              .reachable,
          20,
        );
        ok(await r1.step(id, "x += 1\nx"), 32);
      },
    );

    await t.step(
      "SIGTERM drains: the running step is written back, exit 0",
      async () => {
        const running = r2.step(id, "import time\ntime.sleep(1)\nx += 1\nx");
        await eventually(
          "the step to run",
          async () => (await r2.get("/healthz")).running === 1,
          30,
        );
        const drained = replicas.splice(1, 1)[0];
        const stopping = drained.stop();
        ok(await running, 33);
        await stopping;
        ok(await r1.step(id, "x"), 33);
      },
    );

    await t.step(
      "DELETE during a step fences its write; nothing is resurrected and no lease is left",
      async () => {
        const running = r1.post(`/v1/sessions/${id}/execute`, {
          code: "import time\ntime.sleep(2)\nx += 1\nx",
        });
        await eventually(
          "the step to run",
          async () => (await r1.get("/healthz")).running === 1,
          30,
        );
        const d = await fetch(`${r1.base}/v1/sessions/${id}`, {
          method: "DELETE",
        });
        assert.equal(d.status, 204);
        const fenced = await running;
        const body = await fenced.json();
        assert.equal(fenced.status, 409, JSON.stringify(body));
        assert.match(body.error, /Session write refused.*did not count/);
        const gone = await r1.post(`/v1/sessions/${id}/execute`, { code: "x" });
        assert.equal(gone.status, 404);
        await gone.body?.cancel();
        assert.deepEqual((await r1.get("/v1/sessions")).sessions, []);
        assert.deepEqual(await leaseKeys(redis), []);
      },
    );
  } finally {
    await Promise.all(replicas.map((r) => r.stop()));
    await redis.close();
  }
  assert.deepEqual(liveRedisServers(), []);
});
