/**
 * The child's session state: restoring Pyodide from the state in the init
 * frame, and saving it as a diff from the base snapshot (see
 * `_state_diff.ts`). Runs in the child (`--no-config`: relative runner
 * files only).
 *
 * The child keeps its read grant on the one base snapshot file (the host
 * does not revoke it). Loading reads the file's memory image straight into
 * the wasm heap, and a save diffs the live heap against the file a chunk at
 * a time: no buffer of the image's size is made, so none stays alive. A state that cannot be
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
import type { EarlyLoad } from "./_runner_prepare.ts";
import {
  applyPages,
  encodeImageDiff,
  type ImageReader,
  isDiff,
  type ParsedDiff,
  parseDiff,
  SNAPSHOT_FIXED_BYTES,
  snapshotImageOffset,
} from "./_state_diff.ts";

// Taken before user code runs (it may replace Deno's functions; that only
// breaks its own session's saves).
const openSync = Deno.openSync;
const writeStderr = Deno.stderr.writeSync.bind(Deno.stderr);
const exit = Deno.exit;

/** Reads into `into` from `position` until it is full or the file ends. */
function readAt(
  file: Deno.FsFile,
  position: number,
  into: Uint8Array,
): number {
  file.seekSync(position, Deno.SeekMode.Start);
  let at = 0;
  while (at < into.length) {
    const n = file.readSync(into.subarray(at));
    if (n === null || n === 0) break;
    at += n;
  }
  return at;
}

/** A snapshot file opened for its memory image, never read whole. */
interface SnapshotFile {
  file: Deno.FsFile;
  /** The snapshot's header (its first `offset` bytes). */
  header: Uint8Array;
  /** The byte length of its memory image. */
  imageBytes: number;
  /** Reads its image a chunk at a time (zeros past the end). */
  read: ImageReader;
}

/**
 * Opens a snapshot file, reads and checks its header.
 *
 * @param path The snapshot file.
 * @returns The open file (close it), or a message saying what is wrong.
 */
export function openSnapshot(path: string): SnapshotFile | string {
  const file = openSync(path);
  const total = file.statSync().size;
  const fixed = new U8(SNAPSHOT_FIXED_BYTES);
  readAt(file, 0, fixed);
  const offset = snapshotImageOffset(fixed, total);
  if (typeof offset === "string") {
    file.close();
    return offset;
  }
  const header = new U8(offset);
  readAt(file, 0, header);
  const imageBytes = total - offset;
  const read: ImageReader = (start, into) => {
    const n = start < imageBytes
      ? readAt(file, offset + start, into.subarray(0, imageBytes - start))
      : 0;
    into.fill(0, n);
  };
  return { file, header, imageBytes, read };
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

/** Session state ready to load: a checked diff, or a format-1 whole state. */
type Restorable =
  | { diff: ParsedDiff }
  | { snapshot: Uint8Array; files: Uint8Array };

/** The state in the init frame: inflated (capped) and checked. */
function inflateState(
  init: InitRequest,
  initState: Uint8Array,
  zlib: typeof import("node:zlib"),
): Restorable {
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
    const diff = parseDiff(bytes, maxImage);
    if (typeof diff === "string") rejectState(diff);
    return { diff };
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
 * Loads Pyodide from the base snapshot file, its image read straight into
 * the wasm heap.
 *
 * @param path The base snapshot.
 * @param loader The child's early load.
 * @returns Pyodide.
 * @throws {Error} When the file cannot be read or is malformed.
 */
async function loadBase(
  path: string,
  loader: EarlyLoad,
): Promise<Pyodide> {
  const base = openSnapshot(path);
  if (typeof base === "string") throw new Error(`Bad base snapshot: ${base}`);
  try {
    return await loader.finish({
      header: base.header,
      imageBytes: base.imageBytes,
      fill: (heap) => base.read(0, heap),
    });
  } finally {
    base.file.close();
  }
}

/** Loads a checked diff: the base image, then its pages, in the heap. */
async function loadDiff(
  init: InitRequest,
  diff: ParsedDiff,
  loader: EarlyLoad,
): Promise<Pyodide> {
  if (!init.snapshotPath) rejectState("the child has no base snapshot");
  const base = openSnapshot(init.snapshotPath);
  if (typeof base === "string") rejectState(`bad base snapshot: ${base}`);
  try {
    return await loader.finish({
      header: diff.header,
      imageBytes: diff.imageBytes,
      fill: (heap) => {
        base.read(0, heap);
        applyPages(heap, diff);
      },
    });
  } finally {
    base.file.close();
  }
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
 * @param loader The child's early load.
 * @returns Pyodide, with the state and its files restored.
 */
async function loadFromState(
  init: InitRequest,
  initState: Uint8Array,
  zlib: typeof import("node:zlib"),
  loader: EarlyLoad,
): Promise<Pyodide> {
  const state = inflateState(init, initState, zlib);
  let pyodide: Pyodide;
  try {
    if ("diff" in state) {
      pyodide = await loadDiff(init, state.diff, loader);
    } else {
      const offset = snapshotImageOffset(state.snapshot) as number;
      const image = state.snapshot.subarray(offset);
      pyodide = await loader.finish({
        header: state.snapshot.subarray(0, offset),
        imageBytes: image.length,
        fill: (heap) => heap.set(image),
      });
    }
    // The session may come from an older runner (format 1, an imported
    // base).
    refreshPython(pyodide);
    writeFiles(pyodide, "diff" in state ? state.diff.files : state.files);
  } catch (error) {
    rejectState(`Pyodide could not load it (${error})`);
  }
  return pyodide;
}

/** Pyodide's emscripten module: its heap view is a plain property. */
function moduleOf(pyodide: Pyodide): { HEAP8: Int8Array } {
  return (pyodide as unknown as { _module: { HEAP8: Int8Array } })._module;
}

/**
 * A snapshot's header alone: Pyodide's `makeMemorySnapshot()` with its
 * module's heap view (a plain property) swapped for an empty one for the
 * call, so it copies no memory image. The image is the live heap.
 */
function snapshotHeader(pyodide: Pyodide): Uint8Array {
  const module = moduleOf(pyodide);
  const heap = module.HEAP8;
  module.HEAP8 = new Int8Array(0);
  try {
    return pyodide.makeMemorySnapshot();
  } finally {
    module.HEAP8 = heap;
  }
}

/** A snapshot (or its header), dropping globals that hold JS objects. */
function snapshotOf(
  child: StateChild,
  take: (pyodide: Pyodide) => Uint8Array,
): { snapshot: Uint8Array; dropped: string } | string {
  try {
    return { snapshot: take(child.pyodide), dropped: "" };
  } catch {
    const dropped = child.py.dropJsGlobals();
    try {
      return { snapshot: take(child.pyodide), dropped };
    } catch (error) {
      return `The session state could not be saved: it holds live JavaScript objects (${
        String(error)
      })`;
    }
  }
}

/** The live heap, diffed against the base snapshot file in chunks. */
function diffAgainstBase(
  pyodide: Pyodide,
  header: Uint8Array,
  path: string,
  files: Uint8Array,
): Uint8Array {
  const base = openSnapshot(path);
  if (typeof base === "string") throw new Error(base);
  try {
    const heap = moduleOf(pyodide).HEAP8;
    return encodeImageDiff(
      header,
      new U8(heap.buffer, heap.byteOffset, heap.length),
      base.read,
      files,
    );
  } finally {
    base.file.close();
  }
}

/**
 * Saves the session: the live heap and the working-folder files, as a diff
 * from the base snapshot (read a chunk at a time), deflated. No copy of the
 * whole heap or of the base is made.
 *
 * @param child The loaded child.
 * @returns Header fields and the state bytes.
 */
export function saveState(
  child: StateChild,
): { json: Record<string, unknown>; bin?: Uint8Array } {
  const base = child.init.snapshotPath;
  const taken = snapshotOf(
    child,
    base ? snapshotHeader : (pyodide) => pyodide.makeMemorySnapshot(),
  );
  if (typeof taken === "string") return { json: { stateError: taken } };
  const files = readFiles(child.pyodide);
  let packed: Uint8Array;
  try {
    packed = base
      ? diffAgainstBase(child.pyodide, taken.snapshot, base, files)
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
 * @param loader The child's early load (`startLoad()`).
 * @returns Pyodide, or `undefined` once the snapshot was sent.
 */
export async function load(
  init: InitRequest,
  initState: Uint8Array,
  zlib: typeof import("node:zlib"),
  started: number,
  loader: EarlyLoad,
): Promise<Pyodide | undefined> {
  if (init.mode === "snapshot" || (!init.snapshotPath && !initState.length)) {
    loader.drop();
  }
  const { loadPyodide } = loader;
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
    return await loadBase(init.snapshotPath, loader);
  }
  return await loadFromState(init, initState, zlib, loader);
}

/**
 * Drops what Pyodide keeps of its load: its config holds the snapshot it
 * was given (31 MB or more) and its module settings hold the wasm binary
 * (9.6 MB) in a closure, both for the child's whole life.
 *
 * @param pyodide A loaded Pyodide.
 */
export function releaseLoadBuffers(pyodide: Pyodide): void {
  const internals = pyodide as unknown as {
    _api?: { config?: Record<string, unknown> };
    _module?: Record<string, unknown>;
  };
  const config = internals._api?.config;
  if (config && "_loadSnapshot" in config) config._loadSnapshot = undefined;
  const module = internals._module;
  if (module && "instantiateWasm" in module) module.instantiateWasm = undefined;
}

/**
 * A full garbage collection, to run once the load is done: an idle child
 * allocates nothing, so V8 would keep the load's buffers (and their RSS,
 * which a pooled child holds and its kill must free) indefinitely. Made
 * before any user code runs; the function it returns stays in the
 * runner's scope.
 *
 * @returns Runs one collection (does nothing where none can be had).
 */
export function garbageCollector(): () => void {
  try {
    // Through getBuiltinModule, never import(): an ES module namespace made
    // now would keep the originals that lockDown() replaces, and user code
    // importing node:v8 or node:vm later would get them.
    // deno-lint-ignore no-explicit-any
    const process = (globalThis as any).process;
    const v8 = process.getBuiltinModule("v8");
    const vm = process.getBuiltinModule("vm");
    // Affects only contexts made after this (vm and workers are locked
    // down before user code runs).
    v8.setFlagsFromString("--expose-gc");
    const gc = vm.runInNewContext("gc") as () => void;
    return () => {
      try {
        gc();
      } catch {
        // Only memory is lost.
      }
    };
  } catch {
    return () => {};
  }
}
