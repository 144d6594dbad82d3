/**
 * The attack battery: processes, signals, native code and prototype
 * tricks (`proc.*`, `proto.*`).
 *
 * Part of the attack battery (issue 4): each attack asserts that it was
 * contained AND that the host, a witness session and the attacked sandbox
 * are unaffected (`withBattery`, `_battery.ts`). SECURITY.md's tables list
 * these steps (checked by `security_table_test.ts`).
 */

import assert from "node:assert/strict";
import { runBattery } from "./_attack_helpers.ts";
import { attack, expect, NOT_CAPABLE, withBattery } from "./_battery.ts";

Deno.test("Untrusted code cannot start processes, signal the host or other sandboxes, load native code or widen its permissions", async (t) => {
  await withBattery({}, async ({ sandbox, fixture, witnessPid }) => {
    const { report: r } = await runBattery(
      sandbox,
      `
      await attempt("proc.deno_command", "const o = await new Deno.Command('/bin/sh', {args: ['-c', 'echo PWNED > ' + CTX.dir + '/cmd.txt']}).output(); return o.code")
      await attempt("proc.deno_command_sync", "return new Deno.Command(Deno.execPath(), {args: ['eval', '1']}).outputSync().code")
      await attempt("proc.deno_command_spawn", "const c = new Deno.Command('/bin/sh', {args: ['-c', 'true']}).spawn(); return (await c.status).code")
      await attempt("proc.node_exec_sync", "const cp = await import('node:child_process'); return String(cp.execSync('id'))")
      await attempt("proc.node_spawn", "const cp = await import('node:child_process'); return await new Promise((res, rej) => { const c = cp.spawn('/bin/sh', ['-c', 'true']); c.on('error', rej); c.on('exit', (code) => res('exit ' + code)); })")
      await attempt("proc.kill_parent", "Deno.kill(Deno.ppid, 'SIGKILL'); return 'killed'")
      await attempt("proc.node_kill_parent", "const p = (await import('node:process')).default; p.kill(p.ppid, 'SIGKILL'); return 'killed'")
      await attempt("proc.kill_process_group", "Deno.kill(0, 'SIGKILL'); return 'killed'")
      await attempt("proc.kill_sibling", "Deno.kill(CTX.witnessPid, 'SIGKILL'); return 'killed'")
      await attempt("proc.ffi_dlopen", "const l = Deno.dlopen('libc.so.6', {getpid: {parameters: [], result: 'i32'}}); return l.symbols.getpid()")
      await attempt("proc.node_dlopen", "const p = (await import('node:process')).default; p.dlopen({exports: {}}, '/lib/x86_64-linux-gnu/libc.so.6'); return 'loaded'")
      await attempt("proc.ffi_raw_pointer", "return String(Deno.UnsafePointer.create(0x400000n))")
      await attempt("proc.permission_request", "const a = (await Deno.permissions.request({name: 'read'})).state; const b = Deno.permissions.requestSync({name: 'run'}).state; const c = (await Deno.permissions.request({name: 'net'})).state; return [a, b, c].join(' ')")
      await attempt("proc.read_after_request", "await Deno.permissions.request({name: 'read', path: CTX.canary}); return await Deno.readTextFile(CTX.canary)")
      await attempt("proc.worker_read", "const m = await new Promise((res) => { const w = new Worker('data:application/javascript,' + encodeURIComponent('try { postMessage(\\"OK \\" + Deno.readTextFileSync(' + JSON.stringify(CTX.canary) + ')) } catch (e) { postMessage(\\"ERR \\" + e.message) }'), {type: 'module'}); w.onmessage = (e) => { w.terminate(); res(e.data); }; }); if (m.startsWith('ERR')) throw new Error(m); return m")
      await attempt("proc.node_worker_read", "const wt = await import('node:worker_threads'); return await new Promise((res, rej) => { const w = new wt.Worker('require(\\"worker_threads\\").parentPort.postMessage(require(\\"fs\\").readFileSync(' + JSON.stringify(CTX.canary) + ', \\"utf8\\"))', {eval: true}); w.on('message', (m) => { w.terminate(); res(m); }); w.on('error', rej); })")
      `,
      { dir: fixture.dir, canary: fixture.canaryPath, witnessPid },
    );
    await expect(t, r, {
      "proc.deno_command": "run",
      "proc.deno_command_sync": "run",
      "proc.deno_command_spawn": "run",
      "proc.node_exec_sync": NOT_CAPABLE,
      "proc.node_spawn": NOT_CAPABLE,
      "proc.kill_parent": "run",
      "proc.node_kill_parent": "run",
      "proc.kill_process_group": "run",
      "proc.kill_sibling": "run",
      "proc.ffi_dlopen": "ffi",
      "proc.node_dlopen": /Not available in the sandbox/,
      "proc.ffi_raw_pointer": "ffi",
      "proc.permission_request": (o) => {
        // --no-prompt: requests are answered "denied", never asked.
        assert.equal(o.value, "denied denied denied", o.error);
      },
      "proc.read_after_request": "read",
      // Workers are taken away before user code runs (lockDown).
      "proc.worker_read": /Not available in the sandbox/,
      "proc.node_worker_read": /Not available in the sandbox/,
    });
    await attack(t, "proc.worker_extra_permissions", async () => {
      // Workers are taken away before user code runs (behind that, asking a
      // Worker for more permissions needs an unstable flag the child lacks).
      const res = await sandbox.execute(
        `import js\njs.eval("new Worker('data:application/javascript,postMessage(1)', {type: 'module', deno: {permissions: {read: true, run: true}}})")`,
        { timeoutSeconds: 20 },
      );
      assert.equal(res.error?.kind, "exception", JSON.stringify(res.error));
      assert.match(res.error?.message ?? "", /Not available in the sandbox/);
    });
  });
});

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
