/**
 * Benchmark of sessions shared by server replicas through Redis (issue 12):
 *
 * - step latency p50/p95 of a session that stays on one replica (live
 *   child, one save + fenced write per step) and of one that hops to the
 *   next replica on every step (a restore per step as well);
 * - throughput in steps/s of 1 replica and of 3 replicas (each session
 *   sticky to one replica, `--concurrency` sessions at once);
 * - bytes per session in Redis (the record) and the shared base blobs,
 *   for sizing.
 *
 * Every replica is a `server.ts` process with its own cache folder, in
 * durable mode, against one local Redis (tests/_redis.ts). Figures depend
 * heavily on the machine and its load: they are for sizing, not targets.
 *
 * Usage: `deno task bench:replicas [--steps N] [--sessions N]
 * [--concurrency N] [--json]`.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { Replica, withRedisClient } from "../tests/_replicas.ts";
import { startRedis, type TestRedis } from "../tests/_redis.ts";

/** One result row. */
interface Row {
  name: string;
  value: string;
}

function percentile(sorted: number[], p: number): number {
  const i = Math.min(
    sorted.length - 1,
    Math.ceil((p / 100) * sorted.length) - 1,
  );
  return sorted[Math.max(0, i)];
}

function latencyRows(name: string, ms: number[]): Row[] {
  const sorted = [...ms].sort((a, b) => a - b);
  return [{
    name,
    value: `p50 ${percentile(sorted, 50).toFixed(0)} ms, p95 ${
      percentile(sorted, 95).toFixed(0)
    } ms (n=${ms.length})`,
  }];
}

async function timedStep(r: Replica, id: string, code: string) {
  const t0 = performance.now();
  const s = await r.step(id, code);
  if (s.status !== "success") throw new Error(JSON.stringify(s));
  return performance.now() - t0;
}

/** Latency of steps on one replica, and hopping over all of them. */
async function latencies(replicas: Replica[], steps: number): Promise<Row[]> {
  const stay = await replicas[0].create();
  const hop = await replicas[0].create();
  // Warm-up: every replica builds or imports the bases once.
  for (const [i, r] of replicas.entries()) {
    await timedStep(r, hop, `x = ${i}`);
  }
  await timedStep(replicas[0], stay, "x = 0");
  const stayMs: number[] = [];
  const hopMs: number[] = [];
  for (let i = 0; i < steps; i++) {
    stayMs.push(await timedStep(replicas[0], stay, "x += 1\nx"));
    hopMs.push(
      await timedStep(replicas[(i + 1) % replicas.length], hop, "x += 1\nx"),
    );
  }
  return [
    ...latencyRows("step, same replica", stayMs),
    ...latencyRows("step, hops replica every step", hopMs),
  ];
}

/** Steps per second with sticky sessions spread over `replicas`. */
async function throughput(
  replicas: Replica[],
  sessions: number,
  steps: number,
  concurrency: number,
): Promise<number> {
  const ids = await Promise.all(
    Array.from(
      { length: sessions },
      (_, i) => replicas[i % replicas.length].create(),
    ),
  );
  let next = 0;
  const started = performance.now();
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < sessions) {
      const i = next++;
      const r = replicas[i % replicas.length];
      await timedStep(r, ids[i], "x = 0");
      for (let s = 1; s < steps; s++) await timedStep(r, ids[i], "x += 1");
    }
  }));
  const seconds = (performance.now() - started) / 1000;
  await Promise.all(
    ids.map((id, i) => replicas[i % replicas.length].delete(id)),
  );
  return (sessions * steps) / seconds;
}

/** Bytes of session records and base blobs in Redis. */
async function sizes(redis: TestRedis): Promise<Row[]> {
  return await withRedisClient(redis, async (c) => {
    const records = await c.keys("pysb:s:*");
    const blobs = await c.keys("pysb:b:*");
    const recordBytes = await Promise.all(
      records.map((k) => c.hstrlen(k, "bytes")),
    );
    const blobBytes = await Promise.all(blobs.map((k) => c.strlen(k)));
    const mb = (n: number) => `${(n / 1e6).toFixed(2)} MB`;
    const avg = recordBytes.reduce((a, b) => a + b, 0) /
      Math.max(1, recordBytes.length);
    const info = await c.info("memory");
    const used = /used_memory:(\d+)/.exec(info)?.[1];
    return [
      {
        name: "session bytes per session in Redis",
        value: `${mb(avg)} (mean of ${recordBytes.length}, max ${
          mb(Math.max(0, ...recordBytes))
        })`,
      },
      {
        name: "shared base snapshot blobs",
        value: `${blobs.length} blob(s), ${
          mb(blobBytes.reduce((a, b) => a + b, 0))
        } in all`,
      },
      { name: "Redis used_memory", value: mb(Number(used ?? 0)) },
    ];
  });
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      steps: { type: "string", default: "10" },
      sessions: { type: "string", default: "6" },
      concurrency: { type: "string", default: "6" },
      json: { type: "boolean" },
    },
  });
  const steps = Number(values.steps);
  const sessions = Number(values.sessions);
  const concurrency = Number(values.concurrency);
  const redis = await startRedis();
  const replicas: Replica[] = [];
  const rows: Row[] = [];
  try {
    replicas.push(
      ...(await Promise.all(
        [0, 1, 2].map(() => Replica.start(redis.url, ["--max-sessions", "16"])),
      )),
    );
    rows.push(...(await latencies(replicas, steps)));
    rows.push(...(await sizes(redis)));
    const one = await throughput(
      replicas.slice(0, 1),
      sessions,
      5,
      concurrency,
    );
    const three = await throughput(replicas, sessions, 5, concurrency);
    rows.push(
      { name: "throughput, 1 replica", value: `${one.toFixed(2)} steps/s` },
      {
        name: "throughput, 3 replicas",
        value: `${three.toFixed(2)} steps/s (${(three / one).toFixed(2)}x)`,
      },
    );
  } finally {
    await Promise.all(replicas.map((r) => r.stop()));
    await redis.close();
  }
  const load = (await Deno.readTextFile("/proc/loadavg").catch(() => ""))
    .split(" ").slice(0, 3).join(" ");
  if (values.json) {
    console.log(
      JSON.stringify({ rows, load, cores: navigator.hardwareConcurrency }),
    );
    return;
  }
  console.log(
    `Replicas benchmark (${navigator.hardwareConcurrency} cores, load average ${load})`,
  );
  for (const r of rows) console.log(`${r.name.padEnd(36)} ${r.value}`);
}

if (import.meta.main) await main();
