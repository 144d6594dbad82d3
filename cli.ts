/**
 * Command-line runner that behaves like `python`: `deno task run -c "print(1)"`,
 * `deno task run script.py a b` (`sys.argv == ["script.py", "a", "b"]`), or
 * code on stdin; `sys.exit(3)` exits 3, an exception exits 1 with its
 * traceback on stderr. Run `deno task run --help` for the flags.
 *
 * @example
 * ```sh
 * deno task run --allow-read=./data --timeout 10 -c "print(open('data/x.txt').read())"
 * ```
 *
 * @module
 */

import { PyodideSandbox } from "./sandbox.ts";
import type { PyodideSession } from "./session.ts";
import type { SandboxOptions } from "./options.ts";
import { SessionError } from "./_session_bytes.ts";
import type { CodeExecutionResult, SessionMetadata } from "./result.ts";
import {
  applyPackageFlags,
  applyPreloadFlags,
  PACKAGE_FLAG_OPTIONS,
  parseSandboxFlags,
  PRELOAD_FLAG_OPTIONS,
  SANDBOX_FLAG_OPTIONS,
  splitPythonArgs,
} from "./_cli_flags.ts";
import { PERMISSION_NAMES } from "./permissions.ts";
import { encodeBase64 } from "./_bytes.ts";
import {
  readInputFiles,
  readSessionFile,
  writeFilesOut,
  writeSessionFile,
} from "./_files_out.ts";
import { versionText } from "./_version.ts";
import {
  defaultCacheDir,
  PYODIDE_INFO_ARGS,
  resolveDenoPath,
  resolveEnvironment,
  snapshotPath,
} from "./_setup.ts";
import { ensureSnapshot } from "./_snapshot.ts";
import { PYODIDE_VERSION } from "./runner.ts";

const PERMISSION_HELP = PERMISSION_NAMES.map((name) =>
  `  --allow-${name}[=LIST]`.padEnd(32) +
  `Grant ${name} access (all, or a comma-separated list)`
).join("\n");

const HELP = `Run Python in a Pyodide sandbox, like \`python\`.

Usage:
  deno task run [flags] -c CODE [ARG...]
  deno task run [flags] FILE.py [ARG...]
  deno task run [flags] - [ARG...]      (code on stdin)
  echo "print(1)" | deno task run [flags]

Everything after -c CODE, FILE.py or - goes to the program's sys.argv
(["-c", ARG...], ["FILE.py", ARG...], ["-", ARG...]; [""] for stdin).

Flags:
  -c, --code CODE               Python code to run
${PERMISSION_HELP}
  --timeout SECONDS             Time limit of the code (default 60)
  --memory MB                   Memory limit of the Python heap, 64-4096 (default 512)
  --max-output-bytes N          Output kept per stream (default 1048576)
  --session FILE                Resume from FILE if it exists, save the state to it
  --session-secret SECRET       Sign and check session files with HMAC-SHA256
                                (or env SANDBOX_SESSION_SECRET)
  --cache-dir DIR               Snapshot and cache folder
  --stdin TEXT                  Text that input() and sys.stdin read
  --package NAME                Install a package first (repeatable)
  --package-dir DIR             Folder of wheels to install from (offline)
  --package-index URL           Index serving pyodide-lock.json (repeatable)
  --no-package-index            No package index at all (offline)
  --preload NAMES               Packages installed and imported in the snapshot
                                (comma-separated, repeatable)
  --file SANDBOX_PATH=HOST_PATH Copy a host file into the sandbox (repeatable)
  --files-out DIR               Write the files the code created there
  --json                        Print the whole result as JSON (bytes as base64;
                                with --session, the state is in FILE only)
  --version                     Print the module and Pyodide versions
  -h, --help                    Show this help

Python's stdout and stderr are printed as they come. The first run in a cache
folder says on stderr what it prepares (Pyodide, the snapshot); later runs
print nothing extra.

Exit codes:
  0    success (also sys.exit(), sys.exit(0), sys.exit(None))
  N    sys.exit(N) with an integer N (modulo 256), no traceback
  1    a Python exception (traceback on stderr), sys.exit("message")
       (the message on stderr), a timeout, the memory limit, a lost
       session, a failed install, or a --files-out file refused
  2    invalid flags, an unreadable FILE or --file, an invalid session file

Permissions are those of untrusted code: each --allow-* flag is granted to the
Python code. --allow-run and --allow-ffi give up the sandbox.`;

/** The runner's own flags, besides the shared ones and `-c`. */
const CLI_OPTIONS = {
  ...PACKAGE_FLAG_OPTIONS,
  ...PRELOAD_FLAG_OPTIONS,
  session: { type: "string" },
  stdin: { type: "string" },
  file: { type: "string", multiple: true },
  "files-out": { type: "string" },
  json: { type: "boolean", default: false },
  version: { type: "boolean", default: false },
  help: { type: "boolean", short: "h", default: false },
} as const;

const encoder = new TextEncoder();

/** The last character written to stdout or stderr, in order. */
let lastWritten = "\n";

function writeStdout(text: string): void {
  if (text) lastWritten = text.at(-1)!;
  Deno.stdout.writeSync(encoder.encode(text));
}

function writeStderr(text: string): void {
  if (text) lastWritten = text.at(-1)!;
  Deno.stderr.writeSync(encoder.encode(text));
}

/** A line of the runner's own on stderr (never Python's). */
function note(text: string): void {
  writeStderr(`pyodide-sandbox: ${text}\n`);
}

function isTerminal(stream: { isTerminal(): boolean }): boolean {
  try {
    return stream.isTerminal();
  } catch {
    return false;
  }
}

/**
 * Shows a spinner with the elapsed seconds on a terminal's stderr.
 *
 * @returns Stops it and clears its line.
 */
function ticker(what: string): () => void {
  const started = performance.now();
  let frame = 0;
  const draw = () => {
    const seconds = Math.round((performance.now() - started) / 1000);
    writeStderr(`\r${"|/-\\"[frame++ % 4]} ${what} ${seconds} s`);
  };
  draw();
  const id = setInterval(draw, 250);
  return () => {
    clearInterval(id);
    writeStderr("\r\x1b[2K");
  };
}

function hasLocationRecord(cacheDir: string): boolean {
  try {
    for (const entry of Deno.readDirSync(cacheDir)) {
      if (entry.name.startsWith(`locations-${PYODIDE_VERSION}-`)) return true;
    }
  } catch {
    // No folder yet: a first run.
  }
  return false;
}

/** Runs `deno info` on Pyodide; on a terminal, Deno shows its downloads. */
async function fetchPyodide(denoPath: string, tty: boolean): Promise<void> {
  await new Deno.Command(denoPath, {
    args: [...PYODIDE_INFO_ARGS],
    stdin: "null",
    stdout: "null",
    stderr: tty ? "inherit" : "null",
  }).output();
}

/**
 * Prepares what the first run in a cache folder needs (Pyodide in Deno's
 * npm cache, the base snapshot) and says so on stderr, with progress on a
 * terminal. Later runs find both and print nothing.
 */
async function prepareFirstRun(options: SandboxOptions): Promise<void> {
  const cacheDir = options.cacheDir ?? defaultCacheDir();
  const denoPath = resolveDenoPath(options.denoPath);
  const tty = isTerminal(Deno.stderr);
  if (!hasLocationRecord(cacheDir)) {
    note(
      `first run in ${cacheDir}: getting Pyodide ${PYODIDE_VERSION} (from Deno's npm cache, or about 14 MB from the npm registry)`,
    );
    await fetchPyodide(denoPath, tty);
  }
  const env = resolveEnvironment(denoPath, cacheDir);
  try {
    await Deno.stat(snapshotPath(env));
    return;
  } catch {
    // Missing: built below.
  }
  note(
    "building the Pyodide snapshot, once per cache folder (this takes a while)",
  );
  const started = performance.now();
  const stop = tty ? ticker("building the snapshot:") : () => {};
  try {
    await ensureSnapshot(env);
  } finally {
    stop();
  }
  note(
    `snapshot ready in ${((performance.now() - started) / 1000).toFixed(1)} s`,
  );
}

/**
 * Converts a result to JSON-safe form, bytes as base64. Session bytes are
 * never in it: with `--session` they are in the session file.
 */
function resultToJson(
  result: CodeExecutionResult,
  session?: { file: string; metadata?: SessionMetadata },
): Record<string, unknown> {
  const out: Record<string, unknown> = { ...result };
  delete out.sessionBytes;
  if (result.files) {
    out.files = result.files.map((f) => ({
      ...f,
      content: encodeBase64(f.content),
    }));
  }
  if (session) {
    out.sessionFile = session.file;
    if (session.metadata) out.sessionMetadata = session.metadata;
  }
  return out;
}

/**
 * The exit code of a result, as CPython computes it: `sys.exit(N)` gives N
 * (modulo 256) silently, `sys.exit("text")` prints the text and gives 1.
 *
 * @returns The code, and the text to print for a non-integer exit.
 */
function exitStatus(result: CodeExecutionResult): {
  code: number;
  systemExit: boolean;
  message?: string;
} {
  if (result.status === "success") return { code: 0, systemExit: false };
  const error = result.error;
  if (error?.kind !== "exception" || error.type !== "SystemExit") {
    return { code: 1, systemExit: false };
  }
  // str() of the exception, exactly: "3" for sys.exit(3).
  const text = error.message;
  if (/^[+-]?\d{1,400}$/.test(text)) {
    return { code: Number(BigInt(text) & 0xffn), systemExit: true };
  }
  if (text === "True") return { code: 1, systemExit: true };
  return { code: 1, systemExit: true, message: error.message };
}

function readAll(stream: ReadableStream<Uint8Array>): Promise<string> {
  return new Response(stream).text();
}

/** What one run of the program produced. */
interface Run {
  result: CodeExecutionResult;
  streamedStderr: string;
  saved?: { sessionBytes: Uint8Array; sessionMetadata: SessionMetadata };
  saveError?: string;
}

/** How to run: the program, its input and where its output goes. */
interface RunPlan {
  code: string;
  argv: string[];
  stdin?: string;
  files: Record<string, Uint8Array>;
  live: boolean;
  save: boolean;
}

/**
 * Runs the program in a live session: one call sets `sys.argv`, the next
 * runs the code (its line numbers stay the user's), then the state is saved
 * when asked.
 */
async function runInSession(session: PyodideSession, plan: RunPlan) {
  let streamedStderr = "";
  const prelude = await session.execute(
    `__import__("sys").argv = ${JSON.stringify(plan.argv)}`,
  );
  if (prelude.status !== "success") {
    return { result: prelude, streamedStderr };
  }
  const result = await session.execute(plan.code, {
    stdin: plan.stdin,
    files: plan.files,
    onStdout: plan.live ? (text) => writeStdout(text) : undefined,
    onStderr: plan.live
      ? (text) => {
        streamedStderr += text;
        writeStderr(text);
      }
      : undefined,
  });
  const run: Run = { result, streamedStderr };
  if (plan.save) {
    try {
      run.saved = await session.save();
    } catch (error) {
      run.saveError = (error as Error).message;
    }
  }
  return run;
}

/** Prints what the live stream did not show and the runner's own notes. */
function reportRun(run: Run, json: boolean): void {
  const { result } = run;
  const status = exitStatus(result);
  if (!json && result.stderr.startsWith(run.streamedStderr)) {
    // The traceback or the sandbox's own message comes after the stream; a
    // SystemExit shows no traceback, like CPython.
    let tail = result.stderr.slice(run.streamedStderr.length);
    if (status.systemExit && result.error?.traceback) {
      tail = tail.replace(result.error.traceback, "");
    }
    if (status.message !== undefined) {
      tail += status.message.endsWith("\n")
        ? status.message
        : `${status.message}\n`;
    }
    if (tail) writeStderr(tail);
  }
  const cut = [
    result.stdoutTruncated ? "stdout" : "",
    result.stderrTruncated ? "stderr" : "",
  ].filter(Boolean);
  if (cut.length) {
    if (lastWritten !== "\n") writeStderr("\n");
    note(
      `output truncated: ${
        cut.join(" and ")
      } went past --max-output-bytes and the rest was dropped`,
    );
  }
  if (run.saveError !== undefined) {
    note(`the session was not saved: ${run.saveError}`);
  }
}

async function readCode(
  source: ReturnType<typeof splitPythonArgs>["source"],
): Promise<string> {
  if (source.kind === "code") return source.code;
  if (source.kind === "file") {
    try {
      return await Deno.readTextFile(source.path);
    } catch (error) {
      throw new TypeError(
        `Cannot read the program: ${source.path}: ${(error as Error).message}`,
      );
    }
  }
  if (isTerminal(Deno.stdin)) {
    note("reading the program from stdin (end it with Ctrl-D)");
  }
  return await readAll(Deno.stdin.readable);
}

function parseCommandLine(args: string[]) {
  const line = splitPythonArgs(args, {
    ...SANDBOX_FLAG_OPTIONS,
    ...CLI_OPTIONS,
  });
  const parsed = parseSandboxFlags(line.flags, CLI_OPTIONS);
  applyPackageFlags(parsed.values, parsed.sandboxOptions);
  applyPreloadFlags(parsed.values, parsed.sandboxOptions);
  return { ...parsed, line };
}

/**
 * Runs the command line.
 *
 * @param args Arguments (without the program name).
 * @returns The exit code: 0 on success, N for `sys.exit(N)`, 1 for an
 *   error, 2 for invalid arguments.
 * @example
 * ```ts ignore
 * import { main } from "./cli.ts";
 * Deno.exit(await main(["-c", "import sys; print(sys.argv)", "a"]));
 * ```
 */
export async function main(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseCommandLine(args);
  } catch (error) {
    console.error(`${(error as Error).message}\n\n${HELP}`);
    return 2;
  }
  const { values, sandboxOptions, line } = parsed;
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (values.version) {
    console.log(versionText("pyodide-sandbox"));
    return 0;
  }
  let plan: RunPlan;
  let saved;
  let sandbox: PyodideSandbox;
  try {
    plan = {
      code: await readCode(line.source),
      argv: line.argv,
      stdin: values.stdin,
      files: await readInputFiles(values.file ?? []),
      live: !values.json,
      save: values.session !== undefined,
    };
    if (values.session) saved = await readSessionFile(values.session);
    sandbox = new PyodideSandbox({ ...sandboxOptions, poolSize: 0 });
  } catch (error) {
    console.error((error as Error).message);
    return 2;
  }
  let run: Run;
  try {
    await prepareFirstRun(sandboxOptions);
    const session = await openSession(sandbox, saved, values.session);
    if (typeof session === "number") return session;
    try {
      run = await runInSession(session, plan);
    } finally {
      await session.close();
    }
  } catch (error) {
    console.error((error as Error).message);
    return 1;
  } finally {
    await sandbox.close();
  }
  return await finish(run, values);
}

/**
 * Opens the live session, resuming the session file's state.
 *
 * @returns The session, or the exit code when the file's state is refused.
 */
async function openSession(
  sandbox: PyodideSandbox,
  saved: Awaited<ReturnType<typeof readSessionFile>>,
  path: string | undefined,
): Promise<PyodideSession | number> {
  try {
    return await sandbox.openSession(
      saved
        ? {
          sessionBytes: saved.bytes,
          sessionMetadata: saved.session.sessionMetadata,
        }
        : {},
    );
  } catch (error) {
    // A session the sandbox refuses: a message, never a stack trace, and
    // the session file is left alone.
    if (path !== undefined && error instanceof TypeError) {
      console.error(`Invalid session file: ${path}: ${error.message}`);
      return 2;
    }
    if (error instanceof SessionError) {
      console.error(error.message);
      return 1;
    }
    throw error;
  }
}

/** Saves the session, writes the files, prints the result; the exit code. */
async function finish(
  run: Run,
  values: { session?: string; json: boolean; "files-out"?: string },
): Promise<number> {
  if (values.session && run.saved) {
    try {
      writeSessionFile(values.session, run.saved);
    } catch (error) {
      run.saveError = `${values.session}: ${(error as Error).message}`;
    }
  }
  let filesOk = true;
  if (values["files-out"]) {
    try {
      filesOk = await writeFilesOut(values["files-out"], run.result.files);
    } catch (error) {
      console.error((error as Error).message);
      filesOk = false;
    }
  }
  if (values.json) {
    console.log(JSON.stringify(resultToJson(
      run.result,
      values.session
        ? { file: values.session, metadata: run.saved?.sessionMetadata }
        : undefined,
    )));
  }
  reportRun(run, values.json);
  const { code } = exitStatus(run.result);
  if (code !== 0) return code;
  return filesOk && run.saveError === undefined ? 0 : 1;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
