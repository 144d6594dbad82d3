/**
 * The FIFO queue and closing (issue 3), with real children: queued calls,
 * their timeouts and aborts, concurrent calls, `close()` with calls running
 * or queued, `await using`, and a script that never closes its sandbox.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { PyodideSandbox } from "../sandbox.ts";
import {
  isRunning,
  processesInSession,
  sandboxChildren,
  waitFor,
} from "./_fixtures/procs.ts";
import { TEST_DENO } from "./_fixtures/procs.ts";
import { withSandbox } from "./_helpers.ts";

/** The pid of the process that ran the code, plus whatever else it returns. */
const PID = "import js\n";

Deno.test("PyodideSandbox with maxConcurrency 1 runs queued calls in FIFO order", async () => {
  await withSandbox({
    denoPath: TEST_DENO,
    poolSize: 0,
    maxConcurrency: 1,
  }, async (sandbox) => {
    const finished: number[] = [];
    const calls = [0, 1, 2].map((i) =>
      sandbox.execute(`print(${i})\n${i}`).then((r) => {
        finished.push(i);
        return r;
      })
    );
    assert.equal(sandbox.queueLength, 2, "two calls wait behind the first");
    const results = await Promise.all(calls);
    assert.deepEqual(finished, [0, 1, 2]);
    results.forEach((r, i) => {
      assert.equal(r.status, "success", r.stderr);
      assert.equal(r.stdout, `${i}\n`);
      assert.equal(r.result, i);
    });
    assert.equal(sandbox.queueLength, 0);
  });
});

Deno.test("PyodideSandbox returns a timeout for a queued call whose timeout expires while it waits", async () => {
  await withSandbox({
    denoPath: TEST_DENO,
    poolSize: 0,
    maxConcurrency: 1,
  }, async (sandbox) => {
    const order: string[] = [];
    const slow = sandbox.execute("import time\ntime.sleep(4)\n'slow'", {
      timeoutSeconds: 60,
    }).then((r) => {
      order.push("slow");
      return r;
    });
    const queued = sandbox.execute("'never ran'", { timeoutSeconds: 0.5 })
      .then((r) => {
        order.push("queued");
        return r;
      });
    const after = sandbox.execute("'after'", { timeoutSeconds: 60 });
    assert.equal(sandbox.queueLength, 2);

    const timedOut = await queued;
    assert.equal(timedOut.status, "error");
    assert.equal(timedOut.error?.kind, "timeout");
    assert.equal(timedOut.result, null);
    assert.match(timedOut.error!.message, /timed out/);
    assert.deepEqual(
      order,
      ["queued"],
      "the queued call did not wait its turn",
    );
    assert.equal(sandbox.queueLength, 1, "the expired call left the queue");

    const slowResult = await slow;
    assert.equal(slowResult.result, "slow", slowResult.stderr);
    const afterResult = await after;
    assert.equal(afterResult.result, "after", "the queue still works");
  });
});

Deno.test("PyodideSandbox returns each of 16 concurrent calls its own output", async () => {
  await withSandbox({
    denoPath: TEST_DENO,
    poolSize: 2,
    maxConcurrency: 4,
  }, async (sandbox) => {
    const results = await Promise.all(
      Array.from({ length: 16 }, (_, i) =>
        sandbox.execute(
          PID +
            `import sys\nprint("out ${i}")\nprint("err ${i}", file=sys.stderr)\n` +
            `v = ${i}\n[v, v * v, js.Deno.pid]`,
        )),
    );
    const pids = new Set<number>();
    results.forEach((r, i) => {
      assert.equal(r.status, "success", r.stderr);
      assert.equal(r.stdout, `out ${i}\n`);
      assert.equal(r.stderr, `err ${i}\n`);
      const [v, square, pid] = r.result as number[];
      assert.deepEqual([v, square], [i, i * i]);
      pids.add(pid);
    });
    assert.equal(pids.size, 16, "every call ran in its own process");
  });
});

Deno.test("PyodideSandbox.close() stops pooled and running children and settles the running call", async () => {
  const sandbox = new PyodideSandbox({
    denoPath: TEST_DENO,
    poolSize: 2,
  });
  await sandbox.warmup();
  let started!: () => void;
  const running = new Promise<void>((resolve) => started = resolve);
  const call = sandbox.execute(
    "print('started', flush=True)\nwhile True:\n    pass",
    {
      timeoutSeconds: 120,
      onStdout: (text) => {
        if (text.includes("started")) started();
      },
    },
  ).then((r) => r, (e) => e);
  await running;
  const before = sandboxChildren();
  assert.ok(before.length >= 2, `expected pooled + running, got ${before}`);

  await sandbox.close();
  assert.deepEqual(sandboxChildren(), [], "children survived close()");
  for (const pid of before) assert.ok(!isRunning(pid), `${pid} still runs`);
  const settled = await call;
  if (!(settled instanceof Error)) {
    assert.equal(settled.status, "error", "an endless loop cannot succeed");
  }
  await assert.rejects(
    () => sandbox.execute("1"),
    /closed/,
    "a closed sandbox takes no more calls",
  );
  assert.equal(sandbox.poolSize, 0);
});

Deno.test("PyodideSandbox.close() rejects calls still queued and starts no child after it", async () => {
  const sandbox = new PyodideSandbox({
    denoPath: TEST_DENO,
    poolSize: 0,
    maxConcurrency: 1,
  });
  let started!: () => void;
  const running = new Promise<void>((resolve) => started = resolve);
  const first = sandbox.execute(
    "print('started', flush=True)\nwhile True:\n    pass",
    { onStdout: () => started() },
  ).then((r) => r, (e) => e);
  let ran = false;
  const queued = sandbox.execute("print('ran')", {
    onStdout: () => ran = true,
  }).then((r) => r, (e) => e);
  assert.equal(sandbox.queueLength, 1);
  await running;
  await sandbox.close();
  const [firstSettled, queuedSettled] = await Promise.all([first, queued]);
  assert.ok(
    firstSettled instanceof Error || firstSettled.status === "error",
    "the running call was stopped",
  );
  assert.ok(queuedSettled instanceof Error, "the queued call was not refused");
  assert.match(queuedSettled.message, /closed/);
  assert.equal(ran, false, "the queued call ran after close()");
  assert.deepEqual(sandboxChildren(), []);
});

Deno.test("PyodideSandbox rejects a queued call aborted while it waits, and the queue goes on", async () => {
  await withSandbox({
    denoPath: TEST_DENO,
    poolSize: 0,
    maxConcurrency: 1,
  }, async (sandbox) => {
    const slow = sandbox.execute("import time\ntime.sleep(2)\n'slow'");
    const controller = new AbortController();
    let ran = false;
    const aborted = sandbox.execute("print('ran')", {
      signal: controller.signal,
      onStdout: () => ran = true,
    });
    const after = sandbox.execute("'after'");
    assert.equal(sandbox.queueLength, 2);
    const reason = new Error("caller gave up");
    controller.abort(reason);
    await assert.rejects(aborted, (e) => e === reason);
    assert.equal(sandbox.queueLength, 1);
    assert.equal((await slow).result, "slow");
    assert.equal((await after).result, "after");
    assert.equal(ran, false);
  });
});

Deno.test("PyodideSandbox closes children started by a warmup() that close() interrupts", async () => {
  const sandbox = new PyodideSandbox({
    denoPath: TEST_DENO,
    poolSize: 2,
  });
  const warming = sandbox.warmup().then(() => "ready", (e) => e);
  await sandbox.close();
  await warming;
  assert.deepEqual(sandboxChildren(), []);
  // Nothing is started later either.
  await new Promise((resolve) => setTimeout(resolve, 500));
  assert.deepEqual(sandboxChildren(), []);
});

Deno.test("PyodideSandbox is closed by await using at the end of the block", async () => {
  let pooled: number[];
  {
    await using sandbox = new PyodideSandbox({
      denoPath: TEST_DENO,
      poolSize: 1,
    });
    await sandbox.warmup();
    pooled = sandboxChildren();
    assert.equal(pooled.length, 1);
    const result = await sandbox.execute("'inside'");
    assert.equal(result.result, "inside");
  }
  assert.deepEqual(sandboxChildren(), []);
  for (const pid of pooled) assert.ok(!isRunning(pid));
});

Deno.test("a script that uses a pooled sandbox and never closes it exits promptly and leaves no process", async () => {
  const script = fileURLToPath(
    new URL("./_fixtures/forget_close.ts", import.meta.url),
  );
  const child = new Deno.Command("setsid", {
    args: [Deno.execPath(), "run", "-A", "--no-lock", script],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const bound = 20_000;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const outcome = await Promise.race([
    child.output(),
    new Promise<"hung">((resolve) => {
      timer = setTimeout(() => resolve("hung"), bound);
    }),
  ]);
  clearTimeout(timer);
  if (outcome === "hung") {
    child.kill("SIGKILL");
    await child.output();
    // Leave nothing behind for the next test either.
    const stray = processesInSession(child.pid);
    for (const pid of stray) Deno.kill(pid, "SIGKILL");
    assert.fail(`the script did not exit within ${bound / 1000} s`);
  }
  const stderr = new TextDecoder().decode(outcome.stderr);
  assert.equal(outcome.code, 0, stderr);
  const report = JSON.parse(new TextDecoder().decode(outcome.stdout)) as {
    stdout: string;
    sid: number;
    children: number[];
    poolSize: number;
  };
  assert.equal(report.stdout, "42\n");
  assert.ok(
    report.children.length > 0,
    "the pool had children when the script ended (the test proves nothing otherwise)",
  );
  // Children notice stdin EOF and end themselves; allow them a moment.
  assert.ok(
    await waitFor(() => processesInSession(report.sid).length === 0, 5_000),
    `processes left behind: ${processesInSession(report.sid)}`,
  );
  for (const pid of report.children) assert.ok(!isRunning(pid));
});
