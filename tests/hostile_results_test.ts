/**
 * Result files and displays from a FULLY COMPROMISED child
 * (tests/_fixtures/evil_child.ts): the host validates the files index and
 * every display, enforces the file and display caps itself, drops what is
 * bad with one note on stderr, and `execute()` never rejects because of it.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { CodeExecutionResult, SandboxOptions } from "../mod.ts";
import {
  evilSandbox,
  filesFrame,
  frame,
  type Op,
  RESULT,
  script,
  withEvil,
} from "./_evil.ts";
import { assertSuccess, withTempDir } from "./_helpers.ts";

const bytes = (text: string) => new TextEncoder().encode(text);

function linesStarting(r: CodeExecutionResult, prefix: string): string[] {
  return r.stderr.split("\n").filter((l) => l.startsWith(prefix));
}

function entry(path: unknown, content: string, extra = {}) {
  return {
    path,
    size: content.length,
    length: content.length,
    truncated: false,
    ...extra,
  };
}

Deno.test("PyodideSandbox.execute() returns no files and one note for a files index that is not a list", async () => {
  // Attacks (SECURITY.md): "rfiles.index_not_list"
  await withEvil({}, async (sandbox) => {
    for (const index of [{}, null, "x", 5, { length: 1, 0: entry("/a", "") }]) {
      const r = await sandbox.execute(script(filesFrame(index), RESULT));
      assertSuccess(r);
      assert.deepEqual(r.files, [], JSON.stringify(index));
      assert.equal(
        linesStarting(r, "Dropped ").length,
        1,
        `one stderr line for ${JSON.stringify(index)}: ${r.stderr}`,
      );
    }
  });
});

Deno.test("PyodideSandbox.execute() drops file entries outside the sandbox or malformed, with one note", async () => {
  // Attacks (SECURITY.md): "rfiles.bad_entries"
  await withTempDir(async (dir) => {
    const granted = `${dir}/granted.txt`;
    const bad: unknown[] = [
      "/etc/cron.d/x",
      "/home/pyodide/../../home/victim/.ssh/authorized_keys",
      "home/pyodide/relative.txt",
      "/home/pyodide/a\u0000b",
      "/home/pyodide/./x",
      "/home/pyodide//x",
      "/home/pyodide",
      "/home/pyodidex/y",
      `${dir}/not-granted.txt`,
      5,
      null,
    ];
    const good = ["/home/pyodide/ok.txt", "/home/pyodide/sub/ok2.txt", granted];
    const index = [
      ...bad.map((p) => entry(p, "bad")),
      entry("/home/pyodide/neg.txt", "bad", { size: -1 }),
      entry("/home/pyodide/frac.txt", "bad", { size: 1.5 }),
      entry("/home/pyodide/flag.txt", "bad", { truncated: "no" }),
      ...good.map((p) => entry(p, "good")),
      // Last: without a usable length the entries after it cannot be found.
      entry("/home/pyodide/str.txt", "bad", { length: "3" }),
    ];
    const blobs = index.map((e) =>
      bytes(good.includes(e.path as string) ? "good" : "bad")
    );
    await withEvil({ allowWrite: [granted] }, async (sandbox) => {
      const r = await sandbox.execute(
        script(filesFrame(index, ...blobs), RESULT),
      );
      assertSuccess(r);
      assert.deepEqual(
        (r.files ?? []).map((f) => f.path).sort(),
        [...good].sort(),
        r.stderr,
      );
      for (const f of r.files ?? []) {
        assert.equal(new TextDecoder().decode(f.content), "good", f.path);
      }
      const notes = linesStarting(r, "Dropped ");
      assert.equal(notes.length, 1, r.stderr);
      assert.ok(notes[0].includes("file entr"), notes[0]);
    });
  });
});

Deno.test("PyodideSandbox.execute() enforces maxFileBytes and maxTotalFileBytes on the host and recomputes sizes", async () => {
  // Attacks (SECURITY.md): "rfiles.caps"
  await withEvil(
    { maxFileBytes: 4, maxTotalFileBytes: 6 },
    async (sandbox) => {
      const index = [
        entry("/home/pyodide/big.txt", "0123456789"), // 10 bytes, "not cut"
        entry("/home/pyodide/liar.txt", "abc", { size: 999 }),
        entry("/home/pyodide/small.txt", "xyz", { truncated: true, size: 2 }),
      ];
      const r = await sandbox.execute(script(
        filesFrame(index, bytes("0123456789"), bytes("abc"), bytes("xyz")),
        RESULT,
      ));
      assertSuccess(r);
      const byPath = Object.fromEntries(
        (r.files ?? []).map((f) => [f.path, f]),
      );
      const big = byPath["/home/pyodide/big.txt"];
      assert.equal(new TextDecoder().decode(big.content), "0123");
      assert.equal(big.truncated, true);
      assert.equal(big.size, 10);
      const total = (r.files ?? []).reduce((n, f) => n + f.content.length, 0);
      assert.ok(total <= 6, `kept ${total} bytes in all`);
      const liar = byPath["/home/pyodide/liar.txt"];
      if (liar && !liar.truncated) {
        assert.equal(liar.size, liar.content.length, "size from the bytes");
      }
      const small = byPath["/home/pyodide/small.txt"];
      if (small) assert.ok(small.size >= small.content.length);
    },
  );
});

Deno.test("PyodideSandbox.execute() recomputes the size of an untruncated file from its bytes", async () => {
  // Attacks (SECURITY.md): "rfiles.lying_size"
  await withEvil({}, async (sandbox) => {
    const index = [
      entry("/home/pyodide/liar.txt", "abc", { size: 999 }),
      entry("/home/pyodide/short.txt", "abcdef", { size: 1 }),
      entry("/home/pyodide/cut.txt", "xyz", { truncated: true, size: 2 }),
    ];
    const r = await sandbox.execute(script(
      filesFrame(index, bytes("abc"), bytes("abcdef"), bytes("xyz")),
      RESULT,
    ));
    assertSuccess(r);
    const sizes = Object.fromEntries(
      (r.files ?? []).map((f) => [f.path, [f.size, f.truncated]]),
    );
    assert.deepEqual(sizes, {
      "/home/pyodide/liar.txt": [3, false],
      "/home/pyodide/short.txt": [6, false],
      "/home/pyodide/cut.txt": [3, true],
    });
  });
});

Deno.test("PyodideSandbox.execute() drops file entries that run past the attached bytes", async () => {
  // Attacks (SECURITY.md): "rfiles.past_end"
  await withEvil({}, async (sandbox) => {
    const index = [
      entry("/home/pyodide/a.txt", "aa"),
      entry("/home/pyodide/b.txt", "x".repeat(100)),
    ];
    const r = await sandbox.execute(
      script(filesFrame(index, bytes("aa"), bytes("bbb")), RESULT),
    );
    assertSuccess(r);
    assert.deepEqual((r.files ?? []).map((f) => f.path), [
      "/home/pyodide/a.txt",
    ]);
    assert.equal(linesStarting(r, "Dropped ").length, 1, r.stderr);
  });
});

const BAD_DISPLAYS: unknown[] = [
  null,
  [],
  "text/plain",
  5,
  {},
  { "text/plain": 5 },
  { "text/plain": null },
  { "image/png": { nested: true } },
  { "not a mime": "x" },
  { "text": "x" },
  { [`text/${"a".repeat(130)}`]: "x" },
  { "text/plain": "ok", "x": "y" },
];

for (const redact of [undefined, ["secret-token"]]) {
  Deno.test(
    `PyodideSandbox.execute() drops displays that are not MIME bundles of strings${
      redact ? " (with redact)" : ""
    }`,
    async () => {
      // Attacks (SECURITY.md): "display.malformed"
      await withEvil({ redact }, async (sandbox) => {
        const seen: unknown[] = [];
        const ops: Op[] = BAD_DISPLAYS.map((d) => frame(7, d));
        ops.push(frame(7, { "text/plain": "fine secret-token" }), RESULT);
        const r = await sandbox.execute(script(...ops), {
          onDisplay: (d) => seen.push(d),
        });
        assertSuccess(r);
        const expected = redact ? "fine [REDACTED]" : "fine secret-token";
        assert.equal(r.displays?.length, 1, JSON.stringify(r.displays));
        assert.equal(
          seen.length,
          1,
          "onDisplay is called for the kept one only",
        );
        assert.equal(r.displays?.[0]["text/plain"], expected);
        assert.equal(
          linesStarting(r, "Dropped a display: ").length,
          BAD_DISPLAYS.length,
          r.stderr,
        );
      });
    },
  );
}

Deno.test("PyodideSandbox.execute() caps the displays of a call at maxDisplayBytes", async () => {
  // Attacks (SECURITY.md): "display.cap"
  await withEvil(
    { maxDisplayBytes: 100 } as SandboxOptions,
    async (sandbox) => {
      const seen: unknown[] = [];
      const one = { "text/plain": "x".repeat(60) };
      const r = await sandbox.execute(
        script(frame(7, one), frame(7, one), frame(7, one), RESULT),
        { onDisplay: (d) => seen.push(d) },
      );
      assertSuccess(r);
      assert.equal(r.displays?.length, 1);
      assert.equal(seen.length, 1);
      assert.equal(linesStarting(r, "Dropped a display: ").length, 2, r.stderr);
    },
  );
});

Deno.test("PyodideSandbox rejects an invalid maxDisplayBytes and defaults it to 16 MiB", async () => {
  for (const bad of [-1, 1.5, "1", Number.NaN]) {
    assert.throws(
      () => evilSandbox({ maxDisplayBytes: bad } as unknown as SandboxOptions),
      (e: Error) => e instanceof TypeError || e instanceof RangeError,
      String(bad),
    );
  }
  await withEvil({}, async (sandbox) => {
    const r = await sandbox.execute(script(
      { op: "display", mime: "text/plain", fill: 16 * 1024 * 1024 - 100 },
      { op: "display", mime: "text/plain", fill: 200 },
      RESULT,
    ));
    assertSuccess(r);
    assert.equal(r.displays?.length, 1, "the first fits in 16 MiB");
    assert.equal(linesStarting(r, "Dropped a display: ").length, 1);
  });
});
