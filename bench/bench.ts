/**
 * The speed benchmark of issue 3: `deno task bench [--quick]`.
 *
 * In one run (so the ratios are fair) it measures the naive peer-style
 * runner, a cold start without snapshot, a cold start from the snapshot (in
 * this host and in a fresh host process), a pooled stateless call at an
 * agent's pace, a step in a live session, the burst throughput at
 * concurrency 4, session save/restore time and size, and the RSS of one idle
 * pooled child. The cold cases run interleaved, round by round, so a change
 * of machine load hits them all alike. It prints a table with medians,
 * min/max and the ratio to the naive runner, plus a Markdown copy for
 * BENCHMARKS.md.
 *
 * Flags:
 * - `--quick`: smaller samples (under a minute; the full run takes one
 *   to three minutes, depending on the machine's load).
 * - `--cache-dir <dir>`: use this cache folder (default: a fresh temporary
 *   one, removed at the end, so the snapshot build is measured too).
 * - `--json <file>`: also write the raw samples as JSON.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createHandler, PyodideSandbox } from "../mod.ts";
import { SandboxChild } from "../_child.ts";
import {
  childArgs,
  childEnv,
  type Environment,
  pyodideReadPaths,
  resolveDenoPath,
  resolveEnvironment,
} from "../_setup.ts";
import { ensureSnapshot } from "../_snapshot.ts";
import { buildPermissionFlag } from "../permissions.ts";
import { ToChild, ToParent } from "../runner.ts";

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = dirname(HERE);

const flags = parseArgs({
  args: Deno.args,
  options: {
    quick: { type: "boolean", default: false },
    "cache-dir": { type: "string" },
    json: { type: "string" },
  },
  strict: true,
});
const quick = flags.values.quick;

/** Sample sizes. */
const N = quick
  ? {
    naive: 2,
    cold: 2,
    snap: 4,
    pooled: 6,
    step: 50,
    burst: 1,
    burstCalls: 8,
    save: 3,
  }
  : {
    naive: 6,
    cold: 6,
    snap: 12,
    pooled: 30,
    step: 300,
    burst: 3,
    burstCalls: 16,
    save: 6,
  };

interface Row {
  name: string;
  unit: "ms" | "calls/s" | "MB" | "KB";
  samples: number[];
  /** `true`: ratio = naive / this (a latency); otherwise no ratio. */
  latency: boolean;
  target?: string;
  /** Whether the median meets the target. */
  meets?: (median: number, naive: number) => boolean;
  note?: string;
}

const rows: Row[] = [];
const extra: Record<string, unknown> = {};

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function log(text: string): void {
  console.error(`[bench] ${text}`);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** CPU seconds of this process's reaped children (`/proc/self/stat`). */
function childrenCpuSeconds(): number {
  try {
    const stat = Deno.readTextFileSync("/proc/self/stat");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // Fields 16 and 17 (1-based, with pid and comm): cutime, cstime.
    const ticks = Number(fields[13]) + Number(fields[14]);
    return ticks / 100;
  } catch {
    return NaN;
  }
}

/** Live `deno` children of this process running the runner. */
function runnerChildren(): number[] {
  const pids: number[] = [];
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${entry.name}/stat`);
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(fields[1]) !== Deno.pid || fields[0] === "Z") continue;
      const cmd = Deno.readTextFileSync(`/proc/${entry.name}/cmdline`);
      if (cmd.includes("runner.ts")) pids.push(Number(entry.name));
    } catch {
      // Gone while we looked.
    }
  }
  return pids;
}

function rssMb(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const match = /VmRSS:\s+(\d+) kB/.exec(status);
  return match ? Number(match[1]) / 1024 : NaN;
}

async function timed<T>(fn: () => Promise<T>): Promise<[number, T]> {
  const t = performance.now();
  const value = await fn();
  return [performance.now() - t, value];
}

// ---------------------------------------------------------------------------
// Setup

const denoPath = resolveDenoPath();
const ownCache = flags.values["cache-dir"] === undefined;
const cacheDir = flags.values["cache-dir"] ??
  await Deno.makeTempDir({ prefix: "pyodide-sandbox-bench-" });
const machine = describeMachine();
const loadBefore = Deno.loadavg();
const benchStarted = performance.now();
log(
  `cache folder: ${cacheDir}${ownCache ? " (fresh, removed at the end)" : ""}`,
);

let env: Environment;
try {
  env = resolveEnvironment(denoPath, cacheDir);
  const [buildMs] = await timed(() => ensureSnapshot(env));
  const record = JSON.parse(
    await Deno.readTextFile(`${await ensureSnapshot(env)}.json`),
  ) as { size: number; buildMs: number };
  extra.snapshot = { hostMs: buildMs, ...record };
  log(
    `snapshot ready in ${buildMs.toFixed(0)} ms (${
      (record.size / 1048576).toFixed(1)
    } MB)`,
  );
  await runAll(env);
} finally {
  if (ownCache) {
    await Deno.remove(cacheDir, { recursive: true }).catch(() => {});
  }
}
report();

// ---------------------------------------------------------------------------
// Cases

async function runAll(env: Environment): Promise<void> {
  await coldCases(env);
  await pooledCase();
  await sessionCases();
  await burstCase();
  await httpCase();
  await poolRows();
}

/** The warm pool's cases (bench/pool.ts): first call, idle child CPU. */
async function poolRows(): Promise<void> {
  const { poolCases } = await import("./pool.ts");
  for (const r of await poolCases(cacheDir, quick ? 3 : 5)) {
    log(`${r.name}: ${r.note}`);
    rows.push({
      name: r.name,
      unit: "ms",
      samples: r.samplesMs,
      latency: false,
      target: r.target,
      meets: () => r.meets,
      note: r.note,
    });
  }
}

/** One naive run: a fresh `deno run` that loads Pyodide cold. */
async function naiveOnce(env: Environment): Promise<[number, number]> {
  const cpu = childrenCpuSeconds();
  const t = performance.now();
  const out = await new Deno.Command(denoPath, {
    args: [
      "run",
      "--no-config",
      "--no-lock",
      "--node-modules-dir=none",
      `--allow-read=${env.pyodideDir}`,
      join(HERE, "_naive_runner.ts"),
      "print(1)",
    ],
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).output();
  const ms = performance.now() - t;
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success || !text.includes('"stdout":"1\\n"')) {
    throw new Error(
      `The naive runner failed: ${text} ${
        new TextDecoder().decode(out.stderr)
      }`,
    );
  }
  return [ms, childrenCpuSeconds() - cpu];
}

/**
 * One in-host child: spawn, load (cold or from the snapshot), run
 * `print(1)`, wait for its exit.
 */
async function childOnce(
  env: Environment,
  snapshot: string | undefined,
): Promise<[number, number]> {
  const reads = pyodideReadPaths(env);
  if (snapshot) reads.push(snapshot);
  const cpu = childrenCpuSeconds();
  const t = performance.now();
  const child = await SandboxChild.spawn({
    denoPath: env.denoPath,
    args: childArgs(env, 512, [buildPermissionFlag("read", reads)!]),
    env: childEnv(env, {}),
    rssLimitBytes: 0,
  }, { mode: "serve", snapshotPath: snapshot, oneShot: true });
  const hold = setInterval(() => {}, 1000);
  try {
    await child.ready;
    const outcome = await child.call(
      ToChild.exec,
      {
        code: "print(1)",
        wantState: false,
        maxFileBytes: 1 << 20,
        maxTotalFileBytes: 1 << 20,
      },
      undefined,
      ToParent.result,
      {
        deadline: performance.now() + 120_000,
        soft: false,
        maxOutputBytes: 1 << 20,
        maxDisplayBytes: 1 << 20,
      },
    );
    const ms = performance.now() - t;
    if (outcome.stdout !== "1\n") {
      throw new Error(`A benchmark child failed: ${child.describeExit()}`);
    }
    await child.close();
    return [ms, childrenCpuSeconds() - cpu];
  } finally {
    clearInterval(hold);
    await child.kill("exit", { hard: true });
  }
}

/** One fresh host process: `deno run bench/_cold_host.ts`. */
async function freshHostOnce(): Promise<[number, Record<string, number>]> {
  const t = performance.now();
  const out = await new Deno.Command(denoPath, {
    args: [
      "run",
      "--allow-all",
      join(HERE, "_cold_host.ts"),
      cacheDir,
      String(performance.timeOrigin + performance.now()),
    ],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).output();
  const ms = performance.now() - t;
  const text = new TextDecoder().decode(out.stdout).trim();
  if (!out.success) {
    throw new Error(
      `The cold host failed: ${text} ${new TextDecoder().decode(out.stderr)}`,
    );
  }
  const phases = JSON.parse(text.split("\n").pop()!) as Record<string, number>;
  phases.exit = ms - phases.boot - phases.total;
  return [ms, phases];
}

async function coldCases(env: Environment): Promise<void> {
  const snapshot = await ensureSnapshot(env);
  const naive: number[] = [];
  const naiveCpu: number[] = [];
  const cold: number[] = [];
  const coldCpu: number[] = [];
  const snap: number[] = [];
  const snapCpu: number[] = [];
  const host: number[] = [];
  const phases: Record<string, number>[] = [];
  log("cold cases: warming caches (one unmeasured run of each)");
  await naiveOnce(env);
  await childOnce(env, undefined);
  await childOnce(env, snapshot);
  await freshHostOnce();
  const rounds = Math.max(N.naive, N.cold, N.snap);
  for (let i = 0; i < rounds; i++) {
    let naiveMs: number | undefined;
    let coldMs: number | undefined;
    if (naive.length < N.naive) {
      const [ms, cpu] = await naiveOnce(env);
      naive.push(ms);
      naiveCpu.push(cpu);
      naiveMs = ms;
    }
    if (cold.length < N.cold) {
      const [ms, cpu] = await childOnce(env, undefined);
      cold.push(ms);
      coldCpu.push(cpu);
      coldMs = ms;
    }
    const [snapMs, cpu] = await childOnce(env, snapshot);
    snap.push(snapMs);
    snapCpu.push(cpu);
    const [hostMs, hostPhases] = await freshHostOnce();
    host.push(hostMs);
    phases.push(hostPhases);
    log(
      `cold round ${i + 1}/${rounds}: naive ${fmt(naiveMs)} | no snapshot ${
        fmt(coldMs)
      } | snapshot child ${fmt(snapMs)} | fresh host ${fmt(hostMs)} ms`,
    );
  }
  rows.push({
    name: "naive runner (fresh deno + loadPyodide)",
    unit: "ms",
    samples: naive,
    latency: true,
    note: `CPU ${median(naiveCpu).toFixed(2)} s/call`,
  });
  rows.push({
    name: "cold start, no snapshot (fresh child)",
    unit: "ms",
    samples: cold,
    latency: true,
    note: `CPU ${median(coldCpu).toFixed(2)} s/call`,
  });
  rows.push({
    name: "cold start, snapshot, fresh host process",
    unit: "ms",
    samples: host,
    latency: true,
    target: ">= 8x",
    meets: (m, n) => n / m >= 8,
    note: `host phases (median ms): ${
      ["boot", "importMod", "construct", "execute", "close", "exit"].map(
        (k) => `${k} ${median(phases.map((p) => p[k])).toFixed(0)}`,
      ).join(", ")
    }`,
  });
  rows.push({
    name: "cold start, snapshot, warm host (poolSize 0)",
    unit: "ms",
    samples: snap,
    latency: true,
    note: `CPU ${median(snapCpu).toFixed(2)} s/call (one fresh interpreter)`,
  });
  extra.cpu = { naive: naiveCpu, cold: coldCpu, snapshotChild: snapCpu };
  extra.freshHostPhases = phases;
}

async function pooledCase(): Promise<void> {
  log(`pooled: ${N.pooled} calls, one per second`);
  const sandbox = new PyodideSandbox({ poolSize: 2, cacheDir });
  const samples: number[] = [];
  try {
    await sandbox.warmup();
    await sleep(1000);
    const rss = runnerChildren().map(rssMb);
    rows.push({
      name: "RSS of one idle pooled child",
      unit: "MB",
      samples: rss,
      latency: false,
    });
    for (let i = 0; i < N.pooled; i++) {
      const started = performance.now();
      const [ms, result] = await timed(() => sandbox.execute("print(1)"));
      if (result.stdout !== "1\n") {
        throw new Error(`A pooled call failed: ${result.stderr}`);
      }
      samples.push(ms);
      await sleep(Math.max(0, 1000 - (performance.now() - started)));
    }
  } finally {
    await sandbox.close();
  }
  rows.push({
    name: "pooled stateless call (1 call/s, poolSize 2)",
    unit: "ms",
    samples,
    latency: true,
    target: "<= 30 ms",
    meets: (m) => m <= 30,
  });
}

async function sessionCases(): Promise<void> {
  log(`session: ${N.step} steps, ${N.save} saves and restores`);
  const sandbox = new PyodideSandbox({ poolSize: 0, cacheDir });
  try {
    const session = await sandbox.openSession();
    const steps: number[] = [];
    try {
      await session.execute("x = 0");
      for (let i = 0; i < 5; i++) await session.execute("x += 1");
      for (let i = 0; i < N.step; i++) {
        const [ms] = await timed(() => session.execute("x += 1"));
        steps.push(ms);
      }
      const x = await session.execute("x");
      if (x.result !== N.step + 5) {
        throw new Error(`The session lost count: ${JSON.stringify(x)}`);
      }
      rows.push({
        name: "session step `x += 1`",
        unit: "ms",
        samples: steps,
        latency: true,
        target: "<= 5 ms",
        meets: (m) => m <= 5,
      });
      await session.execute(
        "import json, re\ndata = list(range(10000))\n" +
          "def f(n):\n    return n * x\npattern = re.compile('a+')",
      );
      const saves: number[] = [];
      const sizes: number[] = [];
      let saved;
      for (let i = 0; i < N.save; i++) {
        const [ms, s] = await timed(() => session.save());
        saves.push(ms);
        sizes.push(s.sessionBytes.length / 1024);
        saved = s;
      }
      rows.push({
        name: "session save()",
        unit: "ms",
        samples: saves,
        latency: false,
      });
      rows.push({
        name: "session bytes (compressed)",
        unit: "KB",
        samples: sizes,
        latency: false,
      });
      const restores: number[] = [];
      for (let i = 0; i < N.save; i++) {
        const [ms, resumed] = await timed(() =>
          sandbox.openSession({
            sessionBytes: saved!.sessionBytes,
            sessionMetadata: saved!.sessionMetadata,
          })
        );
        restores.push(ms);
        const check = await resumed.execute("f(2) + len(data)");
        await resumed.close();
        if (check.result !== 2 * (N.step + 5) + 10000) {
          throw new Error(
            `A restored session is wrong: ${JSON.stringify(check)}`,
          );
        }
      }
      rows.push({
        name: "session restore: openSession({sessionBytes})",
        unit: "ms",
        samples: restores,
        latency: false,
      });
    } finally {
      await session.close();
    }
  } finally {
    await sandbox.close();
  }
}

async function burstCase(): Promise<void> {
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
async function httpCase(): Promise<void> {
  const calls = N.burstCalls;
  log(`http: ${calls} calls at concurrency 8, direct and over HTTP`);
  const options = { poolSize: 2, maxConcurrency: 8, cacheDir };
  async function drive(
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
  rows.push({
    name: "stateless calls/s at concurrency 8, direct",
    unit: "calls/s",
    samples: [directResult.rate],
    latency: false,
  });
  rows.push({
    name: "stateless calls/s at concurrency 8, over HTTP",
    unit: "calls/s",
    samples: [httpResult.rate],
    latency: false,
  });
  rows.push({
    name: "latency at concurrency 8, direct",
    unit: "ms",
    samples: directResult.latencies,
    latency: false,
  });
  rows.push({
    name: "latency at concurrency 8, over HTTP",
    unit: "ms",
    samples: httpResult.latencies,
    latency: false,
  });
}

// ---------------------------------------------------------------------------
// Report

function fmt(x: number | undefined, unit = "ms"): string {
  if (x === undefined || !Number.isFinite(x)) return "-";
  if (unit === "calls/s") return x.toFixed(2);
  if (x >= 100) return x.toFixed(0);
  if (x >= 10) return x.toFixed(1);
  return x.toFixed(2);
}

function describeMachine(): Record<string, string> {
  let cpu = "unknown CPU";
  try {
    cpu = /model name\s*:\s*(.*)/.exec(
      Deno.readTextFileSync("/proc/cpuinfo"),
    )?.[1] ?? cpu;
  } catch {
    // Not Linux.
  }
  const memory = Deno.systemMemoryInfo();
  return {
    date: new Date().toISOString().slice(0, 16).replace("T", " ") + " UTC",
    machine:
      `${Deno.build.os} ${Deno.build.arch}, ${cpu}, ${navigator.hardwareConcurrency} cores, ${
        (memory.total / 1073741824).toFixed(0)
      } GiB RAM`,
    deno: Deno.version.deno,
    command: `deno task bench${quick ? " --quick" : ""}`,
  };
}

function report(): void {
  const naive = median(rows.find((r) => r.name.startsWith("naive"))!.samples);
  const table = rows.map((row) => {
    const m = median(row.samples);
    const x = naive / m;
    const ratio = row.latency
      ? `${x >= 100 ? x.toFixed(0) : x.toFixed(1)}x`
      : "-";
    const met = row.meets ? (row.meets(m, naive) ? "yes" : "NO") : "";
    return {
      name: row.name,
      n: String(row.samples.length),
      median: `${fmt(m, row.unit)} ${row.unit}`,
      min: fmt(Math.min(...row.samples), row.unit),
      max: fmt(Math.max(...row.samples), row.unit),
      ratio,
      target: row.target ? `${row.target} (${met})` : "",
      note: row.note ?? "",
    };
  });
  const seconds = (performance.now() - benchStarted) / 1000;
  const load = Deno.loadavg();
  const header = ["case", "n", "median", "min", "max", "vs naive", "target"];
  const cells = table.map((
    r,
  ) => [r.name, r.n, r.median, r.min, r.max, r.ratio, r.target]);
  const widths = header.map((h, i) =>
    Math.max(h.length, ...cells.map((c) => c[i].length))
  );
  const line = (c: string[]) =>
    c.map((x, i) => i === 0 ? x.padEnd(widths[i]) : x.padStart(widths[i]))
      .join("  ");
  console.log("");
  console.log(line(header));
  console.log(widths.map((w) => "-".repeat(w)).join("  "));
  for (const c of cells) console.log(line(c));
  console.log("");
  for (const r of table) if (r.note) console.log(`${r.name}: ${r.note}`);
  const snap = extra.snapshot as { hostMs: number; size: number } | undefined;
  if (snap) {
    console.log(
      `snapshot: built or verified in ${snap.hostMs.toFixed(0)} ms, ${
        (snap.size / 1048576).toFixed(1)
      } MB`,
    );
  }
  console.log(
    `"vs naive" = naive median / case median (how many times faster). ` +
      `Load average ${loadBefore.map((x) => x.toFixed(2)).join(" ")} before, ${
        load.map((x) => x.toFixed(2)).join(" ")
      } after; ${seconds.toFixed(0)} s in all.`,
  );
  console.log("");
  console.log("Markdown:");
  console.log("");
  console.log(
    `${machine.date}; ${machine.machine}; deno ${machine.deno}; \`${machine.command}\`; load average ${
      loadBefore[0].toFixed(1)
    } → ${load[0].toFixed(1)}; ${seconds.toFixed(0)} s.`,
  );
  console.log("");
  console.log(`| ${header.join(" | ")} |`);
  console.log(`|${header.map((_, i) => i === 0 ? "---" : "---:").join("|")}|`);
  for (const c of cells) console.log(`| ${c.join(" | ")} |`);
  if (flags.values.json) {
    Deno.writeTextFileSync(
      flags.values.json,
      JSON.stringify(
        { machine, rows, extra, seconds, loadBefore, load },
        null,
        2,
      ),
    );
  }
}
