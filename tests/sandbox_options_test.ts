/**
 * Memory limits (Python and JavaScript side), the check that `deno` runs, and
 * option and call validation with `TypeError` and `RangeError`.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { BasePyodideSandbox, PyodideSandbox } from "../mod.ts";
import {
  assertError,
  assertNoDenoChildren,
  assertNoDenoChildrenNow,
  assertSuccess,
  withHostRssLock,
  withSandbox,
  withTempDir,
} from "./_helpers.ts";

Deno.test("PyodideSandbox.execute() returns a memory error when Python exceeds memoryLimitMb, and the host is fine", async () => {
  await withSandbox({}, async (sandbox) => {
    // The host's RSS is shared with the other test modules of this
    // process: measured while none of them measures theirs.
    await withHostRssLock(async () => {
      const before = Deno.memoryUsage().rss;
      const result = await sandbox.execute(
        "print('allocating', flush=True)\ndata = bytearray(2 * 128 * 2**20)\nlen(data)",
        { memoryLimitMb: 128, timeoutSeconds: 60 },
      );
      assertError(result, "memory");
      assert.equal(result.stdout, "allocating\n");
      assert.ok(result.stderr.length > 0, "stderr explains the error");
      // The host process did not take the allocation.
      assert.ok(Deno.memoryUsage().rss < before + 200 * 2 ** 20);
    });
    // A delivered result lets the SIGKILLed child be reaped in the background.
    await assertNoDenoChildren("soon after the call");
    // The sandbox still works, and the same allocation fits a larger limit.
    const after = await sandbox.execute(
      "data = bytearray(2 * 128 * 2**20)\nlen(data)",
      { memoryLimitMb: 1024 },
    );
    assertSuccess(after);
    assert.equal(after.result, 256 * 2 ** 20);
  });
});

Deno.test("PyodideSandbox.execute() kills a child whose JavaScript-side memory exceeds the limit", async () => {
  await withSandbox({ memoryLimitMb: 128 }, async (sandbox) => {
    const result = await sandbox.execute(
      `import js
print('filling', flush=True)
chunks = []
for _ in range(8):
    a = js.Uint8Array.new(256 * 2**20)
    a.fill(1)
    chunks.append(a)
"survived"`,
      { timeoutSeconds: 60 },
    );
    assertError(result, "memory");
    assert.equal(result.error?.type, undefined, "a kill has no Python type");
    assert.equal(result.stdout, "filling\n");
    assertNoDenoChildrenNow("after the call");
    const after = await sandbox.execute("'fine'");
    assertSuccess(after);
  });
});

Deno.test("BasePyodideSandbox throws when deno cannot be run, and skipDenoCheck skips the check", async () => {
  for (const denoPath of ["/nonexistent/deno", "/bin/false"]) {
    for (const Sandbox of [BasePyodideSandbox, PyodideSandbox]) {
      assert.throws(
        () => new Sandbox({ denoPath }),
        (error: unknown) =>
          error instanceof Error &&
          error.message.startsWith("Deno is not installed or not in PATH") &&
          error.message.includes(denoPath) &&
          error.message.includes("npm install -g deno"),
      );
    }
  }
  const skipped = new PyodideSandbox({
    denoPath: "/nonexistent/deno",
    skipDenoCheck: true,
  });
  await skipped.close();
  new BasePyodideSandbox({
    denoPath: "/nonexistent/deno",
    skipDenoCheck: true,
  });

  // A wrapper that logs its arguments shows when the check runs, and that
  // the children run the given denoPath.
  await withTempDir(async (dir) => {
    const log = join(dir, "calls.log");
    const make = async (name: string) => {
      const path = join(dir, name);
      await Deno.writeTextFile(
        path,
        `#!/bin/sh\necho "$1" >> ${JSON.stringify(log)}\nexec ${
          JSON.stringify(Deno.execPath())
        } "$@"\n`,
      );
      await Deno.chmod(path, 0o755);
      return path;
    };
    const checked = await make("deno-checked");
    new BasePyodideSandbox({ denoPath: checked });
    assert.deepEqual(
      (await Deno.readTextFile(log)).trim().split("\n"),
      ["--version"],
    );
    await Deno.remove(log);

    const unchecked = await make("deno-unchecked");
    await withSandbox({
      denoPath: unchecked,
      skipDenoCheck: true,
      poolSize: 0,
    }, async (sandbox) => {
      const readLog = () => Deno.readTextFile(log).catch(() => "");
      assert.ok(!(await readLog()).includes("--version"));
      assert.equal(sandbox.buildCommand().command, unchecked);
      const result = await sandbox.execute("'via the wrapper'");
      assertSuccess(result);
      assert.equal(result.result, "via the wrapper");
      const calls = (await readLog()).trim().split("\n");
      assert.ok(calls.includes("run"), `the child ran via denoPath: ${calls}`);
      assert.ok(!calls.includes("--version"), `${calls}`);
    });
  });
});

Deno.test("PyodideSandbox validates options and calls with TypeError and RangeError", async () => {
  assert.throws(
    () => new PyodideSandbox({ timeoutSeconds: -1 }),
    RangeError,
  );
  assert.throws(
    () => new PyodideSandbox({ stateful: "yes" as unknown as boolean }),
    TypeError,
  );
  assert.throws(
    () =>
      new PyodideSandbox({ allowNet: "example.com" as unknown as string[] }),
    TypeError,
  );
  await withSandbox({}, async (sandbox) => {
    await assert.rejects(
      sandbox.execute(42 as unknown as string),
      TypeError,
    );
    await assert.rejects(
      sandbox.execute("1", { stdin: 5 as unknown as string }),
      TypeError,
    );
    await assert.rejects(
      sandbox.execute("1", { timeoutSeconds: 0 }),
      RangeError,
    );
    await assert.rejects(
      sandbox.execute("1", { memoryLimitMb: 1 }),
      RangeError,
    );
  });
});
