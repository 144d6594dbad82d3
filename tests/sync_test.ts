/**
 * The Python world in the sync API ({@linkcode SyncPyodideSandbox} and
 * {@linkcode SyncPyodideSession}): callbacks on the caller's thread while
 * it waits, host functions, files, displays and packages. Real Pyodide in
 * real children.
 *
 * @module
 */

import assert from "node:assert/strict";
import { SyncPyodideSandbox } from "../mod.ts";
import { buildWheel } from "./_wheel.ts";
import { assertNoDenoChildren, TEST_DENO_PATH } from "./_helpers.ts";

const decoder = new TextDecoder();

Deno.test("SyncPyodideSandbox.execute() runs onStdout, onStderr and onDisplay on the caller's thread while it waits, in order and byte-exact", async () => {
  // Plain closure state: only code on this thread can see or change it.
  const events: string[] = [];
  const stdout: string[] = [];
  const sandbox = new SyncPyodideSandbox({
    poolSize: 0,
    denoPath: TEST_DENO_PATH,
    functions: {
      // Runs while execute() is blocked; returns what the callbacks have
      // delivered so far, proving they ran before the code ended.
      streamed_so_far: () => stdout.join(""),
    },
  });
  try {
    const result = sandbox.execute(
      `
import sys
class Html:
    def _repr_html_(self):
        return "<p>hi</p>"
print("step 1")
print("warn", file=sys.stderr)
sys.stdout.buffer.write(b"euro \\xe2\\x82")
sys.stdout.flush()
sys.stdout.buffer.write(b"\\xac!\\n")
sys.stdout.flush()
display(Html())
seen = streamed_so_far()
print("done")
seen
`,
      {
        onStdout: (text) => {
          stdout.push(text);
          events.push(`out:${text}`);
        },
        onStderr: (text) => events.push(`err:${text}`),
        onDisplay: (bundle) => events.push(`display:${bundle["text/html"]}`),
      },
    );
    events.push("returned");
    assert.equal(result.status, "success", result.stderr);
    assert.equal(result.result, "step 1\neuro €!\n");
    assert.equal(result.stdout, "step 1\neuro €!\ndone\n");
    assert.equal(stdout.join(""), result.stdout);
    assert.ok(stdout.includes("euro "), JSON.stringify(stdout));
    assert.deepEqual(events, [
      "out:step 1\n",
      "err:warn\n",
      "out:euro ",
      "out:€!\n",
      "display:<p>hi</p>",
      "out:done\n",
      "returned",
    ]);
    assert.deepEqual(result.displays, [
      {
        "text/html": "<p>hi</p>",
        "text/plain": result.displays![0]["text/plain"],
      },
    ]);

    // A callback that throws does not break the call.
    const survived = sandbox.execute("print('x')\n3", {
      onStdout: () => {
        throw new Error("callback bug");
      },
    });
    assert.equal(survived.result, 3, survived.stderr);
    assert.equal(survived.stdout, "x\n");
  } finally {
    sandbox.close();
  }
  await assertNoDenoChildren("after the sync streaming test");
});

Deno.test("SyncPyodideSandbox host functions return plain values; a thrown error or a returned Promise raises HostError in Python", async () => {
  let counter = 0;
  const calls: unknown[][] = [];
  const sandbox = new SyncPyodideSandbox({
    poolSize: 0,
    denoPath: TEST_DENO_PATH,
    functions: {
      add: (a, b) => (a as number) + (b as number),
      next_id: () => ++counter,
      echo: (...args) => {
        calls.push(args);
        return { args };
      },
      fail: () => {
        throw new Error("not allowed: read-only");
      },
      later: () => Promise.resolve(1),
    },
  });
  try {
    counter = 100; // Changed after construction: the caller's live state.
    const result = sandbox.execute(`
from host import add, HostError
import host
r = {"add": add(2, 3), "ids": [next_id(), host.next_id()]}
r["echo"] = echo("é", [1, {"k": None}], 2.5)
for name in ("fail", "later"):
    try:
        getattr(host, name)()
    except HostError as e:
        r[name] = str(e)
try:
    echo(object())
except TypeError:
    r["type_error"] = True
r
`);
    assert.equal(result.status, "success", result.stderr);
    assert.deepEqual(result.result, {
      add: 5,
      ids: [101, 102],
      echo: { args: ["é", [1, { k: null }], 2.5] },
      fail: "not allowed: read-only",
      later:
        "Host function later returned a Promise: host functions of SyncPyodideSandbox must return plain values",
      type_error: true,
    });
    assert.equal(counter, 102);
    assert.deepEqual(calls, [["é", [1, { k: null }], 2.5]]);

    const uncaught = sandbox.execute("fail()");
    assert.equal(uncaught.error?.type, "HostError");
    assert.equal(uncaught.error?.message, "not allowed: read-only");
  } finally {
    sandbox.close();
  }
  await assertNoDenoChildren("after the sync host function test");
});

Deno.test("SyncPyodideSandbox takes files in, returns changed files with caps, and installs packages from a packageDir", async () => {
  const dir = await Deno.realPath(await Deno.makeTempDir());
  const wheel = buildWheel("tiny-dist", "0.1.0", {
    "tiny/__init__.py": "def hello():\n    return 'hello from tiny'\n",
  });
  await Deno.writeFile(`${dir}/${wheel.fileName}`, wheel.data);
  const sandbox = new SyncPyodideSandbox({
    poolSize: 0,
    denoPath: TEST_DENO_PATH,
    packageDir: dir,
    maxFileBytes: 8,
    stateful: true,
  });
  const missing = new SyncPyodideSandbox({
    poolSize: 0,
    denoPath: TEST_DENO_PATH,
    packageDir: dir,
    packages: ["absent-dist"],
  });
  try {
    const result = sandbox.execute(
      `
import tiny
data = open("in.bin", "rb").read()
open("copy.bin", "wb").write(data[::-1])
open("long.txt", "w").write("0123456789abcdef")
(tiny.hello(), open("/home/pyodide/note.txt").read())
`,
      {
        files: {
          "in.bin": new Uint8Array([1, 2, 3, 255]),
          "note.txt": "ünïcode",
        },
      },
    );
    assert.equal(result.status, "success", result.stderr);
    assert.deepEqual(result.result, ["hello from tiny", "ünïcode"]);
    assert.equal(result.stdout, "");
    assert.deepEqual(
      result.files!.map((f) => [
        f.path,
        f.size,
        [...f.content],
        f.truncated,
        f.content instanceof Uint8Array,
      ]),
      [
        ["/home/pyodide/copy.bin", 4, [255, 3, 2, 1], false, true],
        [
          "/home/pyodide/long.txt",
          16,
          [...new TextEncoder().encode("01234567")],
          true,
          true,
        ],
      ],
    );
    assert.deepEqual(result.sessionMetadata?.packages, ["tiny-dist==0.1.0"]);
    assert.ok(result.sessionBytes instanceof Uint8Array);

    const resumed = sandbox.execute("tiny.hello()", {
      sessionBytes: result.sessionBytes,
      sessionMetadata: result.sessionMetadata,
    });
    assert.equal(resumed.result, "hello from tiny", resumed.stderr);
    assert.deepEqual(resumed.sessionMetadata?.packages, ["tiny-dist==0.1.0"]);

    const failed = missing.execute("1");
    assert.equal(failed.error?.kind, "install");
    assert.ok(failed.error!.message.includes('"absent-dist"'));
    assert.ok(failed.error!.message.includes(dir));
  } finally {
    sandbox.close();
    missing.close();
    await Deno.remove(dir, { recursive: true });
  }
  await assertNoDenoChildren("after the sync files test");
});

Deno.test("SyncPyodideSession runs callbacks, host functions, files and displays per step, and save() records installed packages", async () => {
  const dir = await Deno.realPath(await Deno.makeTempDir());
  const wheel = buildWheel("tiny-dist", "0.1.0", {
    "tiny/__init__.py": "VALUE = 7\n",
  });
  await Deno.writeFile(`${dir}/${wheel.fileName}`, wheel.data);
  const log: string[] = [];
  const sandbox = new SyncPyodideSandbox({
    poolSize: 0,
    denoPath: TEST_DENO_PATH,
    packageDir: dir,
    functions: {
      record: (text) => {
        log.push(String(text));
        return log.length;
      },
    },
  });
  try {
    const session = sandbox.openSession();
    let saved;
    try {
      const chunks: string[] = [];
      const first = session.execute(
        `
import tiny
text = open("input.txt").read()
open("made.txt", "w").write(text * 2)
print("first", record(text))
`,
        {
          files: { "input.txt": "ab" },
          onStdout: (text) => chunks.push(text),
        },
      );
      assert.equal(first.status, "success", first.stderr);
      assert.deepEqual(chunks, ["first 1\n"]);
      assert.deepEqual(
        first.files!.map((f) => [f.path, decoder.decode(f.content)]),
        [["/home/pyodide/made.txt", "abab"]],
      );

      const displays: unknown[] = [];
      const second = session.execute(
        `
class Svg:
    def _repr_svg_(self):
        return "<svg/>"
open("second.txt", "w").write(str(tiny.VALUE))
display(Svg())
record("again")
`,
        { onDisplay: (bundle) => displays.push(bundle["image/svg+xml"]) },
      );
      assert.equal(second.status, "success", second.stderr);
      assert.equal(second.result, 2);
      assert.deepEqual(displays, ["<svg/>"]);
      assert.equal(second.displays!.length, 1);
      // Only this step's changes: made.txt from the first step is not
      // reported again.
      assert.deepEqual(
        second.files!.map((f) => [f.path, decoder.decode(f.content)]),
        [["/home/pyodide/second.txt", "7"]],
      );
      assert.deepEqual(log, ["ab", "again"]);
      saved = session.save();
    } finally {
      session.close();
    }
    assert.deepEqual(saved.sessionMetadata.packages, ["tiny-dist==0.1.0"]);
    const reopened = sandbox.openSession(saved);
    try {
      const again = reopened.execute(
        "import tiny\n(tiny.VALUE, open('made.txt').read())",
      );
      assert.deepEqual(again.result, [7, "abab"], again.stderr);
    } finally {
      reopened.close();
    }
  } finally {
    sandbox.close();
    await Deno.remove(dir, { recursive: true });
  }
  await assertNoDenoChildren("after the sync session test");
});

Deno.test("SyncPyodideSandbox delivers onAudit records on the caller's thread", () => {
  const records: { status: string; codeBytes: number }[] = [];
  const sandbox = new SyncPyodideSandbox({
    poolSize: 0,
    onAudit: (record) => {
      records.push(record as unknown as { status: string; codeBytes: number });
    },
  });
  try {
    const ok = sandbox.execute("print(1)");
    const bad = sandbox.execute("1/0");
    assert.equal(ok.status, "success");
    assert.equal(bad.error?.kind, "exception");
    assert.equal(records.length, 2);
    assert.deepEqual(records.map((r) => r.status), ["success", "error"]);
    assert.equal(records[0].codeBytes, 8);
  } finally {
    sandbox.close();
  }
});
