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
import { dirname, join } from "node:path";
import { decodeBase64, encodeBase64 } from "./_bytes.ts";

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
  let session: SessionFile | undefined;
  const files: Record<string, Uint8Array> = {};
  try {
    if (values.session) {
      try {
        session = JSON.parse(await Deno.readTextFile(values.session));
      } catch (error) {
        if (!(error instanceof Deno.errors.NotFound)) {
          throw new TypeError(
            `Invalid session file: ${values.session} is not a session saved by this CLI (${
              (error as Error).message
            })`,
          );
        }
      }
    }
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
      sessionBytes: session ? decodeBase64(session.sessionBytes) : undefined,
      sessionMetadata: session?.sessionMetadata,
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
  if (values["files-out"]) {
    for (const file of result.files ?? []) {
      const relative = file.path.replace(/^\/home\/pyodide\//, "");
      const target = join(values["files-out"], relative);
      await Deno.mkdir(dirname(target), { recursive: true });
      await Deno.writeFile(target, file.content);
    }
  }
  if (values.json) {
    console.log(JSON.stringify(resultToJson(result)));
  } else if (result.stderr.startsWith(streamedStderr)) {
    // The traceback or the sandbox's own message comes after the stream.
    const tail = result.stderr.slice(streamedStderr.length);
    if (tail) Deno.stderr.writeSync(encoder.encode(tail));
  }
  return result.status === "success" ? 0 : 1;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
