/**
 * The description of a `PythonTool`, built from the sandbox's validated
 * settings: what a model must know to write code that works there.
 *
 * @module
 */

import type { PyodideSandbox } from "./sandbox.ts";
import { PYODIDE_VERSION } from "./runner.ts";
import type { PermissionOptions } from "./permissions.ts";

/** The settings the description is made of. */
interface DescribedSettings {
  timeoutSeconds: number;
  memoryLimitMb: number;
  maxOutputBytes: number;
  permissions: Required<PermissionOptions>;
  packages: string[];
  packageResolver: { readonly enabled: boolean };
  functions: Record<string, unknown>;
}

/** How the tool keeps state. */
export type ToolState =
  | { kind: "stateless" }
  | { kind: "session" }
  | { kind: "pool"; idleSeconds: number };

/**
 * The Python version of the bundled Pyodide: Pyodide `3XY.a.b` is
 * CPython 3.XY.
 *
 * @returns E.g. `"3.14"`.
 */
export function pythonVersion(): string {
  const major = Number(PYODIDE_VERSION.split(".")[0]);
  return `${Math.floor(major / 100)}.${major % 100}`;
}

/** The sandbox's validated settings (a protected member, read here). */
function settingsOf(sandbox: PyodideSandbox): DescribedSettings {
  return sandbox["settings"];
}

function seconds(n: number): string {
  return n === 1 ? "1 second" : `${n} seconds`;
}

function list(items: readonly string[], max = 12): string {
  const shown = items.slice(0, max).join(", ");
  return items.length > max ? `${shown} and ${items.length - max} more` : shown;
}

function bytes(n: number): string {
  if (n >= 1024 * 1024 && n % (1024 * 1024) === 0) {
    return `${n / 1024 ** 2} MiB`;
  }
  if (n >= 1024 && n % 1024 === 0) return `${n / 1024} KiB`;
  return `${n} bytes`;
}

function grant(value: boolean | string[], all: string, none: string): string {
  if (value === true) return all;
  if (value === false || value.length === 0) return none;
  return list(value);
}

function reachLines(p: Required<PermissionOptions>): string[] {
  const net = grant(p.allowNet, "any host", "");
  const lines = [
    net
      ? `Network: ${net}${
        p.allowNet === true ? "" : " only"
      }; use \`await pyodide.http.pyfetch(url)\` (urllib and requests do not work).`
      : "Network: none (no sockets, no HTTP).",
  ];
  const read = grant(p.allowRead, "all of them", "");
  const write = grant(p.allowWrite, "all of them", "");
  lines.push(
    read || write
      ? `Host files: ${read ? `read ${read}` : ""}${read && write ? "; " : ""}${
        write ? `write ${write}` : ""
      }.`
      : "Host files: none; the working folder /home/pyodide is the sandbox's own, in memory.",
  );
  if (
    p.allowEnv !== false && !(Array.isArray(p.allowEnv) && !p.allowEnv.length)
  ) {
    lines.push(
      `Environment variables (os.environ): ${grant(p.allowEnv, "all", "")}.`,
    );
  }
  if (
    p.allowRun !== false && !(Array.isArray(p.allowRun) && !p.allowRun.length)
  ) {
    lines.push(`Subprocesses: ${grant(p.allowRun, "any program", "")}.`);
  }
  return lines;
}

function stateLine(state: ToolState): string {
  switch (state.kind) {
    case "stateless":
      return "Every call starts from a fresh interpreter: nothing (variables, imports, files) persists between calls.";
    case "session":
      return "Variables, imports and files persist between calls.";
    case "pool":
      return `Variables, imports and files persist between calls in this conversation; after ${
        seconds(state.idleSeconds)
      } unused the session is closed and the next call starts fresh (it says so on stderr).`;
  }
}

/**
 * Describes what code run by the tool can do and use.
 *
 * @param sandbox The tool's sandbox.
 * @param state How the tool keeps state.
 * @returns The description, a few short lines.
 */
export function describeSandbox(
  sandbox: PyodideSandbox,
  state: ToolState,
): string {
  const s = settingsOf(sandbox);
  const functions = Object.keys(s.functions);
  const lines = [
    `Run Python ${pythonVersion()} code (Pyodide ${PYODIDE_VERSION}, CPython in WebAssembly) in an isolated sandbox. Returns stdout, stderr, rich displays (images as images) and the value of the last expression; errors come with the Python traceback.`,
    stateLine(state),
    `Limits per call: ${
      seconds(s.timeoutSeconds)
    } in all (waiting for a free slot and start-up included), ${s.memoryLimitMb} MB of memory, ${
      bytes(s.maxOutputBytes)
    } each of stdout and stderr (the rest is dropped).`,
    `Packages: the standard library${
      s.packages.length ? `, and installed: ${list(s.packages, 30)}` : ""
    }; ${
      s.packageResolver.enabled
        ? "other packages are installed on import when the operator's package sources have them (pip cannot be used)"
        : "no others can be installed (no pip, no package index)"
    }.`,
    ...reachLines(s.permissions),
  ];
  if (functions.length) {
    lines.push(
      `Host functions, called as plain synchronous functions (also \`from host import ...\`): ${
        list(functions, 30)
      }.`,
    );
  }
  lines.push("input() raises EOFError: there is no stdin.");
  return lines.join("\n");
}
