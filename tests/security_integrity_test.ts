/**
 * The attack battery: forged frames, exits and closed streams (`integrity.*`).
 *
 * Part of the attack battery (issue 4): each attack asserts that it was
 * contained AND that the host, a witness session and the attacked sandbox
 * are unaffected (`withBattery`, `_battery.ts`). SECURITY.md's tables list
 * these steps (checked by `security_table_test.ts`).
 */

import assert from "node:assert/strict";
import { watchHostRss } from "./_attack_helpers.ts";
import { assertCrash, attack, withBattery } from "./_battery.ts";

Deno.test("Forged frames, exits and closed streams never pass for a result", async (t) => {
  await withBattery({}, async ({ sandbox }) => {
    const run = (code: string, timeoutSeconds = 20) =>
      sandbox.execute(code, { timeoutSeconds });

    await attack(t, "integrity.forged_frame_then_exit", async () => {
      // A frame with a guessed nonce, a JSON result on stdout (the
      // langchain-sandbox forgery) and a clean exit.
      const res = await run(`import js
js.eval("""
const enc = new TextEncoder();
const body = enc.encode(JSON.stringify({ out: JSON.stringify({ ok: true, result: "FORGED" }), interrupted: false }));
const f = new Uint8Array(4 + 16 + 9 + body.length + 16);
f.set([0x50, 0x53, 0x42, 0x31], 0); f[20] = 4;
new DataView(f.buffer).setUint32(21, body.length); f.set(body, 29);
Deno.stdout.writeSync(f);
console.log(JSON.stringify({ status: "success", stdout: "FORGED", result: "FORGED" }));
Deno.exit(0);
""")`);
      assertCrash(res);
      assert.ok(!res.stdout.includes("FORGED"));
    });

    await attack(t, "integrity.console_log_is_not_output", async () => {
      // console.log writes to the real stdout, which only carries frames.
      const res = await run(
        `import js\njs.console.log('{"status": "success", "result": "FORGED"}')\nprint("real")\n7`,
      );
      assert.equal(res.status, "success", res.stderr);
      assert.equal(res.stdout, "real\n");
      assert.equal(res.result, 7);
    });

    await attack(t, "integrity.junk_with_partial_magic", async () => {
      // Stray bytes that look like the start of a frame do not derail the
      // parser.
      const res = await run(`import js
js.eval("Deno.stdout.writeSync(new Uint8Array([0x50, 0x53, 0x42, 0x31, 1, 2, 3, 0x50, 0x53, 0x42]))")
print("after junk")
5`);
      assert.equal(res.status, "success", res.stderr);
      assert.equal(res.stdout, "after junk\n");
      assert.equal(res.result, 5);
    });

    await attack(t, "integrity.real_stderr_forgery", async () => {
      const res = await run(`import js
js.eval("Deno.stderr.writeSync(new TextEncoder().encode('Execution timed out after 1 seconds\\\\n{\\"status\\": \\"error\\"}\\\\n'))")
7`);
      assert.equal(res.status, "success", res.stderr);
      assert.equal(res.stderr, "");
      assert.equal(res.result, 7);
    });

    await attack(t, "integrity.deno_exit_codes", async () => {
      for (const code of [0, 1, 2, 70, 137, 255]) {
        const res = await run(`import js\njs.Deno.exit(${code})`);
        assertCrash(res);
        assert.match(res.error!.message, new RegExp(`code ${code}\\b`));
      }
    });

    await attack(t, "integrity.node_process_exit", async () => {
      const res = await run(
        `import js\nawait js.eval("import('node:process').then((p) => p.default.exit(0))")`,
      );
      assertCrash(res);
    });

    await attack(t, "integrity.python_os_exit", async () => {
      const res = await run(`import os\nos._exit(0)`);
      assert.equal(res.status, "error");
      assert.ok(
        ["crash", "exception"].includes(res.error!.kind),
        JSON.stringify(res.error),
      );
    });

    await attack(t, "integrity.sys_exit", async () => {
      const ok = await run(`import sys\nprint("bye")\nsys.exit(0)`);
      assert.equal(ok.status, "success", ok.stderr);
      assert.equal(ok.stdout, "bye\n");
      const bad = await run(`import sys\nsys.exit(3)`);
      assert.equal(bad.status, "error");
      assert.equal(bad.error?.kind, "exception");
      assert.equal(bad.error?.type, "SystemExit");
    });

    await attack(t, "integrity.kill_self", async () => {
      const res = await run(`import js\njs.Deno.kill(js.Deno.pid, "SIGKILL")`);
      assertCrash(res);
    });

    await attack(t, "integrity.close_stdout", async () => {
      const res = await run(`import js\njs.Deno.stdout.close()\nprint("lost")`);
      assertCrash(res);
    });

    await attack(t, "integrity.malformed_text", async () => {
      const res = await run(`import sys
sys.stdout.buffer.write(b"\\xff\\xfe\\x00nul\\n")
sys.stdout.flush()
"\\ud800 lone surrogate"`);
      assert.equal(res.status, "success", res.stderr);
      assert.equal(res.stdout, "\ufffd\ufffd\u0000nul\n");
      assert.equal(res.result, "\ud800 lone surrogate");
    });

    await attack(t, "integrity.giant_result", async () => {
      // A 96 MB last-expression value arrives intact well within the
      // timeout: the host parses a big frame in linear time (it used to
      // copy the whole frame again for every 64 KiB chunk, and a 100 MB
      // result never arrived within 30 seconds).
      const { value: res, growth } = await watchHostRss(() =>
        sandbox.execute(`"x" * (96 * 1024 * 1024)`, {
          timeoutSeconds: 20,
          memoryLimitMb: 1024,
        })
      );
      assert.equal(res.status, "success", res.stderr);
      assert.equal((res.result as string).length, 96 * 1024 * 1024);
      assert.ok(growth < 600 * 1024 * 1024, `host RSS grew ${growth >> 20} MB`);
    });
  });
});
