/**
 * SECURITY.md's attack tables and the attack battery agree: every attack id
 * a table lists is a named step of the test the table names, and every step
 * is listed. The battery itself is split by attack surface into the
 * `security_*_test.ts` files (shared setup in `_security.ts`).
 */

import assert from "node:assert/strict";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));

/** Files whose tests hold attacks listed in SECURITY.md's tables. */
const ATTACK_FILES = [
  "security_process_test.ts",
  "security_files_test.ts",
  "security_network_test.ts",
  "security_forgery_test.ts",
  "security_resources_test.ts",
  "security_sessions_test.ts",
  "hostile_frames_test.ts",
  "hostile_results_test.ts",
  "hostile_python_test.ts",
  "fuzz_test.ts",
  "cli_hostile_test.ts",
  "mcp_limits_test.ts",
  "mcp_output_test.ts",
  "cache_dir_test.ts",
  "child_isolation_test.ts",
  "host_links_test.ts",
];

Deno.test("SECURITY.md's attack tables list exactly the attacks of the battery", async () => {
  const sources = new Map<string, string>();
  for (const file of ATTACK_FILES) {
    sources.set(file, await Deno.readTextFile(join(HERE, file)));
  }
  const doc = await Deno.readTextFile(join(HERE, "..", "SECURITY.md"));
  const idPattern =
    /"((?:flags|files|cache|symlinks|disk|env|net|imports|proc|proto|integrity|res|sessions|pool|control|hostcall|frames|rfiles|display|idle|fuzz|clifiles|clisession|mcpmsg|cachedir|nonce|introspect|codegen)\.[a-z0-9_]+)"/g;
  const inTests = new Set(
    [...sources.values()].flatMap((source) =>
      [...source.matchAll(idPattern)].map((m) => m[1])
    ),
  );
  const rows = doc.split("\n").filter((line) =>
    /^\|\s*`[a-z]+\.[a-z0-9_]+`/.test(line)
  );
  const inDoc = new Map<string, string>();
  for (const row of rows) {
    const cells = row.split("|").map((c) => c.trim());
    const id = cells[1].replaceAll("`", "");
    assert.ok(!inDoc.has(id), `${id} is listed twice`);
    inDoc.set(id, cells[5]);
  }
  assert.deepEqual([...inDoc.keys()].sort(), [...inTests].sort());
  for (const [id, test] of inDoc) {
    // A test is named by its full name or, for names built in a loop, by
    // the fixed part of it; its body runs to the next Deno.test.
    const holder = [...sources.values()].find((source) =>
      source.includes(test)
    );
    assert.ok(holder, `${id}: no test named "${test}"`);
    const start = holder.indexOf(test);
    const next = holder.indexOf("Deno.test(", start + 1);
    const body = holder.slice(start, next < 0 ? undefined : next);
    assert.ok(body.includes(`"${id}"`), `${id} is not in the test "${test}"`);
  }
});
