/**
 * The child's session state: restoring Pyodide from the state in the init
 * frame, and saving it as a diff from the base snapshot (see
 * `_state_diff.ts`). Runs in the child (`--no-config`: relative runner
 * files only).
 *
 * The child keeps its read grant on the one base snapshot file (the host
 * does not revoke it), reads it again for each save and drops it at once:
 * no 31 MB buffer stays alive between calls. A state that cannot be
 * restored ends the child with {@linkcode STATE_REJECTED_EXIT} before any
 * user code runs, so the host reports it as kind `"session"`, not a crash.
 *
 * @module
 */

import {
  type InitRequest,
  packState,
  STATE_REJECTED_EXIT,
  ToParent,
  unpackState,
} from "./_protocol.ts";
import { PYTHON_SETUP } from "./_runner_setup_py.ts";
import {
  encodeText,
  objectKeys,
  type Pyodide,
  send,
  U8,
} from "./_runner_captured.ts";
import { readFiles, writeFiles } from "./_runner_files.ts";
import {
  applyDiff,
  encodeDiff,
  isDiff,
  snapshotImageOffset,
} from "./_state_diff.ts";

// Taken before user code runs (it may replace Deno's functions; that only
// breaks its own session's saves).
const openSync = Deno.openSync;
const writeStderr = Deno.stderr.writeSync.bind(Deno.stderr);
const exit = Deno.exit;

/**
 * Reads a whole file into one buffer of its size: several times faster
 * for the 31 MB base than `Deno.readFileSync`, which grows its buffer.
 */
export function readWhole(path: string): Uint8Array {
  const file = openSync(path);
  try {
    const out = new U8(file.statSync().size);
    let at = 0;
    while (at < out.length) {
      const n = file.readSync(out.subarray(at));
      if (n === null || n === 0) break;
      at += n;
    }
    return at === out.length ? out : out.slice(0, at);
  } finally {
    file.close();
  }
}

/** Identifies this runner's Python helpers (FNV-1a of their source). */
const SETUP_ID = (() => {
  let h = 0x811c9dc5;
  for (let i = 0; i < PYTHON_SETUP.length; i++) {
    h = Math.imul(h ^ PYTHON_SETUP.charCodeAt(i), 0x01000193) >>> 0;
  }
  return `${h.toString(16)}-${PYTHON_SETUP.length}`;
})();

/**
 * Defines the runner's Python helpers and records which ones they are, so
 * that a restored state made by the same runner keeps them as they are.
 *
 * @param pyodide A loaded Pyodide.
 */
export function setUpPython(pyodide: Pyodide): void {
  pyodide.runPython(PYTHON_SETUP, { globals: pyodide.toPy({}) });
  const module = pyodide.pyimport("_pyodide_sandbox");
  module._setup_id = SETUP_ID;
  module.destroy();
}

/**
 * Refreshes the helpers of a restored state made by another runner.
 * Running them again when they are this runner's would rewrite about a
 * megabyte of the heap, all of which the next diff would carry. A state's
 * helpers may be ones its user code replaced: no more than user code can do
 * in a live session (the helpers call modules it can patch), and the host
 * checks every frame the child sends either way.
 */
function refreshPython(pyodide: Pyodide): void {
  const module = pyodide.pyimport("_pyodide_sandbox");
  const same = module._setup_id === SETUP_ID;
  module.destroy();
  if (!same) setUpPython(pyodide);
}

/** The cap on inflated state when the host sends none (2 GiB). */
const DEFAULT_STATE_BYTES = 2 ** 31;

/** What saving needs from the loaded child. */
export interface StateChild {
  pyodide: Pyodide;
  init: InitRequest;
  py: { dropJsGlobals(): string };
  zlib: typeof import("node:zlib");
}

/** Ends the child: the state it was given cannot be restored. */
function rejectState(reason: string): never {
  try {
    writeStderr(encodeText(`The session state was refused: ${reason}\n`));
  } catch {
    // The host reports the exit code anyway.
  }
  return exit(STATE_REJECTED_EXIT);
}

/** The full snapshot and files of a state: inflated, rebuilt, checked. */
function rebuild(
  init: InitRequest,
  initState: Uint8Array,
  zlib: typeof import("node:zlib"),
): { snapshot: Uint8Array; files: Uint8Array } {
  const maxState = init.maxStateBytes ?? DEFAULT_STATE_BYTES;
  const maxImage = init.maxImageBytes ?? maxState;
  let inflated: Uint8Array;
  try {
    // Capped: a small zip bomb is refused once it passes the cap, before
    // it is all inflated.
    inflated = zlib.inflateRawSync(initState, { maxOutputLength: maxState });
  } catch (error) {
    rejectState(`it does not inflate within ${maxState} bytes (${error})`);
  }
  const bytes = new U8(inflated.buffer, inflated.byteOffset, inflated.length);
  if (isDiff(bytes)) {
    if (!init.snapshotPath) rejectState("the child has no base snapshot");
    const applied = applyDiff(
      bytes,
      readWhole(init.snapshotPath),
      maxImage,
    );
    if (typeof applied === "string") rejectState(applied);
    return applied;
  }
  // Format 1: a whole snapshot and the files.
  const state = unpackState(bytes);
  if (!state) rejectState("the packed state is damaged");
  const offset = snapshotImageOffset(state.snapshot);
  if (typeof offset === "string") rejectState(`the snapshot: ${offset}`);
  if (state.snapshot.length - offset > maxImage) {
    rejectState("the memory image is over the memory limit");
  }
  return state;
}

/**
 * Loads Pyodide from the session state in the init frame (a diff from the
 * base snapshot at `init.snapshotPath`, or a format-1 whole state). Ends
 * the child with {@linkcode STATE_REJECTED_EXIT} when the state cannot be
 * restored.
 *
 * @param init The init frame.
 * @param initState The deflated state.
 * @param zlib `node:zlib`.
 * @param loadPyodide Pyodide's loader.
 * @returns Pyodide, with the state and its files restored.
 */
async function loadFromState(
  init: InitRequest,
  initState: Uint8Array,
  zlib: typeof import("node:zlib"),
  loadPyodide: (options: never) => Promise<Pyodide>,
): Promise<Pyodide> {
  const state = rebuild(init, initState, zlib);
  const offset = snapshotImageOffset(state.snapshot) as number;
  const size = state.snapshot.length - offset;
  // deno-lint-ignore no-import-prefix
  const asm = await import("npm:pyodide@314.0.7/pyodide.asm.mjs");
  let pyodide: Pyodide;
  try {
    // Pyodide 314.0.7 restores a snapshot into the wasm heap without
    // growing it (its INITIAL_MEMORY hint is ignored: the heap starts at
    // 36 MiB), so a session that grew past that fails with "offset is out
    // of bounds". Grow the heap to the image's size before the restore.
    pyodide = await loadPyodide(
      {
        _loadSnapshot: state.snapshot,
        _makeSnapshot: true,
        createPyodideModule: async (settings: unknown) => {
          const module = await asm.default(settings);
          if (module.HEAP8.length < size) module._emscripten_resize_heap(size);
          return module;
        },
      } as never,
    );
    // The session may come from an older runner (format 1, an imported
    // base).
    refreshPython(pyodide);
    writeFiles(pyodide, state.files);
  } catch (error) {
    rejectState(`Pyodide could not load it (${error})`);
  }
  return pyodide;
}

/** A memory snapshot, dropping globals that hold JS objects if needed. */
function snapshotOf(
  child: StateChild,
): { snapshot: Uint8Array; dropped: string } | string {
  try {
    return { snapshot: child.pyodide.makeMemorySnapshot(), dropped: "" };
  } catch {
    const dropped = child.py.dropJsGlobals();
    try {
      return { snapshot: child.pyodide.makeMemorySnapshot(), dropped };
    } catch (error) {
      return `The session state could not be saved: it holds live JavaScript objects (${
        String(error)
      })`;
    }
  }
}

/**
 * Saves the session: a memory snapshot and the working-folder files, as a
 * diff from the base snapshot (read again now), deflated.
 *
 * @param child The loaded child.
 * @returns Header fields and the state bytes.
 */
export function saveState(
  child: StateChild,
): { json: Record<string, unknown>; bin?: Uint8Array } {
  const taken = snapshotOf(child);
  if (typeof taken === "string") return { json: { stateError: taken } };
  const files = readFiles(child.pyodide);
  let packed: Uint8Array;
  try {
    const base = child.init.snapshotPath;
    packed = base
      ? encodeDiff(taken.snapshot, readWhole(base), files)
      : packState(taken.snapshot, files);
  } catch (error) {
    return {
      json: {
        stateError:
          `The session state could not be saved: the base snapshot could not be read (${
            String(error)
          })`,
      },
    };
  }
  // Level 3: a third smaller than level 1 for a diff, as fast (measured).
  const bin = child.zlib.deflateRawSync(packed, { level: 3 });
  return { json: { droppedGlobals: taken.dropped }, bin };
}

/**
 * Adds the saved state's fields to a header.
 *
 * @param child The loaded child.
 * @param header The frame header to add to.
 * @returns The state bytes.
 */
export function addState(
  child: StateChild,
  header: Record<string, unknown>,
): Uint8Array | undefined {
  const state = saveState(child);
  const keys = objectKeys(state.json);
  for (let i = 0; i < keys.length; i++) {
    header[keys[i]] = state.json[keys[i]];
  }
  return state.bin;
}

/**
 * Loads Pyodide: from the session state in the init frame, else from the
 * base snapshot; in snapshot mode, builds and sends the base snapshot.
 *
 * @param init The init frame.
 * @param initState The deflated session state (empty for none).
 * @param zlib `node:zlib`.
 * @param started When loading started (`performance.now()`).
 * @returns Pyodide, or `undefined` once the snapshot was sent.
 */
export async function load(
  init: InitRequest,
  initState: Uint8Array,
  zlib: typeof import("node:zlib"),
  started: number,
): Promise<Pyodide | undefined> {
  // The child runs with --no-config, so no import map: the exact specifier.
  // deno-lint-ignore no-import-prefix
  const { loadPyodide } = await import("npm:pyodide@314.0.7");
  if (init.mode === "snapshot") {
    const pyodide = await loadPyodide({ _makeSnapshot: true } as never);
    setUpPython(pyodide);
    const snapshot: Uint8Array = pyodide.makeMemorySnapshot();
    send(ToParent.snapshot, { loadMs: performance.now() - started }, snapshot);
    return undefined;
  }
  if (initState.length === 0 && !init.snapshotPath) {
    // A cold start (the benchmark's case; the host always gives its
    // verified base snapshot).
    const pyodide = await loadPyodide({ _makeSnapshot: true } as never);
    setUpPython(pyodide);
    return pyodide;
  }
  if (initState.length === 0 && init.snapshotPath) {
    // Read off the main thread while Pyodide loads its own modules: it
    // awaits the snapshot only right before instantiating the wasm.
    const snapshot = Deno.readFile(init.snapshotPath);
    return await loadPyodide(
      { _loadSnapshot: snapshot, _makeSnapshot: true } as never,
    );
  }
  return await loadFromState(init, initState, zlib, loadPyodide);
}

/**
 * One full garbage collection, before any user code runs: an idle child
 * allocates nothing, so V8 would keep the load's buffers (and their RSS,
 * which a pooled child holds and its kill must free) indefinitely.
 */
export function collectGarbage(): void {
  try {
    // Through getBuiltinModule, never import(): an ES module namespace made
    // now would keep the originals that lockDown() replaces, and user code
    // importing node:v8 or node:vm later would get them.
    // deno-lint-ignore no-explicit-any
    const process = (globalThis as any).process;
    const v8 = process.getBuiltinModule("v8");
    const vm = process.getBuiltinModule("vm");
    // Affects only contexts made after this (vm and workers are locked
    // down before user code runs); the function stays in this scope.
    v8.setFlagsFromString("--expose-gc");
    const gc = vm.runInNewContext("gc") as () => void;
    gc();
  } catch {
    // Only memory is lost.
  }
}
