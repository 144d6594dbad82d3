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
 * - `--cases <a,b>`: run only these case groups (cold, pooled, session,
 *   stateful, phases, burst, http, pool; default all).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { PyodideSandbox, type SessionMetadata } from "../mod.ts";
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
import {
  applyPages,
  encodeImageDiff,
  type ImageReader,
  parseDiff,
  snapshotImageOffset,
} from "../_state_diff.ts";
import zlib from "node:zlib";
import { buildPermissionFlag } from "../permissions.ts";
import { ToChild, ToParent } from "../runner.ts";
import {
  childrenCpuSeconds,
  describeMachine,
  fmt,
  log,
  median,
  printReport,
  privateDirtyMb,
  type Row,
  rssMb,
  runnerChildren,
  sleep,
  timed,
} from "./_bench_util.ts";
import { burstCase, httpCase } from "./_concurrency.ts";

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = dirname(HERE);

const flags = parseArgs({
  args: Deno.args,
  options: {
    quick: { type: "boolean", default: false },
    "cache-dir": { type: "string" },
    json: { type: "string" },
    cases: { type: "string" },
  },
  strict: true,
});
const quick = flags.values.quick;

/** Sample sizes. */
/** The pause between an agent's steps in the paced cases. */
const AGENT_PACE_MS = 1500;

/** Case groups run (`--cases a,b`; all by default). */
const CASES = (flags.values.cases ??
  "cold,pooled,session,stateful,phases,burst,http,pool").split(",");

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

const rows: Row[] = [];
const extra: Record<string, unknown> = {};

// ---------------------------------------------------------------------------
// Setup

const denoPath = resolveDenoPath();
const ownCache = flags.values["cache-dir"] === undefined;
const cacheDir = flags.values["cache-dir"] ??
  await Deno.makeTempDir({ prefix: "pyodide-sandbox-bench-" });
const machine = describeMachine(quick);
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
printReport({
  rows,
  extra,
  machine,
  loadBefore,
  started: benchStarted,
  json: flags.values.json,
});

// ---------------------------------------------------------------------------
// Cases

async function runAll(env: Environment): Promise<void> {
  const on = (name: string) => CASES.includes(name);
  if (on("cold")) await coldCases(env);
  if (on("pooled")) await pooledCase();
  if (on("session")) await sessionCases();
  if (on("stateful")) await statefulCases();
  if (on("phases")) await statePhases(env);
  const ctx = { N, cacheDir, rows, extra };
  if (on("burst")) await burstCase(ctx);
  if (on("http")) await httpCase(ctx);
  if (on("pool")) await poolRows();
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

/** Minor page faults of a bare `deno run` (bench/_cold_host.ts --bare). */
async function bareFaults(): Promise<number> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", join(HERE, "_cold_host.ts"), "--bare"],
    cwd: ROOT,
    stdout: "piped",
    stderr: "null",
    stdin: "null",
  }).output();
  return JSON.parse(new TextDecoder().decode(out.stdout)).faults;
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
  const bare: number[] = [];
  for (let i = 0; i < 3; i++) bare.push(await bareFaults());
  rows.push({
    name: "minor page faults, fresh host + child minus bare `deno run`",
    unit: "faults",
    samples: phases.map((p) => p.faults - median(bare)),
    latency: false,
    target: "<= 30000",
    meets: (m) => m <= 30000,
    note: `bare deno run ${median(bare).toFixed(0)} faults`,
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
    const children = runnerChildren();
    rows.push({
      name: "RSS of one idle pooled child",
      unit: "MB",
      samples: children.map(rssMb),
      latency: false,
      target: "<= 130 MB",
      meets: (m) => m <= 130,
      note: "VmRSS, with the deno binary's shared pages",
    });
    rows.push({
      name: "private dirty memory of one idle pooled child",
      unit: "MB",
      samples: children.map(privateDirtyMb),
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
        target: "<= 30 ms",
        meets: (m) => m <= 30,
      });
      rows.push({
        name: "session bytes, 10k list + function + regex (diff)",
        unit: "KB",
        samples: sizes,
        latency: false,
        target: "<= 400 KB",
        meets: (m) => m <= 400,
      });
      const restore = (paceMs: number) =>
        restoreSamples(sandbox, saved!, paceMs, 2 * (N.step + 5) + 10000);
      const restores = await restore(0);
      rows.push({
        name: "session restore: openSession({sessionBytes})",
        unit: "ms",
        samples: restores,
        latency: false,
        note: "back to back: the paused child is still loading",
      });
      const paced = await restore(AGENT_PACE_MS);
      rows.push({
        name: "session restore at an agent's pace (1.5 s apart)",
        unit: "ms",
        samples: paced,
        latency: false,
        note: "compare with the cold start, warm host row (target <= 0.5x)",
      });
    } finally {
      await session.close();
    }
  } finally {
    await sandbox.close();
  }
}

/**
 * Times `N.save` restores of saved bytes (`openSession` until it returns),
 * `paceMs` apart, checking each restored session's `f(2) + len(data)`.
 */
async function restoreSamples(
  sandbox: PyodideSandbox,
  saved: { sessionBytes: Uint8Array; sessionMetadata: SessionMetadata },
  paceMs: number,
  expected: number,
): Promise<number[]> {
  const samples: number[] = [];
  for (let i = 0; i < N.save; i++) {
    if (paceMs > 0) await sleep(paceMs);
    const [ms, resumed] = await timed(() => sandbox.openSession(saved));
    samples.push(ms);
    const check = await resumed.execute("f(2) + len(data)");
    await resumed.close();
    if (check.result !== expected) {
      throw new Error(`A restored session is wrong: ${JSON.stringify(check)}`);
    }
  }
  return samples;
}

/**
 * Stateful mode (issue 11): the bytes after `x = 1`, and one `execute`
 * round trip with `sessionBytes` (restore, `x += 1`, new bytes) at an
 * agent's pace.
 */
async function statefulCases(): Promise<void> {
  log(`stateful: ${N.save} round trips`);
  const sandbox = new PyodideSandbox({ poolSize: 0, cacheDir, stateful: true });
  try {
    const sizes: number[] = [];
    const trips: number[] = [];
    let bytes;
    for (let i = 0; i < N.save; i++) {
      const first = await sandbox.execute("x = 1");
      if (!first.sessionBytes) throw new Error("No session bytes");
      sizes.push(first.sessionBytes.length / 1024);
      bytes = {
        sessionBytes: first.sessionBytes,
        sessionMetadata: first.sessionMetadata,
      };
    }
    for (let i = 0; i < N.save; i++) {
      await sleep(AGENT_PACE_MS);
      const [ms, next] = await timed(() =>
        sandbox.execute("x += 1; x", bytes!)
      );
      if (next.result !== 2) {
        throw new Error(`A round trip went wrong: ${JSON.stringify(next)}`);
      }
      trips.push(ms);
    }
    rows.push({
      name: "session bytes after `x = 1` (diff)",
      unit: "KB",
      samples: sizes,
      latency: false,
      target: "<= 100 KB",
      meets: (m) => m <= 100,
    });
    rows.push({
      name: "stateful execute round trip (`x += 1` with sessionBytes)",
      unit: "ms",
      samples: trips,
      latency: false,
      target: "<= 120 ms",
      meets: (m) => m <= 120,
    });
  } finally {
    await sandbox.close();
  }
  rows.push({
    name: "stateful round trip, chained (each step from the last one's bytes)",
    unit: "ms",
    samples: await chainedTrips(),
    latency: false,
    target: "<= 120 ms",
    meets: (m) => m <= 120,
  });
}

/**
 * An agent's loop in stateful mode with the default pool: each step
 * continues from the bytes the step before returned (the kept child), at
 * an agent's pace.
 */
async function chainedTrips(): Promise<number[]> {
  const sandbox = new PyodideSandbox({ cacheDir, stateful: true });
  try {
    const trips: number[] = [];
    let last = await sandbox.execute("x = 0");
    for (let i = 1; i <= N.save; i++) {
      await sleep(AGENT_PACE_MS);
      const bytes = {
        sessionBytes: last.sessionBytes!,
        sessionMetadata: last.sessionMetadata,
      };
      const [ms, next] = await timed(() => sandbox.execute("x += 1; x", bytes));
      if (next.result !== i) {
        throw new Error(`A chained step went wrong: ${JSON.stringify(next)}`);
      }
      trips.push(ms);
      last = next;
    }
    return trips;
  } finally {
    await sandbox.close();
  }
}

/** Reads a snapshot file's image a chunk at a time, as the child does. */
function imageReader(path: string): { read: ImageReader; close(): void } {
  const file = Deno.openSync(path);
  const total = file.statSync().size;
  const head = new Uint8Array(48);
  file.readSync(head);
  const offset = snapshotImageOffset(head, total) as number;
  const read: ImageReader = (start, into) => {
    file.seekSync(offset + start, Deno.SeekMode.Start);
    const want = Math.max(0, Math.min(into.length, total - offset - start));
    let at = 0;
    while (at < want) {
      const n = file.readSync(into.subarray(at, want));
      if (!n) break;
      at += n;
    }
    into.fill(0, at);
  };
  return { read, close: () => file.close() };
}

/**
 * The phases of a save and a restore, measured in this process on an
 * interpreter loaded from the same base snapshot with the same functions
 * the child uses: the snapshot header (the heap itself is not copied), the
 * diff of the live heap against the base file read in chunks, deflate;
 * inflate, parse, the base image read into a heap-sized buffer and the
 * pages applied in place.
 */
async function statePhases(env: Environment): Promise<void> {
  log("state phases (in this process)");
  const path = await ensureSnapshot(env);
  const { loadPyodide } = await import("pyodide");
  const pyodide = await loadPyodide(
    { _loadSnapshot: await Deno.readFile(path), _makeSnapshot: true } as never,
  ) as unknown as {
    runPython(code: string): unknown;
    makeMemorySnapshot(): Uint8Array;
    _module: { HEAP8: Int8Array };
  };
  pyodide.runPython(
    "import json, re\ndata = list(range(10000))\n" +
      "def f(n):\n    return n * 2\npattern = re.compile('a+')",
  );
  const phases: Record<string, number[]> = {};
  const add = (name: string, ms: number) => (phases[name] ??= []).push(ms);
  const base = imageReader(path);
  try {
    for (let i = 0; i < N.save; i++) {
      const [headerMs, header] = await timed(() => {
        const heap = pyodide._module.HEAP8;
        pyodide._module.HEAP8 = new Int8Array(0);
        try {
          return Promise.resolve(pyodide.makeMemorySnapshot());
        } finally {
          pyodide._module.HEAP8 = heap;
        }
      });
      const heap = pyodide._module.HEAP8;
      const image = new Uint8Array(heap.buffer, 0, heap.length);
      const [diffMs, diff] = await timed(() =>
        Promise.resolve(
          encodeImageDiff(header, image, base.read, new Uint8Array(0)),
        )
      );
      const [deflateMs, deflated] = await timed(() =>
        Promise.resolve(zlib.deflateRawSync(diff, { level: 3 }))
      );
      add("save: snapshot header", headerMs);
      add("save: diff live heap vs base file", diffMs);
      add("save: deflate", deflateMs);
      const [inflateMs, inflated] = await timed(() =>
        Promise.resolve(new Uint8Array(zlib.inflateRawSync(deflated)))
      );
      const parsed = parseDiff(inflated, 2 ** 31);
      if (typeof parsed === "string") throw new Error(parsed);
      const [applyMs] = await timed(() => {
        const target = new Uint8Array(parsed.imageBytes);
        base.read(0, target);
        applyPages(target, parsed);
        return Promise.resolve(target);
      });
      add("restore: inflate", inflateMs);
      add("restore: base image read + diff applied", applyMs);
    }
  } finally {
    base.close();
  }
  for (const [name, samples] of Object.entries(phases)) {
    rows.push({ name: `phase, ${name}`, unit: "ms", samples, latency: false });
  }
  extra.statePhases = phases;
}
