import assert from "node:assert/strict";
import {
  type CodeExecutionResult,
  PYODIDE_VERSION,
  PyodideSandbox,
  SessionError,
  type SessionMetadata,
} from "../mod.ts";
import {
  assertNoDenoChildren,
  assertNoDenoChildrenNow,
  assertSuccess,
  liveDenoChildren,
  TEST_DENO_PATH,
  withSandbox,
} from "./_helpers.ts";

const SECRET_A = "secret-A-0123456789abcdef";
const SECRET_B = "secret-B-0123456789abcdef";

function assertSessionError(result: CodeExecutionResult, what: string): void {
  assert.equal(result.status, "error", `${what}: ${JSON.stringify(result)}`);
  assert.equal(result.error?.kind, "session", `${what}: ${result.error?.kind}`);
  assert.ok(result.error?.message, `${what}: a message`);
  assert.ok(result.stderr.includes(result.error!.message), what);
  assert.equal(result.stdout, "", `${what}: no code ran`);
  assert.equal(result.sessionBytes, undefined, what);
}

function assertMetadata(metadata: SessionMetadata | undefined): void {
  assert.ok(metadata, "sessionMetadata");
  assert.equal(metadata.pyodideVersion, PYODIDE_VERSION);
  for (const field of ["createdAt", "updatedAt"] as const) {
    assert.equal(typeof metadata[field], "string");
    assert.ok(
      !Number.isNaN(Date.parse(metadata[field])),
      `${field}: ${metadata[field]}`,
    );
  }
  assert.ok(Date.parse(metadata.updatedAt) >= Date.parse(metadata.createdAt));
  // JSON-safe: survives a round trip unchanged.
  assert.deepEqual(JSON.parse(JSON.stringify(metadata)), metadata);
}

/** Session bytes and metadata of a small stateful run. */
async function makeSession(
  sandbox: PyodideSandbox,
  code = "z = 1",
): Promise<{ sessionBytes: Uint8Array; sessionMetadata: SessionMetadata }> {
  const result = await sandbox.execute(code);
  assertSuccess(result);
  assert.ok(result.sessionBytes && result.sessionMetadata);
  return {
    sessionBytes: result.sessionBytes,
    sessionMetadata: result.sessionMetadata,
  };
}

Deno.test("stateful PyodideSandbox.execute() continues from session bytes with a function, a class, a module, data and a file", async () => {
  await withSandbox({ stateful: true }, async (sandbox) => {
    const first = await sandbox.execute(`import math as m
import os
def greet(name):
    return f"hello {name}"
class Counter:
    def __init__(self):
        self.n = 0
    def bump(self):
        self.n += 1
        return self.n
counter = Counter()
counter.bump()
data = {"list": [1, 2, 3], "text": "ünï", "nested": {"t": (1, 2)}}
with open("notes.txt", "w") as f:
    f.write("line 1\\n")
os.getcwd()`);
    assertSuccess(first);
    assert.ok(first.sessionBytes instanceof Uint8Array);
    assert.ok(first.sessionBytes.length > 0);
    assertMetadata(first.sessionMetadata);
    const cwd = first.result as string;

    const continued = `with open("notes.txt", "a") as f:
    f.write("line 2\\n")
[greet("Ada"), counter.bump(), Counter().bump(), data["list"], data["text"],
 list(data["nested"]["t"]), round(m.pi, 3), open("notes.txt").read(), os.getcwd()]`;
    const second = await sandbox.execute(continued, {
      sessionBytes: first.sessionBytes,
      sessionMetadata: first.sessionMetadata,
    });
    assertSuccess(second);
    assert.deepEqual(second.result, [
      "hello Ada",
      2,
      1,
      [1, 2, 3],
      "ünï",
      [1, 2],
      3.142,
      "line 1\nline 2\n",
      cwd,
    ]);
    assertMetadata(second.sessionMetadata);
    assert.equal(
      second.sessionMetadata!.createdAt,
      first.sessionMetadata!.createdAt,
    );

    // The first bytes are unchanged by the second run: branching from them
    // again starts from the same state.
    const branch = await sandbox.execute(continued, {
      sessionBytes: first.sessionBytes,
      sessionMetadata: first.sessionMetadata,
    });
    assertSuccess(branch);
    assert.deepEqual(branch.result, second.result);

    // A third run continues from the second.
    const third = await sandbox.execute(
      "[counter.bump(), open('notes.txt').read().count('line')]",
      {
        sessionBytes: second.sessionBytes,
        sessionMetadata: second.sessionMetadata,
      },
    );
    assertSuccess(third);
    assert.deepEqual(third.result, [3, 2]);

    // Without bytes, a stateful call starts fresh.
    const fresh = await sandbox.execute(
      "import os\n['greet' in globals(), os.path.exists('notes.txt')]",
    );
    assertSuccess(fresh);
    assert.deepEqual(fresh.result, [false, false]);
    assert.ok(fresh.sessionBytes);
  });
});

Deno.test("stateful PyodideSandbox.execute() keeps the state an exception left and returns no bytes after a timeout", async () => {
  await withSandbox({ stateful: true }, async (sandbox) => {
    const failed = await sandbox.execute(
      "x = 1\nraise ValueError('after x')\nx = 2",
    );
    assert.equal(failed.status, "error");
    assert.equal(failed.error?.kind, "exception");
    assert.equal(failed.error?.type, "ValueError");
    assert.ok(failed.sessionBytes, "bytes after an exception");
    assertMetadata(failed.sessionMetadata);
    const next = await sandbox.execute("x + 1", {
      sessionBytes: failed.sessionBytes,
      sessionMetadata: failed.sessionMetadata,
    });
    assertSuccess(next);
    assert.equal(next.result, 2);

    // The restore of `next` left a paused child for the next restore: the
    // timed-out call takes it, and a new one is paused after it.
    const before = liveDenoChildren();
    const timedOut = await sandbox.execute("y = 5\nwhile True:\n    pass", {
      sessionBytes: next.sessionBytes,
      sessionMetadata: next.sessionMetadata,
      timeoutSeconds: 2,
    });
    assert.equal(timedOut.error?.kind, "timeout");
    assert.equal(timedOut.sessionBytes, undefined);
    assert.equal(timedOut.sessionMetadata, undefined);
    const after = liveDenoChildren();
    assert.ok(
      after.length <= 1 && !after.some((pid) => before.includes(pid)),
      `the timed-out child is gone (before ${before}, after ${after})`,
    );

    // The caller's previous bytes still work.
    const resumed = await sandbox.execute("[x, 'y' in globals()]", {
      sessionBytes: next.sessionBytes,
      sessionMetadata: next.sessionMetadata,
    });
    assertSuccess(resumed);
    assert.deepEqual(resumed.result, [1, false]);
  });
});

Deno.test("a 20 MB session round-trips intact", async () => {
  await withSandbox({ stateful: true }, async (sandbox) => {
    const first = await sandbox.execute(`import os, hashlib
blob = os.urandom(20 * 2**20)
hashlib.sha256(blob).hexdigest()`);
    assertSuccess(first);
    assert.ok(
      first.sessionBytes!.length > 20 * 2 ** 20,
      `${first.sessionBytes!.length} bytes`,
    );
    const second = await sandbox.execute(
      "[len(blob), hashlib.sha256(blob).hexdigest()]",
      {
        sessionBytes: first.sessionBytes,
        sessionMetadata: first.sessionMetadata,
      },
    );
    assertSuccess(second);
    assert.deepEqual(second.result, [20 * 2 ** 20, first.result]);
  });
});

Deno.test("corrupted, truncated, foreign or mismatched session bytes give an error of kind session", async () => {
  await withSandbox({ stateful: true }, async (sandbox) => {
    const { sessionBytes, sessionMetadata } = await makeSession(sandbox);
    const flipped = (at: number) => {
      const copy = sessionBytes.slice();
      copy[at] ^= 0x01;
      return copy;
    };
    const cases: [string, Uint8Array, SessionMetadata][] = [
      [
        "a flipped payload byte",
        flipped(sessionBytes.length >> 1),
        sessionMetadata,
      ],
      [
        "a flipped checksum byte",
        flipped(sessionBytes.length - 1),
        sessionMetadata,
      ],
      ["a flipped header byte", flipped(20), sessionMetadata],
      [
        "truncated bytes",
        sessionBytes.slice(0, sessionBytes.length >> 1),
        sessionMetadata,
      ],
      [
        "random bytes",
        crypto.getRandomValues(new Uint8Array(4096)),
        sessionMetadata,
      ],
      ["empty bytes", new Uint8Array(0), sessionMetadata],
      ["another session's createdAt", sessionBytes, {
        ...sessionMetadata,
        createdAt: new Date(0).toISOString(),
      }],
      ["another Pyodide version", sessionBytes, {
        ...sessionMetadata,
        pyodideVersion: "0.27.7",
      }],
    ];
    for (const [what, bytes, metadata] of cases) {
      const result = await sandbox.execute("print('must not run')", {
        sessionBytes: bytes,
        sessionMetadata: metadata,
      });
      assertSessionError(result, what);
      await assert.rejects(
        sandbox.openSession({ sessionBytes: bytes, sessionMetadata: metadata }),
        SessionError,
        what,
      );
    }
    // The host and the sandbox are fine, and the genuine bytes still work.
    const ok = await sandbox.execute("z + 1", {
      sessionBytes,
      sessionMetadata,
    });
    assertSuccess(ok);
    assert.equal(ok.result, 2);
  });
  await assertNoDenoChildren("after close");
});

Deno.test("with a sessionSecret, unsigned bytes and bytes signed with another secret are rejected", async () => {
  const plainSandbox = new PyodideSandbox({
    poolSize: 0,
    stateful: true,
    denoPath: TEST_DENO_PATH,
  });
  const sandboxA = new PyodideSandbox({
    poolSize: 0,
    stateful: true,
    denoPath: TEST_DENO_PATH,
    sessionSecret: SECRET_A,
  });
  const sandboxB = new PyodideSandbox({
    poolSize: 0,
    stateful: true,
    denoPath: TEST_DENO_PATH,
    sessionSecret: new TextEncoder().encode(SECRET_B),
  });
  try {
    const plain = await makeSession(plainSandbox, "who = 'plain'");
    const signedA = await makeSession(sandboxA, "who = 'A'");

    assertSessionError(
      await sandboxA.execute("who", plain),
      "unsigned bytes with a secret",
    );
    await assert.rejects(sandboxA.openSession(plain), SessionError);
    assertSessionError(
      await sandboxB.execute("who", signedA),
      "bytes signed with another secret",
    );
    assertSessionError(
      await plainSandbox.execute("who", signedA),
      "signed bytes without a secret",
    );
    const tampered = signedA.sessionBytes.slice();
    tampered[tampered.length >> 1] ^= 0x80;
    assertSessionError(
      await sandboxA.execute("who", {
        sessionBytes: tampered,
        sessionMetadata: signedA.sessionMetadata,
      }),
      "tampered signed bytes",
    );

    // Bytes signed by this host work, and stay signed.
    const resumed = await sandboxA.execute("who", signedA);
    assertSuccess(resumed);
    assert.equal(resumed.result, "A");
    assertSessionError(
      await plainSandbox.execute("who", {
        sessionBytes: resumed.sessionBytes,
        sessionMetadata: resumed.sessionMetadata,
      }),
      "re-signed bytes without a secret",
    );
    const live = await sandboxA.openSession(signedA);
    try {
      const result = await live.execute("who");
      assertSuccess(result);
      assert.equal(result.result, "A");
    } finally {
      await live.close();
    }
  } finally {
    await Promise.all([
      plainSandbox.close(),
      sandboxA.close(),
      sandboxB.close(),
    ]);
  }
  assert.throws(
    () => new PyodideSandbox({ sessionSecret: "short" }),
    RangeError,
  );
  assert.throws(
    () => new PyodideSandbox({ sessionSecret: 42 as unknown as string }),
    TypeError,
  );
});

Deno.test("session bytes without metadata, or of the wrong type, throw a TypeError", async () => {
  await withSandbox({ stateful: true }, async (sandbox) => {
    const bytes = new Uint8Array([1, 2, 3]);
    await assert.rejects(
      async () => await sandbox.execute("1", { sessionBytes: bytes }),
      TypeError,
    );
    await assert.rejects(
      async () =>
        await sandbox.execute("1", {
          sessionBytes: bytes,
          sessionMetadata: null as unknown as SessionMetadata,
        }),
      TypeError,
    );
    await assert.rejects(
      async () =>
        await sandbox.execute("1", {
          sessionMetadata: {
            pyodideVersion: PYODIDE_VERSION,
            createdAt: "",
            updatedAt: "",
          },
        }),
      TypeError,
    );
    await assert.rejects(
      async () =>
        await sandbox.execute("1", {
          sessionBytes: "bytes" as unknown as Uint8Array,
          sessionMetadata: {
            pyodideVersion: PYODIDE_VERSION,
            createdAt: "",
            updatedAt: "",
          },
        }),
      TypeError,
    );
    await assert.rejects(
      async () => await sandbox.openSession({ sessionBytes: bytes }),
      TypeError,
    );
    assert.equal(sandbox.sessionCount, 0);
  });
});

Deno.test("a live session keeps its interpreter across calls, survives a soft timeout, saves and resumes", async () => {
  await withSandbox({ stateful: true }, async (sandbox) => {
    const session = await sandbox.openSession();
    let saved;
    try {
      assert.equal(session.alive, true);
      assert.equal(sandbox.sessionCount, 1);
      assertSuccess(
        await session.execute(`x = 41
def f():
    return x + 1
class Box:
    def __init__(self, v):
        self.v = v
box = Box("boxed")
with open("live.txt", "w") as fh:
    fh.write("kept")`),
      );
      const two = await session.execute("print('f is', f())\nf()");
      assertSuccess(two);
      assert.equal(two.result, 42);
      assert.equal(two.stdout, "f is 42\n");
      assert.equal(two.sessionBytes, undefined, "live calls return no bytes");

      const started = performance.now();
      const spun = await session.execute(
        "print('spinning', flush=True)\nwhile True:\n    pass",
        { timeoutSeconds: 2 },
      );
      const elapsed = (performance.now() - started) / 1000;
      assert.equal(spun.status, "error");
      assert.equal(spun.error?.kind, "timeout");
      assert.equal(spun.stdout, "spinning\n");
      assert.ok(elapsed < 2 + 5, `${elapsed} s`);
      assert.equal(session.alive, true, "a soft interrupt keeps the session");

      const after = await session.execute("[x, f(), box.v]");
      assertSuccess(after);
      assert.deepEqual(after.result, [41, 42, "boxed"]);

      const failed = await session.execute("x = 100\n1 / 0");
      assert.equal(failed.error?.type, "ZeroDivisionError");
      assertSuccess(await session.execute("x = 41"));

      saved = await session.save();
      assert.ok(saved.sessionBytes instanceof Uint8Array);
      assertMetadata(saved.sessionMetadata);
      // Changes after the save are not in the saved state.
      assertSuccess(await session.execute("x = 0"));
    } finally {
      await session.close();
    }
    assert.equal(session.alive, false);
    assert.equal(sandbox.sessionCount, 0);
    await assert.rejects(async () => await session.execute("1"), TypeError);
    assertNoDenoChildrenNow("after closing the session");

    const resumed = await sandbox.openSession(saved);
    try {
      const result = await resumed.execute(
        "[x, f(), box.v, open('live.txt').read()]",
      );
      assertSuccess(result);
      assert.deepEqual(result.result, [41, 42, "boxed", "kept"]);
    } finally {
      await resumed.close();
    }

    // Saved bytes also continue in a stateful execute.
    const stateless = await sandbox.execute("f() + 1", saved);
    assertSuccess(stateless);
    assert.equal(stateless.result, 43);
  });
  await assertNoDenoChildren("after close");
});

Deno.test("a live session whose code ignores the interrupt is killed and then reports kind session", async () => {
  await withSandbox({}, async (sandbox) => {
    const session = await sandbox.openSession();
    try {
      assertSuccess(await session.execute("kept = 1"));
      const stubborn = await session.execute(
        `while True:
    try:
        while True:
            pass
    except BaseException:
        pass`,
        { timeoutSeconds: 1 },
      );
      assert.equal(stubborn.error?.kind, "timeout");
      assert.equal(session.alive, false);
      assertNoDenoChildrenNow("after the hard kill");
      const lost = await session.execute("kept");
      assert.equal(lost.status, "error");
      assert.equal(lost.error?.kind, "session");
      await assert.rejects(session.save(), SessionError);
    } finally {
      await session.close();
    }
    // The sandbox itself is fine.
    const fresh = await sandbox.execute("'fine'");
    assertSuccess(fresh);
  });
});
