/**
 * formatResult(): the text and image parts a model sees, from real runs.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  type CodeExecutionResult,
  type ContentPart,
  formatResult,
  type SandboxOptions,
} from "../mod.ts";
import { assertSuccess, moduleTempDir, withSandbox } from "./_helpers.ts";

const CACHE_DIR = moduleTempDir("format-test-cache-");

async function run(
  code: string,
  options: SandboxOptions = {},
): Promise<CodeExecutionResult> {
  let result: CodeExecutionResult | undefined;
  await withSandbox({ cacheDir: CACHE_DIR, ...options }, async (sandbox) => {
    result = await sandbox.execute(code);
  });
  return result!;
}

function texts(parts: ContentPart[]): string[] {
  return parts.map((p) => p.type === "text" ? p.text : `<${p.mimeType}>`);
}

/** A real 2x3 RGB PNG made with the standard library. */
const PNG_PY = `
import struct, zlib
def chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
def png(width, height):
    raw = b"".join(b"\\x00" + b"\\xff\\x00\\x00" * width for _ in range(height))
    return (b"\\x89PNG\\r\\n\\x1a\\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
class Plot:
    def __init__(self, data): self.data = data
    def _repr_png_(self): return self.data
    def __repr__(self): return "<Plot>"
`;

Deno.test("formatResult() shows stdout, stderr and the last expression of a successful run", async () => {
  const result = await run(
    "import sys\nprint('hello')\nprint('careful', file=sys.stderr)\n{'answer': 6 * 7}",
  );
  assertSuccess(result);
  assert.deepEqual(formatResult(result), [
    { type: "text", text: "stdout:\nhello\n" },
    { type: "text", text: "stderr:\ncareful\n" },
    { type: "text", text: 'result:\n{\n  "answer": 42\n}' },
  ]);
});

Deno.test("formatResult() gives an error part with the kind, type and traceback once", async () => {
  const result = await run(
    "print('before')\ndef inner():\n    raise ValueError('boom')\ninner()",
  );
  assert.equal(result.status, "error");
  const parts = formatResult(result);
  assert.deepEqual(parts[0], { type: "text", text: "stdout:\nbefore\n" });
  assert.equal(parts.length, 2);
  const error = (parts[1] as { text: string }).text;
  assert.match(error, /^error \(exception: ValueError\):\n/);
  assert.match(error, /Traceback \(most recent call last\)/);
  assert.match(error, /in inner/);
  assert.match(error, /ValueError: boom$/);
  assert.equal(error.split("Traceback").length, 2, "traceback shown once");
});

Deno.test("formatResult() returns an image part for a PNG display", async () => {
  const result = await run(
    `${PNG_PY}\ndisplay(Plot(png(2, 3)))\nprint('drawn')`,
  );
  assertSuccess(result);
  const parts = formatResult(result);
  assert.deepEqual(texts(parts), ["stdout:\ndrawn\n", "<image/png>"]);
  const image = parts[1] as { data: string; mimeType: string };
  const bytes = Uint8Array.from(atob(image.data), (c) => c.charCodeAt(0));
  assert.deepEqual([...bytes.slice(0, 8)], [137, 80, 78, 71, 13, 10, 26, 10]);
  const view = new DataView(bytes.buffer);
  assert.deepEqual([view.getUint32(16), view.getUint32(20)], [2, 3]);

  assert.deepEqual(texts(formatResult(result, { images: false })), [
    "stdout:\ndrawn\n",
    "display: [image/png image not shown: images are off]\n<Plot>",
  ]);
  assert.deepEqual(texts(formatResult(result, { maxImageBytes: 10 })), [
    "stdout:\ndrawn\n",
    `display: [image/png image not shown: ${bytes.length} bytes, over the 10 limit]\n<Plot>`,
  ]);
});

Deno.test("formatResult() describes an image whose bytes are not what the display claims, instead of sending it", async () => {
  const result = await run(
    `${PNG_PY}\ndisplay(Plot(b"GIF89a not a png"))\ndisplay(Plot(png(1, 1)))`,
  );
  assertSuccess(result);
  assert.deepEqual(texts(formatResult(result)), [
    "display: [image/png image not shown: its bytes are not image/png]\n<Plot>",
    "<image/png>",
  ]);
  assert.deepEqual(texts(formatResult(result, { maxImages: 0 })), [
    "display: [image/png image not shown: its bytes are not image/png]\n<Plot>",
    "display: [image/png image not shown: more than 0 images]\n<Plot>",
  ]);
});

Deno.test("formatResult() cuts long text in the middle and keeps its start and end", async () => {
  const result = await run("print('START' + 'x' * 50000 + 'END')");
  assertSuccess(result);
  const [part] = formatResult(result, { maxTextChars: 1000 });
  assert.equal(part.type, "text");
  const text = (part as { text: string }).text;
  const body = text.slice("stdout:\n".length);
  assert.ok(body.length <= 1000, `body of ${body.length} characters`);
  assert.ok(body.startsWith("STARTxxx"));
  assert.ok(body.endsWith("xxxEND\n"));
  const omitted = Number(
    /\[\.\.\. (\d+) characters omitted \.\.\.\]/.exec(
      body,
    )?.[1],
  );
  const kept = body.replace(/\n\[\.\.\. \d+ characters omitted \.\.\.\]\n/, "");
  assert.equal(kept.length + omitted, "START".length + 50000 + "END\n".length);
  // Without a limit nothing is cut.
  assert.equal(
    (formatResult(result, { maxTextChars: Infinity })[0] as { text: string })
      .text.length,
    "stdout:\n".length + 50009,
  );
});

Deno.test("formatResult() says when the sandbox dropped output past maxOutputBytes", async () => {
  const result = await run("print('y' * 5000)", { maxOutputBytes: 100 });
  const [part] = formatResult(result);
  assert.match((part as { text: string }).text, /\n\[stdout truncated\]$/);
});

Deno.test("formatResult() shows a value that is not JSON-safe as its repr, and (no output) for nothing", async () => {
  const result = await run("{1, 2, 3}");
  assertSuccess(result);
  assert.deepEqual(texts(formatResult(result)), ["result:\n{1, 2, 3}"]);
  const empty = await run("x = 1");
  assert.deepEqual(texts(formatResult(empty)), ["(no output)"]);
});

Deno.test("formatResult() rejects invalid options with what it accepts", () => {
  const ok: CodeExecutionResult = {
    status: "success",
    stdout: "",
    stderr: "",
    result: null,
    executionTime: 0,
  };
  assert.throws(
    () => formatResult(ok, { maxTextChars: 5 }),
    new RangeError(
      "Invalid maxTextChars: expected an integer >= 100 or Infinity, got 5",
    ),
  );
  assert.throws(
    () => formatResult(ok, { images: "yes" as unknown as boolean }),
    new TypeError("Invalid images: expected a boolean"),
  );
  assert.throws(
    () => formatResult(ok, { imageMimeTypes: ["text/html"] }),
    TypeError,
  );
  assert.deepEqual(formatResult(ok, { maxTextChars: Infinity }), [
    { type: "text", text: "(no output)" },
  ]);
});

Deno.test("formatResult() contains code that floods displays: capped parts, host fine", async () => {
  const result = await run(
    "for i in range(3000):\n    display(i)\nclass Big:\n    def __repr__(self): return 'z' * 300000\ndisplay(Big())",
  );
  assertSuccess(result);
  assert.equal(result.displays?.length, 3001);
  const parts = formatResult(result);
  assert.equal(parts.length, 21);
  assert.deepEqual(parts[0], { type: "text", text: "display:\n0" });
  assert.deepEqual(parts[20], {
    type: "text",
    text: "[2981 more displays not shown]",
  });
  const total = parts.reduce(
    (n, p) => n + (p.type === "text" ? p.text.length : p.data.length),
    0,
  );
  assert.ok(total < 2000, `${total} characters`);
  // The host still runs code.
  assert.deepEqual(formatResult(await run("1 + 1")), [
    { type: "text", text: "result:\n2" },
  ]);
});

Deno.test("formatResult() never throws on a malformed result, whatever its fields hold", () => {
  let deep: unknown = 1;
  for (let i = 0; i < 100_000; i++) deep = [deep];
  const hostile = [
    { status: "success", stdout: 5, stderr: null, result: deep },
    {
      status: "success",
      stdout: "",
      stderr: "",
      result: null,
      displays: [
        null,
        7,
        { "image/png": 12 },
        { "image/png": "not base64!", "text/plain": "fake" },
        { "image/png": "A".repeat(7_000_000) },
        { "text/plain": { nested: true } },
      ],
      files: [],
    },
    { status: "error", stdout: "", stderr: "", result: null },
    {
      status: "error",
      stdout: "",
      stderr: "",
      result: null,
      error: { kind: "crash", message: "" },
    },
  ] as unknown as CodeExecutionResult[];
  const shown = hostile.map((r) => texts(formatResult(r)));
  assert.deepEqual(shown[0], ["result:\n(a value that could not be shown)"]);
  assert.deepEqual(shown[1], [
    "display: [image/png image not shown: not valid base64]\nfake",
    "display: [image/png image not shown: 5250000 bytes, over the 5000000 limit]",
  ]);
  assert.deepEqual(shown[2], ["error (crash):\n"]);
  assert.deepEqual(shown[3], ["error (crash):\n"]);
});
