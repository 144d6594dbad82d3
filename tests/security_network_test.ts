/**
 * The attack battery (issue 4), the network and remote imports. Each attack asserts that it was
 * contained AND that the host and other sandboxes are unaffected (see
 * `_security.ts`); every attack is one named step that SECURITY.md's
 * tables list (checked by `security_test.ts`).
 */

import assert from "node:assert/strict";
import {
  assertDenied,
  assertRefused,
  runBattery,
  startRecorder,
} from "./_attack_helpers.ts";
import { attack, expect, withBattery } from "./_security.ts";

/** Network attacks; `CTX.url` / `CTX.port` point at the loopback recorder. */
const NETWORK_BATTERY = `
await attempt("net.fetch", "return (await fetch(CTX.url)).status")
await attempt("net.fetch_localhost", "return (await fetch('http://localhost:' + CTX.port + '/')).status")
await attempt("net.websocket", "return await new Promise((res, rej) => { const w = new WebSocket('ws://127.0.0.1:' + CTX.port + '/'); w.onopen = () => res('open'); w.onerror = (e) => rej(new Error('WebSocket error ' + (e.message ?? ''))); })")
await attempt("net.event_source", "return await new Promise((res, rej) => { const s = new EventSource(CTX.url); s.onopen = () => { s.close(); res('open'); }; s.onerror = (e) => { s.close(); rej(new Error('EventSource error ' + (e.message ?? ''))); }; })")
await attempt("net.deno_connect", "const c = await Deno.connect({hostname: '127.0.0.1', port: CTX.port}); c.close(); return 'connected'")
await attempt("net.deno_connect_tls", "const c = await Deno.connectTls({hostname: '127.0.0.1', port: CTX.port}); c.close(); return 'connected'")
await attempt("net.deno_listen", "const l = Deno.listen({hostname: '127.0.0.1', port: 0}); l.close(); return 'listening'")
await attempt("net.resolve_dns", "return JSON.stringify(await Deno.resolveDns('example.com', 'A'))")
await attempt("net.node_net", "const net = await import('node:net'); return await new Promise((res, rej) => { const s = net.createConnection(CTX.port, '127.0.0.1'); s.on('connect', () => { s.destroy(); res('connected'); }); s.on('error', rej); })")
await attempt("net.node_http", "const http = await import('node:http'); return await new Promise((res, rej) => { const q = http.get(CTX.url, (r) => res('status ' + r.statusCode)); q.on('error', rej); })")
await attempt("net.worker_fetch", "const m = await new Promise((res) => { const w = new Worker('data:application/javascript,' + encodeURIComponent('fetch(' + JSON.stringify(CTX.url) + ').then((r) => postMessage(\\"OK \\" + r.status), (e) => postMessage(\\"ERR \\" + e.message))'), {type: 'module'}); w.onmessage = (e) => { w.terminate(); res(e.data); }; }); if (m.startsWith('ERR')) throw new Error(m); return m")
await attempt("net.import_node_loader", "return (await import(CTX.url + 'node.js')).default")
await attempt("net.import_deno_loader", "return await viaModule('export default (await import(' + JSON.stringify(CTX.url + 'deno.js') + ')).default;')")
await attempt("net.worker_remote_script", "return await new Promise((res, rej) => { const w = new Worker(CTX.url + 'worker.js', {type: 'module'}); w.onerror = (e) => { e.preventDefault(); w.terminate(); rej(new Error('Worker error ' + e.message)); }; setTimeout(() => { w.terminate(); res('no error'); }, 3000); })")
import pyodide.http
await pyattempt("net.pyfetch", lambda: pyodide.http.pyfetch(CTX["url"]))
`;

Deno.test("Untrusted code cannot reach the network: every attempt is refused and a loopback recorder sees no connection", async (t) => {
  const recorder = startRecorder();
  const url = `http://127.0.0.1:${recorder.port}/`;
  try {
    await withBattery({}, async ({ sandbox }) => {
      const { report: r } = await runBattery(
        sandbox,
        NETWORK_BATTERY,
        { url, port: recorder.port },
      );
      await expect(t, r, {
        "net.fetch": "net",
        "net.fetch_localhost": "net",
        "net.websocket": "net",
        "net.event_source": /NotCapable|Requires net|EventSource error/,
        "net.deno_connect": "net",
        "net.deno_connect_tls": "net",
        "net.deno_listen": "net",
        "net.resolve_dns": "net",
        "net.node_net": "net",
        "net.node_http": "net",
        // Workers are taken away before user code runs (lockDown).
        "net.worker_fetch": /Not available in the sandbox/,
        "net.import_node_loader": /ERR_UNSUPPORTED_ESM_URL_SCHEME|NotCapable/,
        "net.import_deno_loader":
          /--no-remote|Requires import access|NotCapable/,
        "net.worker_remote_script":
          /--no-remote|Requires|NotCapable|Worker error|Not available in the sandbox/,
        "net.pyfetch": /NotCapable|Requires net access/,
      });
    });
    await attack(t, "net.scoped_grant_other_port", async () => {
      // A grant for another port does not open the recorder's.
      await withBattery({ allowNet: ["127.0.0.1:1"] }, async ({ sandbox }) => {
        const { report: r } = await runBattery(
          sandbox,
          `
          await attempt("a", "return (await fetch(CTX.url)).status")
          await attempt("b", "const c = await Deno.connect({hostname: '127.0.0.1', port: CTX.port}); c.close(); return 'connected'")
          `,
          { url, port: recorder.port },
        );
        assertDenied(r, "a", "net");
        assertDenied(r, "b", "net");
      });
    });
    await attack(t, "net.recorder_saw_nothing", () => {
      assert.equal(recorder.hits, 0, "an attack reached the loopback server");
    });
    await attack(t, "control.net_grant_reaches_recorder", async () => {
      // The recorder does see a sandbox that is allowed to connect; such a
      // sandbox still cannot import code over the network.
      await withBattery(
        { allowNet: [`127.0.0.1:${recorder.port}`] },
        async ({ sandbox }) => {
          const { report: r } = await runBattery(
            sandbox,
            `await attempt("import", "return await viaModule('export default (await import(' + JSON.stringify(CTX.url + 'm.js') + ')).default;')")`,
            { url },
          );
          assertRefused(r, "import", /--no-remote/);
          assert.equal(recorder.hits, 0, "import() reached the network");
          const { report: f } = await runBattery(
            sandbox,
            `await attempt("fetch", "return (await fetch(CTX.url)).status")`,
            { url },
          );
          assert.equal(f.fetch.value, "200", f.fetch.error);
          assert.equal(recorder.hits, 1);
        },
      );
    });
  } finally {
    await recorder.close();
  }
});

Deno.test("Untrusted code cannot import remote modules or npm: and jsr: packages that are not cached", async (t) => {
  await withBattery({}, async ({ sandbox }) => {
    const nonce = crypto.randomUUID().slice(0, 8);
    const { report: r } = await runBattery(
      sandbox,
      `
      def via(spec):
          return "return await viaModule('export default Object.keys(await import(' + JSON.stringify(" + _json.dumps(spec) + ") + '));')"
      await attempt("imports.deno_land", via("https://deno.land/x/pysb_probe_" + CTX["nonce"] + "/mod.ts"))
      await attempt("imports.esm_sh", via("https://esm.sh/pysb-probe-" + CTX["nonce"]))
      await attempt("imports.jsr_io_https", via("https://jsr.io/@pysb/probe-" + CTX["nonce"] + "/1.0.0/mod.ts"))
      await attempt("imports.jsdelivr", via("https://cdn.jsdelivr.net/npm/pysb-probe-" + CTX["nonce"] + "/+esm"))
      await attempt("imports.raw_github", via("https://raw.githubusercontent.com/pysb/probe/" + CTX["nonce"] + "/mod.ts"))
      await attempt("imports.npm_uncached", via("npm:left-pad@1.3.0"))
      await attempt("imports.jsr_specifier", via("jsr:@std/path@1"))
      await attempt("imports.node_loader_https", "return Object.keys(await import('https://deno.land/x/pysb_probe/mod.ts'))")
      await attempt("imports.node_loader_npm", "return Object.keys(await import('npm:left-pad@1.3.0'))")
      await attempt("imports.worker_remote", "return await new Promise((res, rej) => { const w = new Worker('https://deno.land/x/pysb_probe/worker.ts', {type: 'module'}); w.onerror = (e) => { e.preventDefault(); w.terminate(); rej(new Error('Worker error ' + e.message)); }; setTimeout(() => { w.terminate(); res('no error'); }, 3000); })")
      `,
      { nonce },
    );
    const remote = /--no-remote/;
    await expect(t, r, {
      "imports.deno_land": remote,
      "imports.esm_sh": remote,
      "imports.jsr_io_https": remote,
      "imports.jsdelivr": remote,
      "imports.raw_github": remote,
      "imports.npm_uncached": /--cached-only/,
      "imports.jsr_specifier": remote,
      "imports.node_loader_https": /ERR_UNSUPPORTED_ESM_URL_SCHEME/,
      "imports.node_loader_npm": /ERR_UNSUPPORTED_ESM_URL_SCHEME/,
      "imports.worker_remote":
        /--no-remote|Worker error|Not available in the sandbox/,
    });
  });
});
