/**
 * Behaviour of the warm pool (issue 3), with real children: warm-up, fresh
 * processes, refills, per-call memory limits, session bytes, and the pool's
 * first fill racing the first call and `close()`.
 */

import assert from "node:assert/strict";
import { PyodideSandbox } from "../sandbox.ts";
import { isRunning, sandboxChildren, waitFor } from "./_fixtures/procs.ts";
import { TEST_DENO } from "./_fixtures/procs.ts";
import { withSandbox } from "./_helpers.ts";

/** The pid of the process that ran the code, plus whatever else it returns. */
const PID = "import js\n";

Deno.test("PyodideSandbox.warmup() starts poolSize children that wait for work", async () => {
  await withSandbox({
    denoPath: TEST_DENO,
    poolSize: 2,
  }, async (sandbox) => {
    assert.deepEqual(sandboxChildren(), [], "no child before the first use");
    await sandbox.warmup();
    assert.equal(sandbox.poolSize, 2);
    assert.equal(sandboxChildren().length, 2);
  });
  assert.deepEqual(sandboxChildren(), []);
});

Deno.test("PyodideSandbox pooled calls each get a fresh interpreter in a fresh process", async () => {
  await withSandbox({
    denoPath: TEST_DENO,
    poolSize: 2,
  }, async (sandbox) => {
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
  });
});

Deno.test("PyodideSandbox refills the pool in the background after a call", async () => {
  await withSandbox({
    denoPath: TEST_DENO,
    poolSize: 1,
  }, async (sandbox) => {
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
  });
});

Deno.test("PyodideSandbox with poolSize 0 keeps no child between calls", async () => {
  await withSandbox({
    denoPath: TEST_DENO,
    poolSize: 0,
  }, async (sandbox) => {
    const result = await sandbox.execute("1 + 1");
    assert.equal(result.result, 2);
    assert.equal(sandbox.poolSize, 0);
    // The used child is ended right after its result (possibly in the background).
    assert.ok(
      await waitFor(() => sandboxChildren().length === 0, 5_000),
      `children left: ${sandboxChildren()}`,
    );
  });
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

Deno.test("PyodideSandbox stateful execute with sessionBytes still works with the pool on", async () => {
  await withSandbox({
    denoPath: TEST_DENO,
    poolSize: 1,
    stateful: true,
  }, async (sandbox) => {
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
  });
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
 * Polls the sandbox children until `done` settles.
 *
 * @returns When (`performance.now()`) a second child was first seen, or
 * `undefined` if there never were two at once.
 */
async function secondChildSeenAt(
  done: Promise<unknown>,
): Promise<number | undefined> {
  let settled = false;
  done.finally(() => settled = true).catch(() => {});
  while (!settled) {
    if (sandboxChildren().length > 1) return performance.now();
    await new Promise((r) => setTimeout(r, 10));
  }
  return undefined;
}

Deno.test("PyodideSandbox's first call on a fresh default sandbox runs before the pool fills, and the pool fills to poolSize after it", async () => {
  await withCache(async (cacheDir) => {
    const sandbox = new PyodideSandbox({ denoPath: TEST_DENO, cacheDir });
    try {
      const began = performance.now();
      const call = sandbox.execute(
        PID + "import time\ntime.sleep(1)\njs.Deno.pid",
      );
      const secondAt = await secondChildSeenAt(call);
      const first = await call;
      assert.equal(first.status, "success", first.stderr);
      assert.ok(first.timing, "the result has timing");
      // The call's child was ready `queuedMs + startMs` after the call
      // began (what the host measured); a pool child may start only after
      // that, however loaded the machine (a poll sees it late, never early).
      const readyAt = began + first.timing.queuedMs + first.timing.startMs;
      assert.ok(
        secondAt === undefined || secondAt >= readyAt,
        `a pool child started ${
          Math.round(readyAt - (secondAt ?? 0))
        } ms before the call's child was ready`,
      );
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
    await withSandbox({
      denoPath: TEST_DENO,
      cacheDir,
      poolSize: 2,
    }, async (sandbox) => {
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
    });
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
    await withSandbox({
      denoPath: TEST_DENO,
      cacheDir,
      poolSize: 1,
      memoryLimitMb: 64,
    }, async (sandbox) => {
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
    });
    assert.deepEqual(sandboxChildren(), [], "children left after close()");
  });
});

/** The one sandbox child once it stays the only one for half a second. */
async function soleChild(): Promise<number> {
  let seen = -1;
  const found = await waitFor(() => {
    const now = sandboxChildren();
    const sole = now.length === 1 && now[0] === seen;
    seen = now.length === 1 ? now[0] : -1;
    return sole;
  }, 60_000);
  assert.ok(found, `one paused child, found ${sandboxChildren()}`);
  return seen;
}

Deno.test("PyodideSandbox restores run in the child paused after the last restore, and skip one that died", async () => {
  await withSandbox({
    denoPath: TEST_DENO,
    poolSize: 0,
    stateful: true,
  }, async (sandbox) => {
    const first = await sandbox.execute("x = 1");
    const bytes = {
      sessionBytes: first.sessionBytes!,
      sessionMetadata: first.sessionMetadata,
    };
    const one = await sandbox.execute(PID + "[x, js.Deno.pid]", bytes);
    assert.equal(one.status, "success", one.stderr);
    // The first restore left a child paused for the next: the next restore
    // runs in it.
    const paused = await soleChild();
    assert.notEqual(paused, (one.result as number[])[1]);
    const two = await sandbox.execute(PID + "[x, js.Deno.pid]", bytes);
    assert.deepEqual(two.result, [1, paused]);
    // A paused child that died (killed here) is skipped: the restore gets
    // a child of its own, and the sandbox goes on.
    const next = await soleChild();
    assert.notEqual(next, paused);
    Deno.kill(next, "SIGKILL");
    // Reaped by the host (no /proc entry), which then knows it exited.
    const reaped = () => {
      try {
        Deno.statSync(`/proc/${next}`);
        return false;
      } catch {
        return true;
      }
    };
    assert.ok(await waitFor(reaped, 10_000));
    await new Promise((resolve) => setTimeout(resolve, 200));
    const three = await sandbox.execute(PID + "[x + 2, js.Deno.pid]", bytes);
    assert.equal(three.status, "success", three.stderr);
    assert.equal((three.result as number[])[0], 3);
    assert.notEqual((three.result as number[])[1], next);
  });
  assert.deepEqual(sandboxChildren(), [], "close() ends the paused child");
});
