// Issue 12, bounded load test (correctness only, no speed asserted): three
// server.ts replicas and one Redis; 30 sessions x 10 steps at concurrency 6,
// each session hopping replicas once; every final state correct; afterwards no
// live child, no lease and no session key left.
import assert from "node:assert/strict";
import { childrenOf } from "./_fixtures/procs.ts";
import { eventually } from "./_helpers.ts";
import { ok, redisKeys, Replica } from "./_replicas.ts";
import { liveRedisServers, startRedis } from "./_redis.ts";

const SESSIONS = 30;
const STEPS = 10;
const CONCURRENCY = 6;

/** Runs `work(i)` for i < n, at most `limit` at once. */
async function pooled(
  n: number,
  limit: number,
  work: (i: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < n) await work(next++);
  };
  await Promise.all(Array.from({ length: limit }, worker));
}

Deno.test("3 replicas, 30 sessions x 10 steps at concurrency 6: every state correct, nothing leaked", async () => {
  const redis = await startRedis();
  const replicas = await Promise.all(
    [0, 1, 2].map(() =>
      Replica.start(redis.url, ["--max-sessions", "6", "--max-queue", "64"])
    ),
  );
  try {
    // Warm-up: every replica publishes its base snapshot and imports the
    // others' (a blob of about 31 MB each, once per process).
    await Promise.all(replicas.map(async (home, i) => {
      const id = await home.create();
      for (let hop = 1; hop <= 3; hop++) {
        ok(await replicas[(i + hop) % 3].step(id, `${hop}`), hop);
      }
      await home.delete(id);
    }));
    let done = 0;
    await pooled(SESSIONS, CONCURRENCY, async (i) => {
      const home = replicas[i % 3];
      const id = await home.create();
      ok(await home.step(id, `n = ${i}\nsteps = []\nn`), i);
      // The first half of the steps on its home replica, then one hop: the
      // rest on the next replica (a restore from Redis, its base shared).
      const away = replicas[(i + 1) % 3];
      for (let s = 1; s < STEPS; s++) {
        const r = s < STEPS / 2 ? home : away;
        ok(await r.step(id, `n += 1\nsteps.append(${s})\nn`), i + s);
      }
      const last = await away.step(
        id,
        "(n, sum(steps), len(steps))",
      );
      ok(last, [i + STEPS - 1, ((STEPS - 1) * STEPS) / 2, STEPS - 1]);
      done++;
    });
    assert.equal(done, SESSIONS);
    const listed = (await replicas[0].get("/v1/sessions")).sessions as {
      id: string;
      executions: number;
    }[];
    assert.equal(listed.length, SESSIONS);
    assert.ok(listed.every((s) => s.executions === STEPS + 1));
    assert.deepEqual(await redisKeys(redis, "pysb:l:*"), [], "no lease left");
    await Promise.all(
      listed.map((s, i) => replicas[i % 3].delete(s.id)),
    );
    assert.deepEqual(await redisKeys(redis, "pysb:s:*"), []);
    assert.deepEqual(await redisKeys(redis, "pysb:l:*"), []);
    // Only the shared base snapshots (content-addressed blobs) may remain.
    const left = await redisKeys(redis, "pysb:*");
    assert.deepEqual(left.filter((k) => !k.startsWith("pysb:b:")), []);
    for (const r of replicas) {
      // Deleted sessions' children end, also those cached by replicas
      // that did not get the DELETE: their sweep (every 30 s) finds the
      // record gone (pool size 0: no warm ones).
      await eventually(
        "the replica's session children to end",
        async () =>
          ((await r.get("/healthz")).sessions as number) === 0 &&
          childrenOf(r.child.pid).length === 0,
        90,
      );
    }
  } finally {
    await Promise.all(replicas.map((r) => r.stop()));
    await redis.close();
  }
  assert.deepEqual(liveRedisServers(), []);
});
