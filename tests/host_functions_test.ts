/**
 * Host functions in the async API: JSON arguments and results, async
 * functions, `from host import`, `HostError` and `TypeError`. Real Pyodide in
 * real children.
 */

import assert from "node:assert/strict";
import {
  assertNoDenoChildren,
  TEST_DENO_PATH,
  withSandbox,
} from "./_helpers.ts";

Deno.test("PyodideSandbox host functions: JSON arguments and results, async functions, `from host import`, HostError and TypeError", async () => {
  const calls: unknown[][] = [];
  await withSandbox({
    poolSize: 0,
    denoPath: TEST_DENO_PATH,
    functions: {
      add: (a, b) => (a as number) + (b as number),
      echo: (...args) => {
        calls.push(args);
        return { args };
      },
      lookup: async (key) => {
        await new Promise((r) => setTimeout(r, 20));
        return { key, found: true, tags: ["x", "ü"] };
      },
      fail: () => {
        throw new Error("quota exceeded: 3 calls");
      },
      failLater: async () => {
        await new Promise((r) => setTimeout(r, 5));
        throw new Error("backend down: try later");
      },
      nothing: () => {},
    },
  }, async (sandbox) => {
    const result = await sandbox.execute(`
from host import add, echo, HostError
import host
r = {}
r["add"] = add(2, 3)
r["global"] = lookup("k1")
r["module"] = host.lookup("k2")["key"]
r["echo"] = echo("é", 1.5, None, True, [1, {"k": "v"}])
r["nothing"] = nothing()
for name, fn in (("fail", fail), ("failLater", failLater)):
    try:
        fn()
    except host.HostError as e:
        r[name] = [type(e).__name__, str(e), isinstance(e, Exception)]
r["HostError is host.HostError"] = HostError is host.HostError
bad = []
for args in ((object(),), (float("nan"),), (b"raw",), ({1, 2},)):
    try:
        echo(*args)
        bad.append("passed")
    except TypeError as e:
        bad.append("TypeError")
try:
    echo(x=1)
    bad.append("passed")
except TypeError:
    bad.append("TypeError")
r["bad"] = bad
r
`);
    assert.equal(result.status, "success", result.stderr);
    assert.deepEqual(result.result, {
      add: 5,
      global: { key: "k1", found: true, tags: ["x", "ü"] },
      module: "k2",
      echo: { args: ["é", 1.5, null, true, [1, { k: "v" }]] },
      nothing: null,
      fail: ["HostError", "quota exceeded: 3 calls", true],
      failLater: ["HostError", "backend down: try later", true],
      "HostError is host.HostError": true,
      bad: ["TypeError", "TypeError", "TypeError", "TypeError", "TypeError"],
    });
    // The rejected calls never reached the host function.
    assert.deepEqual(calls, [["é", 1.5, null, true, [1, { k: "v" }]]]);

    // Uncaught, a host error is the run's exception.
    const uncaught = await sandbox.execute("fail()");
    assert.equal(uncaught.status, "error");
    assert.equal(uncaught.error?.kind, "exception");
    assert.equal(uncaught.error?.type, "HostError");
    assert.equal(uncaught.error?.message, "quota exceeded: 3 calls");
    assert.ok(uncaught.stderr.includes("HostError: quota exceeded"));

    // Functions are there in live sessions too.
    const session = await sandbox.openSession();
    try {
      const a = await session.execute("from host import add\nx = add(1, 2)");
      assert.equal(a.status, "success", a.stderr);
      const b = await session.execute("add(x, 10)");
      assert.equal(b.result, 13, b.stderr);
    } finally {
      await session.close();
    }
  });
  await assertNoDenoChildren("after the host function test");
});
