/**
 * The attack battery (issue 4), the child's command line, the host's
 * environment, processes, signals, native code and permission requests. Each attack asserts that it was
 * contained AND that the host and other sandboxes are unaffected (see
 * `_security.ts`); every attack is one named step that SECURITY.md's
 * tables list (checked by `security_test.ts`).
 */

import assert from "node:assert/strict";
import { BasePyodideSandbox } from "../mod.ts";
import { assertNoLeak, runBattery } from "./_attack_helpers.ts";
import {
  attack,
  expect,
  NOT_CAPABLE,
  options,
  withBattery,
} from "./_security.ts";

Deno.test("PyodideSandbox.buildCommand() keeps remote imports, npm downloads and prompts off and grants nothing by default", async (t) => {
  const base = new BasePyodideSandbox(options());
  const { args } = base.buildCommand();
  await attack(t, "flags.no_remote", () => {
    // Blocks computed imports from deno.land, esm.sh, jsr.io and the other
    // default import hosts, which this machine cannot watch.
    assert.ok(args.includes("--no-remote"));
  });
  await attack(t, "flags.cached_only", () => {
    assert.ok(args.includes("--cached-only"));
  });
  await attack(t, "flags.no_prompt", () => {
    assert.ok(args.includes("--no-prompt"));
    assert.ok(args.includes("--no-config"));
    assert.ok(args.includes("--node-modules-dir=none"));
  });
  await attack(t, "flags.no_grants", () => {
    for (const arg of args) {
      assert.doesNotMatch(
        arg,
        /^--(allow-(net|env|write|run|ffi|sys|import|all|hrtime|scripts)|unstable)|^-A$/,
        `unexpected flag ${arg}`,
      );
    }
    const reads = args.filter((a) => a.startsWith("--allow-read"));
    assert.equal(reads.length, 1);
    const paths = reads[0].slice("--allow-read=".length).split(",");
    for (const path of paths) {
      assert.match(
        path,
        /(pyodide\.asm\.wasm|python_stdlib\.zip|pyodide-lock\.json|snapshot-[^/]+\.bin)$/,
        `unexpected read grant ${path}`,
      );
    }
  });
  await attack(t, "flags.grants_keep_remote_off", () => {
    const granted = new BasePyodideSandbox(
      options({ allowNet: ["example.com"], allowRead: ["/srv/data"] }),
    ).buildCommand().args;
    assert.ok(granted.includes("--no-remote"));
    assert.ok(granted.includes("--cached-only"));
    assert.ok(granted.includes("--allow-net=example.com"));
  });
});

Deno.test("The host's secret environment stays unreachable, even next to an allowed variable", async (t) => {
  Deno.env.set("PYSB_SECURITY_ALLOWED", "visible-value");
  try {
    await withBattery(
      { allowEnv: ["PYSB_SECURITY_ALLOWED"] },
      async ({ sandbox, fixture }) => {
        const { result, report: r } = await runBattery(
          sandbox,
          `
          await attempt("control.env_allowed_visible", "return Deno.env.get('PYSB_SECURITY_ALLOWED')")
          await attempt("env.deno_env_get", "return String(Deno.env.get(CTX.secretName))")
          await attempt("env.deno_env_to_object", "return JSON.stringify(Deno.env.toObject())")
          await attempt("env.deno_env_set", "Deno.env.set(CTX.secretName, 'overwritten'); return 'set'")
          await attempt("env.node_process_env", "const p = (await import('node:process')).default; return String(p.env[CTX.secretName])")
          await attempt("env.node_load_env_file", "const p = (await import('node:process')).default; p.loadEnvFile('/proc/' + Deno.ppid + '/environ'); return String(p.env[CTX.secretName])")
          await attempt("env.proc_self_environ", "return Deno.readTextFileSync('/proc/self/environ')")
          await attempt("env.proc_parent_environ", "return Deno.readTextFileSync('/proc/' + Deno.ppid + '/environ')")
          await attempt("env.proc_parent_cmdline", "return Deno.readTextFileSync('/proc/' + Deno.ppid + '/cmdline')")
          await attempt("env.core_ops_env", "return String(Deno[Deno.internal].core.ops.op_get_env(CTX.secretName))")
          await attempt("env.hostname", "return Deno.hostname()")
          await attempt("env.os_release", "return Deno.osRelease()")
          await attempt("env.network_interfaces", "return JSON.stringify(Deno.networkInterfaces())")
          await attempt("env.uid", "return String(Deno.uid())")
          await attempt("env.system_memory", "return JSON.stringify(Deno.systemMemoryInfo())")
          def _os_environ():
              import os, json
              return json.dumps(dict(os.environ))
          await pyattempt("env.python_os_environ", _os_environ)
          `,
          { secretName: fixture.secretName },
        );
        await expect(t, r, {
          "control.env_allowed_visible": (o) => {
            assert.equal(o.value, "visible-value", o.error);
          },
          "env.deno_env_get": "env",
          "env.deno_env_to_object": "env",
          "env.deno_env_set": "env",
          "env.node_process_env": (o) => {
            // Refused, or at best the child's own (cleared) environment.
            assert.ok(!o.ok || o.value === "undefined", o.value);
          },
          "env.node_load_env_file": NOT_CAPABLE,
          "env.proc_self_environ": "read",
          "env.proc_parent_environ": "read",
          "env.proc_parent_cmdline": "read",
          "env.core_ops_env": (o) => {
            assert.ok(!o.ok || o.value === "undefined", o.value);
          },
          "env.hostname": "sys",
          "env.os_release": "sys",
          "env.network_interfaces": "sys",
          "env.uid": "sys",
          "env.system_memory": "sys",
          "env.python_os_environ": (o) => {
            // Pyodide's os.environ is its own, not the host's.
            assert.equal(o.ok, true, o.error);
            assert.ok(!o.value!.includes("PYSB_SECURITY"), o.value);
          },
        });
        assertNoLeak(result, [fixture.secretValue]);
      },
    );
  } finally {
    Deno.env.delete("PYSB_SECURITY_ALLOWED");
  }
});

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
