/**
 * Helpers of the speed benchmark (`bench/bench.ts`): sample statistics,
 * `/proc` readings of the children, and the report.
 *
 * @module
 */

/** What a case needs of the run. */
export interface CaseContext {
  /** Sample sizes. */
  N: { burst: number; burstCalls: number };
  /** The cache folder every sandbox uses. */
  cacheDir: string;
  /** The report's rows, to add to. */
  rows: Row[];
  /** Raw figures for the JSON file, to add to. */
  extra: Record<string, unknown>;
}

/** One row of the report. */
export interface Row {
  name: string;
  unit: "ms" | "calls/s" | "MB" | "KB" | "faults";
  samples: number[];
  /** `true`: ratio = naive / this (a latency); otherwise no ratio. */
  latency: boolean;
  target?: string;
  /** Whether the median meets the target. */
  meets?: (median: number, naive: number) => boolean;
  note?: string;
}

/** The median of some samples (NaN for none). */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** A progress line on stderr. */
export function log(text: string): void {
  console.error(`[bench] ${text}`);
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** CPU seconds of this process's reaped children (`/proc/self/stat`). */
export function childrenCpuSeconds(): number {
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
export function runnerChildren(): number[] {
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

/** The resident set size of a process, in MB. */
export function rssMb(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const match = /VmRSS:\s+(\d+) kB/.exec(status);
  return match ? Number(match[1]) / 1024 : NaN;
}

/** The private dirty memory of a process (`smaps_rollup`), in MB. */
export function privateDirtyMb(pid: number): number {
  const rollup = Deno.readTextFileSync(`/proc/${pid}/smaps_rollup`);
  const match = /Private_Dirty:\s+(\d+) kB/.exec(rollup);
  return match ? Number(match[1]) / 1024 : NaN;
}

/** Runs `fn` and returns its duration (ms) with its value. */
export async function timed<T>(fn: () => Promise<T>): Promise<[number, T]> {
  const t = performance.now();
  const value = await fn();
  return [performance.now() - t, value];
}

/** A number for the table, with as many digits as it deserves. */
export function fmt(x: number | undefined, unit = "ms"): string {
  if (x === undefined || !Number.isFinite(x)) return "-";
  if (unit === "calls/s") return x.toFixed(2);
  if (x >= 100) return x.toFixed(0);
  if (x >= 10) return x.toFixed(1);
  return x.toFixed(2);
}

/**
 * The machine, the date and the command, for the report's first line.
 *
 * @param quick Whether the run is `--quick`.
 * @returns Printable fields.
 */
export function describeMachine(quick: boolean): Record<string, string> {
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

/** What the report is made of. */
export interface BenchRun {
  rows: Row[];
  extra: Record<string, unknown>;
  machine: Record<string, string>;
  loadBefore: number[];
  /** `performance.now()` when the run started. */
  started: number;
  /** A file for the raw samples as JSON. */
  json?: string;
}

/**
 * Prints the table, the notes and a Markdown copy; writes the JSON file
 * when asked to.
 *
 * @param run The rows and the run's circumstances.
 */
export function printReport(run: BenchRun): void {
  const { rows, extra, machine, loadBefore } = run;
  // NaN without the naive row (`--cases` without cold): ratios print "-".
  const naiveRow = rows.find((r) => r.name.startsWith("naive"));
  const naive = naiveRow ? median(naiveRow.samples) : NaN;
  const table = rows.map((row) => {
    const m = median(row.samples);
    const x = naive / m;
    const ratio = row.latency && Number.isFinite(x)
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
  const seconds = (performance.now() - run.started) / 1000;
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
  if (run.json) {
    Deno.writeTextFileSync(
      run.json,
      JSON.stringify(
        { machine, rows, extra, seconds, loadBefore, load },
        null,
        2,
      ),
    );
  }
}
