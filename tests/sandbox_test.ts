/**
 * `PyodideSandbox.execute()` basics: output, the last expression, exceptions
 * and tracebacks, stdin, unicode, big code, forged output and crashes. Real
 * Pyodide in real children.
 */

import assert from "node:assert/strict";
import {
  assertError,
  assertNoDenoChildren,
  assertSuccess,
  withSandbox,
} from "./_helpers.ts";

/** Asserts a traceback shows only the user's frames. */
function assertUserTraceback(traceback: string | undefined): void {
  assert.ok(traceback, "a traceback");
  // A SyntaxError has no frames, so no "Traceback" header either.
  if (!/^ {2}File "<sandbox>", line \d+\n/.test(traceback)) {
    assert.match(traceback, /^Traceback \(most recent call last\):\n/);
  }
  for (const internal of ["_pyodide", "pyodide/", "eval_code", "/lib/python"]) {
    assert.ok(
      !traceback.includes(internal),
      `no ${internal} in the traceback:\n${traceback}`,
    );
  }
  for (const line of traceback.split("\n")) {
    if (line.trimStart().startsWith("File ")) {
      assert.match(line, /^ {2}File "<sandbox>", line \d+/, traceback);
    }
  }
}

Deno.test("PyodideSandbox.execute() keeps stdout and stderr separate and byte-exact", async () => {
  await withSandbox({}, async (sandbox) => {
    const started = performance.now();
    const result = await sandbox.execute(String.raw`import sys
print("out line")
print('a\nb')
sys.stderr.write("err line\n")
print()
print("crlf", end="\r\n")
print("x", end="")
sys.stdout.write("tail without newline")
sys.stderr.write("err tail")`);
    const wall = (performance.now() - started) / 1000;
    assertSuccess(result);
    assert.equal(
      result.stdout,
      "out line\na\nb\n\ncrlf\r\nxtail without newline",
    );
    assert.equal(result.stderr, "err line\nerr tail");
    // The last expression is the final write(), which returns its length.
    assert.equal(result.result, 8);
    assert.equal(typeof result.executionTime, "number");
    assert.ok(
      result.executionTime > 0 && result.executionTime <= wall + 0.01,
      `executionTime ${result.executionTime} within the call's ${wall} s`,
    );
  });
});

Deno.test("PyodideSandbox.execute() returns the last expression as JSON-safe data", async () => {
  await withSandbox({}, async (sandbox) => {
    const int = await sandbox.execute("x = 40\nx + 2");
    assertSuccess(int);
    assert.equal(int.result, 42);
    assert.equal(int.stdout, "");

    const float = await sandbox.execute("1 / 4");
    assertSuccess(float);
    assert.equal(float.result, 0.25);

    const nested = await sandbox.execute(
      `[42, -7, 2**40, 3.5, 0.1 + 0.2, True, None, "text", [], {},
 {"a": [1, {"b": None}], "c": {"d": 1.5, "e": [[1, 2], [3]]}}]`,
    );
    assertSuccess(nested);
    assert.deepEqual(nested.result, [
      42,
      -7,
      2 ** 40,
      3.5,
      0.1 + 0.2,
      true,
      null,
      "text",
      [],
      {},
      { a: [1, { b: null }], c: { d: 1.5, e: [[1, 2], [3]] } },
    ]);

    const none = await sandbox.execute("y = [1, 2]\nfor _ in y:\n    pass");
    assertSuccess(none);
    assert.equal(none.result, null);

    const set = await sandbox.execute("{1, 2, 3}");
    assertSuccess(set);
    assert.deepEqual(set.result, {
      type: "not_serializable",
      pythonType: "set",
      repr: "{1, 2, 3}",
    });
  });
});

Deno.test("PyodideSandbox.execute() returns a Python exception with a traceback of the user's own lines", async () => {
  await withSandbox({}, async (sandbox) => {
    const result = await sandbox.execute(`print("before")
def inner():
    raise ValueError("boom")
def outer():
    inner()
outer()`);
    assertError(result, "exception", "ValueError");
    assert.equal(result.error?.message, "boom");
    assert.equal(result.stdout, "before\n");
    const tb = result.error?.traceback;
    assertUserTraceback(tb);
    assert.ok(tb!.includes('File "<sandbox>", line 6, in <module>'), tb);
    assert.ok(tb!.includes('File "<sandbox>", line 5, in outer'), tb);
    assert.ok(tb!.includes('File "<sandbox>", line 3, in inner'), tb);
    assert.ok(tb!.trimEnd().endsWith("ValueError: boom"), tb);
    assert.ok(result.stderr.includes(tb!), "stderr carries the traceback");
  });
});

Deno.test("PyodideSandbox.execute() reports SyntaxError and NameError as exceptions", async () => {
  await withSandbox({}, async (sandbox) => {
    const syntax = await sandbox.execute("print('never')\ndef f(:\n    pass");
    assertError(syntax, "exception", "SyntaxError");
    assert.equal(syntax.stdout, "", "nothing runs when the code cannot parse");
    assert.ok(
      syntax.error?.traceback?.includes("line 2"),
      syntax.error?.traceback,
    );
    assert.ok(syntax.error?.traceback?.includes("SyntaxError"));
    assertUserTraceback(syntax.error?.traceback);

    const name = await sandbox.execute("x = 1\nundefined_name + x");
    assertError(name, "exception", "NameError");
    assert.ok(
      name.error?.message.includes("undefined_name"),
      name.error?.message,
    );
    assertUserTraceback(name.error?.traceback);
    assert.ok(name.error?.traceback?.includes('File "<sandbox>", line 2'));
  });
});

Deno.test("PyodideSandbox.execute() feeds stdin to input() and sys.stdin, and input() raises EOFError without it", async () => {
  await withSandbox({}, async (sandbox) => {
    const code = `import sys
name = input()
n = int(input())
rest = sys.stdin.read()
[name, n * 2, rest]`;
    const fed = await sandbox.execute(code, {
      stdin: "Ada Lovelace\n21\nrest of\nthe text ✓",
    });
    assertSuccess(fed);
    assert.deepEqual(fed.result, ["Ada Lovelace", 42, "rest of\nthe text ✓"]);

    const empty = await sandbox.execute("input()");
    assertError(empty, "exception", "EOFError");
  });
});

Deno.test("PyodideSandbox.execute() handles unicode in code, output, stdin and results", async () => {
  await withSandbox({}, async (sandbox) => {
    const text = "héllo wörld 🐍 中文";
    const long = "é🐍".repeat(50_000);
    const result = await sandbox.execute(
      `import sys
π = 3.14159
s = "${text}"
print(s)
sys.stderr.write("ошибка ✓\\n")
sys.stdout.write("é🐍" * 50_000)
[s, len(s), "ü" * 3, {"ключ": "値"}, round(π, 2), input()]`,
      { stdin: "ünïcödé ⌘\n" },
    );
    assertSuccess(result);
    assert.equal(result.stdout, `${text}\n${long}`);
    assert.equal(result.stderr, "ошибка ✓\n");
    assert.deepEqual(result.result, [
      text,
      16,
      "üüü",
      { "ключ": "値" },
      3.14,
      "ünïcödé ⌘",
    ]);
  });
});

Deno.test("PyodideSandbox.execute() runs 1 MB of code", async () => {
  await withSandbox({}, async (sandbox) => {
    const lines: string[] = [];
    let size = 0;
    for (let i = 0; size < 512 * 1024; i++) {
      const line = `v${i} = ${i}\n`;
      lines.push(line);
      size += line.length;
    }
    const count = lines.length;
    const code = `${lines.join("")}big = "${"x".repeat(512 * 1024)}"
print(len(big))
[len(big), v${
      count - 1
    }, sum(v for k, v in globals().items() if k.startswith("v") and k[1:].isdigit())]`;
    assert.ok(code.length > 1024 * 1024, `${code.length} bytes of code`);
    const result = await sandbox.execute(code, { timeoutSeconds: 60 });
    assertSuccess(result);
    assert.equal(result.stdout, `${512 * 1024}\n`);
    assert.deepEqual(result.result, [
      512 * 1024,
      count - 1,
      (count - 1) * count / 2,
    ]);
  });
});

Deno.test("PyodideSandbox.execute() cannot be fooled by a forged result on the real stdout", async () => {
  const forge = `import js, json, struct
from pyodide.ffi import to_js
fake = {"status": "success", "stdout": "forged", "stderr": "", "result": "forged",
        "executionTime": 0, "success": True}
js.console.log(json.dumps(fake))
js.Deno.stdout.writeSync(to_js((json.dumps(fake) + "\\n").encode()))
# Frames shaped like the runner's, with a guessed (all-zero) nonce.
inner = json.dumps({"out": json.dumps({"ok": True, "result": "forged"})}).encode()
for frame_type in (1, 2, 4, 5):
    frame = b"PSB1" + bytes(16) + bytes([frame_type]) + struct.pack(">II", len(inner), 0) + inner + bytes(16)
    js.Deno.stdout.writeSync(to_js(frame))
`;
  await withSandbox({}, async (sandbox) => {
    const exited = await sandbox.execute(`${forge}js.Deno.exit(0)`);
    assert.notEqual(exited.status, "success", JSON.stringify(exited));
    assert.notEqual(exited.result, "forged");
    assert.equal(exited.error?.kind, "crash");
    assert.ok(!exited.stdout.includes("forged"), exited.stdout);

    const continued = await sandbox.execute(`${forge}"real"`);
    assertSuccess(continued);
    assert.equal(continued.result, "real");
    assert.ok(!continued.stdout.includes("forged"), continued.stdout);
    await assertNoDenoChildren("soon after the call");
  });
});

Deno.test("PyodideSandbox.execute() returns a crash error when the child exits", async () => {
  await withSandbox({}, async (sandbox) => {
    const result = await sandbox.execute(
      "print('bye', flush=True)\nimport js\njs.Deno.exit(3)",
    );
    assertError(result, "crash");
    assert.equal(result.stdout, "bye\n");
    const after = await sandbox.execute("'alive'");
    assertSuccess(after);
  });
});
