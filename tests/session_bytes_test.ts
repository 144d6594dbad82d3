/**
 * Session bytes as a difference from the base snapshot (format 2): round
 * trips, chains, format-1 bytes, bases other hosts lack, export and import
 * of the base, damaged diffs and a zip bomb. Real children, real Pyodide.
 *
 * @module
 */

import assert from "node:assert/strict";
import zlib from "node:zlib";
import {
  type CodeExecutionResult,
  PyodideSandbox,
  SessionError,
  type SessionMetadata,
} from "../mod.ts";
import {
  sealSession,
  sessionBaseOf,
  unsealSessionState,
} from "../_session_bytes.ts";
import {
  applyDiff,
  applyPages,
  encodeDiff,
  encodeImageDiff,
  type ImageReader,
  parseDiff,
} from "../_state_diff.ts";
import { packState } from "../_protocol.ts";
import { buildWheel } from "./_wheel.ts";
import {
  assertNoDenoChildren,
  assertSuccess,
  moduleTempDir,
  TEST_DENO_PATH,
  withSandbox,
  withTempDir,
} from "./_helpers.ts";

/** One cache folder (one base snapshot build) for most tests here. */
const CACHE = moduleTempDir("session-bytes-cache-");

interface Saved {
  sessionBytes: Uint8Array;
  sessionMetadata: SessionMetadata;
}

function saved(result: CodeExecutionResult): Saved {
  assertSuccess(result);
  assert.ok(result.sessionBytes && result.sessionMetadata, "session bytes");
  return {
    sessionBytes: result.sessionBytes,
    sessionMetadata: result.sessionMetadata,
  };
}

function assertSessionKind(result: CodeExecutionResult, what: string): void {
  assert.equal(result.status, "error", `${what}: ${JSON.stringify(result)}`);
  assert.equal(
    result.error?.kind,
    "session",
    `${what}: ${JSON.stringify(result.error)}`,
  );
  assert.equal(result.stdout, "", `${what}: no code ran`);
}

/** The inflated diff inside format-2 bytes. */
async function diffOf(bytes: Saved): Promise<Uint8Array> {
  const { payload, base } = await unsealSessionState(
    bytes.sessionBytes,
    bytes.sessionMetadata,
    undefined,
  );
  assert.ok(base, "format 2 bytes name their base");
  return new Uint8Array(zlib.inflateRawSync(payload));
}

/** Seals a (changed) diff against a base, as a host would. */
async function reseal(
  diff: Uint8Array,
  base: string,
  previous: SessionMetadata,
): Promise<Saved> {
  return await sealSession(
    new Uint8Array(zlib.deflateRawSync(diff)),
    previous,
    undefined,
    { packages: [] },
    base,
  );
}

const WHEEL = buildWheel("tiny-pkg", "1.0.0", {
  "tinypkg/__init__.py": "def triple(x):\n    return 3 * x\n",
});

Deno.test("diff session bytes restore functions, classes, closures, a generator mid-iteration, a stdlib module, a file and a wheel-installed package", async () => {
  await withTempDir(async (root) => {
    await Deno.writeFile(`${root}/${WHEEL.fileName}`, WHEEL.data);
    await withSandbox({
      stateful: true,
      cacheDir: CACHE,
      packageDir: root,
      packageIndexUrls: [],
    }, async (sandbox) => {
      const first = saved(
        await sandbox.execute(
          `import json as j, tinypkg
def add(a, b):
    return a + b
class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y
    def norm1(self):
        return abs(self.x) + abs(self.y)
def counter():
    n = 0
    def bump():
        nonlocal n
        n += 1
        return n
    return bump
bump = counter(); bump(); bump()
gen = (i * i for i in range(10)); next(gen); next(gen)
open("notes.txt", "w").write("kept")
p = Point(3, -4)`,
          { timeoutSeconds: 120 },
        ),
      );
      const { sha256 } = await sandbox.exportBaseSnapshot();
      assert.equal(first.sessionBytes[8], 2, "format 2");
      assert.equal(sessionBaseOf(first.sessionBytes), sha256);
      // Installing and importing touch megabytes of the heap; a whole
      // deflated snapshot is about 8 MB.
      assert.ok(
        first.sessionBytes.length < 5 * 1024 * 1024,
        `a diff, not a whole snapshot: ${first.sessionBytes.length} bytes`,
      );
      const next = await sandbox.execute(
        `[add(2, 3), p.norm1(), bump(), next(gen), j.dumps({"a": 1}),
open("notes.txt").read(), tinypkg.triple(14)]`,
        { ...first, timeoutSeconds: 120 },
      );
      assertSuccess(next);
      assert.deepEqual(next.result, [5, 7, 3, 4, '{"a": 1}', "kept", 42]);
    });
  });
  await assertNoDenoChildren("after close");
});

Deno.test("20 steps chained through session bytes give the same state as 20 live steps", async () => {
  const step = (i: number) =>
    `acc = globals().get("acc", []) + [${i} * ${i}]
fns = globals().get("fns", []) + [lambda k=${i}: k + 1]
[sum(acc), len(acc), sum(f() for f in fns)]`;
  await withSandbox({ stateful: true, cacheDir: CACHE }, async (sandbox) => {
    let bytes: Saved | undefined;
    const chained: unknown[] = [];
    for (let i = 0; i < 20; i++) {
      const result = await sandbox.execute(step(i), {
        ...bytes,
        timeoutSeconds: 120,
      });
      bytes = saved(result);
      chained.push(result.result);
    }
    const session = await sandbox.openSession();
    const live: unknown[] = [];
    try {
      for (let i = 0; i < 20; i++) {
        const result = await session.execute(step(i));
        assertSuccess(result);
        live.push(result.result);
      }
    } finally {
      await session.close();
    }
    assert.deepEqual(chained, live);
    assert.deepEqual(chained[19], [2470, 20, 210]);
    // A diff from the base, not from the previous step: it does not grow
    // with the chain.
    assert.ok(bytes!.sessionBytes.length < 1024 * 1024);
  });
  await assertNoDenoChildren("after close");
});

Deno.test("format-1 session bytes (a whole packed snapshot) still restore", async () => {
  await withSandbox({ stateful: true, cacheDir: CACHE }, async (sandbox) => {
    const made = saved(await sandbox.execute("x = 41"));
    const base = await sandbox.exportBaseSnapshot();
    const rebuilt = applyDiff(await diffOf(made), base.bytes, 2 ** 31);
    assert.ok(typeof rebuilt !== "string", String(rebuilt));
    const old = await sealSession(
      new Uint8Array(
        zlib.deflateRawSync(packState(rebuilt.snapshot, rebuilt.files)),
      ),
      undefined,
      undefined,
      { packages: [] },
    );
    assert.equal(old.sessionBytes[8], 1, "format 1");
    assert.equal(sessionBaseOf(old.sessionBytes), undefined);
    const next = await sandbox.execute("x += 1; x", old);
    assertSuccess(next);
    assert.equal(next.result, 42);
    // Saved again as a diff from this host's base.
    assert.equal(sessionBaseOf(next.sessionBytes!), base.sha256);
    const session = await sandbox.openSession(old);
    try {
      assert.equal((await session.execute("x")).result, 41);
    } finally {
      await session.close();
    }
  });
  await assertNoDenoChildren("after close");
});

Deno.test("bytes for a base this host lacks, or with a flipped bit, give kind session; the base's sha256 is named", async () => {
  await withSandbox({ stateful: true, cacheDir: CACHE }, async (sandbox) => {
    const made = saved(await sandbox.execute("x = 1"));
    const unknown = "ab".repeat(32);
    const foreign = await reseal(
      await diffOf(made),
      unknown,
      made.sessionMetadata,
    );
    assert.equal(sessionBaseOf(foreign.sessionBytes), unknown);
    const result = await sandbox.execute("print('must not run')", foreign);
    assertSessionKind(result, "unknown base");
    assert.match(result.error!.message, new RegExp(unknown));
    assert.match(result.error!.message, /importBaseSnapshot/);
    await assert.rejects(
      sandbox.openSession(foreign),
      (error: Error) =>
        error instanceof SessionError && error.message.includes(unknown),
    );
    const flipped = made.sessionBytes.slice();
    flipped[flipped.length - 100] ^= 0x10;
    assertSessionKind(
      await sandbox.execute("print('must not run')", {
        sessionBytes: flipped,
        sessionMetadata: made.sessionMetadata,
      }),
      "flipped bit",
    );
    const ok = await sandbox.execute("x", made);
    assertSuccess(ok);
    assert.equal(ok.result, 1);
  });
  await assertNoDenoChildren("after close");
});

Deno.test("a validly sealed diff the child cannot apply gives kind session, not crash", async () => {
  await withSandbox({ stateful: true, cacheDir: CACHE }, async (sandbox) => {
    const made = saved(await sandbox.execute("x = 1"));
    const base = sessionBaseOf(made.sessionBytes)!;
    const diff = await diffOf(made);
    const view = new DataView(diff.buffer, diff.byteOffset);
    const cases: [string, Uint8Array][] = [];
    const lengths = diff.slice();
    new DataView(lengths.buffer).setUint32(
      20,
      view.getUint32(20, true) + 1,
      true,
    );
    cases.push(["inconsistent lengths", lengths]);
    const huge = diff.slice();
    new DataView(huge.buffer).setUint32(16, 0xfff00000, true);
    cases.push(["an image over the memory limit", huge]);
    const header = diff.slice();
    header[28] ^= 0xff;
    cases.push(["a damaged snapshot header", header]);
    cases.push(["not a diff", new Uint8Array(64)]);
    for (const [what, bad] of cases) {
      const bytes = await reseal(bad, base, made.sessionMetadata);
      const result = await sandbox.execute("print('must not run')", bytes);
      assertSessionKind(result, what);
      assert.match(result.error!.message, /could not be restored|refused/);
      await assert.rejects(sandbox.openSession(bytes), SessionError, what);
    }
    assertSuccess(await sandbox.execute("x", made));
  });
  await assertNoDenoChildren("after close");
});

/** Raw deflate of `total` zero bytes, made in pieces (about 1 MB out). */
async function zeroBomb(total: number): Promise<Uint8Array> {
  const deflate = zlib.createDeflateRaw({ level: 9 });
  const parts: Uint8Array[] = [];
  deflate.on("data", (chunk: Uint8Array) => parts.push(chunk));
  const done = new Promise((resolve) => deflate.on("end", resolve));
  const piece = new Uint8Array(16 * 1024 * 1024);
  for (let written = 0; written < total; written += piece.length) {
    if (!deflate.write(piece)) {
      await new Promise((resolve) => deflate.once("drain", resolve));
    }
  }
  deflate.end();
  await done;
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) out.set(part, (at += part.length) - part.length);
  return out;
}

Deno.test("a zip-bomb diff is refused by the child with kind session; the host and another sandbox are fine", async () => {
  const bomb = await zeroBomb(1536 * 1024 * 1024);
  await withSandbox({ stateful: true, cacheDir: CACHE }, async (sandbox) => {
    const made = saved(await sandbox.execute("x = 1"));
    const sealed = await sealSession(
      bomb,
      made.sessionMetadata,
      undefined,
      { packages: [] },
      sessionBaseOf(made.sessionBytes),
    );
    const rssBefore = Deno.memoryUsage().rss;
    const result = await sandbox.execute("print('must not run')", {
      ...sealed,
      memoryLimitMb: 256,
    });
    assertSessionKind(result, "zip bomb");
    assert.match(result.error!.message, /inflate/);
    assert.ok(
      Deno.memoryUsage().rss - rssBefore < 256 * 1024 * 1024,
      "the host did not inflate it",
    );
    await assert.rejects(sandbox.openSession(sealed), SessionError);
    const ok = await sandbox.execute("x + 1", made);
    assertSuccess(ok);
    assert.equal(ok.result, 2);
    await withSandbox({ cacheDir: CACHE }, async (other) => {
      assertSuccess(await other.execute("1 + 1"));
    });
  });
  await assertNoDenoChildren("after close");
});

Deno.test("bytes restore in another sandbox and in another host process sharing the cacheDir", async () => {
  let made!: Saved;
  await withSandbox({ stateful: true, cacheDir: CACHE }, async (sandbox) => {
    made = saved(await sandbox.execute("x = 'shared'"));
  });
  await withSandbox({ stateful: true, cacheDir: CACHE }, async (sandbox) => {
    const result = await sandbox.execute("x", made);
    assertSuccess(result);
    assert.equal(result.result, "shared");
  });
  await withTempDir(async (root) => {
    await Deno.writeFile(`${root}/bytes`, made.sessionBytes);
    await Deno.writeTextFile(
      `${root}/meta.json`,
      JSON.stringify(made.sessionMetadata),
    );
    const script = `import { PyodideSandbox } from ${
      JSON.stringify(new URL("../mod.ts", import.meta.url).href)
    };
const sandbox = new PyodideSandbox({ poolSize: 0, cacheDir: ${
      JSON.stringify(CACHE)
    } });
const result = await sandbox.execute("x + '!'", {
  sessionBytes: await Deno.readFile(${JSON.stringify(`${root}/bytes`)}),
  sessionMetadata: JSON.parse(await Deno.readTextFile(${
      JSON.stringify(`${root}/meta.json`)
    })),
});
await sandbox.close();
console.log(JSON.stringify(result.result ?? result.error));
`;
    await Deno.writeTextFile(`${root}/host.ts`, script);
    const out = await new Deno.Command(TEST_DENO_PATH, {
      args: ["run", "-A", `${root}/host.ts`],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout).trim();
    assert.equal(
      text,
      '"shared!"',
      new TextDecoder().decode(out.stderr).slice(-2000),
    );
  });
  await assertNoDenoChildren("after close");
});

Deno.test("a base exported on host A and imported on host B lets B restore A's bytes; without it B names the base", async () => {
  await withTempDir(async (root) => {
    const a = new PyodideSandbox({
      poolSize: 0,
      denoPath: TEST_DENO_PATH,
      cacheDir: CACHE,
      stateful: true,
    });
    const b = new PyodideSandbox({
      poolSize: 0,
      denoPath: TEST_DENO_PATH,
      cacheDir: `${root}/b`,
      stateful: true,
    });
    try {
      const made = saved(await a.execute("x = [1, 2, 3]"));
      const exported = await a.exportBaseSnapshot();
      const own = await b.exportBaseSnapshot();
      assert.notEqual(
        own.sha256,
        exported.sha256,
        "bases are not reproducible",
      );
      const lacking = await b.execute("sum(x)", made);
      assertSessionKind(lacking, "base not imported");
      assert.ok(lacking.error!.message.includes(exported.sha256));
      assert.equal(await b.importBaseSnapshot(exported.bytes), exported.sha256);
      const dir = `${root}/b/bases`;
      assert.equal((await Deno.stat(dir)).mode! & 0o777, 0o700);
      const file = await Deno.stat(`${dir}/${exported.sha256}.snap`);
      assert.equal(file.mode! & 0o777, 0o600);
      const restored = await b.execute("x.append(4); sum(x)", made);
      assertSuccess(restored);
      assert.equal(restored.result, 10);
      // B's new bytes are a diff from the base they came from, A's.
      assert.equal(sessionBaseOf(restored.sessionBytes!), exported.sha256);
      const back = await a.execute("sum(x)", saved(restored));
      assertSuccess(back);
      assert.equal(back.result, 10);
      // A tampered stored base is found by its sha256 and not used.
      const path = `${dir}/${exported.sha256}.snap`;
      const bytes = await Deno.readFile(path);
      bytes[bytes.length - 5] ^= 1;
      await Deno.writeFile(path, bytes);
      const tampered = await b.execute("sum(x)", made);
      assertSessionKind(tampered, "tampered base");
      assert.ok(tampered.error!.message.includes(exported.sha256));
    } finally {
      await a.close();
      await b.close();
    }
  });
  await assertNoDenoChildren("after close");
});

Deno.test("importBaseSnapshot() throws a TypeError for a non-Uint8Array and a RangeError for bytes that are not a snapshot", async () => {
  await withSandbox({ cacheDir: CACHE }, async (sandbox) => {
    await assert.rejects(
      sandbox.importBaseSnapshot("nope" as unknown as Uint8Array),
      TypeError,
    );
    await assert.rejects(
      sandbox.importBaseSnapshot(new Uint8Array(4096)),
      RangeError,
    );
    const { bytes } = await sandbox.exportBaseSnapshot();
    const other = bytes.slice();
    other[20] ^= 0xff; // the build id
    await assert.rejects(
      sandbox.importBaseSnapshot(other),
      (error: Error) =>
        error instanceof RangeError && /another build/.test(error.message),
    );
  });
});

Deno.test("a diff encoded and applied by _state_diff.ts gives back the snapshot and the files", () => {
  const snapshot = (fill: number, pages: number) => {
    const s = new Uint8Array(64 + pages * 4096);
    new DataView(s.buffer).setUint32(0, 1886286592, true);
    new DataView(s.buffer).setUint32(4, 64, true);
    new DataView(s.buffer).setUint32(8, 4, true);
    s.set([123, 125, 32, 32], 48);
    s.fill(fill, 64 + 4096, 64 + 2 * 4096);
    return s;
  };
  const base = snapshot(7, 3);
  const next = snapshot(7, 5);
  next[64 + 3 * 4096 + 9] = 1;
  next[64 + 10] = 2;
  const files = new Uint8Array([9, 8, 7]);
  const diff = encodeDiff(next, base, files);
  // Two changed pages (one within the base, one past it) of five.
  assert.equal(new DataView(diff.buffer).getUint32(20, true), 2);
  const back = applyDiff(diff, base, 5 * 4096);
  assert.ok(typeof back !== "string", String(back));
  assert.deepEqual(back.snapshot, next);
  assert.deepEqual(back.files, files);
  assert.match(String(applyDiff(diff, base, 4 * 4096)), /memory limit/);
  assert.match(String(applyDiff(diff.subarray(1), base, 1e9)), /not a/);
  assert.match(
    String(applyDiff(diff.slice(0, -1), base, 1e9)),
    /inconsistent/,
  );
});

Deno.test("a diff of a live image against a base read in chunks equals the whole-base diff and applies in place", () => {
  // 300 pages: more than one 256-page chunk, the base shorter than the image.
  const head = 64;
  const image = (pages: number, seed: number) => {
    const s = new Uint8Array(head + pages * 4096);
    const view = new DataView(s.buffer);
    view.setUint32(0, 1886286592, true);
    view.setUint32(4, head, true);
    view.setUint32(8, 4, true);
    s.set([123, 125, 32, 32], 48);
    for (let i = head; i < s.length; i += 61) s[i] = (i * seed) & 0xff;
    return s;
  };
  const base = image(280, 3);
  const next = image(300, 3);
  for (const page of [0, 255, 256, 279, 299]) next[head + page * 4096 + 5] ^= 1;
  const files = new Uint8Array([1, 2, 3]);
  const reads: number[] = [];
  const baseImage = base.subarray(head);
  const reader: ImageReader = (start, into) => {
    reads.push(into.length);
    const n = Math.max(0, Math.min(into.length, baseImage.length - start));
    into.set(baseImage.subarray(start, start + n));
    into.fill(0, n);
  };
  const chunked = encodeImageDiff(
    next.subarray(0, head),
    next.slice(head),
    reader,
    files,
  );
  assert.deepEqual(chunked, encodeDiff(next, base, files));
  // The base is read a chunk at a time, never whole.
  assert.ok(Math.max(...reads) <= 256 * 4096, String(reads));
  // Four pages within the base changed, and the 20 pages past its end are
  // non-zero (one of them changed too).
  const parsed = parseDiff(chunked, 1e9);
  assert.ok(typeof parsed !== "string", String(parsed));
  assert.equal(parsed.pages.length, 24);
  const heap = new Uint8Array(300 * 4096);
  heap.set(baseImage);
  applyPages(heap, parsed);
  assert.deepEqual(heap, next.subarray(head));
  // Page numbers out of order are refused before any base is read.
  const bad = chunked.slice();
  const at = 28 + head;
  bad.set(chunked.subarray(at + 4, at + 8), at);
  assert.equal(parseDiff(bad, 1e9), "bad page numbers");
  assert.throws(
    () =>
      encodeImageDiff(next.subarray(0, 60), next.slice(head), reader, files),
    /inconsistent header/,
  );
});

Deno.test("a preloaded sandbox's session bytes are a diff from the base and round-trip with the preloaded package", async () => {
  await withTempDir(async (root) => {
    await Deno.writeFile(`${root}/${WHEEL.fileName}`, WHEEL.data);
    await withSandbox({
      stateful: true,
      cacheDir: CACHE,
      packageDir: root,
      packageIndexUrls: [],
      preload: ["tiny-pkg"],
    }, async (sandbox) => {
      const first = saved(
        await sandbox.execute(
          "import sys\nwas = 'tinypkg' in sys.modules\nimport tinypkg\nx = tinypkg.triple(2)",
          { timeoutSeconds: 120 },
        ),
      );
      const { sha256 } = await sandbox.exportBaseSnapshot();
      assert.equal(sessionBaseOf(first.sessionBytes), sha256);
      const next = await sandbox.execute("[was, x + tinypkg.triple(1)]", {
        ...first,
        timeoutSeconds: 120,
      });
      assertSuccess(next);
      assert.deepEqual(next.result, [true, 9]);
      const session = await sandbox.openSession(saved(next));
      try {
        const step = await session.execute("tinypkg.triple(x)");
        assertSuccess(step);
        assert.equal(step.result, 18);
      } finally {
        await session.close();
      }
    });
  });
  await assertNoDenoChildren("after close");
});

Deno.test("sessionBaseOf() names the base of format-2 bytes and is undefined for format 1, random, truncated or hostile bytes", async () => {
  const base = "0f".repeat(32);
  const payload = new Uint8Array([1, 2, 3]);
  const two = await sealSession(payload, undefined, undefined, {}, base);
  const one = await sealSession(payload, undefined, undefined, {});
  assert.equal(sessionBaseOf(two.sessionBytes), base);
  assert.equal(sessionBaseOf(one.sessionBytes), undefined);
  const hostile = two.sessionBytes.slice();
  new DataView(hostile.buffer).setUint32(10, 0xffffffff);
  const cases = [
    new Uint8Array(0),
    crypto.getRandomValues(new Uint8Array(100)),
    two.sessionBytes.subarray(0, 20),
    hostile,
    "not bytes" as unknown as Uint8Array,
  ];
  for (const bytes of cases) assert.equal(sessionBaseOf(bytes), undefined);
  // The checked path names the same base.
  const { payload: back, base: named } = await unsealSessionState(
    two.sessionBytes,
    two.sessionMetadata,
    undefined,
  );
  assert.deepEqual([...back], [1, 2, 3]);
  assert.equal(named, base);
});
