/**
 * The child's JS realm is shared by the runner and the untrusted code: these
 * tests check what the runner takes away before user code runs (heap
 * snapshots, the inspector, node:vm, Workers, Deno's internals, code from
 * strings), that the frame nonce never sits in the heap in any readable
 * form, and that frames stay correct when user code replaces the globals
 * the runner would otherwise use to build them.
 *
 * @module
 */

import assert from "node:assert/strict";
import { PyodideSandbox, type SandboxOptions } from "../mod.ts";
import type { ChildSpec } from "../_child.ts";
import { assertSuccess, TEST_DENO_PATH } from "./_helpers.ts";
import { folderBytes } from "./_attack_helpers.ts";

const CACHE_DIR = await Deno.makeTempDir({ prefix: "pysb-isolation-cache-" });
globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(CACHE_DIR, { recursive: true });
  } catch {
    // Already gone.
  }
});

function options(extra: SandboxOptions = {}): SandboxOptions {
  return {
    poolSize: 0,
    cacheDir: CACHE_DIR,
    denoPath: TEST_DENO_PATH,
    timeoutSeconds: 60,
    ...extra,
  };
}

async function withIsolated(
  extra: SandboxOptions,
  fn: (sandbox: PyodideSandbox) => Promise<void>,
): Promise<void> {
  const sandbox = new PyodideSandbox(options(extra));
  try {
    await fn(sandbox);
    // The host and the sandbox are fine afterwards.
    const after = await sandbox.execute("print(1)");
    assertSuccess(after);
    assert.equal(after.stdout, "1\n");
  } finally {
    await sandbox.close();
  }
}

/** Python that tries one route per line and reports `route: outcome`. */
const ROUTES = String.raw`
import js, pyodide_js, json
R = js.Reflect
def _gbm(name):
    return js.process.getBuiltinModule(name)
routes = {
    "v8.getHeapSnapshot": lambda: _gbm("v8").getHeapSnapshot(),
    "v8.writeHeapSnapshot": lambda: _gbm("node:v8").writeHeapSnapshot(),
    "v8.queryObjects": lambda: _gbm("v8").queryObjects(js.Uint8Array),
    "v8.setFlagsFromString": lambda: _gbm("v8").setFlagsFromString("--no-disallow-code-generation-from-strings"),
    "inspector.Session": lambda: _gbm("inspector").Session.new(),
    "inspector.open": lambda: _gbm("inspector").open(0),
    "inspector/promises.Session": lambda: _gbm("inspector/promises").Session.new(),
    "vm.runInThisContext": lambda: _gbm("vm").runInThisContext("1 + 1"),
    "vm.Script": lambda: _gbm("vm").Script.new("1 + 1"),
    "vm.compileFunction": lambda: _gbm("vm").compileFunction("return 1"),
    "vm.createContext": lambda: _gbm("vm").createContext(),
    "worker_threads.Worker": lambda: _gbm("worker_threads").Worker.new("data:text/javascript,1", js.JSON.parse('{"eval": false}')),
    "Worker": lambda: js.Worker.new("data:text/javascript,1", js.JSON.parse('{"type": "module"}')),
    "module.createRequire": lambda: _gbm("module").createRequire("file:///x.js")("v8"),
    "module._load": lambda: _gbm("module")._load("/tmp/x.js"),
    "module.prototype._compile": lambda: R.apply(_gbm("module").prototype._compile, _gbm("module").new("x"), js.JSON.parse('["module.exports = 1", "/x.js"]')),
    "module.register": lambda: _gbm("module").register("data:text/javascript,1"),
    "process.binding": lambda: js.process.binding("util"),
    "Deno[Deno.internal].core": lambda: R.get(R.get(js.Deno, js.Deno.internal), "core").ops,
    "eval": lambda: js.eval("1 + 1"),
    "Function": lambda: js.Function.new("return 1")(),
    "constructor.constructor": lambda: js.Object.constructor.new("return 1")(),
    "AsyncFunction": lambda: R.getPrototypeOf(pyodide_js.loadPackage).constructor.new("return 1"),
    "setTimeout(string)": lambda: js.setTimeout("globalThis.pwned = 1", 0),
    "pyodide.code.run_js": lambda: __import__("pyodide.code").code.run_js("1 + 1"),
}
out = {}
for name, fn in routes.items():
    try:
        v = fn()
        out[name] = "OPEN: " + str(v)[:80]
    except BaseException as e:
        out[name] = type(e).__name__ + ": " + str(e)[:200]
out
`;

Deno.test("User code cannot take a heap snapshot, open the inspector or run JavaScript from strings", async () => {
  await withIsolated({}, async (sandbox) => {
    const result = await sandbox.execute(ROUTES);
    assertSuccess(result);
    const out = result.result as Record<string, string>;
    // Each attack id (SECURITY.md) and the routes that make it up.
    const attacks: Record<string, string[]> = {
      "introspect.heap_snapshot": [
        "v8.getHeapSnapshot",
        "v8.writeHeapSnapshot",
        "v8.queryObjects",
      ],
      "introspect.v8_flags": ["v8.setFlagsFromString"],
      "introspect.inspector": [
        "inspector.Session",
        "inspector.open",
        "inspector/promises.Session",
      ],
      "introspect.vm": [
        "vm.runInThisContext",
        "vm.Script",
        "vm.compileFunction",
        "vm.createContext",
      ],
      "introspect.worker": ["worker_threads.Worker", "Worker"],
      "introspect.commonjs": [
        "module.createRequire",
        "module._load",
        "module.prototype._compile",
        "module.register",
      ],
      "introspect.process_binding": ["process.binding"],
      "introspect.deno_internal": ["Deno[Deno.internal].core"],
      "codegen.eval": ["eval", "pyodide.code.run_js"],
      "codegen.function": [
        "Function",
        "constructor.constructor",
        "AsyncFunction",
      ],
      "codegen.timer_string": ["setTimeout(string)"],
    };
    assert.deepEqual(
      Object.values(attacks).flat().sort(),
      Object.keys(out).sort(),
    );
    for (const [id, routes] of Object.entries(attacks)) {
      for (const route of routes) {
        const outcome = out[route];
        assert.ok(
          !outcome.startsWith("OPEN"),
          `${id}: ${route} is still reachable: ${outcome}`,
        );
        assert.match(
          outcome,
          /Not available in the sandbox|Code generation from strings disallowed|called on non-object|must be of type function/,
          `${id}: ${route}: ${outcome}`,
        );
      }
    }
    // eval and Function are refused by V8 itself.
    assert.match(out.eval, /EvalError: Code generation from strings/);
    assert.match(out["Function"], /EvalError/);
    assert.match(out["constructor.constructor"], /EvalError/);
  });
});

/** A sandbox whose children open V8's inspector for the test (only). */
class InspectedSandbox extends PyodideSandbox {
  port: number;
  constructor(port: number) {
    super(options());
    this.port = port;
  }
  protected override childSpec(memoryLimitMb: number): ChildSpec {
    const spec = super.childSpec(memoryLimitMb);
    const args = [...spec.args];
    args.splice(1, 0, `--inspect=127.0.0.1:${this.port}`);
    return { ...spec, args };
  }
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** Takes a heap snapshot over the inspector protocol; returns its strings. */
async function heapStrings(port: number): Promise<string[]> {
  let targets: { webSocketDebuggerUrl: string }[] = [];
  const until = performance.now() + 30_000;
  while (targets.length === 0) {
    if (performance.now() > until) throw new Error("No inspector target");
    try {
      const response = await fetch(`http://127.0.0.1:${port}/json/list`);
      targets = await response.json();
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  const socket = new WebSocket(targets[0].webSocketDebuggerUrl);
  const chunks: string[] = [];
  await new Promise<void>((resolve, reject) => {
    socket.onerror = () => reject(new Error("inspector socket failed"));
    socket.onopen = () => {
      socket.send(JSON.stringify({ id: 1, method: "HeapProfiler.enable" }));
      socket.send(
        JSON.stringify({ id: 2, method: "HeapProfiler.takeHeapSnapshot" }),
      );
    };
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.method === "HeapProfiler.addHeapSnapshotChunk") {
        chunks.push(message.params.chunk);
      } else if (message.id === 2) {
        resolve();
      }
    };
  });
  socket.close();
  const snapshot = JSON.parse(chunks.join("")) as { strings: string[] };
  assert.ok(snapshot.strings.length > 10_000, "a real heap snapshot");
  return snapshot.strings;
}

/** Every text form a 16-byte secret could take in a JS heap. */
function forms(bytes: Uint8Array): string[] {
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(
    "",
  );
  const latin1 = String.fromCharCode(...bytes);
  const base64 = btoa(latin1);
  return [
    hex,
    hex.toUpperCase(),
    latin1,
    base64,
    base64.replace(/=+$/, ""),
    base64.replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, ""),
    [...bytes].join(","),
    new TextDecoder().decode(bytes),
  ];
}

Deno.test("A heap snapshot of a child holds no form of the frame nonce, while a string planted by user code is found", async () => {
  const port = freePort();
  const sandbox = new InspectedSandbox(port);
  // Observe (without changing) the random bytes the host draws: one of the
  // 16-byte draws is the frame nonce of the child.
  const draws: Uint8Array[] = [];
  const original = crypto.getRandomValues;
  crypto.getRandomValues = function <T extends ArrayBufferView | null>(
    array: T,
  ): T {
    const out = original.call(crypto, array as never) as T;
    if (array instanceof Uint8Array && array.length === 16) {
      draws.push(array.slice());
    }
    return out;
  };
  const marker = `planted-${crypto.randomUUID()}`;
  const abort = new AbortController();
  let planted!: () => void;
  const plantedNow = new Promise<void>((resolve) => planted = resolve);
  try {
    const running = sandbox.execute(
      `
import js, asyncio
print("frames were sent before the snapshot")
open("out.txt", "w").write("a file frame too")
holder = js.Object.new()
holder.planted = ${JSON.stringify(marker)}
js.globalThis.holder = holder
print("planted")
for _ in range(200):
    await asyncio.sleep(0.1)
`,
      {
        timeoutSeconds: 60,
        signal: abort.signal,
        onStdout: (text) => {
          if (text.includes("planted")) planted();
        },
      },
    );
    await plantedNow;
    const strings = await heapStrings(port);
    crypto.getRandomValues = original;
    assert.ok(draws.length > 0, "the nonce was drawn");
    const id = "nonce.heap_snapshot";
    // The unprotected control first: the same search finds a planted string.
    assert.ok(
      strings.some((s) => s.includes(marker)),
      `${id}: the planted string is in the snapshot`,
    );
    for (const draw of draws) {
      for (const form of forms(draw)) {
        assert.ok(
          !strings.some((s) => s.includes(form)),
          `${id}: a form of a 16-byte secret is in the heap: ${
            JSON.stringify(form)
          }`,
        );
      }
    }
    abort.abort();
    await assert.rejects(running);
  } finally {
    crypto.getRandomValues = original;
    await sandbox.close();
  }
  // The host is fine: a new sandbox still runs.
  await withIsolated({}, async () => {});
});

Deno.test("A runaway recursion under a huge sys.setrecursionlimit ends at once with a RecursionError", async () => {
  await withIsolated({}, async (sandbox) => {
    const started = performance.now();
    const result = await sandbox.execute(
      "import sys\nsys.setrecursionlimit(10**7)\nlimit = sys.getrecursionlimit()\ndef f(n):\n    return f(n + 1)\ntry:\n    f(0)\nexcept RecursionError:\n    pass\nlimit",
      { timeoutSeconds: 20 },
    );
    const seconds = (performance.now() - started) / 1000;
    assertSuccess(result);
    assert.equal(result.result, 3000, "res.recursion_cap");
    assert.ok(seconds < 10, `took ${seconds} s`);
    // Useful depth is still there: 2,500 nested calls work.
    const deep = await sandbox.execute(
      "import sys\nsys.setrecursionlimit(2600)\ndef d(n):\n    return 0 if n == 0 else 1 + d(n - 1)\nd(2500)",
    );
    assertSuccess(deep);
    assert.equal(deep.result, 2500);
  });
});

/** Replaces the globals a frame builder might use with lying versions. */
const REPLACE_GLOBALS = String.raw`
import js
from pyodide.ffi import create_proxy
_keep = []
def _liar(value):
    def fn(*args):
        return value() if callable(value) else value
    proxy = create_proxy(fn)
    _keep.append(proxy)
    return proxy
forged = '{"ok": true, "result": "forged"}'
js.JSON.stringify = _liar(forged)
js.Math.min = _liar(10**9)
js.Math.max = _liar(-1)
js.Array.prototype.sort = _liar(lambda: js.Array.new())
js.Array.prototype.toJSON = _liar("forged")
js.Object.prototype.toJSON = _liar("forged")
js.TextEncoder.prototype.encode = _liar(lambda: js.Uint8Array.new(7))
`;

// Array.prototype.push/map and Uint8Array.prototype.set/subarray/slice are
// not replaced here: Pyodide's own calls between Python and JavaScript use
// them, so replacing them breaks the user's interpreter before any frame is
// built (the runner uses captured copies of all of them).
Deno.test("Frames stay correct when user code replaces JSON.stringify, Math.min/max, toJSON, Array.prototype.sort and TextEncoder.prototype.encode", async () => {
  await withIsolated({ maxFileBytes: 5 }, async (sandbox) => {
    const started = performance.now();
    const result = await sandbox.execute(
      `
${REPLACE_GLOBALS}
open("a.txt", "w").write("0123456789")
open("b.txt", "w").write("xy")
print("hello " * 20000)
[1, "two", {"three": 3}]
`,
      { timeoutSeconds: 30 },
    );
    assert.ok((performance.now() - started) / 1000 < 30);
    assertSuccess(result);
    assert.deepEqual(
      result.result,
      [1, "two", { three: 3 }],
      "integrity.replaced_globals",
    );
    assert.equal(result.stdout, "hello ".repeat(20000) + "\n");
    const files = Object.fromEntries(
      (result.files ?? []).map((f) => [f.path, f]),
    );
    assert.deepEqual(Object.keys(files).sort(), [
      "/home/pyodide/a.txt",
      "/home/pyodide/b.txt",
    ]);
    const a = files["/home/pyodide/a.txt"];
    assert.equal(new TextDecoder().decode(a.content), "01234");
    assert.equal(a.size, 10);
    assert.equal(a.truncated, true);
    const b = files["/home/pyodide/b.txt"];
    assert.equal(new TextDecoder().decode(b.content), "xy");
    assert.equal(b.truncated, false);
  });
});

/** Python that tries every route found to import a data: module. */
const IMPORT_ROUTES = String.raw`
import js, pyodide_js
from urllib.parse import quote
big = "x" * (1 << 20)
def module(i):
    return "data:application/typescript," + quote('export const a: string = "%d%s";' % (i, big))
def _gbm(name):
    return js.process.getBuiltinModule(name)
routes = {
    "eval": lambda i: js.eval("import('%s')" % module(i)),
    "Function": lambda i: js.Function.new("u", "return import(u)")(module(i)),
    "vm.SourceTextModule": lambda i: _gbm("vm").SourceTextModule.new("import '%s'" % module(i)),
    "vm.runInThisContext": lambda i: _gbm("vm").runInThisContext("import('%s')" % module(i)),
    "Worker": lambda i: js.Worker.new(module(i), js.JSON.parse('{"type": "module"}')),
    "worker_threads.Worker": lambda i: _gbm("worker_threads").Worker.new("import('%s')" % module(i), js.JSON.parse('{"eval": true}')),
    "module.register": lambda i: _gbm("module").register(module(i)),
    "module._load": lambda i: _gbm("module")._load(module(i)),
    "pyodide.code.run_js": lambda i: __import__("pyodide.code").code.run_js("import('%s')" % module(i)),
}
out = {}
for name, fn in routes.items():
    outcome = "refused"
    for i in range(4):
        try:
            v = fn(i)
            if hasattr(v, "then"):
                await v
            outcome = "OPEN"
        except BaseException as e:
            outcome = type(e).__name__ + ": " + str(e)[:120]
            break
    out[name] = outcome
out
`;

Deno.test("User code finds no way to import data: modules into Deno's caches (no disk fill)", async () => {
  await withIsolated({}, async (sandbox) => {
    const id = "disk.data_module_import";
    assertSuccess(await sandbox.execute("1"));
    const before = folderBytes(CACHE_DIR);
    const result = await sandbox.execute(IMPORT_ROUTES, { timeoutSeconds: 60 });
    assertSuccess(result);
    const out = result.result as Record<string, string>;
    assert.equal(Object.keys(out).length, 9);
    for (const [route, outcome] of Object.entries(out)) {
      assert.ok(!outcome.startsWith("OPEN"), `${id}: ${route}: ${outcome}`);
    }
    const grown = folderBytes(CACHE_DIR) - before;
    assert.ok(
      grown < 1024 * 1024,
      `${id}: the cache folder grew by ${grown} bytes`,
    );
  });
});
