/**
 * Command-line runner: `deno task run -c "print(1)"`, `deno task run
 * script.py`, or code on stdin. Run `deno task run --help` for the flags.
 *
 * @example
 * ```sh
 * deno task run --allow-read=./data --timeout 10 -c "print(open('data/x.txt').read())"
 * ```
 *
 * @module
 */

import { PyodideSandbox } from "./sandbox.ts";
import type { CodeExecutionResult, SessionMetadata } from "./result.ts";
import { parseSandboxFlags } from "./_cli_flags.ts";
import { PERMISSION_NAMES } from "./permissions.ts";
import { decodeBase64, encodeBase64 } from "./_bytes.ts";
import { writeResultFiles } from "./_files_out.ts";

const PERMISSION_HELP = PERMISSION_NAMES.map((name) =>
  `  --allow-${name}[=LIST]`.padEnd(32) +
  `Grant ${name} access (all, or a comma-separated list)`
).join("\n");

const HELP = `Run Python in a Pyodide sandbox.

Usage:
  deno task run [flags] -c CODE
  deno task run [flags] FILE.py
  echo "print(1)" | deno task run [flags]

Flags:
  -c, --code CODE               Python code to run
${PERMISSION_HELP}
  --timeout SECONDS             Limit of the whole run (default 60)
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
  --file SANDBOX_PATH=HOST_PATH Copy a host file into the sandbox (repeatable)
  --files-out DIR               Write the files the code created there
  --json                        Print the whole result as JSON (bytes as base64)
  -h, --help                    Show this help

Without --json, Python's stdout and stderr are printed as they come, and the
exit code is 0 on success and 1 on any error (details on stderr).
Permissions are those of untrusted code: each --allow-* flag is granted to the
Python code. --allow-run and --allow-ffi give up the sandbox.`;

interface SessionFile {
  sessionBytes: string;
  sessionMetadata: SessionMetadata;
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return typeof value === "object" ? "an object" : typeof value;
}

/**
 * Parses the text of a session file saved by this CLI.
 *
 * @param text The file's text.
 * @returns The session and its decoded bytes.
 * @throws {TypeError} When the text is not such a session (the message is
 *   the detail).
 */
function parseSessionFile(
  text: string,
): { session: SessionFile; bytes: Uint8Array } {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new TypeError(`not JSON (${(error as Error).message})`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new TypeError(`expected a JSON object, got ${describe(value)}`);
  }
  const { sessionBytes, sessionMetadata } = value as Record<string, unknown>;
  if (typeof sessionBytes !== "string" || sessionBytes === "") {
    throw new TypeError(
      `"sessionBytes" must be a non-empty base64 string, got ${
        describe(sessionBytes)
      }`,
    );
  }
  let bytes: Uint8Array;
  try {
    bytes = decodeBase64(sessionBytes);
  } catch {
    throw new TypeError('"sessionBytes" is not valid base64');
  }
  if (
    sessionMetadata === null || typeof sessionMetadata !== "object" ||
    Array.isArray(sessionMetadata)
  ) {
    throw new TypeError(
      `"sessionMetadata" must be an object, got ${describe(sessionMetadata)}`,
    );
  }
  for (const key of ["pyodideVersion", "createdAt", "updatedAt"]) {
    const field = (sessionMetadata as Record<string, unknown>)[key];
    if (typeof field !== "string") {
      throw new TypeError(
        `"sessionMetadata.${key}" must be a string, got ${describe(field)}`,
      );
    }
  }
  return {
    session: { sessionBytes, sessionMetadata } as SessionFile,
    bytes,
  };
}

async function readSessionFile(
  path: string,
): Promise<{ session: SessionFile; bytes: Uint8Array } | undefined> {
  let data: Uint8Array;
  try {
    data = await Deno.readFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return undefined;
    throw new TypeError(
      `Invalid session file: ${path} could not be read (${
        (error as Error).message
      })`,
    );
  }
  try {
    let text: string;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(data);
    } catch {
      throw new TypeError("not UTF-8 text");
    }
    return parseSessionFile(text);
  } catch (error) {
    throw new TypeError(
      `Invalid session file: ${path} is not a session saved by this CLI: ${
        (error as Error).message
      }`,
    );
  }
}

/**
 * Writes result files into `--files-out` and reports anything not written.
 *
 * @returns Whether every file that belongs there was written.
 */
async function writeFilesOut(
  dir: string,
  files: CodeExecutionResult["files"],
): Promise<boolean> {
  let ok = true;
  for (const outcome of await writeResultFiles(dir, files ?? [])) {
    if (outcome.status === "written") continue;
    if (outcome.status === "refused") ok = false;
    console.error(
      `${
        outcome.status === "refused" ? "Refused" : "Skipped"
      } a result file: ${outcome.path}: ${outcome.reason}`,
    );
  }
  return ok;
}

/**
 * Converts a result to JSON-safe form, bytes as base64.
 *
 * @param result The result.
 * @returns A JSON-safe object.
 */
function resultToJson(
  result: CodeExecutionResult,
): Record<string, unknown> {
  const out: Record<string, unknown> = { ...result };
  if (result.sessionBytes) out.sessionBytes = encodeBase64(result.sessionBytes);
  if (result.files) {
    out.files = result.files.map((f) => ({
      ...f,
      content: encodeBase64(f.content),
    }));
  }
  return out;
}

async function readAll(stream: ReadableStream<Uint8Array>): Promise<string> {
  return await new Response(stream).text();
}

/**
 * Runs the command line.
 *
 * @param args Arguments (without the program name).
 * @returns The exit code.
 */
export async function main(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseSandboxFlags(args, {
      code: { type: "string", short: "c" },
      session: { type: "string" },
      stdin: { type: "string" },
      package: { type: "string", multiple: true },
      "package-dir": { type: "string" },
      "package-index": { type: "string", multiple: true },
      file: { type: "string", multiple: true },
      "files-out": { type: "string" },
      json: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    }, { allowPositionals: true });
  } catch (error) {
    console.error(`${(error as Error).message}\n\n${HELP}`);
    return 2;
  }
  const { values, positionals, sandboxOptions } = parsed;
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  let code: string;
  try {
    if (values.code !== undefined) {
      if (positionals.length > 0) {
        throw new TypeError("Invalid arguments: give either -c CODE or a file");
      }
      code = values.code;
    } else if (positionals.length === 1) {
      code = await Deno.readTextFile(positionals[0]);
    } else if (positionals.length > 1) {
      throw new TypeError(
        `Invalid arguments: expected one file, got ${positionals.length}`,
      );
    } else {
      code = await readAll(Deno.stdin.readable);
    }
  } catch (error) {
    console.error((error as Error).message);
    return 2;
  }
  let sandbox: PyodideSandbox;
  let session: { session: SessionFile; bytes: Uint8Array } | undefined;
  const files: Record<string, Uint8Array> = {};
  try {
    if (values.session) session = await readSessionFile(values.session);
    for (const spec of values.file ?? []) {
      const at = spec.indexOf("=");
      if (at <= 0) {
        throw new TypeError(
          `Invalid --file: expected SANDBOX_PATH=HOST_PATH, got "${spec}"`,
        );
      }
      files[spec.slice(0, at)] = await Deno.readFile(spec.slice(at + 1));
    }
    sandbox = new PyodideSandbox({
      ...sandboxOptions,
      stateful: values.session !== undefined,
      poolSize: 0,
      packages: values.package,
      packageDir: values["package-dir"],
      packageIndexUrls: values["package-index"],
    });
  } catch (error) {
    console.error((error as Error).message);
    return 2;
  }
  const encoder = new TextEncoder();
  const live = !values.json;
  let streamedStderr = "";
  let result: CodeExecutionResult;
  try {
    result = await sandbox.execute(code, {
      stdin: values.stdin,
      files,
      sessionBytes: session?.bytes,
      sessionMetadata: session?.session.sessionMetadata,
      onStdout: live
        ? (text) => void Deno.stdout.writeSync(encoder.encode(text))
        : undefined,
      onStderr: live
        ? (text) => {
          streamedStderr += text;
          Deno.stderr.writeSync(encoder.encode(text));
        }
        : undefined,
    });
  } catch (error) {
    // A bad argument (a session whose metadata the sandbox refuses): a
    // message, never a stack trace, and the session file is left alone.
    console.error(
      values.session && error instanceof TypeError
        ? `Invalid session file: ${values.session}: ${error.message}`
        : (error as Error).message,
    );
    return error instanceof TypeError ? 2 : 1;
  } finally {
    await sandbox.close();
  }
  if (values.session && result.sessionBytes && result.sessionMetadata) {
    const saved: SessionFile = {
      sessionBytes: encodeBase64(result.sessionBytes),
      sessionMetadata: result.sessionMetadata,
    };
    await Deno.writeTextFile(values.session, JSON.stringify(saved), {
      mode: 0o600,
    });
  }
  let filesOk = true;
  if (values["files-out"]) {
    try {
      filesOk = await writeFilesOut(values["files-out"], result.files);
    } catch (error) {
      console.error((error as Error).message);
      filesOk = false;
    }
  }
  if (values.json) {
    console.log(JSON.stringify(resultToJson(result)));
  } else if (result.stderr.startsWith(streamedStderr)) {
    // The traceback or the sandbox's own message comes after the stream.
    const tail = result.stderr.slice(streamedStderr.length);
    if (tail) Deno.stderr.writeSync(encoder.encode(tail));
  }
  return result.status === "success" && filesOk ? 0 : 1;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
