/**
 * The attack battery: the host's environment (`env.*`).
 *
 * Part of the attack battery (issue 4): each attack asserts that it was
 * contained AND that the host, a witness session and the attacked sandbox
 * are unaffected (`withBattery`, `_battery.ts`). SECURITY.md's tables list
 * these steps (checked by `security_table_test.ts`).
 */

import assert from "node:assert/strict";
import { assertNoLeak, runBattery } from "./_attack_helpers.ts";
import { expect, NOT_CAPABLE, withBattery } from "./_battery.ts";

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
