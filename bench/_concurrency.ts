/**
 * The benchmark's concurrency cases: the burst of stateless calls at
 * concurrency 4, and calls at concurrency 8 direct and over HTTP.
 *
 * @module
 */

import { createHandler, PyodideSandbox } from "../mod.ts";
import {
  type CaseContext,
  childrenCpuSeconds,
  log,
  median,
  type Row,
  sleep,
} from "./_bench_util.ts";

/**
 * Rounds of stateless calls at concurrency 4 on a fresh sandbox: calls per
 * second against the ceiling the cold cases measured.
 */
export async function burstCase(ctx: CaseContext): Promise<void> {
  const { N, cacheDir, rows, extra } = ctx;
  log(
    `burst: ${N.burst} round(s) of ${N.burstCalls} calls at concurrency 4`,
  );
  const rates: number[] = [];
  const cpuPerCall: number[] = [];
  for (let round = 0; round < N.burst; round++) {
    const sandbox = new PyodideSandbox({
      poolSize: 2,
      maxConcurrency: 4,
      cacheDir,
    });
    let calls = 0;
    let wall = 0;
    try {
      await sandbox.warmup();
      const cpu = childrenCpuSeconds();
      const t = performance.now();
      let next = 0;
      await Promise.all(
        Array.from({ length: 4 }, async () => {
          while (next < N.burstCalls) {
            const i = next++;
            const result = await sandbox.execute(`print(${i})`);
            if (result.stdout !== `${i}\n`) {
              throw new Error(`A burst call failed: ${result.stderr}`);
            }
            calls++;
          }
        }),
      );
      wall = performance.now() - t;
      await sandbox.close();
      // Let the last children be reaped so their CPU is counted.
      await sleep(200);
      cpuPerCall.push((childrenCpuSeconds() - cpu) / calls);
    } finally {
      await sandbox.close();
    }
    rates.push(calls / (wall / 1000));
  }
  // The ceiling of the issue: cores divided by the CPU cost of one fresh
  // interpreter, measured cleanly in the cold cases (one child from the
  // snapshot, alone). The burst's own CPU per call also counts the pool's
  // warm-ups and the children still loading when a round ends.
  const cores = navigator.hardwareConcurrency;
  const perInterpreter = median(
    (extra.cpu as { snapshotChild: number[] }).snapshotChild,
  );
  const ceiling = cores / perInterpreter;
  rows.push({
    name: "burst throughput, concurrency 4",
    unit: "calls/s",
    samples: rates,
    latency: false,
    target: ">= 2/s, >= 80% of ceiling",
    meets: (m) => m >= 2 && m >= 0.8 * ceiling,
    note: `ceiling ${cores} cores / ${
      perInterpreter.toFixed(2)
    } CPU s per fresh interpreter = ${ceiling.toFixed(2)}/s; median is ${
      ((median(rates) / ceiling) * 100).toFixed(0)
    }% of it; CPU per burst call incl. pool warm-ups ${
      median(cpuPerCall).toFixed(2)
    } s`,
  });
  extra.burstCpuPerCall = cpuPerCall;
}

/**
 * Stateless calls at concurrency 8: the library called directly, then the
 * same calls through the HTTP server (createHandler in Deno.serve on
 * loopback), with the same sandbox settings.
 */
export async function httpCase(ctx: CaseContext): Promise<void> {
  const { N, cacheDir, rows } = ctx;
  const calls = N.burstCalls;
  log(`http: ${calls} calls at concurrency 8, direct and over HTTP`);
  const options = { poolSize: 2, maxConcurrency: 8, cacheDir };
  const drive = (run: (i: number) => Promise<string>) => driveAt8(calls, run);
  const direct = new PyodideSandbox(options);
  let directResult;
  try {
    await direct.warmup();
    directResult = await drive(async (i) =>
      (await direct.execute(`print(${i})`)).stdout
    );
  } finally {
    await direct.close();
  }
  const handler = createHandler({
    sandboxOptions: options,
    maxConcurrency: 8,
    maxQueue: 64,
  });
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    handler,
  );
  let httpResult;
  try {
    await handler.sandbox.warmup();
    const url = `http://127.0.0.1:${server.addr.port}/v1/execute`;
    httpResult = await drive(async (i) => {
      const response = await fetch(url, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ code: `print(${i})` }),
      });
      return (await response.json()).stdout;
    });
  } finally {
    await handler.close({ graceSeconds: 5 });
    await server.shutdown();
  }
  const results = [
    ["direct", directResult],
    ["over HTTP", httpResult],
  ] as const;
  rows.push(
    ...results.map(([how, r]): Row => ({
      name: `stateless calls/s at concurrency 8, ${how}`,
      unit: "calls/s",
      samples: [r.rate],
      latency: false,
    })),
    ...results.map(([how, r]): Row => ({
      name: `latency at concurrency 8, ${how}`,
      unit: "ms",
      samples: r.latencies,
      latency: false,
    })),
  );
}

/**
 * Runs `calls` calls eight at a time; each must print its own index.
 *
 * @returns Calls per second and each call's latency (ms).
 */
async function driveAt8(
  calls: number,
  run: (i: number) => Promise<string>,
): Promise<{ rate: number; latencies: number[] }> {
  const latencies: number[] = [];
  let next = 0;
  const t = performance.now();
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (next < calls) {
        const i = next++;
        const start = performance.now();
        const stdout = await run(i);
        latencies.push(performance.now() - start);
        if (stdout !== `${i}\n`) throw new Error(`A call failed: ${stdout}`);
      }
    }),
  );
  return { rate: calls / ((performance.now() - t) / 1000), latencies };
}
