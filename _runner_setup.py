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
    if isinstance(v, tuple):
        # A tuple subclass (a namedtuple, sys.version_info, os.stat_result)
        # becomes a list, as Python's json.dumps makes it. tuple.__iter__
        # walks the stored items, whatever the subclass defines.
        try:
            return [_jsonable(x, depth + 1) for x in tuple.__iter__(v)]
        except BaseException:
            return _marker(v)
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

# Compiled packages of a preloaded snapshot: installed in it but imported
# only when a pooled child warms up (their libraries live outside the
# snapshot's memory). Kept across a restore, like _installed.
_preload_imports = list(getattr(_previous, "_preload_imports", None) or [])
_mod._preload_imports = _preload_imports

def import_preloaded():
    import importlib
    for name in _preload_imports:
        try:
            importlib.import_module(name)
        except BaseException:
            pass

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

# Synchronous HTTP for urllib.request: the child fetches with its own net
# grants (allowNet), and Python waits through JSPI (pyodide.ffi.run_sync).
class NetworkPermissionError(__import__("urllib.error").error.URLError, PermissionError):
    """A host that allowNet does not grant (both URLError and PermissionError)."""

def _fetch_sync(req, timeout):
    import urllib.error, http.client, email.message, io
    from urllib.parse import urlsplit
    from pyodide.ffi import run_sync, can_run_sync, to_js, JsException
    url = req.full_url
    host = urlsplit(url).netloc
    if not can_run_sync():
        raise urllib.error.URLError("synchronous HTTP is not available here: use 'await pyodide.http.pyfetch(url)'")
    headers = [[k, v] for k, v in req.header_items()]
    data = req.data
    if data is not None and not isinstance(data, (bytes, bytearray, memoryview)):
        if isinstance(data, str):
            raise TypeError("POST data should be bytes, an iterable of bytes, or a file object. It cannot be of type str.")
        data = data.read() if hasattr(data, "read") else b"".join(bytes(c) for c in data)
    body = to_js(bytes(data)) if data is not None else None
    ms = 0 if timeout is None or not isinstance(timeout, (int, float)) or timeout <= 0 else int(timeout * 1000)
    _flush()
    reply = None
    try:
        reply = run_sync(_js.__pyodideSandboxFetch(url, req.get_method(), json.dumps(headers), body, ms))
        meta = json.loads(reply[0])
        payload = reply[1].to_bytes()
    except JsException as e:
        text = str(e)
        if "KeyboardInterrupt" in text:
            raise KeyboardInterrupt from None
        if "TimeoutError" in text:
            raise urllib.error.URLError(TimeoutError("timed out: %s did not answer within %s s" % (host, timeout))) from None
        if "Requires net access" in text or "NotCapable" in text:
            raise NetworkPermissionError(
                "Network access to %s is not granted: allowNet must include it (%s)" % (host, text)
            ) from None
        raise urllib.error.URLError("%s: %s" % (host, text)) from None
    finally:
        reply = body = None
    msg = http.client.HTTPMessage()
    for k, v in meta["headers"]:
        msg[k] = v
    response = __import__("urllib.response").response.addinfourl(io.BytesIO(payload), msg, meta["url"], meta["status"])
    response.msg = meta["reason"] or http.client.responses.get(meta["status"], "")
    response.reason = response.msg
    return response

def _patch_urllib():
    import urllib.request
    if getattr(urllib.request.HTTPHandler.http_open, "_sandbox", False):
        return
    def http_open(self, req):
        return _fetch_sync(req, req.timeout)
    http_open._sandbox = True
    urllib.request.HTTPHandler.http_open = http_open
    if hasattr(urllib.request, "HTTPSHandler"):
        def https_open(self, req):
            return _fetch_sync(req, req.timeout)
        https_open._sandbox = True
        urllib.request.HTTPSHandler.https_open = https_open

_patch_urllib()

for _name in ("set_request", "run", "drop_js_globals", "cancel_current", "prepare", "display", "HostError", "plan", "mark_installed", "installed", "import_preloaded"):
    setattr(_mod, _name, globals()[_name])
os.makedirs("/home/pyodide", exist_ok=True)
