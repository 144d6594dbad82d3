/**
 * The attack battery (issue 4), resource exhaustion: output floods, endless
 * loops, recursion and memory bombs. Each attack asserts that it was
 * contained AND that the host and other sandboxes are unaffected (see
 * `_security.ts`); every attack is one named step that SECURITY.md's
 * tables list (checked by `security_test.ts`).
 */

import assert from "node:assert/strict";
import type { CodeExecutionResult } from "../mod.ts";
import { watchHostRss } from "./_attack_helpers.ts";
import { attack, withBattery } from "./_security.ts";

Deno.test("Output floods and giant writes are capped by maxOutputBytes and keep the host's memory bounded", async (t) => {
  const cap = 64 * 1024;
  await withBattery({ maxOutputBytes: cap }, async ({ sandbox }) => {
    const MB = 1024 * 1024;
    await attack(t, "res.giant_single_write", async () => {
      // One 150 MB write: the runner splits it into 64 KiB frames, the host
      // keeps the first 64 KiB.
      const { value: res, growth } = await watchHostRss(() =>
        sandbox.execute(
          `import sys\nsys.stdout.write("x" * 150_000_000)\nsys.stdout.flush()\n7`,
          { timeoutSeconds: 60 },
        )
      );
      assert.equal(res.status, "success", res.stderr);
      assert.equal(res.result, 7);
      assert.equal(res.stdoutTruncated, true);
      assert.equal(res.stdout.length, cap);
      assert.ok(growth < 150 * MB, `host RSS grew ${growth / MB} MB`);
    });
    await attack(t, "res.stdout_flood", async () => {
      const { value: res, growth } = await watchHostRss(() =>
        sandbox.execute(`while True:\n    print("x" * 9999)`, {
          timeoutSeconds: 3,
        })
      );
      assert.equal(res.error?.kind, "timeout");
      assert.equal(res.stdoutTruncated, true);
      assert.ok(res.stdout.length <= cap);
      assert.ok(growth < 150 * MB, `host RSS grew ${growth / MB} MB`);
    });
    await attack(t, "res.stderr_flood", async () => {
      const { value: res, growth } = await watchHostRss(() =>
        sandbox.execute(
          `import sys\nwhile True:\n    sys.stderr.write("e" * 9999 + "\\n")`,
          { timeoutSeconds: 3 },
        )
      );
      assert.equal(res.error?.kind, "timeout");
      assert.equal(res.stderrTruncated, true);
      assert.ok(res.stderr.length <= cap + 200);
      assert.ok(growth < 150 * MB, `host RSS grew ${growth / MB} MB`);
    });
    await attack(t, "res.real_stdout_flood", async () => {
      // Raw bytes on the real stdout (0x50 is the first byte of a frame
      // marker) are discarded as they arrive.
      const { value: res, growth } = await watchHostRss(() =>
        sandbox.execute(
          `import js\njs.eval("const junk = new Uint8Array(1 << 20).fill(0x50); for (;;) Deno.stdout.writeSync(junk)")`,
          { timeoutSeconds: 3 },
        )
      );
      assert.equal(res.error?.kind, "timeout");
      assert.equal(res.stdout, "");
      assert.ok(growth < 150 * MB, `host RSS grew ${growth / MB} MB`);
    });
    await attack(t, "res.real_stderr_flood", async () => {
      const { value: res, growth } = await watchHostRss(() =>
        sandbox.execute(
          `import js\njs.eval("const junk = new Uint8Array(1 << 20).fill(0x65); for (;;) Deno.stderr.writeSync(junk)")`,
          { timeoutSeconds: 3 },
        )
      );
      assert.equal(res.error?.kind, "timeout");
      assert.ok(res.stderr.length < 64 * 1024, `${res.stderr.length}`);
      assert.ok(growth < 150 * MB, `host RSS grew ${growth / MB} MB`);
    });
  });
});

Deno.test("Endless loops, sleeps, recursion and memory bombs end with a timeout, crash or memory error, and the host carries on", async (t) => {
  await withBattery({}, async ({ sandbox }) => {
    const timed = async (
      code: string,
      options: { memoryLimitMb?: number; timeoutSeconds?: number } = {},
    ) => {
      const started = performance.now();
      const res = await sandbox.execute(code, {
        timeoutSeconds: 2,
        ...options,
      });
      return { res, seconds: (performance.now() - started) / 1000 };
    };
    const assertTimeout = (
      { res, seconds }: { res: CodeExecutionResult; seconds: number },
    ) => {
      assert.equal(res.error?.kind, "timeout", JSON.stringify(res.error));
      assert.ok(seconds < 15, `took ${seconds} s`);
    };
    await attack(t, "res.endless_loop", async () => {
      assertTimeout(await timed("while True:\n    pass"));
    });
    await attack(t, "res.sleep", async () => {
      assertTimeout(await timed("import time\ntime.sleep(3600)"));
    });
    await attack(t, "res.js_busy_loop", async () => {
      assertTimeout(await timed(`import js\njs.eval("for (;;) {}")`));
    });
    await attack(t, "res.sigterm_ignored", async () => {
      // The child may ignore SIGTERM; the SIGKILL behind it still lands.
      assertTimeout(
        await timed(
          `import js\njs.eval("Deno.addSignalListener('SIGTERM', () => {}); for (;;) {}")`,
        ),
      );
    });
    await attack(t, "res.many_workers", async () => {
      // Workers are taken away before user code runs: the first one fails.
      const { res } = await timed(
        `import js\njs.eval("for (let i = 0; i < 16; i++) new Worker('data:application/javascript,for(;;){}', {type: 'module'})")\nwhile True:\n    pass`,
        { timeoutSeconds: 30 },
      );
      assert.equal(res.error?.kind, "exception", JSON.stringify(res.error));
      assert.match(res.error?.message ?? "", /Not available in the sandbox/);
    });
    await attack(t, "res.deep_recursion", async () => {
      const { res } = await timed(
        "import sys\nsys.setrecursionlimit(10**7)\ndef f(n):\n    return f(n + 1)\nf(0)",
        { timeoutSeconds: 20 },
      );
      // Any contained end will do (the sandbox caps the recursion limit, so
      // this is normally a quick RecursionError).
      assert.equal(res.status, "error");
      assert.ok(
        ["exception", "memory", "crash", "timeout"].includes(res.error!.kind),
        JSON.stringify(res.error),
      );
    });
    await attack(t, "res.python_memory_error", async () => {
      const { res } = await timed("b = bytearray(2000 * 1024 * 1024)", {
        memoryLimitMb: 128,
        timeoutSeconds: 20,
      });
      assert.equal(res.error?.kind, "memory");
      assert.equal(res.error?.type, "MemoryError");
    });
    await attack(t, "res.lift_wasm_cap", async () => {
      // v8.setFlagsFromString is taken away before user code runs (and
      // could not change the cap of a heap that already exists anyway).
      const { res } = await timed(
        `import js\nawait js.eval("import('node:v8').then((v8) => v8.setFlagsFromString('--wasm-max-mem-pages=65536'))")\nb = bytearray(1500 * 1024 * 1024)`,
        { memoryLimitMb: 128, timeoutSeconds: 20 },
      );
      assert.equal(res.error?.kind, "exception", JSON.stringify(res.error));
      assert.match(res.error?.message ?? "", /Not available in the sandbox/);
    });
    await attack(t, "res.js_array_buffers", async () => {
      // ArrayBuffers bypass the wasm cap; the parent's RSS watchdog kills
      // the child.
      const { value: out, growth } = await watchHostRss(() =>
        timed(
          `import js\njs.eval("globalThis.keep = []; for (let i = 0; i < 16; i++) { const b = new ArrayBuffer(256 * 1024 * 1024); new Uint8Array(b).fill(1); keep.push(b); }")\n"survived"`,
          { memoryLimitMb: 64, timeoutSeconds: 30 },
        )
      );
      assert.equal(
        out.res.error?.kind,
        "memory",
        JSON.stringify(out.res.error),
      );
      assert.equal(out.res.error?.type, undefined);
      assert.ok(growth < 100 * 1024 * 1024, `host RSS grew ${growth >> 20} MB`);
    });
  });
});
