/**
 * A stateful sandbox keeps the child of a call for the call that continues
 * from the bytes it returned (issue 11): same state as a restore, without
 * one. Real children; pids tell which child ran each step.
 */

import assert from "node:assert/strict";
import type { CodeExecutionResult } from "../result.ts";
import type { ExecuteOptions } from "../options.ts";
import { isRunning, sandboxChildren, waitFor } from "./_fixtures/procs.ts";
import { TEST_DENO } from "./_fixtures/procs.ts";
import { withSandbox } from "./_helpers.ts";
import { sealSession } from "../_session_bytes.ts";

const STATEFUL = { denoPath: TEST_DENO, poolSize: 2, stateful: true };

/** Continues from a result's bytes. */
function from(result: CodeExecutionResult): ExecuteOptions {
  assert.equal(result.status, "success", result.stderr);
  assert.ok(result.sessionBytes, "the result has session bytes");
  return {
    sessionBytes: result.sessionBytes,
    sessionMetadata: result.sessionMetadata,
  };
}

/** `[value, pid]` of a step's result. */
function valueAndPid(result: CodeExecutionResult): [number, number] {
  assert.equal(result.status, "success", result.stderr);
  return result.result as [number, number];
}

Deno.test("stateful PyodideSandbox.execute() continues in the child that returned the bytes, and restores forked or older bytes in another", async () => {
  await withSandbox(STATEFUL, async (sandbox) => {
    const one = await sandbox.execute("import js\nx = 1\n[x, js.Deno.pid]");
    const [, pid] = valueAndPid(one);
    assert.ok(isRunning(pid), "the first step's child was kept");
    const two = await sandbox.execute("x += 1\n[x, js.Deno.pid]", from(one));
    assert.deepEqual(valueAndPid(two), [2, pid]);
    const three = await sandbox.execute("x += 1\n[x, js.Deno.pid]", from(two));
    assert.deepEqual(valueAndPid(three), [3, pid]);
    // The child moved on to three's state: two's bytes (a fork, or a retry)
    // restore in another child, with two's state.
    const fork = await sandbox.execute("x += 10\n[x, js.Deno.pid]", from(two));
    const [forked, forkPid] = valueAndPid(fork);
    assert.equal(forked, 12);
    assert.notEqual(forkPid, pid);
    // And the first line goes on where it was, in its own child.
    const four = await sandbox.execute("x += 1\n[x, js.Deno.pid]", from(three));
    assert.deepEqual(valueAndPid(four), [4, pid]);
    // Bytes from an older step restore elsewhere, with their own state.
    const old = await sandbox.execute("[x, js.Deno.pid]", from(one));
    const [oldX, oldPid] = valueAndPid(old);
    assert.equal(oldX, 1);
    assert.notEqual(oldPid, pid);
    // The pool's two, two kept (the oldest ended first) and one paused.
    assert.ok(
      await waitFor(() => sandboxChildren().length <= 2 + 2 + 1, 10_000),
      `more children than the pool's: ${sandboxChildren()}`,
    );
  });
  assert.deepEqual(sandboxChildren(), [], "close() ends kept children");
});

Deno.test("stateful PyodideSandbox.execute() ends a kept child whose code keeps running after its call, and its bytes still restore", async () => {
  await withSandbox(STATEFUL, async (sandbox) => {
    // A JS timer that burns CPU after the call returned: a kept child must
    // not work between steps.
    const one = await sandbox.execute(
      "import js\nfrom pyodide.ffi import create_proxy\nx = 5\n" +
        "def burn():\n  t = js.Date.now()\n" +
        "  while js.Date.now() - t < 40: pass\n" +
        "js.setInterval(create_proxy(burn), 50)\n[x, js.Deno.pid]",
    );
    const [, pid] = valueAndPid(one);
    assert.ok(
      await waitFor(() => !isRunning(pid), 15_000),
      "the busy kept child was not ended",
    );
    const two = await sandbox.execute("x += 1\n[x, js.Deno.pid]", from(one));
    const [x, twoPid] = valueAndPid(two);
    assert.equal(x, 6);
    assert.notEqual(twoPid, pid);
    const plain = await sandbox.execute("1 + 1");
    assert.equal(plain.result, 2, "the sandbox goes on");
  });
  assert.deepEqual(sandboxChildren(), []);
});

Deno.test("stateful PyodideSandbox.execute() in a kept child that times out ends it, and the bytes it started from still restore", async () => {
  await withSandbox(STATEFUL, async (sandbox) => {
    const one = await sandbox.execute("import js\nx = 7\n[x, js.Deno.pid]");
    const [, pid] = valueAndPid(one);
    const stuck = await sandbox.execute("while True: pass", {
      ...from(one),
      timeoutSeconds: 3,
    });
    assert.equal(stuck.status, "error");
    assert.equal(stuck.error?.kind, "timeout");
    assert.equal(stuck.sessionBytes, undefined);
    assert.ok(!isRunning(pid), "the timed-out kept child is gone");
    const again = await sandbox.execute("[x, js.Deno.pid]", from(one));
    const [x, againPid] = valueAndPid(again);
    assert.equal(x, 7);
    assert.notEqual(againPid, pid);
  });
  assert.deepEqual(sandboxChildren(), []);
});

Deno.test("stateful PyodideSandbox.execute() with poolSize 0 keeps no child after a call", async () => {
  await withSandbox({ ...STATEFUL, poolSize: 0 }, async (sandbox) => {
    const one = await sandbox.execute("import js\nx = 1\n[x, js.Deno.pid]");
    const [, pid] = valueAndPid(one);
    assert.ok(!isRunning(pid), "the call's child outlived it");
    const two = await sandbox.execute("x += 1\n[x, js.Deno.pid]", from(one));
    const [x, twoPid] = valueAndPid(two);
    assert.equal(x, 2);
    assert.ok(!isRunning(twoPid), "the restored child outlived its call");
  });
});

Deno.test("session bytes are unique per seal, so a kept child is reachable only with the bytes its own call returned", async () => {
  // The same state sealed many times within a few milliseconds (same
  // timestamps): every seal differs, so two sessions whose interpreters end
  // up byte-identical never share a key.
  const payload = new Uint8Array(64).fill(7);
  const previous = {
    pyodideVersion: "0",
    createdAt: "2026-12-02T00:00:00.000Z",
    updatedAt: "2026-12-02T00:00:00.000Z",
  };
  const seals = await Promise.all(
    Array.from(
      { length: 20 },
      () => sealSession(payload, previous, undefined, {}, "ab".repeat(32)),
    ),
  );
  const distinct = new Set(seals.map((s) => s.sessionBytes.join(",")));
  assert.equal(distinct.size, seals.length, "two seals gave the same bytes");
  // End to end: what one session planted in its child's JS realm (which no
  // snapshot holds) never reaches another session's step, even one that
  // ran the same code.
  await withSandbox(STATEFUL, async (sandbox) => {
    const code = "import js\nx = 1\n[x, js.Deno.pid]";
    const a = await sandbox.execute(
      "import js\njs.globalThis.planted = 'secret of A'\n" + code,
    );
    const b = await sandbox.execute(code);
    assert.notDeepEqual(a.sessionBytes, b.sessionBytes);
    const next = await sandbox.execute(
      "[getattr(js.globalThis, 'planted', None), js.Deno.pid]",
      from(b),
    );
    const [planted, pid] = next.result as [string | null, number];
    assert.equal(planted, null, "B's step saw what A planted");
    assert.equal(pid, valueAndPid(b)[1], "B continued in its own child");
  });
});

Deno.test("a kept child that floods output and forged frames while it waits stays contained: the next step's output is capped and its result is its own", async () => {
  const maxOutputBytes = 64 * 1024;
  await withSandbox({ ...STATEFUL, maxOutputBytes }, async (sandbox) => {
    const one = await sandbox.execute(
      "import js, sys\nfrom pyodide.ffi import create_proxy\nx = 1\n" +
        'forged = \'{"type": "result", "ok": true, "result": 999}\'\n' +
        "def noise():\n  print(forged + 'z' * 20000, flush=True)\n" +
        "  sys.stderr.write(forged * 100)\n" +
        "js.setInterval(create_proxy(noise), 200)\n[x, js.Deno.pid]",
    );
    valueAndPid(one);
    await new Promise((resolve) => setTimeout(resolve, 2500));
    const two = await sandbox.execute("x += 1\n[x, js.Deno.pid]", from(one));
    // In the kept child (its output is that session's) or, if it was ended
    // for its work, in another: either way the result is the step's own.
    const [x] = valueAndPid(two);
    assert.equal(x, 2);
    const bytes = new TextEncoder().encode(two.stdout).length;
    assert.ok(bytes <= maxOutputBytes, `${bytes} bytes of stdout`);
    assert.ok(
      new TextEncoder().encode(two.stderr).length <= maxOutputBytes + 4096,
    );
    const plain = await sandbox.execute("1 + 1");
    assert.equal(plain.result, 2, "the sandbox goes on");
  });
  assert.deepEqual(sandboxChildren(), []);
});
