import assert from "node:assert/strict";
import { join } from "node:path";
import {
  BasePyodideSandbox,
  type CodeExecutionResult,
  PyodideSandbox,
  SyncPyodideSandbox,
} from "../mod.ts";
import {
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

function assertError(
  result: CodeExecutionResult,
  kind: string,
  type?: string,
): void {
  assert.equal(result.status, "error", `expected an error: ${result.stdout}`);
  assert.ok(result.error, "error details");
  assert.equal(result.error.kind, kind, JSON.stringify(result.error));
  if (type !== undefined) assert.equal(result.error.type, type);
  assert.equal(result.result, null);
}

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

Deno.test("PyodideSandbox.execute() returns a memory error when Python exceeds memoryLimitMb, and the host is fine", async () => {
  await withSandbox({}, async (sandbox) => {
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
    const sandbox = new PyodideSandbox({
      denoPath: unchecked,
      skipDenoCheck: true,
      poolSize: 0,
    });
    try {
      const readLog = () => Deno.readTextFile(log).catch(() => "");
      assert.ok(!(await readLog()).includes("--version"));
      assert.equal(sandbox.buildCommand().command, unchecked);
      const result = await sandbox.execute("'via the wrapper'");
      assertSuccess(result);
      assert.equal(result.result, "via the wrapper");
      const calls = (await readLog()).trim().split("\n");
      assert.ok(calls.includes("run"), `the child ran via denoPath: ${calls}`);
      assert.ok(!calls.includes("--version"), `${calls}`);
    } finally {
      await sandbox.close();
    }
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
