/**
 * Streaming output in the async API: `onStdout`/`onStderr` callbacks while
 * the code runs and `executeStream()`. Real Pyodide in real children.
 */

import assert from "node:assert/strict";
import { PyodideSandbox, type StreamEvent } from "../mod.ts";
import {
  assertNoDenoChildren,
  TEST_DENO_PATH,
  withSandbox,
} from "./_helpers.ts";

Deno.test("PyodideSandbox streams stdout and stderr to callbacks while the code runs, in order and byte-exact, and survives a throwing callback", async () => {
  const events: string[] = [];
  const stdoutChunks: string[] = [];
  await withSandbox({
    poolSize: 0,
    denoPath: TEST_DENO_PATH,
    functions: {
      // Answers only once "two" has been streamed: proves delivery before
      // the code ends.
      streamed: () => stdoutChunks.join("").includes("two\n"),
    },
  }, async (sandbox) => {
    const result = await sandbox.execute(
      `
import sys
print("one")
print("err1", file=sys.stderr)
# A three-byte character split across two flushes.
sys.stdout.buffer.write(b"split \\xe2\\x82")
sys.stdout.flush()
sys.stdout.buffer.write(b"\\xac euro\\n")
sys.stdout.flush()
print("two")
print("seen:", streamed())
print("err2", file=sys.stderr)
sys.stdout.write("no newline at the end")
`,
      {
        onStdout: (text) => {
          stdoutChunks.push(text);
          events.push(`out:${text}`);
        },
        onStderr: (text) => events.push(`err:${text}`),
      },
    );
    assert.equal(result.status, "success", result.stderr);
    assert.equal(
      result.stdout,
      "one\nsplit € euro\ntwo\nseen: True\nno newline at the end",
    );
    assert.equal(result.stderr, "err1\nerr2\n");
    assert.equal(stdoutChunks.join(""), result.stdout);
    assert.ok(
      !stdoutChunks.some((c) => c.includes("\ufffd")),
      `no broken character: ${JSON.stringify(stdoutChunks)}`,
    );
    assert.ok(
      stdoutChunks.includes("split "),
      `the split write arrived as its own chunk: ${
        JSON.stringify(stdoutChunks)
      }`,
    );
    const joined = events.join("|");
    const order = [
      "out:one\n",
      "err:err1\n",
      "out:split ",
      "out:two\n",
      "out:seen: True\n",
      "err:err2\n",
      "out:no newline at the end",
    ].map((e) => joined.indexOf(e));
    assert.ok(order.every((i) => i >= 0), joined);
    assert.deepEqual(order, [...order].sort((a, b) => a - b), joined);

    // Output larger than one frame (64 KiB), full of two-byte characters
    // that the frames cut in the middle.
    const big: string[] = [];
    const large = await sandbox.execute("print('é' * 100000)", {
      onStdout: (text) => big.push(text),
    });
    assert.equal(large.stdout, "é".repeat(100000) + "\n");
    assert.ok(big.length > 1, "several chunks");
    assert.equal(big.join(""), large.stdout);

    // A callback that throws does not break the run.
    const survived = await sandbox.execute("print('a')\ndisplay(1)\n2", {
      onStdout: () => {
        throw new Error("callback bug");
      },
      onDisplay: () => {
        throw new Error("callback bug");
      },
    });
    assert.equal(survived.status, "success", survived.stderr);
    assert.equal(survived.stdout, "a\n");
    assert.equal(survived.result, 2);
    assert.equal(survived.displays!.length, 1);
  });
});

Deno.test("PyodideSandbox.executeStream() yields stdout, stderr and display events in order, then the result, and stops on abort", async () => {
  const sandbox = new PyodideSandbox({
    poolSize: 0,
    denoPath: TEST_DENO_PATH,
  });
  try {
    const seenByCallback: string[] = [];
    const events: StreamEvent[] = [];
    for await (
      const event of sandbox.executeStream(
        `
import sys
class Html:
    def _repr_html_(self):
        return "<i>x</i>"
print("start")
print("warn", file=sys.stderr)
display(Html())
print("end")
7 * 6
`,
        { onStdout: (text) => seenByCallback.push(text) },
      )
    ) {
      events.push(event);
    }
    const last = events.at(-1)!;
    assert.equal(last.type, "result");
    const result = (last as Extract<StreamEvent, { type: "result" }>).result;
    assert.equal(result.status, "success", result.stderr);
    assert.equal(result.result, 42);
    assert.equal(result.stdout, "start\nend\n");
    assert.deepEqual(
      events.slice(0, -1).map((e) =>
        e.type === "display"
          ? `display:${e.data["text/html"]}`
          : e.type === "result"
          ? "result"
          : `${e.type}:${e.data}`
      ),
      ["stdout:start\n", "stderr:warn\n", "display:<i>x</i>", "stdout:end\n"],
    );
    assert.deepEqual(seenByCallback, ["start\n", "end\n"]);
    assert.equal(result.displays!.length, 1);

    // An exception still ends with a result event.
    const failed: StreamEvent[] = [];
    for await (const e of sandbox.executeStream("print('x')\n1/0")) {
      failed.push(e);
    }
    assert.deepEqual(failed.map((e) => e.type), ["stdout", "result"]);
    const end = failed[1] as Extract<StreamEvent, { type: "result" }>;
    assert.equal(end.result.error?.type, "ZeroDivisionError");

    // Aborting through the signal ends the iteration with its reason.
    const controller = new AbortController();
    const types: string[] = [];
    await assert.rejects(async () => {
      for await (
        const e of sandbox.executeStream("print('go')\nwhile True:\n    pass", {
          signal: controller.signal,
        })
      ) {
        types.push(e.type);
        if (e.type === "stdout") controller.abort(new Error("stop streaming"));
      }
    }, /stop streaming/);
    assert.deepEqual(types, ["stdout"]);
    await assertNoDenoChildren("after aborting a stream");
  } finally {
    await sandbox.close();
  }
  assert.throws(
    () => sandbox.executeStream("1"),
    /closed/,
    "a closed sandbox refuses at once",
  );
});
