/**
 * The attack battery: the child's command line (`flags.*`).
 *
 * Part of the attack battery (issue 4): each attack asserts that it was
 * contained AND that the host, a witness session and the attacked sandbox
 * are unaffected (`withBattery`, `_battery.ts`). SECURITY.md's tables list
 * these steps (checked by `security_table_test.ts`).
 */

import assert from "node:assert/strict";
import { BasePyodideSandbox } from "../mod.ts";
import { attack, options } from "./_battery.ts";

Deno.test("PyodideSandbox.buildCommand() keeps remote imports, npm downloads and prompts off and grants nothing by default", async (t) => {
  const base = new BasePyodideSandbox(options());
  const { args } = base.buildCommand();
  await attack(t, "flags.no_remote", () => {
    // Blocks computed imports from deno.land, esm.sh, jsr.io and the other
    // default import hosts, which this machine cannot watch.
    assert.ok(args.includes("--no-remote"));
  });
  await attack(t, "flags.cached_only", () => {
    assert.ok(args.includes("--cached-only"));
  });
  await attack(t, "flags.no_prompt", () => {
    assert.ok(args.includes("--no-prompt"));
    assert.ok(args.includes("--no-config"));
    assert.ok(args.includes("--node-modules-dir=none"));
  });
  await attack(t, "flags.no_grants", () => {
    for (const arg of args) {
      assert.doesNotMatch(
        arg,
        /^--(allow-(net|env|write|run|ffi|sys|import|all|hrtime|scripts)|unstable)|^-A$/,
        `unexpected flag ${arg}`,
      );
    }
    const reads = args.filter((a) => a.startsWith("--allow-read"));
    assert.equal(reads.length, 1);
    const paths = reads[0].slice("--allow-read=".length).split(",");
    for (const path of paths) {
      assert.match(
        path,
        /(pyodide\.asm\.wasm|python_stdlib\.zip|pyodide-lock\.json|snapshot-[^/]+\.bin)$/,
        `unexpected read grant ${path}`,
      );
    }
  });
  await attack(t, "flags.grants_keep_remote_off", () => {
    const granted = new BasePyodideSandbox(
      options({ allowNet: ["example.com"], allowRead: ["/srv/data"] }),
    ).buildCommand().args;
    assert.ok(granted.includes("--no-remote"));
    assert.ok(granted.includes("--cached-only"));
    assert.ok(granted.includes("--allow-net=example.com"));
  });
});
