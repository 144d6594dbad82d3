/**
 * A bounded run of the fuzzer (tests/_fuzz.ts) inside the suite: every
 * target for a few seconds with a fixed seed (`FUZZ_SEED` overrides it).
 * `deno task fuzz` runs it longer.
 *
 * @module
 */

import assert from "node:assert/strict";
import { RSS_BOUND_BYTES, runFuzz, TARGETS } from "./_fuzz.ts";
import { assertNoDenoChildren } from "./_helpers.ts";

const SEED = Number(Deno.env.get("FUZZ_SEED") ?? 20260917);

Deno.test("The host holds against seeded hostile frames, host calls, session bytes, HTTP bodies and MCP messages", async () => {
  // Attacks (SECURITY.md): "fuzz.seeded"
  const lines: string[] = [];
  const report = await runFuzz({
    seed: SEED,
    iterations: 100_000,
    seconds: 8,
    targets: TARGETS,
    log: (line) => lines.push(line),
  });
  await assertNoDenoChildren("after the fuzz run");
  assert.deepEqual(report.failures, [], `seed ${SEED}:\n${lines.join("\n")}`);
  for (const target of TARGETS) {
    assert.ok(
      report.stats[target].iterations > 0,
      `${target} ran no iteration:\n${lines.join("\n")}`,
    );
  }
  assert.ok(report.peakRssGrowth < RSS_BOUND_BYTES);
});
