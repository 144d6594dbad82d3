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
  files: 10,
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

/** The call name the runner uses to ask the host for packages. */
export const INSTALL_CALL = "\u0000install";

/**
 * Largest result header (the run report with the result value) the host
 * accepts; the runner turns a bigger result into an error instead.
 */
export const MAX_RESULT_HEADER_BYTES = 128 * 1024 * 1024;

/** Largest host-function reply the child accepts, in bytes. */
export const MAX_REPLY_BYTES = 64 * 1024 * 1024;

/** Python helpers, defined once and kept in the base snapshot. */
const PYTHON_SETUP = String.raw`
import sys, json, math, types, linecache, traceback, gc, os
import __main__

_previous = sys.modules.get("_pyodide_sandbox")
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
        if value is not None:
            bundle = _mime_bundle(value)
            if bundle:
                bundle["text/plain"] = _safe_repr(value)
                _emit_display(bundle)
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


import base64 as _b64, builtins as _builtins

_MIME_METHODS = (
    ("_repr_png_", "image/png", True),
    ("_repr_jpeg_", "image/jpeg", True),
    ("_repr_svg_", "image/svg+xml", False),
    ("_repr_html_", "text/html", False),
    ("_repr_markdown_", "text/markdown", False),
    ("_repr_json_", "application/json", False),
)

def _mime_bundle(obj):
    bundle = {}
    if isinstance(obj, type):
        return bundle
    for name, mime, binary in _MIME_METHODS:
        # A failing or odd _repr_*_ only loses its MIME type: it never
        # fails the run (the last expression) or the display() call.
        try:
            method = getattr(obj, name, None)
            if not callable(method):
                continue
            data = method()
            if isinstance(data, tuple):
                data = data[0]
            if data is None:
                continue
            if binary:
                if isinstance(data, str):
                    value = data
                else:
                    value = _b64.b64encode(bytes(data)).decode("ascii")
            elif mime == "application/json":
                value = _jsonable(json.loads(data) if isinstance(data, str) else data)
            else:
                value = str(data)
        except Exception:
            continue
        bundle[mime] = value
    return bundle

# The runner's JS helpers are reached through this module-level name, never
# through a function-local "import js": when an interrupt lands in a call made
# through a local (LOAD_FAST) js proxy, the callee's JsProxy leaks, and a
# leaked non-path-tracked function makes the session unsavable ("Can't
# serialize object"), e.g. after a timeout in time.sleep or a host call.
import js as _js

def _emit_display(bundle):
    _js.__pyodideSandboxDisplay(json.dumps(bundle))

def display(*objs, **_ignored):
    """Show objects as rich output: they become result.displays (MIME bundles)."""
    _flush()
    for obj in objs:
        bundle = _mime_bundle(obj)
        bundle["text/plain"] = _safe_repr(obj)
        _emit_display(bundle)

_builtins.display = display

class HostError(Exception):
    """Raised when a host function fails; carries the host's message."""

def _host_call(name, args, kwargs):
    if kwargs:
        raise TypeError("host function %s() takes positional arguments only" % name)
    try:
        payload = json.dumps({"name": name, "args": list(args)}, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError("host function %s(): arguments must be JSON-safe (%s)" % (name, e)) from None
    _flush()
    reply = json.loads(_js.__pyodideSandboxCall(payload))
    if reply.get("interrupted"):
        raise KeyboardInterrupt
    if reply.get("ok"):
        return reply.get("value")
    raise HostError(reply.get("message", "host function failed"))

def install_host(names):
    mod = types.ModuleType("host")
    mod.HostError = HostError
    mod.__doc__ = "Functions provided by the host application."
    for name in json.loads(names):
        def call(*args, _name=name, **kwargs):
            return _host_call(_name, args, kwargs)
        call.__name__ = call.__qualname__ = name
        setattr(mod, name, call)
        __main__.__dict__[name] = call
    sys.modules["host"] = mod

def _patch_matplotlib():
    if "matplotlib" not in sys.modules:
        try:
            import importlib.util
            if importlib.util.find_spec("matplotlib") is None:
                return
        except Exception:
            return
    os.environ["MPLBACKEND"] = "agg"
    try:
        import matplotlib.pyplot as plt
    except Exception:
        return
    if getattr(plt.show, "_sandbox", False):
        return
    def show(*args, **kwargs):
        import io
        for num in plt.get_fignums():
            buf = io.BytesIO()
            plt.figure(num).savefig(buf, format="png")
            _emit_display({
                "image/png": _b64.b64encode(buf.getvalue()).decode("ascii"),
                "text/plain": "<Figure %d>" % num,
            })
        plt.close("all")
    show._sandbox = True
    plt.show = show

# Kept across a session resume (this setup runs again then): the packages
# installed before the state was saved are still there.
_installed = dict(getattr(_previous, "_installed", None) or {})
_mod._installed = _installed

def plan(code, required_json):
    """Top-level imports of the code that cannot be imported yet."""
    import importlib.util
    from pyodide.code import find_imports
    try:
        names = find_imports(code)
    except SyntaxError:
        names = []
    missing = []
    for name in sorted({n.split(".")[0] for n in names}):
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except Exception:
            missing.append(name)
    required = []
    for name in json.loads(required_json):
        if name in _installed:
            continue
        try:
            if importlib.util.find_spec(name) is not None:
                continue
        except Exception:
            pass
        required.append(name)
    return json.dumps({"imports": missing, "required": required, "installed": list(_installed)})

def mark_installed(name, version):
    import importlib
    _installed[name] = version
    importlib.invalidate_caches()

def installed():
    return json.dumps([n + "==" + v for n, v in sorted(_installed.items())])

def prepare(names):
    install_host(names)
    _patch_matplotlib()

import time as _time

def _sleep(secs):
    # Pyodide's own time.sleep suspends the WebAssembly stack (JSPI), and an
    # interrupt arriving then kills the interpreter. This one blocks in
    # short slices, so a timeout's KeyboardInterrupt lands between them.
    secs = float(secs)
    if secs < 0:
        raise ValueError("sleep length must be non-negative")
    end = _time.monotonic() + secs
    while True:
        left = end - _time.monotonic()
        if left <= 0:
            break
        _js.__pyodideSandboxSleep(min(left, 0.02))

_time.sleep = _sleep

# Python calls recurse on the WebAssembly stack: past ~25,000 plain frames
# it overflows and the interpreter dies (a crash, slow on some machines;
# recursion through C, such as __getattr__ or a sort key, overflows sooner), so
# a higher limit would only turn a RecursionError into a crash.
_MAX_RECURSION = 3000

def _capped_setrecursionlimit(original):
    def setrecursionlimit(limit, /):
        if isinstance(limit, int) and limit > _MAX_RECURSION:
            limit = _MAX_RECURSION
        return original(limit)
    setrecursionlimit.__doc__ = original.__doc__
    setrecursionlimit._sandbox = True
    return setrecursionlimit

if not getattr(sys.setrecursionlimit, "_sandbox", False):
    sys.setrecursionlimit = _capped_setrecursionlimit(sys.setrecursionlimit)
if sys.getrecursionlimit() > _MAX_RECURSION:
    sys.setrecursionlimit(_MAX_RECURSION)

for _name in ("set_request", "run", "drop_js_globals", "cancel_current", "prepare", "display", "HostError", "plan", "mark_installed", "installed"):
    setattr(_mod, _name, globals()[_name])
os.makedirs("/home/pyodide", exist_ok=True)
`;

/** Code of the Worker that reads the parent's frames from stdin. */
const STDIN_WORKER = `
let interrupt;
let replyControl;
let replyData;
// Unread bytes: a view into a buffer that grows by doubling, so a large
// frame (session state) arriving in many chunks is not copied once per chunk.
let store = new Uint8Array(1 << 16);
let buf = store.subarray(0, 0);
function append(chunk) {
  let start = buf.byteOffset;
  const length = buf.length;
  if (start + length + chunk.length > store.length) {
    if (length + chunk.length > store.length) {
      const next = new Uint8Array(
        Math.max(length + chunk.length, store.length * 2),
      );
      next.set(buf, 0);
      store = next;
    } else {
      store.copyWithin(0, start, start + length);
    }
    start = 0;
  }
  store.set(chunk, start + length);
  buf = store.subarray(start, start + length + chunk.length);
}
self.onmessage = (e) => {
  interrupt = new Uint8Array(e.data.interrupt);
  replyControl = new Int32Array(e.data.replyControl);
  replyData = e.data.replyData;
};
function reply(bytes) {
  // A host function's answer: the main thread is blocked in Atomics.wait
  // inside Python, so it goes through shared memory, not a message.
  if (replyData.byteLength < bytes.length) replyData.grow(bytes.length);
  new Uint8Array(replyData).set(bytes);
  Atomics.store(replyControl, 1, bytes.length);
  Atomics.add(replyControl, 0, 1);
  Atomics.notify(replyControl, 0);
}
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
      if (type === 5) {
        reply(buf.slice(9, 9 + jsonLength));
      } else if (type === 3) {
        if (interrupt) { interrupt[0] = 2; }
        // Also tell the main thread: code that is awaiting (not running
        // bytecode) never sees the interrupt buffer, so it is cancelled.
        self.postMessage({ type, json: "null", bin: new Uint8Array(0) });
      } else {
        const json = new TextDecoder().decode(buf.subarray(9, 9 + jsonLength));
        const bin = buf.slice(9 + jsonLength, total);
        self.postMessage({ type, json, bin }, [bin.buffer]);
      }
      buf = buf.subarray(total);
    }
    if (buf.length === 0) {
      if (store.length > (1 << 20)) store = new Uint8Array(1 << 16);
      buf = store.subarray(0, 0);
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
  mode: "serve" | "snapshot";
  snapshotPath?: string;
  oneShot: boolean;
  revokeRead?: string[];
  /** Run the runner's own call path once before reporting ready. */
  warm?: boolean;
}

interface ExecRequest {
  code: string;
  stdin?: string;
  wantState: boolean;
  /** Files to write first (`bin` holds their bytes, in order). */
  files?: { path: string; size: number }[];
  /** Names of host functions to expose. */
  functions?: string[];
  /** Host paths granted for reading/writing, shown to Python's open(). */
  hostRead?: string[];
  hostWrite?: string[];
  /** The write grants that are folders (the child may not stat them). */
  hostWriteDirs?: string[];
  maxFileBytes: number;
  maxTotalFileBytes: number;
  /** Set when package sources are configured. */
  install?: { packages: string[] };
}

// Captured before any user code runs: user code can replace globals and
// prototype methods, and must never see the nonce pass through them.
const writeStdout = Deno.stdout.writeSync.bind(Deno.stdout);
const U8 = Uint8Array;
const u8Set = Uint8Array.prototype.set;
const apply = Reflect.apply;
const stringify = JSON.stringify;
const encoder = new TextEncoder();
const encode = TextEncoder.prototype.encode;
const dvSetUint32 = DataView.prototype.setUint32;
const DV = DataView;
const AB = ArrayBuffer;
// Typed-array accessors, captured: a replaced getter would otherwise be
// called with the frame being built (which holds the nonce) as `this`.
const typedArrayProto = Object.getPrototypeOf(Uint8Array.prototype);
const getLength = Object.getOwnPropertyDescriptor(typedArrayProto, "length")!
  .get!;
const getBuffer = Object.getOwnPropertyDescriptor(typedArrayProto, "buffer")!
  .get!;
const getByteOffset = Object.getOwnPropertyDescriptor(
  typedArrayProto,
  "byteOffset",
)!.get!;
const parse = JSON.parse;
const isArray = Array.isArray;
const objectKeys = Object.keys;
const createObject = Object.create;
const defineProperty = Reflect.defineProperty;
const strIncludes = String.prototype.includes;
const strStartsWith = String.prototype.startsWith;
const strEndsWith = String.prototype.endsWith;
const mapGet = Map.prototype.get;
const mapSet = Map.prototype.set;
const mapForEach = Map.prototype.forEach;
/** Largest stdout/stderr frame: bigger writes are split. */
const STREAM_FRAME_BYTES = 64 * 1024;

// Frames, their headers and the files index are built only with the values
// captured above (after user code ran, every global and prototype method may
// be the attacker's): no JSON.stringify of an object (toJSON), no Math, no
// Array or String methods, no typed-array getters or methods.

/** JSON text of plain data, without toJSON or any replaceable method. */
function toJson(value: unknown): string {
  if (value === null || typeof value !== "object") {
    // A primitive: JSON.stringify looks nothing up for it.
    const text: string | undefined = stringify(value);
    return text === undefined ? "null" : text;
  }
  if (isArray(value)) {
    let out = "[";
    for (let i = 0; i < value.length; i++) {
      out += (i > 0 ? "," : "") + toJson(value[i]);
    }
    return out + "]";
  }
  const keys = objectKeys(value);
  let out = "{";
  let first = true;
  for (let i = 0; i < keys.length; i++) {
    const item = (value as Record<string, unknown>)[keys[i]];
    if (item === undefined || typeof item === "function") continue;
    out += (first ? "" : ",") + stringify(keys[i]) + ":" + toJson(item);
    first = false;
  }
  return out + "}";
}

/** Appends without Array.prototype.push (or a setter planted on it). */
function append<T>(array: T[], item: T): void {
  defineProperty(array, array.length, {
    __proto__: null,
    value: item,
    writable: true,
    enumerable: true,
    configurable: true,
  } as PropertyDescriptor);
}

/** A fresh object with no prototype, for headers and index entries. */
function record(): Record<string, unknown> {
  return createObject(null);
}

function encodeText(text: string): Uint8Array {
  return apply(encode, encoder, [text]);
}

function byteLength(bytes: Uint8Array): number {
  return apply(getLength, bytes, []);
}

/** `bytes.subarray(start, end)` without the (replaceable) method. */
function view(bytes: Uint8Array, start: number, end: number): Uint8Array {
  const buffer: ArrayBuffer = apply(getBuffer, bytes, []);
  const offset: number = apply(getByteOffset, bytes, []);
  return new U8(buffer, offset + start, end - start);
}

function includes(text: string, part: string): boolean {
  return apply(strIncludes, text, [part]);
}

/** Sorts strings (merge sort) without Array.prototype.sort. */
function sortStrings(items: string[]): string[] {
  if (items.length < 2) return items;
  const half = items.length >> 1;
  const left: string[] = [];
  const right: string[] = [];
  for (let i = 0; i < items.length; i++) {
    append(i < half ? left : right, items[i]);
  }
  const a = sortStrings(left);
  const b = sortStrings(right);
  const out: string[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    if (j >= b.length || (i < a.length && a[i] <= b[j])) append(out, a[i++]);
    else append(out, b[j++]);
  }
  return out;
}

let nonce: Uint8Array = new U8(NONCE_BYTES);

function send(type: number, json: unknown, bin?: Uint8Array): void {
  // Only captured functions touch the frame: no getter, species constructor
  // or method that user code can replace ever sees it (or the nonce in it).
  const head: Uint8Array = apply(encode, encoder, [toJson(json ?? null)]);
  const body = bin ?? new U8(0);
  const headLength: number = apply(getLength, head, []);
  const bodyLength: number = apply(getLength, body, []);
  const prefix = 4 + NONCE_BYTES;
  const total = prefix + 9 + headLength + bodyLength + NONCE_BYTES;
  const frame = new AB(total);
  const out = new U8(frame);
  apply(u8Set, out, [FRAME_MAGIC, 0]);
  apply(u8Set, out, [nonce, 4]);
  out[prefix] = type;
  const view = new DV(frame);
  apply(dvSetUint32, view, [prefix + 1, headLength]);
  apply(dvSetUint32, view, [prefix + 5, bodyLength]);
  apply(u8Set, out, [head, prefix + 9]);
  apply(u8Set, out, [body, prefix + 9 + headLength]);
  apply(u8Set, out, [nonce, total - NONCE_BYTES]);
  let offset = 0;
  while (offset < total) {
    offset += writeStdout(new U8(frame, offset));
  }
}

/**
 * Sends a stdout or stderr write as frames of at most 64 KiB, so the
 * parent never has to buffer a huge frame (it keeps only maxOutputBytes).
 */
function sendStream(type: number, buf: Uint8Array): void {
  const length: number = apply(getLength, buf, []);
  const buffer: ArrayBuffer = apply(getBuffer, buf, []);
  const byteOffset: number = apply(getByteOffset, buf, []);
  for (let i = 0; i < length; i += STREAM_FRAME_BYTES) {
    const n = length - i < STREAM_FRAME_BYTES ? length - i : STREAM_FRAME_BYTES;
    send(type, null, new U8(buffer, byteOffset + i, n));
  }
}

// deno-lint-ignore no-explicit-any
type Pyodide = any;
// deno-lint-ignore no-explicit-any
type Loose = any;

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
function lockDown(): void {
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

async function main(): Promise<void> {
  const interruptBuffer = new SharedArrayBuffer(1);
  const worker = new Worker(
    URL.createObjectURL(
      new Blob([STDIN_WORKER], { type: "application/javascript" }),
    ),
    { type: "module", name: "pyodide-sandbox-stdin" },
  );
  const replyControl = new SharedArrayBuffer(8);
  const replyData = new SharedArrayBuffer(1 << 16, {
    maxByteLength: MAX_REPLY_BYTES,
  });
  worker.postMessage({ interrupt: interruptBuffer, replyControl, replyData });
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
  const init = parse(first.json) as InitRequest;
  // The nonce is the first bytes of the attachment (never a string); the
  // packed session state, if any, follows.
  nonce = first.bin.slice(0, NONCE_BYTES);
  const initState = first.bin.subarray(NONCE_BYTES);

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
  if (initState.length > 0) {
    const state = unpackState(new U8(zlib.inflateRawSync(initState)));
    // Pyodide 314.0.7 restores a snapshot into the wasm heap without growing
    // it (its INITIAL_MEMORY hint is ignored: the heap starts at 36 MiB), so
    // a session that grew past that fails with "offset is out of bounds".
    // Grow the heap to the snapshot's size before the restore.
    // deno-lint-ignore no-import-prefix
    const asm = await import("npm:pyodide@314.0.7/pyodide.asm.mjs");
    const size = state.snapshot.length;
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
    restoredFiles = state.files;
    // Refresh the helpers: the session may come from an older runner.
    pyodide.runPython(PYTHON_SETUP, { globals: pyodide.toPy({}) });
  } else if (init.snapshotPath) {
    // Read off the main thread while Pyodide loads its own modules: it
    // awaits the snapshot only right before instantiating the wasm.
    const snapshot = Deno.readFile(init.snapshotPath);
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
      const ms = Number(seconds) * 1000;
      Atomics.wait(sleepCell, 0, 0, ms > 0 ? ms : 0);
    },
  });
  const sandboxModule = pyodide.pyimport("_pyodide_sandbox");
  const setRequest = sandboxModule.set_request;
  const dropJsGlobals = sandboxModule.drop_js_globals;
  const cancelCurrent = sandboxModule.cancel_current;
  const prepare = sandboxModule.prepare;
  Object.defineProperty(globalThis, "__pyodideSandboxDisplay", {
    value: (json: string) => send(ToParent.display, parse(json)),
  });
  const replyCounter = new Int32Array(replyControl);
  const replyDecoder = new TextDecoder();
  /** Asks the parent and blocks until it answers (or an interrupt). */
  function askParent(request: unknown): string {
    const seen = Atomics.load(replyCounter, 0);
    send(ToParent.call, request);
    const interrupt = new U8(interruptBuffer);
    while (Atomics.load(replyCounter, 0) === seen) {
      if (interrupt[0] !== 0) return '{"interrupted": true}';
      Atomics.wait(replyCounter, 0, seen, 20);
    }
    const length = Atomics.load(replyCounter, 1);
    return replyDecoder.decode(new U8(replyData).slice(0, length));
  }
  Object.defineProperty(globalThis, "__pyodideSandboxCall", {
    value: (payload: string) => askParent(parse(payload)),
  });
  const planImports = sandboxModule.plan;
  const markInstalled = sandboxModule.mark_installed;
  const installedList = sandboxModule.installed;

  /** Installs what the code imports; returns an error message or "". */
  function install(request: ExecRequest): string {
    if (!request.install) return "";
    const plan = parse(
      planImports(request.code, toJson(request.install.packages)),
    ) as { imports: string[]; required: string[]; installed: string[] };
    const required = plan.required;
    if (plan.imports.length === 0 && required.length === 0) return "";
    const reply = parse(askParent({
      name: INSTALL_CALL,
      args: [plan.imports, required, plan.installed],
    })) as {
      ok?: boolean;
      interrupted?: boolean;
      message?: string;
      value?: {
        name: string;
        version: string;
        fileName: string;
        data: string;
      }[];
    };
    if (reply.interrupted) return "Installing packages was interrupted";
    if (!reply.ok) return reply.message ?? "Installing packages failed";
    for (const wheel of reply.value ?? []) {
      const bytes = Uint8Array.from(atob(wheel.data), (c) => c.charCodeAt(0));
      const format = wheel.fileName.endsWith(".whl") ? "wheel" : "zip";
      try {
        // Into site-packages, not the working folder (the default), where
        // the package's files would show up in result.files.
        pyodide.unpackArchive(bytes, format, { extractDir: SITE_PACKAGES });
      } catch (error) {
        return `Package "${wheel.name}" could not be unpacked: ${error}`;
      }
      markInstalled(wheel.name, wheel.version);
    }
    return "";
  }
  onInterrupt = () => {
    // Python is not running bytecode (the event loop is turning), so the
    // buffer would only fire later, somewhere in the runner: cancel instead.
    new U8(interruptBuffer)[0] = 0;
    try {
      cancelCurrent();
    } catch (error) {
      send(
        ToParent.stderr,
        null,
        apply(encode, encoder, [`cancel failed: ${error}\n`]),
      );
    }
  };
  pyodide.setStdout({
    write(buf: Uint8Array) {
      sendStream(ToParent.stdout, buf);
      return buf.length;
    },
  });
  pyodide.setStderr({
    write(buf: Uint8Array) {
      sendStream(ToParent.stderr, buf);
      return buf.length;
    },
  });
  if (init.warm) {
    // A pooled child waits for work anyway: walk the call path once (code
    // that does nothing, in the namespace the call will use) so that the
    // call does not pay for first-time work (lazily compiled wasm and JS,
    // import caches). No user code has run, so the interpreter stays fresh.
    setStdin(pyodide, undefined);
    fileStates(pyodide, [HOME]);
    prepare("[]");
    setRequest("pass");
    await pyodide.runPythonAsync(
      "await __import__('_pyodide_sandbox').run()",
      { globals: pyodide.toPy({}) },
    );
  }
  // Last step before any user code can run: nothing below may need what
  // this takes away.
  lockDown();
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
      const request = parse(message.json) as ExecRequest;
      new U8(interruptBuffer)[0] = 0;
      setStdin(pyodide, request.stdin);
      const warnings: string[] = [];
      const filesError = writeInputFiles(
        pyodide,
        request.files ?? [],
        message.bin,
      );
      if (filesError) {
        // A files entry the filesystem refuses (a path under a file, an
        // existing folder): the code does not run.
        send(ToParent.result, {
          out: toJson({
            ok: false,
            error: {
              type: "OSError",
              message: filesError,
              traceback: `OSError: ${filesError}\n`,
            },
          }),
          notRun: true,
        });
        if (init.oneShot) Deno.exit(0);
        continue;
      }
      const grants = [
        ...(request.hostRead ?? []),
        ...(request.hostWrite ?? []),
      ];
      for (const path of request.hostRead ?? []) {
        copyHostIn(pyodide, path, grants, warnings);
      }
      for (const path of request.hostWrite ?? []) {
        copyHostIn(pyodide, path, grants, warnings);
        const dir = (request.hostWriteDirs ?? []).includes(path)
          ? path
          : path.slice(0, path.lastIndexOf("/"));
        if (!RESERVED.some((r) => within(dir, r)) && dir) {
          pyodide.FS.mkdirTree(dir);
        }
      }
      const before = fileStates(pyodide, [HOME, ...(request.hostWrite ?? [])]);
      for (const warning of warnings) {
        send(ToParent.stderr, null, encodeText(`${warning}\n`));
      }
      let out: string;
      const installError = install(request);
      if (installError) {
        send(ToParent.result, {
          out: toJson({
            ok: false,
            error: { type: "InstallError", message: installError },
          }),
          installError: true,
          notRun: true,
          interrupted: installError.includes("interrupted"),
        });
        if (init.oneShot) Deno.exit(0);
        continue;
      }
      try {
        prepare(toJson(request.functions ?? []));
        setRequest(request.code);
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
        out = toJson({
          ok: false,
          error: { type: "KeyboardInterrupt", message: "", traceback: "" },
        });
      }
      // From here on, user code has run: captured values only.
      const hostWrite = request.hostWrite ?? [];
      const roots: string[] = [HOME];
      for (let i = 0; i < hostWrite.length; i++) append(roots, hostWrite[i]);
      const changed = changedFiles(pyodide, before, roots);
      const inHome: string[] = [];
      for (let i = 0; i < changed.length; i++) {
        const path = changed[i];
        if (within(path, HOME)) append(inHome, path);
        for (let j = 0; j < hostWrite.length; j++) {
          if (within(path, hostWrite[j])) {
            copyHostOut(pyodide, path, hostWrite);
            break;
          }
        }
      }
      sendFiles(
        pyodide,
        inHome,
        request.maxFileBytes,
        request.maxTotalFileBytes,
      );
      const interrupted = new U8(interruptBuffer)[0] !== 0 ||
        includes(out, '"type": "KeyboardInterrupt"') ||
        includes(out, '"type": "CancelledError"');
      new U8(interruptBuffer)[0] = 0;
      out = boundedOut(out);
      const header = record();
      header.out = out;
      header.interrupted = interrupted;
      header.packages = parse(installedList());
      let bin: Uint8Array | undefined;
      if (request.wantState) {
        const state = saveState();
        const keys = objectKeys(state.json);
        for (let i = 0; i < keys.length; i++) {
          header[keys[i]] = state.json[keys[i]];
        }
        bin = state.bin;
      }
      send(ToParent.result, header, bin);
      if (init.oneShot) Deno.exit(0);
    } else if (message.type === ToChild.save) {
      const state = saveState();
      const header = record();
      const keys = objectKeys(state.json);
      for (let i = 0; i < keys.length; i++) {
        header[keys[i]] = state.json[keys[i]];
      }
      header.packages = parse(installedList());
      send(ToParent.saved, header, state.bin);
    }
  }
}

/**
 * The run report, or an error in its place when the result is too large for
 * the host to accept (a frame over the cap would end the child instead).
 */
function boundedOut(out: string): string {
  // Cheap first: one UTF-16 unit is at most 6 bytes once escaped for the
  // header's JSON (\u00XX) and encoded.
  const limit = MAX_RESULT_HEADER_BYTES - 64 * 1024;
  if (out.length * 6 < limit) return out;
  const size = byteLength(encodeText(toJson(out)));
  if (size <= limit) return out;
  const message =
    `The result is too large to return: ${size} bytes (at most ${limit}); print it or write it to a file instead`;
  const report = record();
  const error = record();
  error.type = "ValueError";
  error.message = message;
  error.traceback = `ValueError: ${message}\n`;
  report.ok = false;
  report.error = error;
  return toJson(report);
}

function setStdin(pyodide: Pyodide, text: string | undefined): void {
  const data: Uint8Array = text === undefined
    ? new U8(0)
    : apply(encode, encoder, [text]);
  let offset = 0;
  pyodide.setStdin({
    read(buf: Uint8Array) {
      const room = byteLength(buf);
      const left = byteLength(data) - offset;
      const n = room < left ? room : left;
      apply(u8Set, buf, [view(data, offset, offset + n), 0]);
      offset += n;
      return n;
    },
  });
}

const HOME = "/home/pyodide";
const SITE_PACKAGES = "/lib/python3.14/site-packages";

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
  walk(SITE_PACKAGES);
  return concatWithIndex(entries, blobs);
}

function within(path: string, root: string): boolean {
  return path === root ||
    apply(strStartsWith, path, [
      apply(strEndsWith, root, ["/"]) ? root : root + "/",
    ]);
}

function sandboxPath(path: string): string {
  const absolute = path.startsWith("/") ? path : `${HOME}/${path}`;
  const parts: string[] = [];
  for (const part of absolute.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") parts.pop();
    else parts.push(part);
  }
  return "/" + parts.join("/");
}

/** Emscripten errno numbers met when writing input files. */
const ERRNO_NAMES: Record<number, string> = {
  2: "permission denied",
  20: "a file or folder of that name exists",
  31: "it is a folder",
  44: "no such file or folder",
  54: "a parent is not a folder",
};

/** Writes the input files; returns an error message, or "" when done. */
function writeInputFiles(
  pyodide: Pyodide,
  files: { path: string; size: number }[],
  bin: Uint8Array,
): string {
  let offset = 0;
  for (const file of files) {
    const path = sandboxPath(file.path);
    const dir = path.slice(0, path.lastIndexOf("/")) || "/";
    try {
      pyodide.FS.mkdirTree(dir);
      pyodide.FS.writeFile(path, bin.subarray(offset, offset + file.size));
    } catch (error) {
      const errno = (error as { errno?: number }).errno;
      const reason = errno === undefined
        ? String(error)
        : ERRNO_NAMES[errno] ?? `errno ${errno}`;
      return `Invalid files entry: ${
        stringify(file.path)
      } cannot be written to ${path} (${reason})`;
    }
    offset += file.size;
  }
  return "";
}

/** Folders of Pyodide's own filesystem that host folders may not replace. */
const RESERVED = ["/lib", "/dev", "/proc", "/sys", "/bin"];
/** Most bytes copied in from host folders per call. */
const HOST_COPY_LIMIT = 256 * 1024 * 1024;
/** Most files copied in from host folders per call. */
const HOST_COPY_FILES = 10_000;

/**
 * Whether a host path is a symbolic link whose real target is outside every
 * grant (a link the host placed there: it must not widen the grant).
 */
function escapesGrants(path: string, grants: string[]): boolean {
  let real: string;
  try {
    real = Deno.realPathSync(path);
  } catch {
    return true; // Dangling, or denied (see linkDenyFlags).
  }
  for (let i = 0; i < grants.length; i++) {
    if (within(real, grants[i])) return false;
  }
  return true;
}

function copyHostIn(
  pyodide: Pyodide,
  root: string,
  grants: string[],
  warnings: string[],
): void {
  if (RESERVED.some((r) => within(root, r)) || root === "/") {
    warnings.push(
      `Warning: ${root} is not shown to Python's open() (it would replace Pyodide's own files); use js.Deno to reach it`,
    );
    return;
  }
  const FS = pyodide.FS;
  let bytes = 0;
  let count = 0;
  function visit(path: string, depth: number): void {
    let info: Deno.FileInfo;
    try {
      info = Deno.lstatSync(path);
      // A link is followed only when it stays inside the grants (the grant
      // itself may be a link: the user named it).
      if (info.isSymlink) {
        if (path !== root && escapesGrants(path, grants)) {
          warnings.push(
            `Warning: ${path} was not copied in: it is a symbolic link that leads outside the granted paths`,
          );
          return;
        }
        info = Deno.statSync(path);
      }
    } catch {
      return; // Not there, or not readable (a write-only grant).
    }
    if (info.isDirectory) {
      if (depth > 64 || count >= HOST_COPY_FILES) return;
      count++;
      FS.mkdirTree(path);
      let entries: Deno.DirEntry[];
      try {
        entries = [...Deno.readDirSync(path)];
      } catch {
        return;
      }
      for (const entry of entries) visit(`${path}/${entry.name}`, depth + 1);
    } else if (info.isFile) {
      if (count >= HOST_COPY_FILES || bytes + info.size > HOST_COPY_LIMIT) {
        warnings.push(
          `Warning: ${path} was not copied in: host folders are capped at ${HOST_COPY_FILES} files and ${HOST_COPY_LIMIT} bytes per call`,
        );
        return;
      }
      try {
        const data = Deno.readFileSync(path);
        FS.mkdirTree(path.slice(0, path.lastIndexOf("/")) || "/");
        FS.writeFile(path, data);
        bytes += data.length;
        count++;
      } catch {
        // Unreadable: leave it out.
      }
    }
  }
  visit(root, 0);
}

/**
 * The first symbolic link on the way from the grant holding `path` down to
 * `path` (the grant itself excluded), or "" when there is none: writing
 * through one would write outside the grant.
 */
function linkOnTheWay(path: string, grants: string[]): string {
  let root = "";
  for (let i = 0; i < grants.length; i++) {
    if (within(path, grants[i]) && grants[i].length > root.length) {
      root = grants[i];
    }
  }
  if (!root) return path;
  let current = root;
  const rest = path.slice(root.length).split("/");
  for (let i = 0; i < rest.length; i++) {
    if (!rest[i]) continue;
    current = current === "/" ? `/${rest[i]}` : `${current}/${rest[i]}`;
    try {
      if (Deno.lstatSync(current).isSymlink) return current;
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return "";
      // A write-only grant cannot be looked at: the child's --deny-write
      // flags (linkDenyFlags) cover the links that were there at its start.
      if (error instanceof Deno.errors.NotCapable) return "";
      return current; // Cannot tell: refuse.
    }
  }
  return "";
}

function copyHostOut(pyodide: Pyodide, path: string, grants: string[]): void {
  try {
    const link = linkOnTheWay(path, grants);
    if (link) {
      throw new Error(
        `${link} is a symbolic link (or could not be checked), and writes never go through one`,
      );
    }
    const data = pyodide.FS.readFile(path) as Uint8Array;
    try {
      Deno.writeFileSync(path, data);
    } catch (error) {
      // Create missing parents only when needed: a grant of a single file
      // does not allow mkdir on its (existing) folder.
      if (!(error instanceof Deno.errors.NotFound)) throw error;
      Deno.mkdirSync(path.slice(0, path.lastIndexOf("/")) || "/", {
        recursive: true,
      });
      Deno.writeFileSync(path, data);
    }
  } catch (error) {
    send(
      ToParent.stderr,
      null,
      encodeText(
        `Warning: ${path} was not written back to the host: ${error}\n`,
      ),
    );
  }
}

type FileStates = Map<string, string>;

function walkFiles(
  pyodide: Pyodide,
  root: string,
  visit: (path: string, stat: { size: number; mtime: Date }) => void,
): void {
  const FS = pyodide.FS;
  let stat;
  try {
    stat = FS.lstat(root);
  } catch {
    return;
  }
  if (FS.isFile(stat.mode)) {
    visit(root, stat);
    return;
  }
  if (!FS.isDir(stat.mode)) return;
  for (const name of FS.readdir(root) as string[]) {
    if (name === "." || name === "..") continue;
    walkFiles(pyodide, root === "/" ? `/${name}` : `${root}/${name}`, visit);
  }
}

function fileStates(pyodide: Pyodide, roots: string[]): FileStates {
  const states: FileStates = new Map();
  for (let i = 0; i < roots.length; i++) {
    walkFiles(pyodide, roots[i], (path, stat) => {
      apply(mapSet, states, [path, `${stat.size}:${+stat.mtime}`]);
    });
  }
  return states;
}

function changedFiles(
  pyodide: Pyodide,
  before: FileStates,
  roots: string[],
): string[] {
  const after = fileStates(pyodide, roots);
  const changed: string[] = [];
  apply(mapForEach, after, [(state: string, path: string) => {
    if (apply(mapGet, before, [path]) !== state) append(changed, path);
  }]);
  return changed;
}

function sendFiles(
  pyodide: Pyodide,
  paths: string[],
  maxFileBytes: number,
  maxTotalFileBytes: number,
): void {
  if (paths.length === 0) return;
  const index: Record<string, unknown>[] = [];
  const blobs: Uint8Array[] = [];
  let total = 0;
  const sorted = sortStrings(paths);
  for (let i = 0; i < sorted.length; i++) {
    const path = sorted[i];
    const data = pyodide.FS.readFile(path) as Uint8Array;
    const size = byteLength(data);
    let length = size < maxFileBytes ? size : maxFileBytes;
    if (length > maxTotalFileBytes - total) length = maxTotalFileBytes - total;
    if (!(length > 0)) length = 0;
    total += length;
    const entry = record();
    entry.path = path;
    entry.size = size;
    entry.length = length;
    entry.truncated = length < size;
    append(index, entry);
    append(blobs, view(data, 0, length));
  }
  const packed = concatWithIndex(index, blobs);
  send(ToParent.files, null, packed);
}

function writeFiles(pyodide: Pyodide, packed: Uint8Array): void {
  const FS = pyodide.FS;
  const { index, data } = splitIndex<{ path: string; size: number }[]>(packed);
  let offset = 0;
  for (const entry of index) {
    const start = offset;
    if (entry.size > 0) offset += entry.size;
    if (
      !entry.path.startsWith(HOME + "/") &&
      !entry.path.startsWith(SITE_PACKAGES + "/")
    ) continue;
    if (entry.size < 0) FS.mkdirTree(entry.path);
    else FS.writeFile(entry.path, data.subarray(start, start + entry.size));
  }
}

function concatWithIndex(index: unknown, blobs: Uint8Array[]): Uint8Array {
  const head: Uint8Array = apply(encode, encoder, [toJson(index)]);
  const headLength = byteLength(head);
  let total = 4 + headLength;
  for (let i = 0; i < blobs.length; i++) total += byteLength(blobs[i]);
  const buffer = new AB(total);
  const out = new U8(buffer);
  apply(dvSetUint32, new DV(buffer), [0, headLength]);
  apply(u8Set, out, [head, 4]);
  let offset = 4 + headLength;
  for (let i = 0; i < blobs.length; i++) {
    apply(u8Set, out, [blobs[i], offset]);
    offset += byteLength(blobs[i]);
  }
  return out;
}

function splitIndex<T>(packed: Uint8Array): { index: T; data: Uint8Array } {
  const view = new DataView(packed.buffer, packed.byteOffset, packed.length);
  const length = view.getUint32(0);
  const index = parse(
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
