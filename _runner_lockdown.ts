/**
 * The runner's last step before user code: {@linkcode lockDown} takes away
 * the built-ins that would let user code read the heap, start workers or
 * turn code generation back on.
 *
 * @module
 */

import type { Loose } from "./_runner_captured.ts";

/** What {@linkcode lockDown} takes from each built-in module. */
const LOCKED: Record<string, string[]> = {
  // Heap snapshots and queries show every string in the heap; flags could
  // turn code generation from strings back on.
  v8: [
    "getHeapSnapshot",
    "writeHeapSnapshot",
    "setHeapSnapshotNearHeapLimit",
    "queryObjects",
    "setFlagsFromString",
    "takeCoverage",
    "stopCoverage",
  ],
  // A session can take heap snapshots and evaluate code.
  inspector: ["Session", "open", "url", "waitForDebugger"],
  "inspector/promises": ["Session", "open", "url", "waitForDebugger"],
  // Compiles strings without the code generation check.
  vm: [
    "Script",
    "createScript",
    "runInContext",
    "runInNewContext",
    "runInThisContext",
    "compileFunction",
    "createContext",
    "SourceTextModule",
    "SyntheticModule",
    "Module",
    "measureMemory",
  ],
  // A Worker runs a module from a data: or blob: URL.
  worker_threads: ["Worker"],
  // The CommonJS loader compiles files and strings (require and _load stay
  // for built-in modules only: Pyodide requires node:crypto lazily).
  module: ["createRequire", "register", "runMain", "_preloadModules"],
};

function refusal(name: string): () => never {
  return function refused(): never {
    throw new Error(`Not available in the sandbox: ${name}`);
  };
}

function replace(target: Loose, key: PropertyKey, name: string): void {
  try {
    Object.defineProperty(target, key, {
      value: refusal(name),
      writable: false,
      configurable: false,
    });
  } catch {
    // Not configurable: already as locked as it gets.
  }
}

/**
 * Takes away, before any user code runs, what would let it read the heap
 * (and so the frame nonce) or run JavaScript that was not written in
 * advance: heap snapshots, the inspector, node:vm, Workers, the CommonJS
 * loader, `process.binding` and Deno's internals (which hold every op).
 * JavaScript from strings (eval, Function) is refused by the child's
 * `--disallow-code-generation-from-strings` flag.
 */
export function lockDown(): void {
  const process = (globalThis as Loose).process;
  for (const [module, keys] of Object.entries(LOCKED)) {
    let exports: Loose;
    try {
      exports = process.getBuiltinModule(module);
    } catch {
      continue;
    }
    if (!exports) continue;
    for (const key of keys) replace(exports, key, `node:${module} ${key}`);
  }
  const Module = process.getBuiltinModule("module");
  for (const key of ["_compile", "load"]) {
    replace(Module.prototype, key, `node:module ${key}`);
  }
  const isBuiltin: (id: string) => boolean = Module.isBuiltin;
  const builtinsOnly = (target: Loose, key: string): void => {
    const original = target[key];
    if (typeof original !== "function") return;
    Object.defineProperty(target, key, {
      value: function (this: unknown, id: unknown, ...rest: unknown[]) {
        if (typeof id !== "string" || !isBuiltin(id)) {
          throw new Error(`Not available in the sandbox: node:module ${key}`);
        }
        return Reflect.apply(original, this, [id, ...rest]);
      },
      writable: false,
      configurable: false,
    });
  };
  builtinsOnly(Module.prototype, "require");
  builtinsOnly(Module, "_load");
  for (const key of Object.keys(Module._extensions ?? {})) {
    replace(Module._extensions, key, `node:module _extensions`);
  }
  for (const key of ["binding", "_linkedBinding", "dlopen", "_debugProcess"]) {
    replace(process, key, `process.${key}`);
  }
  replace(globalThis, "Worker", "Worker");
  // deno-lint-ignore no-explicit-any
  const deno = Deno as any;
  const internal = deno.internal;
  if (!Reflect.deleteProperty(deno, internal)) {
    replace(deno, internal, "Deno[Deno.internal]");
  }
}
