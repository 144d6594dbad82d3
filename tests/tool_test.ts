/**
 * pythonTool() and SessionPool with real sandboxes: schema strictness, the
 * description against the real interpreter, calls, the OpenAI and
 * Anthropic adapters, aborts, and one session per conversation.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  PyodideSandbox,
  pythonTool,
  type SandboxOptions,
  SessionLimitError,
  SessionPool,
  UnknownSessionError,
} from "../mod.ts";
import {
  eventually,
  moduleTempDir,
  TEST_DENO_PATH,
  withSandbox,
  withTempDir,
} from "./_helpers.ts";
import { buildWheel } from "./_wheel.ts";

const CACHE_DIR = moduleTempDir("tool-test-cache-");

function withTestSandbox(
  options: SandboxOptions,
  fn: (sandbox: PyodideSandbox) => Promise<void>,
): Promise<void> {
  return withSandbox({ cacheDir: CACHE_DIR, ...options }, fn);
}

function textOf(content: { type: string; text?: string }[]): string {
  return content.map((c) => c.text ?? `<${c.type}>`).join("\n");
}

/** Python that displays a real 1x1 PNG. */
const PNG_DISPLAY = `
import struct, zlib
def chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
png = (b"\\x89PNG\\r\\n\\x1a\\n"
    + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    + chunk(b"IDAT", zlib.compress(b"\\x00\\x00\\xff\\x00")) + chunk(b"IEND", b""))
class Img:
    def _repr_png_(self): return png
display(Img())
print("shown")
`;

Deno.test("pythonTool() has a strict input schema and refuses input outside it as an error result", async () => {
  await withTestSandbox({}, async (sandbox) => {
    const tool = pythonTool(sandbox);
    assert.equal(tool.name, "run_python");
    assert.deepEqual(tool.inputSchema, {
      type: "object",
      properties: {
        code: {
          type: "string",
          description: tool.inputSchema.properties.code.description,
        },
      },
      required: ["code"],
      additionalProperties: false,
    });
    // A fresh copy each time: a framework mutating it changes nothing.
    tool.inputSchema.required.push("x");
    assert.deepEqual(tool.inputSchema.required, ["code"]);
    for (
      const [args, message] of [
        [{ code: "1", session_id: "other" }, 'unknown property "session_id"'],
        [{}, '"code" must be a string of Python source, got nothing'],
        [{ code: 7 }, '"code" must be a string of Python source, got number'],
        ["print(1)", 'expected an object {"code": string}, got string'],
        [null, "got null"],
        [[1], "got an array"],
      ] as const
    ) {
      const out = await tool.call(args);
      assert.equal(out.isError, true);
      assert.equal(out.result, undefined);
      assert.match(textOf(out.content), /^error: Invalid arguments: /);
      assert.ok(textOf(out.content).includes(message), textOf(out.content));
    }
  });
});

Deno.test("pythonTool() description states the real Python version, limits, packages and reach", async () => {
  await withTempDir(async (dir) => {
    const wheel = buildWheel("tiny-pkg", "1.0.0", {
      "tinypkg/__init__.py": "ANSWER = 42\n",
    });
    await Deno.writeFile(`${dir}/${wheel.fileName}`, wheel.data);
    await withTestSandbox({
      timeoutSeconds: 173,
      memoryLimitMb: 320,
      maxOutputBytes: 64 * 1024,
      allowNet: ["127.0.0.1:9"],
      packageDir: dir,
      packages: ["tiny-pkg"],
      functions: { lookup_price: () => 1 },
    }, async (sandbox) => {
      const tool = pythonTool(sandbox, { instructions: "Prices are in EUR." });
      const d = tool.description;
      const out = await tool.call({
        code:
          "import sys, tinypkg\nprint(f'{sys.version_info[0]}.{sys.version_info[1]}', tinypkg.ANSWER)",
      });
      assert.equal(out.isError, false, textOf(out.content));
      const [version, answer] = out.result!.stdout.trim().split(" ");
      assert.equal(answer, "42");
      assert.ok(d.includes(`Run Python ${version} code`), d);
      assert.ok(d.includes("173 seconds in all"), d);
      assert.ok(d.includes("320 MB of memory"), d);
      assert.ok(d.includes("64 KiB each of stdout and stderr"), d);
      assert.ok(d.includes("installed: tiny-pkg"), d);
      assert.ok(d.includes("other packages are installed on import"), d);
      assert.ok(d.includes("Network: 127.0.0.1:9 only"), d);
      assert.ok(d.includes("Host files: none"), d);
      assert.ok(d.includes("lookup_price"), d);
      assert.ok(d.includes("nothing (variables, imports, files) persists"), d);
      assert.ok(d.endsWith("\nPrices are in EUR."), d);
    });
  });
  const plain = new PyodideSandbox({ poolSize: 0, denoPath: TEST_DENO_PATH });
  try {
    const d = pythonTool(plain).description;
    assert.ok(d.includes("60 seconds"), d);
    assert.ok(d.includes("512 MB of memory"), d);
    assert.ok(d.includes("Network: none"), d);
    // The default index (the Pyodide distribution) installs on import.
    assert.ok(d.includes("other packages are installed on import"), d);
    assert.equal(
      pythonTool(plain, { description: "Mine" }).description,
      "Mine",
    );
  } finally {
    await plain.close();
  }
  const offline = new PyodideSandbox({
    poolSize: 0,
    denoPath: TEST_DENO_PATH,
    packageIndexUrls: [],
  });
  try {
    const d = pythonTool(offline).description;
    assert.ok(d.includes("no others can be installed"), d);
  } finally {
    await offline.close();
  }
});

Deno.test("pythonTool().call() returns text parts on success and isError with the traceback on failure", async () => {
  await withTestSandbox({}, async (sandbox) => {
    const tool = pythonTool(sandbox);
    const ok = await tool.call({ code: "print('hi')\n6 * 7" });
    assert.deepEqual(ok.content, [
      { type: "text", text: "stdout:\nhi\n" },
      { type: "text", text: "result:\n42" },
    ]);
    assert.equal(ok.isError, false);
    assert.equal(ok.result?.status, "success");
    const bad = await tool.call({ code: "1 / 0" });
    assert.equal(bad.isError, true);
    assert.match(
      textOf(bad.content),
      /^error \(exception: ZeroDivisionError\):/,
    );
    assert.match(textOf(bad.content), /Traceback/);
    assert.match(textOf(bad.content), /ZeroDivisionError: division by zero/);
    const image = await tool.call({ code: PNG_DISPLAY });
    assert.deepEqual(image.content.map((c) => c.type), ["text", "image"]);
  });
});

Deno.test("pythonTool().callOpenAI() runs a tool_calls entry and answers bad JSON with an error message", async () => {
  await withTestSandbox({}, async (sandbox) => {
    const tool = pythonTool(sandbox);
    assert.deepEqual(tool.toOpenAITool(), {
      type: "function",
      function: {
        name: "run_python",
        description: tool.description,
        parameters: tool.inputSchema,
        strict: true,
      },
    });
    const ok = await tool.callOpenAI({
      id: "call_1",
      type: "function",
      function: { name: "run_python", arguments: '{"code": "21 * 2"}' },
    });
    assert.deepEqual(ok, {
      message: { role: "tool", tool_call_id: "call_1", content: "result:\n42" },
      images: [],
      isError: false,
    });
    const broken = await tool.callOpenAI({
      id: "call_2",
      type: "function",
      function: { name: "run_python", arguments: '{"code": "1 +' },
    });
    assert.equal(broken.isError, true);
    assert.equal(broken.message.tool_call_id, "call_2");
    assert.match(
      broken.message.content,
      /^error: Invalid arguments: not valid JSON \(/,
    );
    const other = await tool.callOpenAI({
      id: "call_3",
      function: { name: "web_search", arguments: "{}" },
    });
    assert.equal(other.isError, true);
    assert.match(other.message.content, /^error: Unknown tool: "web_search"/);
    const image = await tool.callOpenAI({
      id: "call_4",
      function: {
        name: "run_python",
        arguments: JSON.stringify({ code: PNG_DISPLAY }),
      },
    });
    assert.equal(
      image.message.content,
      "stdout:\nshown\n\n\n[image/png image]",
    );
    assert.equal(image.images.length, 1);
    assert.match(
      image.images[0].image_url.url,
      /^data:image\/png;base64,iVBORw0KGgo/,
    );
    await assert.rejects(
      tool.callOpenAI({ function: {} } as never),
      TypeError,
    );
  });
});

Deno.test("pythonTool().callAnthropic() turns a tool_use block into a tool_result block", async () => {
  await withTestSandbox({}, async (sandbox) => {
    const tool = pythonTool(sandbox);
    assert.deepEqual(tool.toAnthropicTool(), {
      name: "run_python",
      description: tool.description,
      input_schema: tool.inputSchema,
    });
    const ok = await tool.callAnthropic({
      type: "tool_use",
      id: "toolu_1",
      name: "run_python",
      input: { code: PNG_DISPLAY },
    });
    assert.equal(ok.type, "tool_result");
    assert.equal(ok.tool_use_id, "toolu_1");
    assert.equal(ok.is_error, false);
    assert.deepEqual(ok.content[0], { type: "text", text: "stdout:\nshown\n" });
    const image = ok.content[1];
    assert.equal(image.type, "image");
    assert.equal(image.type === "image" && image.source.type, "base64");
    assert.equal(
      image.type === "image" && image.source.media_type,
      "image/png",
    );
    const bad = await tool.callAnthropic({
      type: "tool_use",
      id: "toolu_2",
      name: "run_python",
      input: { code: "raise KeyError('k')" },
    });
    assert.equal(bad.is_error, true);
    assert.match(textOf(bad.content), /KeyError: 'k'/);
    // The block survives a JSON round trip, as it does over the wire.
    assert.deepEqual(JSON.parse(JSON.stringify(ok)), ok);
  });
});

Deno.test("pythonTool().call() rejects with the signal's reason on abort and the host keeps working", async () => {
  await withTestSandbox({}, async (sandbox) => {
    const tool = pythonTool(sandbox);
    const reason = new Error("user pressed stop");
    const controller = new AbortController();
    const running = tool.call({
      code: "print('start', flush=True)\nwhile True: pass",
    }, {
      signal: controller.signal,
    });
    setTimeout(() => controller.abort(reason), 1500);
    await assert.rejects(running, (e) => e === reason);
    await assert.rejects(
      tool.call({ code: "1" }, { signal: AbortSignal.abort(reason) }),
      (e) => e === reason,
    );
    const after = await tool.call({ code: "'fine'" });
    assert.equal(after.isError, false);
    assert.equal(textOf(after.content), 'result:\n"fine"');
  });
});

Deno.test("pythonTool() with sessions keeps one session per conversation", async () => {
  await withTestSandbox({}, async (sandbox) => {
    await using pool = new SessionPool(sandbox, { maxSessions: 4 });
    const tool = pythonTool(sandbox, { sessions: pool });
    assert.match(
      tool.description,
      /persist between calls in this conversation/,
    );
    await tool.call({ code: "x = 'a'" }, { conversationId: "A" });
    await tool.call({ code: "x = 'b'" }, { conversationId: "B" });
    const [a, b] = await Promise.all([
      tool.call({ code: "x" }, { conversationId: "A" }),
      tool.call({ code: "x" }, { conversationId: "B" }),
    ]);
    assert.equal(textOf(a.content), 'result:\n"a"');
    assert.equal(textOf(b.content), 'result:\n"b"');
    assert.equal(pool.size, 2);
    assert.deepEqual(pool.list().map((e) => [e.key, e.executions]), [
      ["A", 2],
      ["B", 2],
    ]);
    await assert.rejects(
      tool.call({ code: "x" }),
      /Invalid conversationId: a tool with sessions needs/,
    );
    assert.equal(await pool.delete("A"), true);
    await assert.rejects(
      pool.execute("A", "x", { create: false }),
      UnknownSessionError,
    );
    // After an abort kills its process, the conversation starts over and is told so.
    const controller = new AbortController();
    const running = tool.call({ code: "while True: pass" }, {
      conversationId: "B",
      signal: controller.signal,
    });
    setTimeout(() => controller.abort(), 1000);
    await assert.rejects(running);
    const fresh = await tool.call({ code: "x" }, { conversationId: "B" });
    assert.equal(fresh.isError, true);
    assert.match(
      textOf(fresh.content),
      /\[A new Python session was started: the previous one was lost; its variables, imports and files are gone\]/,
    );
    assert.match(textOf(fresh.content), /NameError/);
  });
});

Deno.test("SessionPool closes idle sessions and the next call says it started a new one", async () => {
  await withTestSandbox({}, async (sandbox) => {
    await using pool = new SessionPool(sandbox, { idleSeconds: 1 });
    const tool = pythonTool(sandbox, { sessions: pool });
    const first = await tool.call({ code: "y = 5\ny" }, {
      conversationId: "c",
    });
    assert.equal(textOf(first.content), "result:\n5");
    assert.equal(pool.has("c"), true);
    await eventually("the idle session is closed", () => !pool.has("c"));
    assert.equal(pool.size, 0);
    const next = await tool.call({ code: "y" }, { conversationId: "c" });
    assert.equal(next.isError, true);
    assert.match(
      textOf(next.content),
      /the previous one expired after 1 second idle/,
    );
    assert.match(textOf(next.content), /NameError: name 'y' is not defined/);
    const again = await tool.call({ code: "y = 6\ny" }, {
      conversationId: "c",
    });
    assert.equal(textOf(again.content), "result:\n6");
  });
});

Deno.test("pythonTool() with one session keeps state between calls", async () => {
  await withTestSandbox({}, async (sandbox) => {
    await using session = await sandbox.openSession();
    const tool = pythonTool(sandbox, { session });
    assert.match(tool.description, /persist between calls\./);
    await tool.call({ code: "import math\nr = 2" });
    const out = await tool.call({ code: "round(math.pi * r ** 2, 2)" });
    assert.equal(textOf(out.content), "result:\n12.57");
  });
});

Deno.test("pythonTool() and SessionPool reject misuse with what they accept", async () => {
  await withTestSandbox({}, async (sandbox) => {
    const other = new PyodideSandbox({ skipDenoCheck: true, poolSize: 0 });
    try {
      await using pool = new SessionPool(other);
      assert.throws(
        () => pythonTool(sandbox, { sessions: pool }),
        /Invalid sessions: the pool belongs to another sandbox/,
      );
    } finally {
      await other.close();
    }
    assert.throws(
      () => pythonTool({} as PyodideSandbox),
      new TypeError("Invalid sandbox: expected a PyodideSandbox"),
    );
    assert.throws(
      () => pythonTool(sandbox, { name: "run python" }),
      /Invalid name: expected 1 to 64 letters/,
    );
    assert.throws(
      () => pythonTool(sandbox, { format: { maxImages: -1 } }),
      RangeError,
    );
    assert.throws(
      () => new SessionPool(sandbox, { idleSeconds: 0 }),
      new RangeError("Invalid idleSeconds: expected a positive number, got 0"),
    );
    await using pool = new SessionPool(sandbox);
    await assert.rejects(
      pool.execute("", "1"),
      /Invalid session key: expected a string of 1 to 256 characters/,
    );
  });
});

Deno.test("SessionPool opens one session for concurrent first calls of a key and refuses one session too many", async () => {
  await withTestSandbox({}, async (sandbox) => {
    await using pool = new SessionPool(sandbox, { maxSessions: 1 });
    const results = await Promise.all([
      pool.execute("k", "import os\nos.getpid()"),
      pool.execute("k", "import os\nos.getpid()"),
    ]);
    assert.deepEqual(results.map((r) => r.status), ["success", "success"]);
    assert.equal(results[0].result, results[1].result);
    assert.equal(pool.size, 1);
    await assert.rejects(pool.execute("other", "1"), SessionLimitError);
    const tool = pythonTool(sandbox, { sessions: pool });
    const refused = await tool.call({ code: "1" }, { conversationId: "other" });
    assert.equal(refused.isError, true);
    assert.match(
      textOf(refused.content),
      /^error: Too many sessions: the limit is 1/,
    );
    const saved = await pool.save("k");
    assert.equal(await pool.delete("k"), true);
    assert.equal(await pool.open("k", saved), "k");
    assert.equal((await pool.execute("k", "os.getpid()")).status, "success");
  });
});

Deno.test("pythonTool() answers hostile model input with error results, never a throw, and the host keeps working", async () => {
  await withTestSandbox({ maxCodeBytes: 100 }, async (sandbox) => {
    const tool = pythonTool(sandbox);
    const tooBig = await tool.call({
      code: "1 + ".repeat(50) + "1",
    });
    assert.equal(tooBig.isError, true);
    assert.match(
      textOf(tooBig.content),
      /^error: Invalid code: \d+ bytes is more than maxCodeBytes \(100\)/,
    );
    for (
      const json of [
        '{"code": "1", "__proto__": {"polluted": true}}',
        "[1]",
        '"print(1)"',
        "null",
        '{"code": {"toString": "x"}}',
        "",
      ]
    ) {
      const out = await tool.callOpenAI({
        id: "c",
        function: { name: "run_python", arguments: json },
      });
      assert.equal(out.isError, true, json);
      assert.match(out.message.content, /^error: Invalid arguments: /, json);
    }
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
    const notString = await tool.callOpenAI({
      id: "c",
      function: { name: "run_python", arguments: { code: "1" } as never },
    });
    assert.match(
      notString.message.content,
      /^error: Invalid arguments: expected a JSON string/,
    );
    // The host is fine: a valid call still runs.
    const ok = await tool.callOpenAI({
      id: "c",
      function: { name: "run_python", arguments: '{"code": "2 + 2"}' },
    });
    assert.equal(ok.message.content, "result:\n4");
  });
});
