/**
 * Rich results in the async API: displays and `_repr_*_` last expressions as
 * MIME bundles, and tuple subclasses as lists. Real Pyodide in real children.
 */

import assert from "node:assert/strict";
import type { MimeBundle } from "../mod.ts";
import {
  assertNoDenoChildren,
  TEST_DENO_PATH,
  withSandbox,
} from "./_helpers.ts";

function base64(bytes: number[]): string {
  return btoa(String.fromCharCode(...bytes));
}

Deno.test("PyodideSandbox returns rich displays from display() and _repr_*_ last expressions as MIME bundles in output order", async () => {
  await withSandbox({
    poolSize: 0,
    denoPath: TEST_DENO_PATH,
  }, async (sandbox) => {
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
  });
});

Deno.test("PyodideSandbox.execute() returns a tuple subclass result (namedtuple, sys.version_info, os.stat_result) as a list, like json.dumps", async () => {
  await withSandbox(
    { poolSize: 0, denoPath: TEST_DENO_PATH },
    async (sandbox) => {
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
    },
  );
  await assertNoDenoChildren("after the tuple-subclass test");
});
