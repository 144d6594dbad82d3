/**
 * Files in the async API: files written in before a run, the files a run
 * created or changed, their caps, and host folders granted by
 * `allowRead`/`allowWrite`. Real Pyodide in real children.
 */

import assert from "node:assert/strict";
import { relative } from "node:path";
import { TEST_DENO_PATH, withSandbox, withTempDir } from "./_helpers.ts";

const decoder = new TextDecoder();

Deno.test("PyodideSandbox.execute() writes files in before the run, returns the files the code created or changed byte-exact, and rejects unwritable entries", async () => {
  const blob = Uint8Array.from({ length: 256 }, (_, i) => i);
  await withSandbox({
    poolSize: 0,
    denoPath: TEST_DENO_PATH,
  }, async (sandbox) => {
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
  });
});

Deno.test("PyodideSandbox caps returned files with maxFileBytes and maxTotalFileBytes and reports truncation", async () => {
  await withSandbox({
    poolSize: 0,
    denoPath: TEST_DENO_PATH,
    maxFileBytes: 100,
    maxTotalFileBytes: 150,
  }, async (sandbox) => {
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
  });
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
    await withSandbox({
      poolSize: 0,
      denoPath: TEST_DENO_PATH,
      allowRead: [relativeRead, writeDir],
      // A single file can be granted too, before it exists.
      allowWrite: [writeDir, writeOnly, `${dir}/single.json`],
    }, async (sandbox) => {
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
    });
  });
});
