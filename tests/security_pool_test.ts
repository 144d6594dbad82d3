/**
 * The attack battery: the warm pool and stateless calls (`pool.*`, `control.*`).
 *
 * Part of the attack battery (issue 4): each attack asserts that it was
 * contained AND that the host, a witness session and the attacked sandbox
 * are unaffected (`withBattery`, `_battery.ts`). SECURITY.md's tables list
 * these steps (checked by `security_table_test.ts`).
 */

import assert from "node:assert/strict";
import { attack, withBattery } from "./_battery.ts";

Deno.test("A stateless call cannot poison the next one, even through the warm pool", async (t) => {
  await withBattery({ poolSize: 1 }, async ({ sandbox }) => {
    const first = await sandbox.execute(`import builtins, sys, js, os
os.makedirs("/home/pyodide", exist_ok=True)
open("/home/pyodide/poison.txt", "w").write("poison")
js.eval("globalThis.poisoned = 1; Object.prototype.polluted = 1; JSON.parse = () => 'poisoned'")
sys.modules["json"] = None
poisoned_global = True
builtins.print = lambda *a, **k: None
js.Deno.pid`);
    assert.equal(first.status, "success", first.stderr);
    await attack(t, "pool.poison_next_call", async () => {
      const second = await sandbox.execute(`import os, sys, js, json
print("clean")
[os.path.exists("/home/pyodide/poison.txt"), "poisoned_global" in globals(), str(js.eval("typeof globalThis.poisoned + ' ' + typeof ({}).polluted")), json.loads("[1]"), js.Deno.pid]`);
      assert.equal(second.status, "success", second.stderr);
      assert.equal(second.stdout, "clean\n");
      const [file, global, js, json, pid] = second.result as [
        boolean,
        boolean,
        string,
        number[],
        number,
      ];
      assert.deepEqual([file, global, js, json], [
        false,
        false,
        "undefined undefined",
        [1],
      ]);
      assert.notEqual(
        pid,
        first.result,
        "the same process served two stateless calls",
      );
    });
  });
});
