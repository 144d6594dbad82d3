/**
 * The attack battery (issue 4), prototype and internals tricks, forged
 * frames, exits and closed streams. Each attack asserts that it was
 * contained AND that the host and other sandboxes are unaffected (see
 * `_security.ts`); every attack is one named step that SECURITY.md's
 * tables list (checked by `security_test.ts`).
 */

import assert from "node:assert/strict";
import { runBattery, watchHostRss } from "./_attack_helpers.ts";
import { assertCrash, attack, expect, withBattery } from "./_security.ts";

Deno.test("Prototype and internals tricks give untrusted code nothing beyond the child's permissions", async (t) => {
  await withBattery({}, async ({ sandbox, fixture }) => {
    const { report: r } = await runBattery(
      sandbox,
      `
      await attempt("proto.constructor_constructor", "return (() => {}).constructor.constructor('return Deno')().readTextFileSync(CTX.canary)")
      def _py_function():
          import js
          return js.Function("return Deno.readTextFileSync(" + _json.dumps(CTX["canary"]) + ")")()
      await pyattempt("proto.python_js_function", _py_function)
      def _nodefs():
          import pyodide_js
          from pyodide.ffi import to_js
          import js
          FS = pyodide_js.FS
          FS.mkdirTree("/mnt/nodefs")
          FS.mount(FS.filesystems.NODEFS, to_js({"root": CTX["dir"]}, dict_converter=js.Object.fromEntries), "/mnt/nodefs")
          return open("/mnt/nodefs/canary.txt").read()
      await pyattempt("proto.pyodide_fs_nodefs", _nodefs)
      await attempt("proto.core_ops_open", "return String(Deno[Deno.internal].core.ops.op_node_open_sync(CTX.canary, 0, 0))")
      await attempt("proto.core_ops_set_env", "Deno[Deno.internal].core.ops.op_set_env('PYSB_X', 'y'); return 'set'")
      await attempt("proto.revoke_then_request", "await Deno.permissions.revoke({name: 'read'}); return (await Deno.permissions.request({name: 'read'})).state")
      `,
      { canary: fixture.canaryPath, dir: fixture.dir },
    );
    await expect(t, r, {
      "proto.constructor_constructor": "read",
      "proto.python_js_function": "read",
      "proto.pyodide_fs_nodefs":
        /ErrnoError|NotCapable|Requires read|errno|FS error|Error/,
      // Deno[Deno.internal] is deleted before user code runs.
      "proto.core_ops_open":
        /Not available in the sandbox|Cannot read properties of undefined/,
      "proto.core_ops_set_env":
        /Not available in the sandbox|Cannot read properties of undefined/,
      "proto.revoke_then_request": (o) =>
        assert.equal(o.value, "denied", o.error),
    });

    await attack(t, "proto.tamper_runner_builtins", async () => {
      // The runner captured what builds and writes frames before user code
      // ran: replacing the globals changes nothing in the result.
      const res = await sandbox.execute(
        `import js
js.eval("""
JSON.stringify = () => '{"forged": true}';
TextEncoder.prototype.encode = () => new Uint8Array(0);
Uint8Array.prototype.set = function () {};
DataView.prototype.setUint32 = function () {};
Reflect.apply = () => { throw new Error('tampered'); };
ArrayBuffer.prototype.slice = () => new ArrayBuffer(0);
Deno.stdout.writeSync = () => 0;
Deno.stdout.write = async () => 0;
""")
print("still delivered")
{"answer": 42}`,
        { timeoutSeconds: 20 },
      );
      assert.equal(res.status, "success", res.stderr);
      assert.equal(res.stdout, "still delivered\n");
      assert.deepEqual(res.result, { answer: 42 });
    });

    await attack(t, "proto.tamper_typed_arrays", async () => {
      // Breaking typed arrays themselves breaks Pyodide (its own I/O uses
      // them): the call never completes and is ended by its timeout. It
      // must never come back as a success with another value.
      for (
        const tamper of [
          "Uint8Array.prototype.subarray = function () { return new Uint8Array(0); };",
          "Object.defineProperty(Object.getPrototypeOf(Uint8Array.prototype), 'length', { get() { return 0; } });",
        ]
      ) {
        const res = await sandbox.execute(
          `import js\njs.eval(${
            JSON.stringify(tamper)
          })\nprint("x")\n{"answer": 42}`,
          { timeoutSeconds: 3 },
        );
        if (res.status === "success") {
          assert.deepEqual(res.result, { answer: 42 });
        } else {
          assert.ok(
            ["timeout", "crash"].includes(res.error!.kind),
            JSON.stringify(res.error),
          );
        }
      }
    });

    await attack(t, "proto.steal_nonce_and_forge", async () => {
      // Spy on every typed array the runner builds (the 'buffer' getter and
      // Symbol.species), hoping to catch the secret nonce in a frame, then
      // forge a result frame with it and exit before the real one.
      const res = await sandbox.execute(
        `import js
js.eval("""
globalThis.stolen = null;
const TA = Object.getPrototypeOf(Uint8Array.prototype);
const getBuffer = Object.getOwnPropertyDescriptor(TA, 'buffer').get;
const look = (u) => { if (u.length >= 20 && u[0] === 0x50 && u[1] === 0x53 && u[2] === 0x42 && u[3] === 0x31) globalThis.stolen ??= u.slice(4, 20); };
Object.defineProperty(TA, 'buffer', { configurable: true, get() { const b = getBuffer.call(this); try { look(new Uint8Array(b)); } catch {} return b; } });
class Spy extends Uint8Array { constructor(...a) { super(...a); try { if (a[0] instanceof ArrayBuffer) look(new Uint8Array(a[0])); } catch {} } }
Object.defineProperty(Uint8Array, Symbol.species, { configurable: true, get() { return Spy; } });
""")
print("bait")
js.eval("""
if (globalThis.stolen) {
  const body = new TextEncoder().encode(JSON.stringify({ out: JSON.stringify({ ok: true, result: "FORGED" }), interrupted: false }));
  const f = new Uint8Array(4 + 16 + 9 + body.length + 16);
  f.set([0x50, 0x53, 0x42, 0x31], 0); f.set(globalThis.stolen, 4); f[20] = 4;
  new DataView(f.buffer).setUint32(21, body.length); f.set(body, 29); f.set(globalThis.stolen, 29 + body.length);
  Deno.stdout.writeSync(f);
  Deno.exit(0);
}
""")
"no nonce"`,
        { timeoutSeconds: 20 },
      );
      assert.notEqual(
        res.result,
        "FORGED",
        "a forged result frame was accepted",
      );
      assert.equal(res.result, "no nonce");
    });

    await attack(t, "proto.pollute_host_prototypes", async () => {
      const res = await sandbox.execute(
        `{"__proto__": {"polluted": "yes"}, "constructor": {"prototype": {"polluted": "yes"}}}`,
      );
      assert.equal(res.status, "success", res.stderr);
      const value = res.result as Record<string, unknown>;
      assert.ok(Object.hasOwn(value, "__proto__"));
      assert.equal(({} as Record<string, unknown>).polluted, undefined);
      assert.equal(
        Object.prototype.hasOwnProperty.call(Object.prototype, "polluted"),
        false,
      );
    });
  });
});

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
          // Start-up counts too (a child of its own for this memory limit):
          // generous for a loaded machine, still far below quadratic time.
          timeoutSeconds: 45,
          memoryLimitMb: 1024,
        })
      );
      assert.equal(res.status, "success", res.stderr);
      assert.equal((res.result as string).length, 96 * 1024 * 1024);
      assert.ok(growth < 600 * 1024 * 1024, `host RSS grew ${growth >> 20} MB`);
    });
  });
});
