/**
 * A bounded run of the fuzzer (tests/_fuzz.ts) inside the suite: every
 * target for a few seconds with a fixed seed (`FUZZ_SEED` overrides it).
 * `deno task fuzz` runs it longer.
 *
 * The fuzzer runs in a process of its own: `deno test --parallel` runs
 * modules side by side in one process, and the host-RSS bound must measure
 * the fuzzer's host alone.
 *
 * @module
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { type FuzzReport, RSS_BOUND_BYTES, TARGETS } from "./_fuzz.ts";

const SEED = Number(Deno.env.get("FUZZ_SEED") ?? 20260917);

Deno.test("The host holds against seeded hostile frames, host calls, session bytes, HTTP bodies and MCP messages", async () => {
  // Attacks (SECURITY.md): "fuzz.seeded"
  const fuzzer = fileURLToPath(new URL("./_fuzz.ts", import.meta.url));
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-all",
      fuzzer,
      "--seed",
      String(SEED),
      "--iterations",
      "100000",
      "--seconds",
      "8",
      "--targets",
      TARGETS.join(","),
      "--json",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  const log = `${text}\n${new TextDecoder().decode(out.stderr)}`;
  assert.equal(out.code, 0, log);
  const lines = text.trim().split("\n");
  const report = JSON.parse(lines[lines.length - 1]) as FuzzReport;
  assert.deepEqual(report.failures, [], `seed ${SEED}:\n${log}`);
  for (const target of TARGETS) {
    assert.ok(
      report.stats[target].iterations > 0,
      `${target} ran no iteration:\n${log}`,
    );
  }
  assert.ok(report.peakRssGrowth < RSS_BOUND_BYTES, log);
});
