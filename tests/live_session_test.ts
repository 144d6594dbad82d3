/**
 * Behaviour of live sessions (issue 3): state and files across steps,
 * save/resume, soft interrupts that keep the session, hard kills that lose
 * it, with real children.
 */

import assert from "node:assert/strict";
import { PyodideSandbox, SessionError } from "../mod.ts";
import { SyncPyodideSandbox } from "../sync_sandbox.ts";
import { isRunning, sandboxChildren, waitFor } from "./_fixtures/procs.ts";
import { TEST_DENO } from "./_fixtures/procs.ts";

/** Python that swallows every interrupt and keeps looping. */
const STUBBORN = "while True:\n" +
  "    try:\n" +
  "        while True:\n" +
  "            pass\n" +
  "    except BaseException:\n" +
  "        pass\n";

Deno.test("PyodideSession keeps globals, imports and functions across steps in one process", async () => {
  const sandbox = new PyodideSandbox({
    denoPath: TEST_DENO,
    poolSize: 0,
  });
  try {
    const session = await sandbox.openSession();
    assert.equal(sandbox.sessionCount, 1);
    assert.equal(session.alive, true);
    assert.equal(typeof session.id, "string");
    const steps = [
      "import js, math\nx = 1\ndef double(v):\n    return 2 * v\njs.Deno.pid",
      "x += 1\njs.Deno.pid",
      "print(x)\n[double(x), round(math.pi, 2), js.Deno.pid]",
    ];
    const results = [];
    for (const step of steps) {
      const r = await session.execute(step);
      assert.equal(r.status, "success", r.stderr);
      results.push(r);
    }
    const pid = results[0].result as number;
    assert.equal(results[1].result, pid, "steps ran in different processes");
    assert.equal(results[2].stdout, "2\n");
    assert.deepEqual(results[2].result, [4, 3.14, pid]);

    const failed = await session.execute("1 / 0");
    assert.equal(failed.error?.kind, "exception");
    assert.equal(failed.error?.type, "ZeroDivisionError");
    assert.equal(session.alive, true, "an exception does not end the session");
    assert.equal((await session.execute("x")).result, 2);

    await session.close();
    assert.equal(session.alive, false);
    assert.equal(sandbox.sessionCount, 0);
    assert.ok(await waitFor(() => !isRunning(pid), 5_000));
    assert.throws(() => session.execute("x"), TypeError);
  } finally {
    await sandbox.close();
  }
});

Deno.test("PyodideSession runs calls issued at once one after another, in order", async () => {
  const sandbox = new PyodideSandbox({
    denoPath: TEST_DENO,
    poolSize: 0,
  });
  try {
    const session = await sandbox.openSession();
    await session.execute("log = []");
    const results = await Promise.all(
      [0, 1, 2, 3].map((i) =>
        session.execute(
          `import time\ntime.sleep(0.05)\nlog.append(${i})\nlist(log)`,
        )
      ),
    );
    assert.deepEqual(results.map((r) => r.result), [
      [0],
      [0, 1],
      [0, 1, 2],
      [0, 1, 2, 3],
    ]);
    await session.close();
  } finally {
    await sandbox.close();
  }
});

Deno.test("PyodideSession keeps files in the working folder across steps", async () => {
  const sandbox = new PyodideSandbox({
    denoPath: TEST_DENO,
    poolSize: 0,
  });
  try {
    const session = await sandbox.openSession();
    const write = await session.execute(
      "import os\nos.makedirs('data', exist_ok=True)\n" +
        "open('data/notes.txt', 'w').write('first\\n')\nos.getcwd()",
    );
    assert.equal(write.status, "success", write.stderr);
    const append = await session.execute(
      "open('data/notes.txt', 'a').write('second\\n')\nimport os\nos.getcwd()",
    );
    assert.equal(append.result, write.result, "the working folder changed");
    const read = await session.execute("open('data/notes.txt').read()");
    assert.equal(read.result, "first\nsecond\n");
    await session.close();
  } finally {
    await sandbox.close();
  }
});

Deno.test("PyodideSession.save() resumes state and files in a new session of the same and of another sandbox", async () => {
  const first = new PyodideSandbox({
    denoPath: TEST_DENO,
    poolSize: 0,
  });
  const second = new PyodideSandbox({
    denoPath: TEST_DENO,
    poolSize: 0,
  });
  try {
    const session = await first.openSession();
    await session.execute(
      "import re\ncounter = 10\npattern = re.compile(r'a+')\n" +
        "def gen():\n    yield from range(5)\ng = gen()\nnext(g)\n" +
        "open('saved.txt', 'w').write('on disk')",
    );
    const saved = await session.save();
    assert.ok(saved.sessionBytes instanceof Uint8Array);
    assert.ok(saved.sessionBytes.length > 0);
    assert.ok(saved.sessionMetadata);
    // The session goes on after saving; later changes are not in the bytes.
    await session.execute("counter = 999");
    assert.equal(session.alive, true);
    await session.close();

    const check = "counter += 1\n" +
      "[counter, bool(pattern.fullmatch('aaa')), next(g), open('saved.txt').read()]";
    const expected = [11, true, 1, "on disk"];
    for (const sandbox of [first, second]) {
      const resumed = await sandbox.openSession(saved);
      const r = await resumed.execute(check);
      assert.equal(r.status, "success", r.stderr);
      assert.deepEqual(r.result, expected);
      await resumed.close();
    }

    // The saved bytes also feed a stateless sandbox's stateful execute.
    const stateful = new PyodideSandbox({
      denoPath: TEST_DENO,
      poolSize: 0,
      stateful: true,
    });
    try {
      const r = await stateful.execute(check, saved);
      assert.equal(r.status, "success", r.stderr);
      assert.deepEqual(r.result, expected);
    } finally {
      await stateful.close();
    }
  } finally {
    await first.close();
    await second.close();
  }
});

Deno.test("PyodideSandbox.openSession() rejects tampered session bytes", async () => {
  const sandbox = new PyodideSandbox({
    denoPath: TEST_DENO,
    poolSize: 0,
  });
  try {
    const session = await sandbox.openSession();
    await session.execute("x = 1");
    const saved = await session.save();
    await session.close();
    const bytes = saved.sessionBytes.slice();
    bytes[bytes.length - 1] ^= 0xff;
    await assert.rejects(
      () =>
        sandbox.openSession({
          sessionBytes: bytes,
          sessionMetadata: saved.sessionMetadata,
        }),
      SessionError,
    );
    assert.equal(sandbox.sessionCount, 0);
  } finally {
    await sandbox.close();
  }
});

for (
  const [what, code] of [
    ["an endless loop", "while True:\n    pass"],
    ["time.sleep(100)", "import time\ntime.sleep(100)"],
    ["await asyncio.sleep(100)", "import asyncio\nawait asyncio.sleep(100)"],
  ]
) {
  Deno.test(`PyodideSession survives a timeout in ${what} with its state`, async () => {
    const sandbox = new PyodideSandbox({
      denoPath: TEST_DENO,
      poolSize: 0,
    });
    try {
      const session = await sandbox.openSession();
      const setup = await session.execute(
        "import js\nx = 41\nopen('kept.txt', 'w').write('yes')\njs.Deno.pid",
      );
      const pid = setup.result as number;
      const timedOut = await session.execute(code, { timeoutSeconds: 0.5 });
      assert.equal(timedOut.status, "error");
      assert.equal(timedOut.error?.kind, "timeout", timedOut.stderr);
      assert.match(timedOut.error!.message, /timed out/);
      assert.equal(session.alive, true, "the soft interrupt lost the session");

      const after = await session.execute(
        "x += 1\n[x, open('kept.txt').read(), js.Deno.pid]",
      );
      assert.equal(after.status, "success", after.stderr);
      assert.deepEqual(after.result, [42, "yes", pid]);
      // And the session still saves.
      const saved = await session.save();
      assert.ok(saved.sessionBytes.length > 0);
      await session.close();
    } finally {
      await sandbox.close();
    }
  });
}

Deno.test("PyodideSession survives a timeout in a blocked host function call and can still be saved", async () => {
  let release!: () => void;
  const sandbox = new PyodideSandbox({
    denoPath: TEST_DENO,
    poolSize: 0,
    functions: {
      wait: () =>
        new Promise<string>((resolve) => release = () => resolve("late")),
    },
  });
  try {
    const session = await sandbox.openSession();
    await session.execute("x = 1");
    const timedOut = await session.execute("wait()", { timeoutSeconds: 0.5 });
    assert.equal(timedOut.error?.kind, "timeout", timedOut.stderr);
    release();
    assert.equal(session.alive, true);
    assert.equal((await session.execute("x + 1")).result, 2);
    const saved = await session.save();
    await session.close();
    const resumed = await sandbox.openSession(saved);
    assert.equal((await resumed.execute("x")).result, 1);
    await resumed.close();
  } finally {
    await sandbox.close();
  }
});

Deno.test("PyodideSession step that times out while queued behind maxConcurrency leaves the session intact", async () => {
  const sandbox = new PyodideSandbox({
    denoPath: TEST_DENO,
    poolSize: 0,
    maxConcurrency: 1,
  });
  try {
    const session = await sandbox.openSession();
    await session.execute("x = 3");
    const busy = sandbox.execute("import time\ntime.sleep(2)\n'busy'");
    const queued = await session.execute("x = 100", { timeoutSeconds: 0.3 });
    assert.equal(queued.error?.kind, "timeout");
    assert.equal(session.alive, true);
    assert.equal((await busy).result, "busy");
    assert.equal(
      (await session.execute("x")).result,
      3,
      "the timed-out step ran anyway",
    );
    await session.close();
  } finally {
    await sandbox.close();
  }
});

Deno.test("PyodideSession aborted by a signal rejects with its reason and is then lost", async () => {
  const sandbox = new PyodideSandbox({
    denoPath: TEST_DENO,
    poolSize: 0,
  });
  try {
    const session = await sandbox.openSession();
    const controller = new AbortController();
    const reason = new Error("stop");
    const call = session.execute(
      "print('started', flush=True)\nwhile True:\n    pass",
      {
        signal: controller.signal,
        onStdout: () => controller.abort(reason),
      },
    );
    await assert.rejects(call, (e) => e === reason);
    assert.equal(session.alive, false);
    const later = await session.execute("1");
    assert.equal(later.error?.kind, "session");
    assert.match(later.error!.message, /session was lost/);
    await session.close();
  } finally {
    await sandbox.close();
  }
});

Deno.test("PyodideSession is lost after a hard kill: the call times out and later calls return kind session", async () => {
  const sandbox = new PyodideSandbox({
    denoPath: TEST_DENO,
    poolSize: 0,
  });
  try {
    const session = await sandbox.openSession();
    const setup = await session.execute("import js\nx = 7\njs.Deno.pid");
    const pid = setup.result as number;
    const saved = await session.save();

    const before = performance.now();
    const timedOut = await session.execute(STUBBORN, { timeoutSeconds: 0.5 });
    // A generous bound: 0.5 s timeout + ~1 s grace, then the kill.
    assert.ok(performance.now() - before < 15_000, "the hard kill came late");
    assert.equal(timedOut.status, "error");
    assert.equal(timedOut.error?.kind, "timeout");
    assert.equal(session.alive, false);
    assert.ok(await waitFor(() => !isRunning(pid), 5_000), "child survived");

    for (let i = 0; i < 2; i++) {
      const later = await session.execute("x");
      assert.equal(later.status, "error");
      assert.equal(later.error?.kind, "session");
      assert.match(later.error!.message, /session was lost/);
      assert.equal(later.result, null);
    }
    await assert.rejects(() => session.save(), SessionError);
    await session.close();
    assert.equal(sandbox.sessionCount, 0);

    // The user reopens from the bytes saved before the loss.
    const reopened = await sandbox.openSession(saved);
    assert.equal((await reopened.execute("x")).result, 7);
    await reopened.close();
  } finally {
    await sandbox.close();
  }
});

Deno.test("PyodideSession is lost when its process dies and says so", async () => {
  const sandbox = new PyodideSandbox({
    denoPath: TEST_DENO,
    poolSize: 0,
  });
  try {
    const session = await sandbox.openSession();
    const crashed = await session.execute("import js\njs.Deno.exit(3)");
    assert.equal(crashed.status, "error");
    assert.equal(session.alive, false);
    const later = await session.execute("1");
    assert.equal(later.error?.kind, "session");
    assert.match(later.error!.message, /session was lost/);
    await session.close();
  } finally {
    await sandbox.close();
  }
});

Deno.test("PyodideSandbox.close() ends open sessions and their children", async () => {
  const sandbox = new PyodideSandbox({
    denoPath: TEST_DENO,
    poolSize: 0,
  });
  const a = await sandbox.openSession();
  const b = await sandbox.openSession();
  assert.equal(sandbox.sessionCount, 2);
  assert.equal(sandboxChildren().length, 2);
  await sandbox.close();
  assert.equal(a.alive, false);
  assert.equal(b.alive, false);
  assert.equal(sandbox.sessionCount, 0);
  assert.deepEqual(sandboxChildren(), []);
  await assert.rejects(() => sandbox.openSession(), /closed/);
});

Deno.test("PyodideSession works next to a warm pool without using or disturbing it", async () => {
  const sandbox = new PyodideSandbox({
    denoPath: TEST_DENO,
    poolSize: 1,
  });
  try {
    await sandbox.warmup();
    const pooled = sandboxChildren();
    assert.equal(pooled.length, 1);
    const session = await sandbox.openSession();
    const step = await session.execute("import js\ny = 5\njs.Deno.pid");
    assert.ok(!pooled.includes(step.result as number));
    const stateless = await sandbox.execute("'y' in globals()");
    assert.equal(stateless.result, false, "session state leaked into the pool");
    assert.equal((await session.execute("y")).result, 5);
    await session.close();
  } finally {
    await sandbox.close();
  }
});

Deno.test("SyncPyodideSession keeps state across steps and resumes from save()", () => {
  const sandbox = new SyncPyodideSandbox({
    denoPath: TEST_DENO,
    poolSize: 0,
  });
  try {
    const session = sandbox.openSession();
    assert.equal(typeof session.id, "string");
    assert.equal(session.execute("x = 20").status, "success");
    assert.equal(session.execute("x += 1\nx").result, 21);
    const timedOut = session.execute("while True:\n    pass", {
      timeoutSeconds: 0.5,
    });
    assert.equal(timedOut.error?.kind, "timeout");
    assert.equal(session.execute("x").result, 21, "state lost on interrupt");
    const saved = session.save();
    session.close();

    const resumed = sandbox.openSession(saved);
    assert.equal(resumed.execute("x * 2").result, 42);
    assert.equal(
      resumed.execute(STUBBORN, { timeoutSeconds: 0.5 }).error?.kind,
      "timeout",
    );
    const later = resumed.execute("x");
    assert.equal(later.error?.kind, "session");
    assert.match(later.error!.message, /session was lost/);
    resumed.close();
  } finally {
    sandbox.close();
  }
  assert.deepEqual(sandboxChildren(), []);
});
