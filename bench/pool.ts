/**
 * Benchmark of the warm pool's costs (issue 11, "Lean children"):
 *
 * - "fresh host, default options, first execute": a fresh host process
 *   creates `new PyodideSandbox()` (default options, so a pool of 2) and
 *   runs one `execute`, timed from the constructor until the result; shown
 *   as a ratio to the same run's `poolSize: 0` host (target ≤ 1.25x).
 *   Each sample is its own host process; the two kinds alternate.
 * - "CPU of an idle pooled child over 10 s": utime + stime from
 *   `/proc/<pid>/stat` of a loaded pooled child that waits for work
 *   (target ≤ 0.05 s).
 *
 * Usage: `deno task bench:pool [--repeats N] [--cache-dir DIR]` (also run at
 * the end of `deno task bench`). With `--json` it prints one JSON line with
 * the rows instead of a table.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));
const IDLE_SECONDS = 10;

/** One benchmark row. */
export interface PoolRow {
  /** The case. */
  name: string;
  /** Its median. */
  median: number;
  /** Its unit. */
  unit: string;
  /** Samples taken. */
  n: number;
  /** The target, as text. */
  target: string;
  /** Whether the median meets it. */
  meets: boolean;
  /** Detail (the samples, the reference case). */
  note: string;
  /** The samples in milliseconds (default-options hosts; idle CPU). */
  samplesMs: number[];
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** The fields of `/proc/<pid>/stat` after the command name. */
function statFields(pid: number): string[] | undefined {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  } catch {
    return undefined;
  }
}

/** CPU seconds (user + system) a process has used. */
function cpuSeconds(pid: number): number {
  const f = statFields(pid);
  return f ? (Number(f[11]) + Number(f[12])) / 100 : NaN;
}

/** Live children of this process. */
function childPids(): number[] {
  const out: number[] = [];
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    const f = statFields(Number(entry.name));
    if (f && Number(f[1]) === Deno.pid && f[0] !== "Z") {
      out.push(Number(entry.name));
    }
  }
  return out;
}

/** Host mode: one sandbox, one execute, one JSON line. */
async function host(cacheDir: string, pool: string): Promise<void> {
  const { PyodideSandbox } = await import("../mod.ts");
  const started = performance.now();
  const sandbox = pool === "default"
    ? new PyodideSandbox({ cacheDir })
    : new PyodideSandbox({ cacheDir, poolSize: Number(pool) });
  const result = await sandbox.execute("print(1)");
  const executeMs = performance.now() - started;
  await sandbox.close();
  if (result.status !== "success" || result.stdout !== "1\n") {
    console.error(JSON.stringify(result));
    Deno.exit(1);
  }
  console.log(JSON.stringify({ executeMs }));
  Deno.exit(0);
}

async function freshHost(cacheDir: string, pool: string): Promise<number> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", join(HERE, "pool.ts"), "--host", pool],
    env: { POOL_BENCH_CACHE: cacheDir },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim().split("\n").pop();
  if (!out.success || !text) {
    throw new Error(
      `The bench host failed: ${new TextDecoder().decode(out.stderr)}`,
    );
  }
  return (JSON.parse(text) as { executeMs: number }).executeMs;
}

async function firstCallCase(
  cacheDir: string,
  repeats: number,
): Promise<PoolRow> {
  await freshHost(cacheDir, "0"); // Builds the snapshot; not counted.
  const zero: number[] = [];
  const dflt: number[] = [];
  for (let i = 0; i < repeats; i++) {
    zero.push(await freshHost(cacheDir, "0"));
    dflt.push(await freshHost(cacheDir, "default"));
  }
  const ratio = median(dflt) / median(zero);
  return {
    name: "fresh host, default options, first execute",
    median: ratio,
    unit: "x poolSize 0",
    n: repeats,
    target: "≤ 1.25x",
    meets: ratio <= 1.25,
    note: `default ${median(dflt).toFixed(0)} ms vs poolSize 0 ${
      median(zero).toFixed(0)
    } ms (constructor to result, median of ${repeats} fresh hosts each)`,
    samplesMs: dflt,
  };
}

async function idleCpuCase(cacheDir: string, repeats: number): Promise<
  PoolRow
> {
  const { PyodideSandbox } = await import("../mod.ts");
  const samples: number[] = [];
  for (let i = 0; i < Math.max(1, Math.min(repeats, 3)); i++) {
    const sandbox = new PyodideSandbox({ cacheDir, poolSize: 1 });
    try {
      await sandbox.warmup();
      await new Promise((r) => setTimeout(r, 1000)); // Let the load settle.
      const [pid] = childPids();
      const before = cpuSeconds(pid);
      await new Promise((r) => setTimeout(r, IDLE_SECONDS * 1000));
      samples.push(cpuSeconds(pid) - before);
    } finally {
      await sandbox.close();
    }
  }
  const m = median(samples);
  return {
    name: `CPU of an idle pooled child over ${IDLE_SECONDS} s`,
    median: m,
    unit: "s",
    n: samples.length,
    target: "≤ 0.05 s",
    meets: m <= 0.05,
    note: `samples ${samples.map((s) => s.toFixed(2)).join(", ")} s`,
    samplesMs: samples.map((s) => s * 1000),
  };
}

/**
 * Runs both cases.
 *
 * @param cacheDir The cache folder (the snapshot is built there once).
 * @param repeats Fresh hosts per kind.
 * @returns The rows.
 */
export async function poolCases(
  cacheDir: string,
  repeats: number,
): Promise<PoolRow[]> {
  const first = await firstCallCase(cacheDir, repeats);
  const idle = await idleCpuCase(cacheDir, repeats);
  return [first, idle];
}

async function main(): Promise<void> {
  const flags = parseArgs({
    args: Deno.args,
    options: {
      host: { type: "string" },
      repeats: { type: "string", default: "5" },
      "cache-dir": { type: "string" },
      json: { type: "boolean", default: false },
    },
  });
  if (flags.values.host !== undefined) {
    return await host(Deno.env.get("POOL_BENCH_CACHE")!, flags.values.host);
  }
  const own = flags.values["cache-dir"] === undefined;
  const cacheDir = flags.values["cache-dir"] ??
    await Deno.makeTempDir({ prefix: "pool-bench-" });
  const load = Deno.loadavg().map((x) => x.toFixed(2)).join(" ");
  try {
    const rows = await poolCases(cacheDir, Number(flags.values.repeats));
    if (flags.values.json) {
      console.log(JSON.stringify({ load, rows }));
      return;
    }
    console.log(`load average at start: ${load}`);
    for (const r of rows) {
      const value = r.unit === "s"
        ? `${r.median.toFixed(3)} s`
        : `${r.median.toFixed(2)}${r.unit}`;
      console.log(
        `${r.name}: ${value} (target ${r.target}: ${
          r.meets ? "met" : "NOT met"
        }); ${r.note}`,
      );
    }
  } finally {
    if (own) await Deno.remove(cacheDir, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) await main();
