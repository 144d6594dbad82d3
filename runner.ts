/**
 * The child program: loads Pyodide inside a `deno run` process whose
 * permissions are the sandbox, and runs Python sent by the parent.
 *
 * The parent (see `sandbox.ts`) starts this file with `--no-config`, so it
 * must stay self-contained: its only imports are Deno's built-in Node
 * modules and the exact `npm:` specifier of Pyodide. It talks to the parent
 * over its own stdin and stdout:
 *
 * - stdin carries frames `[type u8][jsonLength u32][binLength u32][json][bin]`
 *   read by a small Worker, so that an interrupt reaches Python while it runs
 *   and a closed stdin (the parent died) ends the process at once.
 * - stdout carries frames `MAGIC nonce [type][jsonLength][binLength] json bin
 *   nonce`. The nonce is a secret the parent sends first; user code cannot
 *   learn it, so anything it writes to the real stdout is ignored by the
 *   parent and can never pass for a result.
 *
 * This module also exports the frame constants and codecs, which the parent
 * imports; the child program itself only runs when this is the main module.
 *
 * @module
 */

/** The Pyodide version the runner loads; snapshots and sessions record it. */
export const PYODIDE_VERSION = "314.0.7";

/** Marks the start of every child-to-parent frame. */
export const FRAME_MAGIC: Uint8Array = new Uint8Array([0x50, 0x53, 0x42, 0x31]);

/** Byte length of the per-child secret nonce. */
export const NONCE_BYTES = 16;

/** Frame types sent from the parent to the child. */
export const ToChild = {
  init: 1,
  exec: 2,
  interrupt: 3,
  save: 4,
  callReply: 5,
} as const;

/** Frame types sent from the child to the parent. */
export const ToParent = {
  ready: 1,
  stdout: 2,
  stderr: 3,
  result: 4,
  saved: 5,
  call: 6,
  display: 7,
  snapshot: 8,
  fatal: 9,
} as const;

/**
 * Encodes one parent-to-child frame.
 *
 * @param type One of {@linkcode ToChild}.
 * @param json A JSON-safe header.
 * @param bin Optional binary attachment.
 * @returns The encoded frame.
 */
export function encodeToChild(
  type: number,
  json: unknown,
  bin?: Uint8Array,
): Uint8Array {
  const head = new TextEncoder().encode(JSON.stringify(json ?? null));
  const body = bin ?? new Uint8Array(0);
  const out = new Uint8Array(9 + head.length + body.length);
  const view = new DataView(out.buffer);
  out[0] = type;
  view.setUint32(1, head.length);
  view.setUint32(5, body.length);
  out.set(head, 9);
  out.set(body, 9 + head.length);
  return out;
}

/** Python helpers, defined once and kept in the base snapshot. */
const PYTHON_SETUP = String.raw`
import sys, json, math, types, linecache, traceback, gc, os
import __main__

_mod = types.ModuleType("_pyodide_sandbox")
sys.modules["_pyodide_sandbox"] = _mod
_FILENAME = "<sandbox>"
_REPR_CAP = 10000

def _python_type(v):
    t = type(v)
    m = getattr(t, "__module__", "builtins")
    return t.__qualname__ if m == "builtins" else m + "." + t.__qualname__

def _safe_repr(v):
    try:
        r = repr(v)
    except BaseException as e:
        r = "<repr failed: %s>" % type(e).__name__
    if len(r) > _REPR_CAP:
        r = r[:_REPR_CAP] + "..."
    return r

def _marker(v):
    return {"type": "not_serializable", "pythonType": _python_type(v), "repr": _safe_repr(v)}

def _jsonable(v, depth=0):
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return int(v) if -(2**53) <= v <= 2**53 else _marker(v)
    if isinstance(v, float):
        return float(v) if math.isfinite(v) else _marker(v)
    if depth >= 64:
        return _marker(v)
    if type(v) in (list, tuple):
        return [_jsonable(x, depth + 1) for x in v]
    if type(v) is dict and all(isinstance(k, str) for k in v):
        return {k: _jsonable(x, depth + 1) for k, x in v.items()}
    return _marker(v)

def _user_tb(tb):
    first = tb
    while first is not None and first.tb_frame.f_code.co_filename != _FILENAME:
        first = first.tb_next
    return first

def _format_error(e):
    tb = _user_tb(e.__traceback__)
    try:
        text = "".join(traceback.format_exception(type(e), e, tb))
    except BaseException:
        text = "%s: %s\n" % (type(e).__name__, e)
    try:
        message = str(e)
    except BaseException:
        message = "<str failed>"
    return {"type": type(e).__name__, "message": message, "traceback": text}

def _flush():
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except BaseException:
            pass

_request = {}
_current = {}

def cancel_current():
    task = _current.get("task")
    if task is not None and not task.done():
        task.cancel()

def set_request(code):
    _request["code"] = code

async def run():
    from pyodide.code import eval_code_async
    import asyncio
    code = _request.pop("code")
    _current["task"] = asyncio.current_task()
    linecache.cache[_FILENAME] = (len(code), None, code.splitlines(True), _FILENAME)
    try:
        value = await eval_code_async(
            code,
            globals=__main__.__dict__,
            filename=_FILENAME,
            return_mode="last_expr",
            quiet_trailing_semicolon=True,
        )
        out = {"ok": True, "result": _jsonable(value)}
    except SystemExit as e:
        if e.code is None or e.code == 0:
            out = {"ok": True, "result": None}
        else:
            out = {"ok": False, "error": _format_error(e)}
    except BaseException as e:
        out = {"ok": False, "error": _format_error(e)}
    finally:
        _current.clear()
        _flush()
    value = None
    try:
        return json.dumps(out, allow_nan=False)
    except BaseException as e:
        return json.dumps({"ok": False, "error": _format_error(e)})

def drop_js_globals():
    from pyodide.ffi import JsProxy
    dropped = []
    g = __main__.__dict__
    for name in list(g):
        v = g[name]
        if isinstance(v, JsProxy) and not isinstance(v, types.ModuleType) and name != "js":
            del g[name]
            dropped.append(name)
    gc.collect()
    return ",".join(dropped)

import time as _time

def _sleep(secs):
    # Pyodide's own time.sleep suspends the WebAssembly stack (JSPI), and an
    # interrupt arriving then kills the interpreter. This one blocks in
    # short slices, so a timeout's KeyboardInterrupt lands between them.
    secs = float(secs)
    if secs < 0:
        raise ValueError("sleep length must be non-negative")
    import js
    end = _time.monotonic() + secs
    while True:
        left = end - _time.monotonic()
        if left <= 0:
            break
        js.__pyodideSandboxSleep(min(left, 0.02))

_time.sleep = _sleep

for _name in ("set_request", "run", "drop_js_globals", "cancel_current"):
    setattr(_mod, _name, globals()[_name])
os.makedirs("/home/pyodide", exist_ok=True)
`;

/** Code of the Worker that reads the parent's frames from stdin. */
const STDIN_WORKER = `
let interrupt;
let buf = new Uint8Array(0);
function append(chunk) {
  const next = new Uint8Array(buf.length + chunk.length);
  next.set(buf, 0);
  next.set(chunk, buf.length);
  buf = next;
}
self.onmessage = (e) => { interrupt = new Uint8Array(e.data); };
(async () => {
  const chunk = new Uint8Array(1 << 16);
  for (;;) {
    let n = null;
    try { n = await Deno.stdin.read(chunk); } catch { n = null; }
    if (n === null) break;
    append(chunk.subarray(0, n));
    while (buf.length >= 9) {
      const view = new DataView(buf.buffer, buf.byteOffset, buf.length);
      const jsonLength = view.getUint32(1);
      const binLength = view.getUint32(5);
      const total = 9 + jsonLength + binLength;
      if (buf.length < total) break;
      const type = buf[0];
      if (type === 3) {
        if (interrupt) { interrupt[0] = 2; }
        // Also tell the main thread: code that is awaiting (not running
        // bytecode) never sees the interrupt buffer, so it is cancelled.
        self.postMessage({ type, json: "null", bin: new Uint8Array(0) });
      } else {
        const json = new TextDecoder().decode(buf.subarray(9, 9 + jsonLength));
        const bin = buf.slice(9 + jsonLength, total);
        self.postMessage({ type, json, bin }, [bin.buffer]);
      }
      buf = buf.slice(total);
    }
  }
  // The parent is gone: nobody will read a result, so stop at once, even
  // while Python is busy on the main thread.
  Deno.kill(Deno.pid, "SIGKILL");
})();
`;

interface InMessage {
  type: number;
  json: string;
  bin: Uint8Array;
}

interface InitRequest {
  nonce: string;
  mode: "serve" | "snapshot";
  snapshotPath?: string;
  oneShot: boolean;
  revokeRead?: string[];
}

interface ExecRequest {
  code: string;
  stdin?: string;
  wantState: boolean;
}

// Captured before any user code runs: user code can replace globals and
// prototype methods, and must never see the nonce pass through them.
const writeStdout = Deno.stdout.writeSync.bind(Deno.stdout);
const U8 = Uint8Array;
const u8Set = Uint8Array.prototype.set;
const u8Subarray = Uint8Array.prototype.subarray;
const apply = Reflect.apply;
const stringify = JSON.stringify;
const encoder = new TextEncoder();
const encode = TextEncoder.prototype.encode;
const dvSetUint32 = DataView.prototype.setUint32;
const DV = DataView;

let nonce: Uint8Array = new U8(NONCE_BYTES);

function send(type: number, json: unknown, bin?: Uint8Array): void {
  const head: Uint8Array = apply(encode, encoder, [stringify(json ?? null)]);
  const body = bin ?? new U8(0);
  const prefix = FRAME_MAGIC.length + NONCE_BYTES;
  const total = prefix + 9 + head.length + body.length + NONCE_BYTES;
  const out = new U8(total);
  apply(u8Set, out, [FRAME_MAGIC, 0]);
  apply(u8Set, out, [nonce, FRAME_MAGIC.length]);
  out[prefix] = type;
  const view = new DV(out.buffer);
  apply(dvSetUint32, view, [prefix + 1, head.length]);
  apply(dvSetUint32, view, [prefix + 5, body.length]);
  apply(u8Set, out, [head, prefix + 9]);
  apply(u8Set, out, [body, prefix + 9 + head.length]);
  apply(u8Set, out, [nonce, total - NONCE_BYTES]);
  let offset = 0;
  while (offset < total) {
    offset += writeStdout(apply(u8Subarray, out, [offset]));
  }
}

function hexToBytes(hex: string): Uint8Array {
  const out = new U8(hex.length / 2);
  for (let i = 0; i < out.length; i++) {
    out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  }
  return out;
}

// deno-lint-ignore no-explicit-any
type Pyodide = any;

async function main(): Promise<void> {
  const interruptBuffer = new SharedArrayBuffer(1);
  const worker = new Worker(
    URL.createObjectURL(
      new Blob([STDIN_WORKER], { type: "application/javascript" }),
    ),
    { type: "module", name: "pyodide-sandbox-stdin" },
  );
  worker.postMessage(interruptBuffer);
  const inbox: InMessage[] = [];
  let wake: (() => void) | undefined;
  let onInterrupt = (): void => {};
  worker.onmessage = (e: MessageEvent<InMessage>) => {
    if (e.data.type === ToChild.interrupt) return onInterrupt();
    inbox.push(e.data);
    wake?.();
  };
  async function next(): Promise<InMessage> {
    while (inbox.length === 0) {
      await new Promise<void>((resolve) => wake = resolve);
      wake = undefined;
    }
    return inbox.shift()!;
  }

  const first = await next();
  if (first.type !== ToChild.init) throw new Error("Expected an init frame");
  const init = JSON.parse(first.json) as InitRequest;
  nonce = hexToBytes(init.nonce);

  // The child runs with --no-config, so no import map: the exact specifier.
  // deno-lint-ignore no-import-prefix
  const { loadPyodide } = await import("npm:pyodide@314.0.7");
  const zlib = await import("node:zlib");
  const started = performance.now();
  let pyodide: Pyodide;
  if (init.mode === "snapshot") {
    pyodide = await loadPyodide({ _makeSnapshot: true } as never);
    pyodide.runPython(PYTHON_SETUP, { globals: pyodide.toPy({}) });
    const snapshot: Uint8Array = pyodide.makeMemorySnapshot();
    send(ToParent.snapshot, { loadMs: performance.now() - started }, snapshot);
    return;
  }
  let restoredFiles: Uint8Array | undefined;
  if (first.bin.length > 0) {
    const state = unpackState(new U8(zlib.inflateRawSync(first.bin)));
    pyodide = await loadPyodide(
      { _loadSnapshot: state.snapshot, _makeSnapshot: true } as never,
    );
    restoredFiles = state.files;
    // Refresh the helpers: the session may come from an older runner.
    pyodide.runPython(PYTHON_SETUP, { globals: pyodide.toPy({}) });
  } else if (init.snapshotPath) {
    const snapshot = Deno.readFileSync(init.snapshotPath);
    pyodide = await loadPyodide(
      { _loadSnapshot: snapshot, _makeSnapshot: true } as never,
    );
  } else {
    pyodide = await loadPyodide({ _makeSnapshot: true } as never);
    pyodide.runPython(PYTHON_SETUP, { globals: pyodide.toPy({}) });
  }
  for (const path of init.revokeRead ?? []) {
    try {
      Deno.permissions.revokeSync({ name: "read", path });
    } catch {
      // Nothing to revoke.
    }
  }
  if (restoredFiles) writeFiles(pyodide, restoredFiles);
  pyodide.setInterruptBuffer(new U8(interruptBuffer));
  const sleepCell = new Int32Array(new SharedArrayBuffer(4));
  Object.defineProperty(globalThis, "__pyodideSandboxSleep", {
    value: (seconds: number) => {
      Atomics.wait(sleepCell, 0, 0, Math.max(0, Number(seconds) * 1000));
    },
  });
  const sandboxModule = pyodide.pyimport("_pyodide_sandbox");
  const setRequest = sandboxModule.set_request;
  const dropJsGlobals = sandboxModule.drop_js_globals;
  const cancelCurrent = sandboxModule.cancel_current;
  onInterrupt = () => {
    // Python is not running bytecode (the event loop is turning), so the
    // buffer would only fire later, somewhere in the runner: cancel instead.
    new U8(interruptBuffer)[0] = 0;
    try {
      cancelCurrent();
    } catch (error) {
      send(ToParent.stderr, null, encoder.encode(`cancel failed: ${error}\n`));
    }
  };
  pyodide.setStdout({
    write(buf: Uint8Array) {
      send(ToParent.stdout, null, buf);
      return buf.length;
    },
  });
  pyodide.setStderr({
    write(buf: Uint8Array) {
      send(ToParent.stderr, null, buf);
      return buf.length;
    },
  });
  send(ToParent.ready, { loadMs: performance.now() - started });

  function saveState(): { json: Record<string, unknown>; bin?: Uint8Array } {
    let dropped = "";
    let snapshot: Uint8Array;
    try {
      snapshot = pyodide.makeMemorySnapshot();
    } catch {
      dropped = dropJsGlobals();
      try {
        snapshot = pyodide.makeMemorySnapshot();
      } catch (error) {
        return {
          json: {
            stateError:
              `The session state could not be saved: it holds live JavaScript objects (${
                String(error)
              })`,
          },
        };
      }
    }
    const packed = packState(snapshot, readFiles(pyodide));
    const bin = zlib.deflateRawSync(packed, { level: 1 });
    return { json: { droppedGlobals: dropped }, bin };
  }

  for (;;) {
    const message = await next();
    if (message.type === ToChild.exec) {
      const request = JSON.parse(message.json) as ExecRequest;
      new U8(interruptBuffer)[0] = 0;
      setStdin(pyodide, request.stdin);
      setRequest(request.code);
      let out: string;
      try {
        out = await pyodide.runPythonAsync(
          "await __import__('_pyodide_sandbox').run()",
          { globals: pyodide.toPy({}) },
        );
      } catch (error) {
        if (!String(error).includes("KeyboardInterrupt")) {
          send(ToParent.fatal, { message: String(error) });
          Deno.exit(70);
        }
        // The interrupt landed outside the user's code (while the result
        // was being prepared): report it as an interrupted run.
        out = JSON.stringify({
          ok: false,
          error: { type: "KeyboardInterrupt", message: "", traceback: "" },
        });
      }
      const interrupted = new U8(interruptBuffer)[0] !== 0 ||
        out.includes('"type": "KeyboardInterrupt"') ||
        out.includes('"type": "CancelledError"');
      new U8(interruptBuffer)[0] = 0;
      const header: Record<string, unknown> = { out, interrupted };
      let bin: Uint8Array | undefined;
      if (request.wantState) {
        const state = saveState();
        Object.assign(header, state.json);
        bin = state.bin;
      }
      send(ToParent.result, header, bin);
      if (init.oneShot) Deno.exit(0);
    } else if (message.type === ToChild.save) {
      const state = saveState();
      send(ToParent.saved, state.json, state.bin);
    }
  }
}

function setStdin(pyodide: Pyodide, text: string | undefined): void {
  const data = text === undefined ? new U8(0) : encoder.encode(text);
  let offset = 0;
  pyodide.setStdin({
    read(buf: Uint8Array) {
      const n = Math.min(buf.length, data.length - offset);
      buf.set(data.subarray(offset, offset + n));
      offset += n;
      return n;
    },
  });
}

const HOME = "/home/pyodide";

function readFiles(pyodide: Pyodide): Uint8Array {
  const FS = pyodide.FS;
  const entries: { path: string; size: number }[] = [];
  const blobs: Uint8Array[] = [];
  function walk(dir: string): void {
    for (const name of FS.readdir(dir) as string[]) {
      if (name === "." || name === "..") continue;
      const path = `${dir}/${name}`;
      const stat = FS.lstat(path);
      if (FS.isDir(stat.mode)) {
        entries.push({ path, size: -1 });
        walk(path);
      } else if (FS.isFile(stat.mode)) {
        const data = FS.readFile(path) as Uint8Array;
        entries.push({ path, size: data.length });
        blobs.push(data);
      }
    }
  }
  walk(HOME);
  return concatWithIndex(entries, blobs);
}

function writeFiles(pyodide: Pyodide, packed: Uint8Array): void {
  const FS = pyodide.FS;
  const { index, data } = splitIndex<{ path: string; size: number }[]>(packed);
  let offset = 0;
  for (const entry of index) {
    if (!entry.path.startsWith(HOME + "/")) continue;
    if (entry.size < 0) {
      FS.mkdirTree(entry.path);
      continue;
    }
    FS.writeFile(entry.path, data.subarray(offset, offset + entry.size));
    offset += entry.size;
  }
}

function concatWithIndex(index: unknown, blobs: Uint8Array[]): Uint8Array {
  const head = encoder.encode(JSON.stringify(index));
  let total = 4 + head.length;
  for (const blob of blobs) total += blob.length;
  const out = new U8(total);
  new DataView(out.buffer).setUint32(0, head.length);
  out.set(head, 4);
  let offset = 4 + head.length;
  for (const blob of blobs) {
    out.set(blob, offset);
    offset += blob.length;
  }
  return out;
}

function splitIndex<T>(packed: Uint8Array): { index: T; data: Uint8Array } {
  const view = new DataView(packed.buffer, packed.byteOffset, packed.length);
  const length = view.getUint32(0);
  const index = JSON.parse(
    new TextDecoder().decode(packed.subarray(4, 4 + length)),
  ) as T;
  return { index, data: packed.subarray(4 + length) };
}

function packState(snapshot: Uint8Array, files: Uint8Array): Uint8Array {
  return concatWithIndex({ snapshot: snapshot.length, files: files.length }, [
    snapshot,
    files,
  ]);
}

function unpackState(
  packed: Uint8Array,
): { snapshot: Uint8Array; files: Uint8Array } {
  const { index, data } = splitIndex<{ snapshot: number; files: number }>(
    packed,
  );
  return {
    snapshot: data.slice(0, index.snapshot),
    files: data.subarray(index.snapshot, index.snapshot + index.files),
  };
}

if (import.meta.main) {
  try {
    await main();
  } catch (error) {
    send(ToParent.fatal, { message: String(error) });
    Deno.exit(70);
  }
}
