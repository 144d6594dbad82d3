/**
 * The Python world in the async API: files in and out, host folders,
 * streaming output, `executeStream`, rich displays and host functions.
 * Real Pyodide in real children.
 *
 * @module
 */

import assert from "node:assert/strict";
import { relative } from "node:path";
import { type MimeBundle, PyodideSandbox, type StreamEvent } from "../mod.ts";
import {
  assertNoDenoChildren,
  TEST_DENO_PATH,
  withTempDir,
} from "./_helpers.ts";

const decoder = new TextDecoder();

function base64(bytes: number[]): string {
  return btoa(String.fromCharCode(...bytes));
}

Deno.test("PyodideSandbox.execute() writes files in before the run, returns the files the code created or changed byte-exact, and rejects unwritable entries", async () => {
  const blob = Uint8Array.from({ length: 256 }, (_, i) => i);
  const sandbox = new PyodideSandbox({
    poolSize: 0,
    denoPath: TEST_DENO_PATH,
  });
  try {
    const result = await sandbox.execute(
      `
import os
with open("data/in.txt", encoding="utf-8") as f:
    text = f.read()
with open("/home/pyodide/blob.bin", "rb") as f:
    blob = f.read()
with open("/tmp/abs.bin", "rb") as f:
    absolute = f.read()
with open("out.txt", "w", encoding="utf-8") as f:
    f.write(text.upper() + "→ done\\n")
os.makedirs("out", exist_ok=True)
with open("out/deep.bin", "wb") as f:
    f.write(bytes(reversed(blob)))
with open("blob.bin", "ab") as f:
    f.write(b"\\x00tail")
with open("/tmp/elsewhere.txt", "w") as f:
    f.write("outside the working folder")
(os.getcwd(), text, list(blob) == list(range(256)), list(absolute))
`,
      {
        files: {
          "data/in.txt": "héllo wörld\n",
          "blob.bin": blob,
          "/tmp/abs.bin": new Uint8Array([0, 255, 1, 2]),
          "unchanged.txt": "left alone",
        },
      },
    );
    assert.equal(result.status, "success", result.stderr);
    assert.deepEqual(result.result, [
      "/home/pyodide",
      "héllo wörld\n",
      true,
      [0, 255, 1, 2],
    ]);
    // Only files created or changed under /home/pyodide: not the untouched
    // inputs, not /tmp.
    const byPath = new Map(result.files!.map((f) => [f.path, f]));
    assert.deepEqual(
      [...byPath.keys()].sort(),
      [
        "/home/pyodide/blob.bin",
        "/home/pyodide/out.txt",
        "/home/pyodide/out/deep.bin",
      ],
    );
    const out = byPath.get("/home/pyodide/out.txt")!;
    assert.equal(decoder.decode(out.content), "HÉLLO WÖRLD\n→ done\n");
    assert.equal(out.size, out.content.length);
    assert.equal(out.truncated, false);
    assert.deepEqual(
      [...byPath.get("/home/pyodide/out/deep.bin")!.content],
      [...blob].reverse(),
    );
    const changed = byPath.get("/home/pyodide/blob.bin")!;
    assert.deepEqual(
      [...changed.content],
      [...blob, 0, ...new TextEncoder().encode("tail")],
    );
    assert.equal(changed.size, 261);
    // Files do not leak into the next (stateless) call.
    const next = await sandbox.execute(
      "import os; sorted(os.listdir('/home/pyodide'))",
    );
    assert.deepEqual(next.result, []);
    assert.deepEqual(next.files, []);

    // A files entry the filesystem refuses is an error result, not a crash,
    // and the code does not run.
    const refused = await sandbox.execute("print('ran')", {
      files: { "a": "file", "a/b": "under a file" },
    });
    assert.equal(refused.status, "error");
    assert.equal(refused.error?.kind, "exception");
    assert.equal(refused.error?.type, "OSError");
    assert.match(refused.error!.message, /Invalid files entry: "a\/b"/);
    assert.equal(refused.stdout, "");
    const session = await sandbox.openSession();
    try {
      const bad = await session.execute("1", {
        files: { "/home/pyodide": "a folder" },
      });
      assert.equal(bad.error?.type, "OSError");
      assert.ok(session.alive);
      const good = await session.execute("open('x.txt').read()", {
        files: { "x.txt": "fine" },
      });
      assert.equal(good.result, "fine", good.stderr);
    } finally {
      await session.close();
    }
  } finally {
    await sandbox.close();
  }
});

Deno.test("PyodideSandbox caps returned files with maxFileBytes and maxTotalFileBytes and reports truncation", async () => {
  const sandbox = new PyodideSandbox({
    poolSize: 0,
    denoPath: TEST_DENO_PATH,
    maxFileBytes: 100,
    maxTotalFileBytes: 150,
  });
  try {
    const result = await sandbox.execute(`
for name, size in (("a.txt", 60), ("b.bin", 300), ("c.txt", 80)):
    with open(name, "wb") as f:
        f.write(bytes(i % 251 for i in range(size)))
`);
    assert.equal(result.status, "success", result.stderr);
    const pattern = (n: number) => Array.from({ length: n }, (_, i) => i % 251);
    assert.deepEqual(
      result.files!.map((f) => [f.path, f.size, f.content.length, f.truncated]),
      [
        ["/home/pyodide/a.txt", 60, 60, false],
        // Cut at maxFileBytes would be 100; the total cap leaves 90.
        ["/home/pyodide/b.bin", 300, 90, true],
        ["/home/pyodide/c.txt", 80, 0, true],
      ],
    );
    assert.deepEqual([...result.files![0].content], pattern(60));
    assert.deepEqual([...result.files![1].content], pattern(90));
  } finally {
    await sandbox.close();
  }
});

Deno.test("PyodideSandbox shows host folders granted by allowRead/allowWrite to open() at their absolute paths and copies granted writes back", async () => {
  await withTempDir(async (dir) => {
    const readDir = `${dir}/read`;
    const writeDir = `${dir}/write`;
    const writeOnly = `${dir}/write_only`;
    for (const d of [readDir, `${readDir}/sub`, writeDir, writeOnly]) {
      await Deno.mkdir(d);
    }
    await Deno.writeTextFile(`${readDir}/data.csv`, "a,b\n1,2\n");
    await Deno.writeFile(`${readDir}/sub/raw.bin`, new Uint8Array([9, 8, 7]));
    await Deno.writeTextFile(`${writeDir}/log.txt`, "first\n");
    // A relative grant resolves against the caller's cwd.
    const relativeRead = relative(Deno.cwd(), readDir);
    assert.ok(!relativeRead.startsWith("/"));
    const sandbox = new PyodideSandbox({
      poolSize: 0,
      denoPath: TEST_DENO_PATH,
      allowRead: [relativeRead, writeDir],
      // A single file can be granted too, before it exists.
      allowWrite: [writeDir, writeOnly, `${dir}/single.json`],
    });
    try {
      const result = await sandbox.execute(`
R, W, WO = ${JSON.stringify([readDir, writeDir, writeOnly])}
with open(R + "/data.csv") as f:
    csv = f.read()
with open(R + "/sub/raw.bin", "rb") as f:
    raw = list(f.read())
with open(W + "/log.txt", "a") as f:
    f.write("second\\n")
with open(W + "/new.bin", "wb") as f:
    f.write(bytes([0, 1, 254, 255]))
with open(WO + "/made.txt", "w") as f:
    f.write("from python")
import os, json
os.makedirs(WO + "/new/deeper")
with open(WO + "/new/deeper/x.txt", "w") as f:
    f.write("nested")
with open(${JSON.stringify(`${dir}/single.json`)}, "w") as f:
    json.dump({"ok": True}, f)
# Not granted for writing: stays inside the sandbox.
with open(R + "/data.csv", "w") as f:
    f.write("overwritten")
with open(W + "/../escape.txt", "w") as f:
    f.write("outside the grant")
(csv, raw)
`);
      assert.equal(result.status, "success", result.stderr);
      assert.deepEqual(result.result, ["a,b\n1,2\n", [9, 8, 7]]);
      assert.equal(result.stderr, "", "no write-back warnings");
      // Written back to the host.
      assert.equal(
        await Deno.readTextFile(`${writeDir}/log.txt`),
        "first\nsecond\n",
      );
      assert.deepEqual(
        [...await Deno.readFile(`${writeDir}/new.bin`)],
        [0, 1, 254, 255],
      );
      assert.equal(
        await Deno.readTextFile(`${writeOnly}/made.txt`),
        "from python",
      );
      assert.equal(
        await Deno.readTextFile(`${writeOnly}/new/deeper/x.txt`),
        "nested",
      );
      assert.deepEqual(
        JSON.parse(await Deno.readTextFile(`${dir}/single.json`)),
        { ok: true },
      );
      // Contained: the read-only folder on the host is untouched.
      assert.equal(
        await Deno.readTextFile(`${readDir}/data.csv`),
        "a,b\n1,2\n",
      );
      await assert.rejects(
        Deno.stat(`${dir}/escape.txt`),
        Deno.errors.NotFound,
        "a write outside the grants never reaches the host",
      );
      // Host folder files are not result.files (outside /home/pyodide).
      assert.deepEqual(result.files, []);

      // The next call sees the host's current contents.
      await Deno.writeTextFile(`${readDir}/data.csv`, "changed on the host");
      const next = await sandbox.execute(
        `open(${JSON.stringify(`${readDir}/data.csv`)}).read()`,
      );
      assert.equal(next.result, "changed on the host");
    } finally {
      await sandbox.close();
    }
  });
});

Deno.test("PyodideSandbox streams stdout and stderr to callbacks while the code runs, in order and byte-exact, and survives a throwing callback", async () => {
  const events: string[] = [];
  const stdoutChunks: string[] = [];
  const sandbox = new PyodideSandbox({
    poolSize: 0,
    denoPath: TEST_DENO_PATH,
    functions: {
      // Answers only once "two" has been streamed: proves delivery before
      // the code ends.
      streamed: () => stdoutChunks.join("").includes("two\n"),
    },
  });
  try {
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
  } finally {
    await sandbox.close();
  }
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

Deno.test("PyodideSandbox returns rich displays from display() and _repr_*_ last expressions as MIME bundles in output order", async () => {
  const sandbox = new PyodideSandbox({
    poolSize: 0,
    denoPath: TEST_DENO_PATH,
  });
  try {
    const order: string[] = [];
    const result = await sandbox.execute(
      `
class Html:
    def _repr_html_(self):
        return "<b>bold</b>"
    def __repr__(self):
        return "Html()"
class Png:
    def _repr_png_(self):
        return bytes([137, 80, 78, 71, 0, 255])
    def __repr__(self):
        return "Png()"
class Multi:
    def _repr_svg_(self):
        return "<svg/>"
    def _repr_markdown_(self):
        return "# hi"
    def _repr_json_(self):
        return {"a": [1, 2]}
    def _repr_jpeg_(self):
        return b"\\xff\\xd8"
    def __repr__(self):
        return "Multi()"
class Broken:
    def _repr_html_(self):
        raise ValueError("no html")
    def __repr__(self):
        return "Broken()"
print("before")
display(Html(), 42, Png())
print("between")
display(Multi(), Broken())
Png()
`,
      {
        onStdout: (text) => order.push(`out:${text}`),
        onDisplay: (bundle) => order.push(`display:${bundle["text/plain"]}`),
      },
    );
    assert.equal(result.status, "success", result.stderr);
    const png = base64([137, 80, 78, 71, 0, 255]);
    const expected: MimeBundle[] = [
      { "text/html": "<b>bold</b>", "text/plain": "Html()" },
      { "text/plain": "42" },
      { "image/png": png, "text/plain": "Png()" },
      {
        "image/svg+xml": "<svg/>",
        "text/markdown": "# hi",
        "application/json": { a: [1, 2] },
        "image/jpeg": base64([0xff, 0xd8]),
        "text/plain": "Multi()",
      },
      { "text/plain": "Broken()" },
      // The last expression.
      { "image/png": png, "text/plain": "Png()" },
    ];
    assert.deepEqual(result.displays, expected);
    assert.deepEqual(order, [
      "out:before\n",
      "display:Html()",
      "display:42",
      "display:Png()",
      "out:between\n",
      "display:Multi()",
      "display:Broken()",
      "display:Png()",
    ]);
    // The last expression is still the result (as a marker).
    assert.equal(
      (result.result as { type: string }).type,
      "not_serializable",
    );

    // A failing or odd _repr_*_ loses only its MIME type, never the run.
    const odd = await sandbox.execute(`
class Odd:
    def _repr_json_(self):
        return "not json {"
    def _repr_png_(self):
        return ["not", "bytes"]
    def _repr_html_(self):
        return "<i>ok</i>"
    def __repr__(self):
        return "Odd()"
display(Odd())
Odd()
`);
    assert.equal(odd.status, "success", odd.stderr);
    assert.deepEqual(odd.displays, [
      { "text/html": "<i>ok</i>", "text/plain": "Odd()" },
      { "text/html": "<i>ok</i>", "text/plain": "Odd()" },
    ]);

    // Plain values and classes are no displays.
    const plain = await sandbox.execute(`
class Html:
    def _repr_html_(self):
        return "<b/>"
print("x")
Html
`);
    assert.equal(plain.status, "success", plain.stderr);
    assert.deepEqual(plain.displays, []);
    const number = await sandbox.execute("41 + 1");
    assert.deepEqual(number.displays, []);
    assert.equal(number.result, 42);
  } finally {
    await sandbox.close();
  }
});

Deno.test("PyodideSandbox host functions: JSON arguments and results, async functions, `from host import`, HostError and TypeError", async () => {
  const calls: unknown[][] = [];
  const sandbox = new PyodideSandbox({
    poolSize: 0,
    denoPath: TEST_DENO_PATH,
    functions: {
      add: (a, b) => (a as number) + (b as number),
      echo: (...args) => {
        calls.push(args);
        return { args };
      },
      lookup: async (key) => {
        await new Promise((r) => setTimeout(r, 20));
        return { key, found: true, tags: ["x", "ü"] };
      },
      fail: () => {
        throw new Error("quota exceeded: 3 calls");
      },
      failLater: async () => {
        await new Promise((r) => setTimeout(r, 5));
        throw new Error("backend down: try later");
      },
      nothing: () => {},
    },
  });
  try {
    const result = await sandbox.execute(`
from host import add, echo, HostError
import host
r = {}
r["add"] = add(2, 3)
r["global"] = lookup("k1")
r["module"] = host.lookup("k2")["key"]
r["echo"] = echo("é", 1.5, None, True, [1, {"k": "v"}])
r["nothing"] = nothing()
for name, fn in (("fail", fail), ("failLater", failLater)):
    try:
        fn()
    except host.HostError as e:
        r[name] = [type(e).__name__, str(e), isinstance(e, Exception)]
r["HostError is host.HostError"] = HostError is host.HostError
bad = []
for args in ((object(),), (float("nan"),), (b"raw",), ({1, 2},)):
    try:
        echo(*args)
        bad.append("passed")
    except TypeError as e:
        bad.append("TypeError")
try:
    echo(x=1)
    bad.append("passed")
except TypeError:
    bad.append("TypeError")
r["bad"] = bad
r
`);
    assert.equal(result.status, "success", result.stderr);
    assert.deepEqual(result.result, {
      add: 5,
      global: { key: "k1", found: true, tags: ["x", "ü"] },
      module: "k2",
      echo: { args: ["é", 1.5, null, true, [1, { k: "v" }]] },
      nothing: null,
      fail: ["HostError", "quota exceeded: 3 calls", true],
      failLater: ["HostError", "backend down: try later", true],
      "HostError is host.HostError": true,
      bad: ["TypeError", "TypeError", "TypeError", "TypeError", "TypeError"],
    });
    // The rejected calls never reached the host function.
    assert.deepEqual(calls, [["é", 1.5, null, true, [1, { k: "v" }]]]);

    // Uncaught, a host error is the run's exception.
    const uncaught = await sandbox.execute("fail()");
    assert.equal(uncaught.status, "error");
    assert.equal(uncaught.error?.kind, "exception");
    assert.equal(uncaught.error?.type, "HostError");
    assert.equal(uncaught.error?.message, "quota exceeded: 3 calls");
    assert.ok(uncaught.stderr.includes("HostError: quota exceeded"));

    // Functions are there in live sessions too.
    const session = await sandbox.openSession();
    try {
      const a = await session.execute("from host import add\nx = add(1, 2)");
      assert.equal(a.status, "success", a.stderr);
      const b = await session.execute("add(x, 10)");
      assert.equal(b.result, 13, b.stderr);
    } finally {
      await session.close();
    }
  } finally {
    await sandbox.close();
  }
  await assertNoDenoChildren("after the host function test");
});

Deno.test("PyodideSandbox.execute() returns a tuple subclass result (namedtuple, sys.version_info, os.stat_result) as a list, like json.dumps", async () => {
  const sandbox = new PyodideSandbox({ poolSize: 0, denoPath: TEST_DENO_PATH });
  try {
    const named = await sandbox.execute(
      "from collections import namedtuple\nP = namedtuple('P', 'x y')\nP(1, [2, P(3, 'z')])",
    );
    assert.equal(named.status, "success", JSON.stringify(named.error));
    assert.deepEqual(named.result, [1, [2, [3, "z"]]]);

    const version = await sandbox.execute("import sys\nsys.version_info");
    assert.equal(version.status, "success", JSON.stringify(version.error));
    const parts = version.result as unknown[];
    assert.ok(Array.isArray(parts), `a list, got ${JSON.stringify(parts)}`);
    assert.deepEqual(parts.slice(0, 2), [3, 14]);
    assert.equal(parts.length, 5);
    assert.equal(typeof parts[3], "string");

    const stat = await sandbox.execute(
      "import os, json\nopen('f.txt', 'w').write('abc')\ns = os.stat('f.txt')\n[s, json.loads(json.dumps(s)) == list(s)]",
    );
    assert.equal(stat.status, "success", JSON.stringify(stat.error));
    const [statList, sameAsJson] = stat.result as [unknown[], boolean];
    assert.ok(Array.isArray(statList));
    assert.equal(statList[6], 3, "st_size is the seventh field");
    assert.equal(sameAsJson, true);

    // A subclass that lies in __iter__ still yields its stored items, and
    // what does not serialize inside it is a marker, not a failure.
    const odd = await sandbox.execute(
      "class T(tuple):\n    def __iter__(self):\n        raise RuntimeError('no')\nT((1, {2}))",
    );
    assert.equal(odd.status, "success", JSON.stringify(odd.error));
    const [one, marker] = odd.result as [number, { type: string }];
    assert.equal(one, 1);
    assert.equal(marker.type, "not_serializable");
  } finally {
    await sandbox.close();
  }
  await assertNoDenoChildren("after the tuple-subclass test");
});
