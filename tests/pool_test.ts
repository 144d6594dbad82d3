/**
 * Behaviour of the warm pool, the FIFO queue and closing (issue 3), with
 * real children.
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

/** The pid of the process that ran the code, plus whatever else it returns. */
const PID = "import js\n";

Deno.test("PyodideSandbox.warmup() starts poolSize children that wait for work", async () => {
  const sandbox = new PyodideSandbox({
    denoPath: TEST_DENO,
    poolSize: 2,
  });
  try {
    assert.deepEqual(sandboxChildren(), [], "no child before the first use");
    await sandbox.warmup();
    assert.equal(sandbox.poolSize, 2);
    assert.equal(sandboxChildren().length, 2);
  } finally {
    await sandbox.close();
  }
  assert.deepEqual(sandboxChildren(), []);
});

Deno.test("PyodideSandbox pooled calls each get a fresh interpreter in a fresh process", async () => {
  const sandbox = new PyodideSandbox({
    denoPath: TEST_DENO,
    poolSize: 2,
  });
  try {
    await sandbox.warmup();
    const pooled = sandboxChildren();
    assert.equal(pooled.length, 2);

    const first = await sandbox.execute(
      PID +
        "import sys\nsecret = 42\nsys.modules['planted'] = sys\n" +
        "open('left_behind.txt', 'w').write('x')\njs.Deno.pid",
    );
    assert.equal(first.status, "success", first.stderr);
    const firstPid = first.result as number;
    assert.ok(pooled.includes(firstPid), "the call ran in a pooled child");
    assert.ok(
      await waitFor(() => !isRunning(firstPid), 5_000),
      "a pooled child serves one call and exits",
    );

    const second = await sandbox.execute(
      PID + "import os, sys\n" +
        "['secret' in globals(), 'planted' in sys.modules, " +
        "os.path.exists('left_behind.txt'), js.Deno.pid]",
    );
    assert.equal(second.status, "success", second.stderr);
    const [hasSecret, hasModule, hasFile, secondPid] = second.result as [
      boolean,
      boolean,
      boolean,
      number,
    ];
    assert.equal(hasSecret, false, "a global leaked into the next call");
    assert.equal(hasModule, false, "a module leaked into the next call");
    assert.equal(hasFile, false, "a file leaked into the next call");
    assert.notEqual(secondPid, firstPid);
    assert.ok(pooled.includes(secondPid), "the second call used the pool too");
  } finally {
    await sandbox.close();
  }
});

Deno.test("PyodideSandbox refills the pool in the background after a call", async () => {
  const sandbox = new PyodideSandbox({
    denoPath: TEST_DENO,
    poolSize: 1,
  });
  try {
    await sandbox.warmup();
    const [pooled] = sandboxChildren();
    const result = await sandbox.execute(PID + "js.Deno.pid");
    assert.equal(result.result, pooled);
    assert.ok(
      await waitFor(() => {
        const now = sandboxChildren();
        return now.length === 1 && now[0] !== pooled;
      }, 20_000),
      "a replacement child was started",
    );
    assert.equal(sandbox.poolSize, 1);
  } finally {
    await sandbox.close();
  }
});

Deno.test("PyodideSandbox with poolSize 0 keeps no child between calls", async () => {
  const sandbox = new PyodideSandbox({
    denoPath: TEST_DENO,
    poolSize: 0,
  });
  try {
    const result = await sandbox.execute("1 + 1");
    assert.equal(result.result, 2);
    assert.equal(sandbox.poolSize, 0);
    // The used child is ended right after its result (possibly in the background).
    assert.ok(
      await waitFor(() => sandboxChildren().length === 0, 5_000),
      `children left: ${sandboxChildren()}`,
    );
  } finally {
    await sandbox.close();
  }
});

Deno.test("PyodideSandbox runs a call with its own memoryLimitMb in a child started with that limit, not a pooled one", async () => {
  const sandbox = new PyodideSandbox({
    denoPath: TEST_DENO,
    poolSize: 2,
    memoryLimitMb: 512,
  });
  const code = PID +
    "try:\n    b = bytearray(200 * 1024 * 1024)\n    got = 'allocated'\n" +
    "    del b\nexcept MemoryError:\n    got = 'MemoryError'\n[got, js.Deno.pid]";
  try {
    await sandbox.warmup();
    const pooled = sandboxChildren();
    assert.equal(pooled.length, 2);

    const small = await sandbox.execute(code, { memoryLimitMb: 128 });
    assert.equal(small.status, "success", small.stderr);
    const [smallGot, smallPid] = small.result as [string, number];
    assert.equal(smallGot, "MemoryError", "the per-call limit applies");
    assert.ok(!pooled.includes(smallPid), "the call used a pooled child");
    assert.ok(
      await waitFor(() => !isRunning(smallPid), 5_000),
      "the call's own child exits",
    );
    assert.deepEqual(sandboxChildren(), pooled, "the pool was left untouched");

    const normal = await sandbox.execute(code);
    assert.equal(normal.status, "success", normal.stderr);
    const [normalGot, normalPid] = normal.result as [string, number];
    assert.equal(normalGot, "allocated", "the sandbox's limit applies");
    assert.ok(pooled.includes(normalPid));
  } finally {
    await sandbox.close();
  }
});

Deno.test("PyodideSandbox with maxConcurrency 1 runs queued calls in FIFO order", async () => {
  const sandbox = new PyodideSandbox({
    denoPath: TEST_DENO,
    poolSize: 0,
    maxConcurrency: 1,
  });
  try {
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
  } finally {
    await sandbox.close();
  }
});

Deno.test("PyodideSandbox returns a timeout for a queued call whose timeout expires while it waits", async () => {
  const sandbox = new PyodideSandbox({
    denoPath: TEST_DENO,
    poolSize: 0,
    maxConcurrency: 1,
  });
  try {
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
  } finally {
    await sandbox.close();
  }
});

Deno.test("PyodideSandbox returns each of 16 concurrent calls its own output", async () => {
  const sandbox = new PyodideSandbox({
    denoPath: TEST_DENO,
    poolSize: 2,
    maxConcurrency: 4,
  });
  try {
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
  } finally {
    await sandbox.close();
  }
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
  const sandbox = new PyodideSandbox({
    denoPath: TEST_DENO,
    poolSize: 0,
    maxConcurrency: 1,
  });
  try {
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
  } finally {
    await sandbox.close();
  }
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

Deno.test("PyodideSandbox stateful execute with sessionBytes still works with the pool on", async () => {
  const sandbox = new PyodideSandbox({
    denoPath: TEST_DENO,
    poolSize: 1,
    stateful: true,
  });
  try {
    await sandbox.warmup();
    const pooled = sandboxChildren();
    const first = await sandbox.execute(
      PID + "x = 41\nopen('note.txt', 'w').write('kept')\njs.Deno.pid",
    );
    assert.equal(first.status, "success", first.stderr);
    assert.ok(pooled.includes(first.result as number), "first call was pooled");
    assert.ok(first.sessionBytes instanceof Uint8Array);
    assert.ok(first.sessionMetadata);

    const second = await sandbox.execute(
      "x += 1\n[x, open('note.txt').read()]",
      {
        sessionBytes: first.sessionBytes,
        sessionMetadata: first.sessionMetadata,
      },
    );
    assert.equal(second.status, "success", second.stderr);
    assert.deepEqual(second.result, [42, "kept"]);

    const fresh = await sandbox.execute("'x' in globals()");
    assert.equal(fresh.result, false, "a call without bytes starts fresh");
  } finally {
    await sandbox.close();
  }
});

/**
 * Runs `fn` with a temporary cache folder holding a built snapshot (so that
 * the first child `fn` sees is a call's or the pool's), removed afterwards.
 */
async function withCache(fn: (cacheDir: string) => Promise<void>) {
  const cacheDir = await Deno.makeTempDir({ prefix: "pool-test-cache-" });
  try {
    const builder = new PyodideSandbox({
      denoPath: TEST_DENO,
      cacheDir,
      poolSize: 0,
    });
    await builder.warmup().finally(() => builder.close());
    await fn(cacheDir);
  } finally {
    await Deno.remove(cacheDir, { recursive: true }).catch(() => {});
  }
}

/**
 * Polls the sandbox children until `until()` holds or `done` settles.
 *
 * @returns The most children seen at once.
 */
async function mostChildrenUntil(
  until: () => boolean,
  done: Promise<unknown>,
): Promise<number> {
  let settled = false;
  done.finally(() => settled = true).catch(() => {});
  let most = 0;
  while (!settled && !until()) {
    most = Math.max(most, sandboxChildren().length);
    await new Promise((r) => setTimeout(r, 10));
  }
  return most;
}

Deno.test("PyodideSandbox's first call on a fresh default sandbox runs before the pool fills, and the pool fills to poolSize after it", async () => {
  await withCache(async (cacheDir) => {
    const sandbox = new PyodideSandbox({ denoPath: TEST_DENO, cacheDir });
    try {
      // The code's first output proves its child was loaded by then.
      let printed = false;
      const call = sandbox.execute(
        PID + "print('first', flush=True)\nimport time\ntime.sleep(1)\n" +
          "js.Deno.pid",
        { onStdout: () => printed = true },
      );
      const most = await mostChildrenUntil(() => printed, call);
      const first = await call;
      assert.equal(first.status, "success", first.stderr);
      assert.equal(first.stdout, "first\n");
      assert.ok(printed, "the output was streamed");
      assert.equal(most, 1, "a pool child started while the call's loaded");
      assert.ok(
        await waitFor(
          () => sandbox.poolSize === 2 && sandboxChildren().length === 2,
          60_000,
        ),
        `the pool did not fill: ${sandboxChildren()}`,
      );
      await sandbox.warmup(); // Settles once both are loaded.
      const pooled = sandboxChildren();
      assert.ok(!pooled.includes(first.result as number));
      const second = await sandbox.execute(PID + "js.Deno.pid");
      assert.equal(second.status, "success", second.stderr);
      assert.ok(pooled.includes(second.result as number), "second was pooled");
    } finally {
      await sandbox.close();
    }
    assert.deepEqual(sandboxChildren(), [], "children left after close()");
  });
});

Deno.test("PyodideSandbox gives a call that arrives during warmup() a pooled child and still fills the pool", async () => {
  await withCache(async (cacheDir) => {
    const sandbox = new PyodideSandbox({
      denoPath: TEST_DENO,
      cacheDir,
      poolSize: 2,
    });
    try {
      const warming = sandbox.warmup();
      assert.ok(
        await waitFor(
          () => sandbox.poolSize > 0 && sandboxChildren().length > 0,
          60_000,
        ),
        "warmup() started no child",
      );
      const [oldest] = sandboxChildren();
      const result = await sandbox.execute(PID + "js.Deno.pid");
      assert.equal(result.status, "success", result.stderr);
      assert.equal(result.result, oldest, "the call took the oldest child");
      await warming;
      assert.ok(
        await waitFor(() => sandboxChildren().length === 2, 60_000),
        `the pool did not fill: ${sandboxChildren()}`,
      );
      assert.equal(sandbox.poolSize, 2);
    } finally {
      await sandbox.close();
    }
    assert.deepEqual(sandboxChildren(), [], "children left after close()");
  });
});

Deno.test("PyodideSandbox.close() while the pool refills after the first call leaves no child, now or later", async () => {
  await withCache(async (cacheDir) => {
    const sandbox = new PyodideSandbox({
      denoPath: TEST_DENO,
      cacheDir,
      poolSize: 2,
    });
    const result = await sandbox.execute("1 + 1");
    assert.equal(result.result, 2);
    // The refill has started (or is about to): close in the middle of it.
    await sandbox.close();
    assert.deepEqual(sandboxChildren(), [], "children left after close()");
    await new Promise((r) => setTimeout(r, 1000));
    assert.deepEqual(sandboxChildren(), [], "a child started after close()");
    assert.equal(sandbox.poolSize, 0);
  });
});

Deno.test("PyodideSandbox.close() while the first call's child loads ends the call's child and starts no pool child", async () => {
  await withCache(async (cacheDir) => {
    const sandbox = new PyodideSandbox({
      denoPath: TEST_DENO,
      cacheDir,
      poolSize: 2,
    });
    const call = sandbox.execute("1 + 1").then((r) => r, (e) => e);
    assert.ok(
      await waitFor(() => sandboxChildren().length > 0, 60_000),
      "the call started no child",
    );
    await sandbox.close();
    await call; // Settles one way or the other.
    assert.deepEqual(sandboxChildren(), [], "children left after close()");
    await new Promise((r) => setTimeout(r, 1000));
    assert.deepEqual(sandboxChildren(), [], "a child started after close()");
  });
});

Deno.test("PyodideSandbox's memory watchdog still ends a pooled child that waited idle and then outgrows its limit", async () => {
  await withCache(async (cacheDir) => {
    const sandbox = new PyodideSandbox({
      denoPath: TEST_DENO,
      cacheDir,
      poolSize: 1,
      memoryLimitMb: 64,
    });
    try {
      await sandbox.warmup();
      // Idle for a while: the watchdog of a waiting one-shot child rests.
      await new Promise((r) => setTimeout(r, 500));
      const [pooled] = sandboxChildren();
      // ArrayBuffers bypass the wasm cap: only the host's RSS watchdog
      // stops them.
      const result = await sandbox.execute(
        PID + "keep = []\nfor i in range(16):\n" +
          "    b = js.ArrayBuffer.new(256 * 1024 * 1024)\n" +
          "    js.Uint8Array.new(b).fill(1)\n    keep.append(b)\n'survived'",
        { timeoutSeconds: 30 },
      );
      assert.equal(result.error?.kind, "memory", JSON.stringify(result.error));
      assert.ok(
        await waitFor(() => !isRunning(pooled), 10_000),
        "the pooled child was ended",
      );
    } finally {
      await sandbox.close();
    }
    assert.deepEqual(sandboxChildren(), [], "children left after close()");
  });
});
