/**
 * A tiny host program for the benchmark's "cold start with snapshot in a
 * fresh host process" case: it creates a `PyodideSandbox` with `poolSize: 0`,
 * runs `execute("print(1)")` once, closes the sandbox and exits. The snapshot
 * is already built (by the benchmark) in the cache folder it is given.
 *
 * It prints one JSON line with its own phase timings (milliseconds since the
 * process's time origin) so the benchmark can show where the time goes.
 *
 * It also reports `faults`: the minor page faults of itself and of the
 * children it waited for (`/proc/self/stat`), and with `--bare` reports
 * them at once without loading anything, for a bare `deno run`.
 *
 * Usage: `deno run --allow-all bench/_cold_host.ts <cacheDir|--bare>
 * [spawnEpochMs]`
 *
 * @module
 */

const top = performance.now();

/** Minor page faults of this process plus those of its reaped children. */
function faults(): number {
  const stat = Deno.readTextFileSync("/proc/self/stat");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // Fields 10 and 11 of stat(5): minflt, cminflt.
  return Number(fields[7]) + Number(fields[8]);
}

if (Deno.args[0] === "--bare") {
  console.log(JSON.stringify({ faults: faults() }));
  Deno.exit(0);
}
const cacheDir = Deno.args[0];
const spawnedAt = Number(Deno.args[1] ?? NaN);
// Imported dynamically so that loading the module is timed on its own.
const { PyodideSandbox } = await import("../mod.ts");
const imported = performance.now();
const sandbox = new PyodideSandbox({ poolSize: 0, cacheDir });
const constructed = performance.now();
const result = await sandbox.execute("print(1)");
const executed = performance.now();
await sandbox.close();
const closed = performance.now();
if (result.status !== "success" || result.stdout !== "1\n") {
  console.error(JSON.stringify(result));
  Deno.exit(1);
}
console.log(JSON.stringify({
  // Process start until this module's first line ran (clock of both
  // processes: epoch milliseconds).
  boot: performance.timeOrigin + top - spawnedAt,
  top,
  importMod: imported - top,
  construct: constructed - imported,
  execute: executed - constructed,
  close: closed - executed,
  total: closed,
  faults: faults(),
}));
Deno.exit(0);
