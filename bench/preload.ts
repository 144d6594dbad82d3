/**
 * The preload benchmark of issue 13: `deno task bench:preload [--quick]`.
 *
 * A test wheel that is deliberately slow to import (it builds a large table
 * at import) is served from a local `packageDir`. In one run it measures a
 * pooled call of:
 *
 * - plain `print(1)` (no package: the baseline),
 * - `import slowtable` with `preload: ["slowtable"]` (installed and imported
 *   in the preloaded snapshot the pooled child starts from),
 * - the same with `packages: ["slowtable"]` (installed on each call),
 * - the same with the package detected on import (the peers' approach:
 *   install on import).
 *
 * Target: the preloaded call within 1.5x of the plain pooled `print(1)`.
 *
 * Flags: `--quick` (fewer calls), `--cache-dir <dir>` (default: a fresh
 * temporary folder, removed at the end).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { PyodideSandbox, type SandboxOptions } from "../mod.ts";
import { buildWheel } from "../tests/_wheel.ts";

const flags = parseArgs({
  args: Deno.args,
  options: {
    quick: { type: "boolean", default: false },
    "cache-dir": { type: "string" },
  },
  strict: true,
});
const CALLS = flags.values.quick ? 5 : 15;

/**
 * Seconds of pure-Python work at import (a table computed the slow way),
 * but a small table: the benchmark measures import time, not memory.
 */
const SLOW = buildWheel("slowtable", "1.0.0", {
  "slowtable/__init__.py":
    "TABLE = {i: sum(j * j for j in range(3000)) + i for i in range(1500)}\nSIZE = len(TABLE)\n",
});

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Median and range of pooled calls, each with a full pool. */
async function pooled(
  options: SandboxOptions,
  code: string,
  expect: string,
): Promise<{ median: number; min: number; max: number }> {
  const sandbox = new PyodideSandbox({ poolSize: 2, ...options });
  const samples: number[] = [];
  try {
    await sandbox.warmup();
    await sleep(1000);
    for (let i = 0; i < CALLS; i++) {
      // A pooled call: the pool is full again before each one (an agent's
      // pace on a machine where a refill takes a while).
      await sandbox.warmup();
      await sleep(200);
      const started = performance.now();
      const result = await sandbox.execute(code, { timeoutSeconds: 120 });
      const ms = performance.now() - started;
      if (result.status !== "success" || result.stdout !== expect) {
        throw new Error(
          `A call failed: ${JSON.stringify(result.error)} ${result.stderr}`,
        );
      }
      samples.push(ms);
    }
  } finally {
    await sandbox.close();
  }
  return {
    median: median(samples),
    min: Math.min(...samples),
    max: Math.max(...samples),
  };
}

if (import.meta.main) {
  const own = flags.values["cache-dir"];
  const cacheDir = own ?? await Deno.makeTempDir({ prefix: "bench-preload-" });
  const packageDir = await Deno.makeTempDir({ prefix: "bench-wheels-" });
  await Deno.writeFile(`${packageDir}/${SLOW.fileName}`, SLOW.data);
  const base: SandboxOptions = { cacheDir, packageDir, packageIndexUrls: [] };
  const use = "import slowtable\nprint(slowtable.SIZE)";
  try {
    // The base snapshot and the preloaded one are built before timing.
    const built = performance.now();
    const warm = new PyodideSandbox({ ...base, preload: ["slowtable"] });
    await warm.execute("pass");
    await warm.close();
    const buildMs = performance.now() - built;
    const rows: [string, { median: number; min: number; max: number }][] = [
      ["plain pooled `print(1)`", await pooled(base, "print(1)", "1\n")],
      [
        "pooled `import slowtable` with `preload`",
        await pooled({ ...base, preload: ["slowtable"] }, use, "1500\n"),
      ],
      [
        "pooled, `packages` option (install on each call)",
        await pooled({ ...base, packages: ["slowtable"] }, use, "1500\n"),
      ],
      [
        "pooled, install on import (the peers' way)",
        await pooled(base, use, "1500\n"),
      ],
    ];
    const plain = rows[0][1].median;
    console.log(
      `\nPreload benchmark (${CALLS} pooled calls each, poolSize 2; base + preloaded snapshot built in ${
        (buildMs / 1000).toFixed(1)
      } s)\n`,
    );
    console.log("| Case | Median | Min–max | vs plain `print(1)` |");
    console.log("| --- | ---: | ---: | ---: |");
    for (const [name, r] of rows) {
      console.log(
        `| ${name} | ${r.median.toFixed(0)} ms | ${r.min.toFixed(0)}–${
          r.max.toFixed(0)
        } ms | ${(r.median / plain).toFixed(2)}x |`,
      );
    }
    const ratio = rows[1][1].median / plain;
    console.log(
      `\nTarget (preloaded within 1.5x of plain): ${
        ratio <= 1.5 ? "met" : "NOT met"
      } (${ratio.toFixed(2)}x)`,
    );
  } finally {
    await Deno.remove(packageDir, { recursive: true }).catch(() => {});
    if (!own) await Deno.remove(cacheDir, { recursive: true }).catch(() => {});
  }
}
