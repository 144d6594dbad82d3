/**
 * Timeouts, aborts and process lifetime: endless loops and sleeps end with a
 * timeout, a child that ignores SIGTERM or whose parent dies still ends, no
 * process leaks, and a result says where its time went.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { type CodeExecutionResult, SyncPyodideSandbox } from "../mod.ts";
import {
  assertError,
  assertNoDenoChildren,
  assertNoDenoChildrenNow,
  assertSuccess,
  eventually,
  liveDenoChildren,
  processesStartedAs,
  TEST_DENO_PATH,
  withSandbox,
  withTempDir,
} from "./_helpers.ts";

Deno.test("PyodideSandbox.execute() returns a timeout error for an endless loop and for time.sleep, keeping earlier output", async () => {
  await withSandbox({}, async (sandbox) => {
    for (
      const code of [
        "print('before the loop')\nwhile True:\n    pass",
        "import time\nprint('before the loop')\ntime.sleep(120)",
      ]
    ) {
      const started = performance.now();
      // Start-up counts against the limit: leave room for a loaded machine.
      const result = await sandbox.execute(code, { timeoutSeconds: 8 });
      const elapsed = (performance.now() - started) / 1000;
      assertError(result, "timeout");
      assert.equal(result.stdout, "before the loop\n");
      assert.ok(
        result.stderr.includes("Execution timed out after 8 seconds"),
        result.stderr,
      );
      assert.ok(elapsed >= 7.9, `ran until the limit, not ${elapsed} s`);
      assert.ok(elapsed < 8 + 5, `returned within the limit + 5 s: ${elapsed}`);
      assertNoDenoChildrenNow("no child outlives the call");
    }
    // The constructor's timeout applies when the call gives none.
    const after = await sandbox.execute("'still works'");
    assertSuccess(after);
    assert.equal(after.result, "still works");
  });
});

Deno.test("PyodideSandbox.execute() uses the sandbox's timeoutSeconds by default", async () => {
  await withSandbox({ timeoutSeconds: 2 }, async (sandbox) => {
    const started = performance.now();
    const result = await sandbox.execute("while True:\n    pass");
    const elapsed = (performance.now() - started) / 1000;
    assertError(result, "timeout");
    assert.ok(elapsed < 2 + 5, `${elapsed}`);
    assert.ok(result.stderr.includes("after 2 seconds"), result.stderr);
  });
});

Deno.test("PyodideSandbox.execute() ends a child that ignores SIGTERM and leaks no process after timeouts", async () => {
  await withSandbox({}, async (sandbox) => {
    const result = await sandbox.execute(
      `import js
from pyodide.ffi import create_proxy
js.Deno.addSignalListener("SIGTERM", create_proxy(lambda: None))
js.Deno.addSignalListener("SIGINT", create_proxy(lambda: None))
print("ignoring SIGTERM", flush=True)
while True:
    pass`,
      { timeoutSeconds: 8 },
    );
    assertError(result, "timeout");
    assert.equal(result.stdout, "ignoring SIGTERM\n");
    assertNoDenoChildrenNow("after the call");
  });
  await assertNoDenoChildren("after close");
});

Deno.test("PyodideSandbox.execute() rejects with the caller's abort reason and leaks no process", async () => {
  await withSandbox({}, async (sandbox) => {
    // Aborted while Python runs.
    for (
      const code of [
        "while True:\n    pass",
        "import time\ntime.sleep(120)",
      ]
    ) {
      const controller = new AbortController();
      const reason = new Error("the caller gave up");
      let during: number[] = [];
      const timer = setTimeout(() => {
        during = liveDenoChildren();
        controller.abort(reason);
      }, 1500);
      const started = performance.now();
      try {
        await assert.rejects(
          sandbox.execute(code, {
            signal: controller.signal,
            timeoutSeconds: 60,
          }),
          (error: unknown) => error === reason,
        );
      } finally {
        clearTimeout(timer);
      }
      const elapsed = (performance.now() - started) / 1000;
      assert.ok(elapsed < 1.5 + 5, `the abort ended the call: ${elapsed} s`);
      assert.equal(during.length, 1, "the running child is seen");
      assertNoDenoChildrenNow("no child outlives the abort");
    }

    // Already aborted: rejects without running anything.
    const reason = { custom: "reason object" };
    await assert.rejects(
      sandbox.execute("print('never')", { signal: AbortSignal.abort(reason) }),
      (error: unknown) => error === reason,
    );

    // Without an explicit reason: the signal's default AbortError.
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 500);
    await assert.rejects(
      sandbox.execute("while True:\n    pass", { signal: controller.signal }),
      (error: unknown) =>
        error instanceof DOMException && error.name === "AbortError",
    );
    assertNoDenoChildrenNow("after the call");

    // A signal that never fires changes nothing.
    const ok = await sandbox.execute("1 + 1", {
      signal: new AbortController().signal,
    });
    assertSuccess(ok);
    assert.equal(ok.result, 2);
  });
  await assertNoDenoChildren("after close");
});

Deno.test("a sandbox child whose parent process dies exits by itself", async () => {
  await withTempDir(async (dir) => {
    // A marker path so the orphaned child can be found anywhere in /proc.
    const marker = join(dir, "deno");
    await Deno.symlink(Deno.execPath(), marker);
    const mod = new URL("../mod.ts", import.meta.url).href;
    const script = `
      import { PyodideSandbox } from ${JSON.stringify(mod)};
      const sandbox = new PyodideSandbox({ poolSize: 0, denoPath: ${
      JSON.stringify(marker)
    } });
      sandbox.execute("print('started', flush=True)\\nwhile True:\\n    pass", {
        timeoutSeconds: 600,
        onStdout: () => console.log("STARTED"),
      });
    `;
    const parent = new Deno.Command(Deno.execPath(), {
      args: ["eval", "--no-config", script],
      stdout: "piped",
      stderr: "null",
    }).spawn();
    try {
      const reader = parent.stdout.pipeThrough(new TextDecoderStream())
        .getReader();
      let seen = "";
      while (!seen.includes("STARTED")) {
        const { value, done } = await reader.read();
        if (done) break;
        seen += value;
      }
      reader.releaseLock();
      assert.ok(seen.includes("STARTED"), `the child ran: ${seen}`);
      assert.equal(processesStartedAs(marker).length, 1);
    } finally {
      parent.kill("SIGKILL");
      await parent.status;
      await parent.stdout.cancel().catch(() => {});
    }
    let left: number[] = [];
    await eventually(
      "the orphaned child exits",
      () => (left = processesStartedAs(marker)).length === 0,
      10,
    ).catch((error) => {
      for (const pid of left) Deno.kill(pid, "SIGKILL");
      throw error;
    });
  });
});

/** Asserts `timing` holds three non-negative numbers adding up to `executionTime`. */
function assertTiming(result: CodeExecutionResult, elapsedMs: number): number {
  const timing = result.timing;
  assert.ok(timing, "the result carries timing");
  for (const name of ["queuedMs", "startMs", "runMs"] as const) {
    assert.equal(typeof timing[name], "number", name);
    assert.ok(Number.isFinite(timing[name]) && timing[name] >= 0, name);
  }
  const sum = timing.queuedMs + timing.startMs + timing.runMs;
  assert.ok(
    Math.abs(sum - result.executionTime * 1000) < 5,
    `phases ${sum} ms add up to executionTime ${result.executionTime} s`,
  );
  assert.ok(
    sum <= elapsedMs + 50 && sum > elapsedMs - 3000,
    `phases ${sum} ms are about the elapsed ${elapsedMs} ms`,
  );
  return sum;
}

Deno.test("PyodideSandbox.execute() says where a timed-out call's time went: queued, start-up and code", async () => {
  await withSandbox({ maxConcurrency: 1 }, async (sandbox) => {
    const started = performance.now();
    const elapsed = () => performance.now() - started;
    // The second call waits in the queue while the first one runs out of
    // its time, then runs out of its own.
    const first = sandbox.execute("while True:\n    pass", {
      timeoutSeconds: 3,
    }).then((r) => ({ r, ms: elapsed() }));
    const second = sandbox.execute("while True:\n    pass", {
      timeoutSeconds: 8,
    }).then((r) => ({ r, ms: elapsed() }));
    for (
      const [{ r, ms }, limit] of [[await first, 3], [await second, 8]] as const
    ) {
      assertError(r, "timeout");
      const phases = new RegExp(
        `^Execution timed out after ${limit} seconds \\(queued (\\d+\\.\\d) s, start-up (\\d+\\.\\d) s, code (\\d+\\.\\d) s\\)$`,
      );
      const match = r.error!.message.match(phases);
      assert.ok(match, r.error!.message);
      const spent = Number(match[1]) + Number(match[2]) + Number(match[3]);
      assert.ok(spent <= limit + 0.2, `the phases fit the budget: ${spent}`);
      assert.ok(spent >= limit - 0.2, `the phases use the budget: ${spent}`);
      assert.ok(r.stderr.includes(r.error!.message), r.stderr);
      assertTiming(r, ms);
    }
    // The second call cannot start before the first has given up.
    const queued = (await second).r.timing!.queuedMs;
    assert.ok(queued >= 2500, `the second call was queued: ${queued} ms`);
    const alone = performance.now();
    const ok = await sandbox.execute("6 * 7");
    assertSuccess(ok);
    assertTiming(ok, performance.now() - alone);
  });
});

Deno.test("SyncPyodideSandbox.execute() results carry timing too", () => {
  using sandbox = new SyncPyodideSandbox({
    poolSize: 0,
    denoPath: TEST_DENO_PATH,
  });
  const started = performance.now();
  const result = sandbox.execute("1 + 1");
  assertSuccess(result);
  assertTiming(result, performance.now() - started);
  const late = sandbox.execute("while True:\n    pass", { timeoutSeconds: 2 });
  assertError(late, "timeout");
  assert.match(
    late.error!.message,
    /\(queued .* s, start-up .* s, code .* s\)$/,
  );
});
