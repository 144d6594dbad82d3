// Issue 12: several server.ts replicas (separate processes, separate
// cacheDirs, free loopback ports) sharing sessions through one real Redis.
import assert from "node:assert/strict";
import { childrenOf } from "./_fixtures/procs.ts";
import { eventually } from "./_helpers.ts";
import { SERVER_TS, serverEnv, withIdleHandler } from "./_http_helpers.ts";
import {
  leaseKeys,
  ok,
  redisKeys,
  Replica,
  REPLICA_SECRET,
  storedVersion,
  withRedisClient,
} from "./_replicas.ts";
import { createHandler } from "../handler.ts";
import { sessionBaseOf } from "../_session_bytes.ts";
import { redisSessionStore } from "../server.ts";
import { liveRedisServers, startRedis, type TestRedis } from "./_redis.ts";

const SECRET = REPLICA_SECRET;

async function tamper(redis: TestRedis, id: string): Promise<void> {
  await withRedisClient(redis, async (c) => {
    const bytes = await c.hgetBuffer(`pysb:s:${id}`, "bytes");
    assert.ok(bytes && bytes.length > 100);
    bytes[Math.floor(bytes.length / 2)] ^= 0x5a;
    await c.hset(`pysb:s:${id}`, "bytes", bytes);
  });
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
      await assertBaseShared(redis, id);
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

/** Diff-format bytes name their base: that blob must be in Redis. */
async function assertBaseShared(redis: TestRedis, id: string): Promise<void> {
  const bytes = await withRedisClient(
    redis,
    (c) => c.hgetBuffer(`pysb:s:${id}`, "bytes"),
  );
  assert.ok(bytes);
  const base = sessionBaseOf(new Uint8Array(bytes));
  if (base === undefined) return; // Full-format bytes need no base.
  assert.match(base, /^[0-9a-f]{64}$/);
  assert.deepEqual(await redisKeys(redis, `pysb:b:${base}`), [
    `pysb:b:${base}`,
  ]);
}

Deno.test("--session-checkpoint-seconds: steps are written back on drain, not after each step; a SIGKILL loses exactly the unwritten steps", async () => {
  const redis = await startRedis();
  const flags = ["--session-checkpoint-seconds", "3600"];
  const replicas = await Promise.all(
    [0, 1, 2].map(() => Replica.start(redis.url, flags)),
  );
  const [r1, r2, r3] = replicas;
  try {
    const created = await r1.post("/v1/sessions");
    assert.equal(created.status, 201);
    const { id } = await created.json();
    assert.equal(await storedVersion(redis, id), 1, "creation is written");
    ok(await r1.step(id, "x = 1\nx"), 1);
    ok(await r1.step(id, "x += 1\nx"), 2);
    assert.equal(await storedVersion(redis, id), 1, "the steps are not");
    assert.equal((await leaseKeys(redis)).length, 1, "r1 keeps the lease");

    // Drain: the unwritten steps are written back, the lease given up.
    await replicas.splice(0, 1)[0].stop();
    assert.equal(await storedVersion(redis, id), 2, "one write on drain");
    assert.deepEqual(await leaseKeys(redis), []);
    await assertBaseShared(redis, id);
    ok(await r2.step(id, "x"), 2);
    ok(await r2.step(id, "x += 10\nx"), 12);
    assert.equal(await storedVersion(redis, id), 2);

    // SIGKILL: the steps since the last checkpoint are lost, nothing else.
    r2.children.push(...childrenOf(r2.child.pid));
    r2.child.kill("SIGKILL");
    await r2.child.status;
    // r3 waits for the dead replica's lease to expire (15 s), then
    // resumes from the last checkpoint: x = 2, not 12, and not corrupted.
    // r3 has never seen the base these bytes were saved against: with its
    // blob gone from Redis the step is an error of kind "session" naming it.
    const base = sessionBaseOf(
      new Uint8Array(
        (await withRedisClient(
          redis,
          (c) => c.hgetBuffer(`pysb:s:${id}`, "bytes"),
        ))!,
      ),
    );
    if (base !== undefined) {
      const key = `pysb:b:${base}`;
      const blob = await withRedisClient(redis, (c) => c.getBuffer(key));
      await withRedisClient(redis, (c) => c.del(key));
      const missing = await r3.step(id, "x");
      assert.equal(missing.status, "error");
      const error = missing.error as { kind: string; message: string };
      assert.equal(error.kind, "session");
      assert.match(error.message, new RegExp(`base snapshot missing.*${base}`));
      await withRedisClient(redis, (c) => c.set(key, blob!));
    }
    ok(await r3.step(id, "x"), 2);
    ok(await r3.step(id, "x += 1\nx"), 3);
    const d = await fetch(`${r3.base}/v1/sessions/${id}`, { method: "DELETE" });
    assert.equal(d.status, 204);
    assert.deepEqual(await leaseKeys(redis), []);
  } finally {
    await Promise.all(replicas.map((r) => r.stop()));
    await redis.close();
  }
  assert.deepEqual(liveRedisServers(), []);
});
