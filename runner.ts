/**
 * The child program: loads Pyodide inside a `deno run` process whose
 * permissions are the sandbox, and runs Python sent by the parent.
 *
 * The parent (see `sandbox.ts`) starts this file with `--no-config`, so its
 * imports are Deno's built-in Node modules, the exact `npm:` specifier of
 * Pyodide, and a fixed set of local files (listed in `_setup.ts`, copied
 * and checked together when the module comes from a registry):
 * `_protocol.ts` (the frames, both directions), `_runner_channel.ts` (stdin),
 * `_runner_captured.ts` (built-ins taken before user code runs, frame
 * output), `_runner_files.ts` (the file mirror), `_runner_state.ts` and
 * `_state_diff.ts` (session state as a diff from the base snapshot),
 * `_runner_lockdown.ts` and
 * `_runner_setup_py.ts` (the Python helpers, generated from
 * `_runner_setup.py`). The nonce in every stdout frame is a secret the
 * parent sends first; user code cannot learn it, so anything it writes to
 * the real stdout is ignored by the parent and can never pass for a result.
 *
 * `main` is a dispatch loop: load, connect, warm, then serve exec and save
 * frames until stdin closes.
 *
 * @module
 */

/** The Pyodide version the runner loads; snapshots and sessions record it. */
export const PYODIDE_VERSION = "314.0.7";

import {
  type ExecRequest,
  type InitRequest,
  INSTALL_CALL,
  MAX_RESULT_HEADER_BYTES,
  NONCE_BYTES,
  ToChild,
  toJson,
  ToParent,
} from "./_protocol.ts";
import {
  addState,
  garbageCollector,
  load,
  releaseLoadBuffers,
} from "./_runner_state.ts";
import { startLoad } from "./_runner_prepare.ts";
import {
  append,
  apply,
  byteLength,
  encode,
  encoder,
  encodeText,
  parse,
  type Pyodide,
  record,
  send,
  sendStream,
  setNonce,
  U8,
  u8Set,
  view,
} from "./_runner_captured.ts";
import {
  changedFiles,
  copyHostIn,
  copyHostOut,
  fileStates,
  HOME,
  RESERVED,
  sendFiles,
  SITE_PACKAGES,
  within,
  writeInputFiles,
} from "./_runner_files.ts";
import { lockDown } from "./_runner_lockdown.ts";
import { abortSuspendedFetches, installHttp } from "./_runner_http.ts";
import {
  type Channel,
  type InMessage,
  openChannel,
} from "./_runner_channel.ts";

// The host used to import these from here; the protocol lives in
// _protocol.ts now.
export {
  encodeToChild,
  FRAME_MAGIC,
  INSTALL_CALL,
  MAX_REPLY_BYTES,
  MAX_RESULT_HEADER_BYTES,
  NONCE_BYTES,
  ToChild,
  ToParent,
} from "./_protocol.ts";

/**
 * How long a restored child with no call yet waits before it collects its
 * load's garbage (see `main()`).
 */
const IDLE_GC_MS = 1000;

/** Python's helpers in `_pyodide_sandbox` (see `_runner_setup.py`). */
interface Helpers {
  setRequest(code: string): void;
  dropJsGlobals(): string;
  cancelCurrent(): void;
  prepare(functions: string): void;
  plan(code: string, required: string): string;
  markInstalled(name: string, version: string): void;
  installed(): string;
  importPreloaded(): void;
}

/** A loaded child: Pyodide, its helpers and the channel. */
interface Child {
  pyodide: Pyodide;
  init: InitRequest;
  channel: Channel;
  py: Helpers;
  zlib: typeof import("node:zlib");
  /** Asks the parent and blocks until it answers (or an interrupt). */
  askParent(request: unknown): string;
  /** Pyodide's own installer: unpacks a wheel and loads its libraries. */
  installWheel: (data: Uint8Array, fileName: string, dir: string) => unknown;
  /** Pyodide's install folder for a lock's `install_dir`. */
  installDir: (name: string) => string;
}

/** Python's helpers, taken once (user code may replace the module's). */
function helpers(pyodide: Pyodide): Helpers {
  const module = pyodide.pyimport("_pyodide_sandbox");
  return {
    setRequest: module.set_request,
    dropJsGlobals: module.drop_js_globals,
    cancelCurrent: module.cancel_current,
    prepare: module.prepare,
    plan: module.plan,
    markInstalled: module.mark_installed,
    installed: module.installed,
    importPreloaded: module.import_preloaded,
  };
}

/** Wires Pyodide to the channel: output, interrupts, the JS hooks. */
function connect(
  pyodide: Pyodide,
  init: InitRequest,
  channel: Channel,
  zlib: typeof import("node:zlib"),
): Child {
  const { interruptBuffer, replyControl, replyData } = channel;
  pyodide.setInterruptBuffer(new U8(interruptBuffer));
  const sleepCell = new Int32Array(new SharedArrayBuffer(4));
  Object.defineProperty(globalThis, "__pyodideSandboxSleep", {
    value: (seconds: number) => {
      const ms = Number(seconds) * 1000;
      Atomics.wait(sleepCell, 0, 0, ms > 0 ? ms : 0);
    },
  });
  const py = helpers(pyodide);
  Object.defineProperty(globalThis, "__pyodideSandboxDisplay", {
    value: (json: string) => send(ToParent.display, parse(json)),
  });
  const replyCounter = new Int32Array(replyControl);
  const replyDecoder = new TextDecoder();
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
  channel.onInterrupt = () => interrupt(channel, py);
  installHttp();
  // Taken now: the installer is what Pyodide's loadPackage uses (shared
  // libraries go to their folder and are loaded, like Pyodide does it).
  const api = (pyodide as unknown as {
    _api: {
      install: (...args: unknown[]) => unknown;
      package_loader: { get_install_dir: (name: string) => string };
    };
  })._api;
  const pyodideInstall = api.install;
  const getInstallDir = api.package_loader.get_install_dir;
  const metadata = new Map([["INSTALLER", "pyodide-sandbox"]]);
  const installWheel = (data: Uint8Array, fileName: string, dir: string) =>
    pyodideInstall(data, fileName, dir, metadata);
  const installDir = (name: string) =>
    name === "site" ? SITE_PACKAGES : String(getInstallDir(name));
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
  return {
    pyodide,
    init,
    channel,
    py,
    zlib,
    askParent,
    installWheel,
    installDir,
  };
}

/** An interrupt frame while Python awaits (not running bytecode). */
function interrupt(channel: Channel, py: Helpers): void {
  // Python is not running bytecode (the event loop is turning), so the
  // buffer would only fire later, somewhere in the runner: cancel instead.
  new U8(channel.interruptBuffer)[0] = 0;
  // Suspended in a synchronous fetch (urllib): the fetch is aborted and
  // Python raises KeyboardInterrupt where it waits.
  if (abortSuspendedFetches()) return;
  try {
    py.cancelCurrent();
  } catch (error) {
    send(
      ToParent.stderr,
      null,
      apply(encode, encoder, [`cancel failed: ${error}\n`]),
    );
  }
}

/** Installs what the code imports; returns an error message or "". */
async function install(child: Child, request: ExecRequest): Promise<string> {
  if (!request.install) return "";
  const plan = parse(
    child.py.plan(request.code, toJson(request.install.packages)),
  ) as { imports: string[]; required: string[]; installed: string[] };
  const required = plan.required;
  if (plan.imports.length === 0 && required.length === 0) return "";
  const reply = parse(child.askParent({
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
      installDir?: string;
      /** Unpack only: its libraries load when Python imports it. */
      unpackOnly?: boolean;
      data: string;
    }[];
  };
  if (reply.interrupted) return "Installing packages was interrupted";
  if (!reply.ok) return reply.message ?? "Installing packages failed";
  for (const wheel of reply.value ?? []) {
    const bytes = Uint8Array.from(atob(wheel.data), (c) => c.charCodeAt(0));
    try {
      // Into site-packages (or the shared-library folder), not the working
      // folder, where the package's files would show up in result.files.
      const dir = child.installDir(wheel.installDir ?? "site");
      if (wheel.unpackOnly) {
        const format = wheel.fileName.endsWith(".whl") ? "wheel" : "zip";
        child.pyodide.unpackArchive(bytes, format, { extractDir: dir });
      } else {
        await child.installWheel(bytes, wheel.fileName, dir);
      }
    } catch (error) {
      return `Package "${wheel.name}" could not be unpacked: ${error}`;
    }
    child.py.markInstalled(wheel.name, wheel.version);
  }
  return "";
}

/** Runs the runner's own Python once, so that the first call is fast. */
async function runPython(child: Child, code: string): Promise<string> {
  child.py.setRequest(code);
  return await child.pyodide.runPythonAsync(
    "await __import__('_pyodide_sandbox').run()",
    { globals: child.pyodide.toPy({}) },
  );
}

/** Answers a save frame. */
function serveSave(child: Child): void {
  const header = record();
  const bin = addState(child, header);
  header.packages = parse(child.py.installed());
  send(ToParent.saved, header, bin);
}

/** A result frame for code that did not run. */
function notRun(header: Record<string, unknown>): void {
  header.notRun = true;
  send(ToParent.result, header);
}

/**
 * Before the code runs: input files, the granted host files, the file
 * states to compare with, packages.
 *
 * @returns The file states, or `undefined` when the code must not run (a
 *   result was sent).
 */
async function beforeRun(
  child: Child,
  request: ExecRequest,
  bin: Uint8Array,
): Promise<Map<string, string> | undefined> {
  const pyodide = child.pyodide;
  setStdin(pyodide, request.stdin);
  const filesError = writeInputFiles(pyodide, request.files ?? [], bin);
  if (filesError) {
    // A files entry the filesystem refuses (a path under a file, an
    // existing folder): the code does not run.
    notRun({
      out: {
        ok: false,
        error: {
          type: "OSError",
          message: filesError,
          traceback: `OSError: ${filesError}\n`,
        },
      },
    });
    return undefined;
  }
  const warnings: string[] = [];
  const grants = [...(request.hostRead ?? []), ...(request.hostWrite ?? [])];
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
  const installError = await install(child, request);
  if (installError) {
    notRun({
      out: {
        ok: false,
        error: { type: "InstallError", message: installError },
      },
      installError: true,
    });
    return undefined;
  }
  return before;
}

/** Sends the files the run changed in the working folder; copies out. */
function afterRun(
  child: Child,
  request: ExecRequest,
  before: Map<string, string>,
): void {
  // From here on, user code has run: captured values only.
  const pyodide = child.pyodide;
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
  sendFiles(pyodide, inHome, request.maxFileBytes, request.maxTotalFileBytes);
}

/** Answers an exec frame: runs the code and sends its result. */
async function serveExec(child: Child, message: InMessage): Promise<void> {
  const request = parse(message.json) as ExecRequest;
  const interruptFlag = () => new U8(child.channel.interruptBuffer);
  interruptFlag()[0] = 0;
  const before = await beforeRun(child, request, message.bin);
  if (!before) return;
  let out: string;
  try {
    child.py.prepare(toJson(request.functions ?? []));
    out = await runPython(child, request.code);
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
  afterRun(child, request, before);
  interruptFlag()[0] = 0;
  const header = record();
  // One typed object on the wire: the report is parsed (with the captured
  // JSON.parse) and embedded, not sent as JSON inside JSON.
  header.out = parse(boundedOut(out));
  header.packages = parse(child.py.installed());
  const bin = request.wantState ? addState(child, header) : undefined;
  send(ToParent.result, header, bin);
}

/** Walks the call path once (pooled children) before user code runs. */
async function warm(child: Child): Promise<void> {
  // A pooled child waits for work anyway: walk the call path once (code
  // that does nothing, in the namespace the call will use) so that the
  // call does not pay for first-time work (lazily compiled wasm and JS,
  // import caches). No user code has run, so the interpreter stays fresh.
  setStdin(child.pyodide, undefined);
  fileStates(child.pyodide, [HOME]);
  child.py.prepare("[]");
  await runPython(child, "pass");
  // Compiled packages of a preloaded snapshot load now, while idle.
  child.py.importPreloaded();
}

async function main(): Promise<void> {
  // Before the init frame: a child spawned ahead of need has it done by
  // the time its state comes.
  const loader = startLoad();
  const channel = openChannel();
  const first = await channel.next();
  if (first.type !== ToChild.init) throw new Error("Expected an init frame");
  const init = parse(first.json) as InitRequest;
  // The nonce is the first bytes of the attachment (never a string); the
  // packed session state, if any, follows.
  setNonce(first.bin.slice(0, NONCE_BYTES));
  // Loading starts here (ready reports its time), as in the snapshot mode.
  const zlib = await import("node:zlib");
  const started = performance.now();
  const state = first.bin.subarray(NONCE_BYTES);
  const pyodide = await load(init, state, zlib, started, loader);
  if (!pyodide) return;
  for (const path of init.revokeRead ?? []) {
    try {
      Deno.permissions.revokeSync({ name: "read", path });
    } catch {
      // Nothing to revoke.
    }
  }
  const child = connect(pyodide, init, channel, zlib);
  if (init.warm) await warm(child);
  // What the load left (the inflated session state; what Pyodide keeps of
  // its load, dropped here) is garbage now: free it before the child idles.
  // A restored child's call comes at once: then after that call (or after
  // IDLE_GC_MS if none comes), not in front of it (measured 70-110 ms).
  releaseLoadBuffers(pyodide);
  const collect = garbageCollector();
  let pendingGc = state.length > 0;
  let running = false;
  const collectOnce = () => {
    if (!pendingGc || running) return;
    pendingGc = false;
    collect();
  };
  if (pendingGc) Deno.unrefTimer(setTimeout(collectOnce, IDLE_GC_MS));
  else collect();
  // Last step before any user code can run: nothing below may need what
  // this takes away.
  lockDown();
  send(ToParent.ready, { loadMs: performance.now() - started });
  for (;;) {
    const message = await channel.next();
    if (message.type === ToChild.exec) {
      running = true;
      await serveExec(child, message);
      running = false;
      if (init.oneShot) Deno.exit(0);
      collectOnce();
    } else if (message.type === ToChild.save) {
      serveSave(child);
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

if (import.meta.main) {
  try {
    await main();
  } catch (error) {
    send(ToParent.fatal, { message: String(error) });
    Deno.exit(70);
  }
}
