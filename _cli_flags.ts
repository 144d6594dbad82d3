/**
 * Command-line flags shared by `deno task run`, `deno task serve` and
 * `deno task mcp`: the permission flags spelled exactly as `deno run` spells
 * them (`--allow-read`, `--allow-read=/a,/b`, ...) and the limit flags
 * (`--timeout SECONDS`, `--memory MB`, ...).
 *
 * @module
 */

import { parseArgs, type ParseArgsOptionsConfig } from "node:util";
import {
  PERMISSION_NAMES,
  type PermissionName,
  permissionOptionKey,
  type PermissionOptions,
} from "./permissions.ts";
import type { SandboxOptions } from "./options.ts";

const PERMISSION_FLAG = /^--allow-([a-z]+)(?:=(.*))?$/s;

/**
 * Takes the `--allow-<name>` and `--allow-<name>=a,b` flags out of an
 * argument list. A bare flag grants the whole permission; repeated flags
 * merge, and a bare flag wins over lists. Parsing stops at `--`.
 *
 * @param args Command-line arguments.
 * @returns The permissions and the other arguments, in order.
 * @throws {TypeError} When a permission name is unknown or a list is empty
 *   (`--allow-read=`).
 * @example
 * ```ts
 * import { extractPermissionFlags } from "./_cli_flags.ts";
 * const { permissions, rest } = extractPermissionFlags([
 *   "--allow-read=/data,/tmp",
 *   "--allow-net",
 *   "--timeout",
 *   "5",
 * ]);
 * // permissions: { allowRead: ["/data", "/tmp"], allowNet: true }
 * // rest: ["--timeout", "5"]
 * ```
 */
export function extractPermissionFlags(
  args: readonly string[],
): { permissions: PermissionOptions; rest: string[] } {
  const permissions: PermissionOptions = {};
  const rest: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--") {
      rest.push(...args.slice(i));
      break;
    }
    const match = PERMISSION_FLAG.exec(arg);
    if (!match) {
      rest.push(arg);
      continue;
    }
    const name = match[1] as PermissionName;
    if (!PERMISSION_NAMES.includes(name)) {
      throw new TypeError(
        `Unknown permission flag: "--allow-${name}", expected one of ${
          PERMISSION_NAMES.map((n) => `--allow-${n}`).join(", ")
        }`,
      );
    }
    const key = permissionOptionKey(name);
    if (match[2] === undefined) {
      permissions[key] = true;
      continue;
    }
    const entries = match[2].split(",");
    if (entries.some((e) => e.length === 0)) {
      throw new TypeError(
        `Invalid --allow-${name} value: "${
          match[2]
        }" has an empty entry, expected a comma-separated list`,
      );
    }
    const current = permissions[key];
    if (current === true) continue;
    permissions[key] = [...new Set([...(current || []), ...entries])];
  }
  return { permissions, rest };
}

/**
 * Reads a number flag.
 *
 * @param flag The flag's name, for messages (`--timeout`).
 * @param value Its text, or undefined when absent.
 * @param options Range and whether only integers are accepted.
 * @returns The number, or undefined when the flag is absent.
 * @throws {TypeError} When the text is not a number.
 * @throws {RangeError} When the number is out of range.
 * @example
 * ```ts
 * import { parseNumberFlag } from "./_cli_flags.ts";
 * parseNumberFlag("--port", "8000", { min: 0, max: 65535, integer: true }); // 8000
 * ```
 */
export function parseNumberFlag(
  flag: string,
  value: string | undefined,
  options: { min: number; max: number; integer?: boolean },
): number | undefined {
  if (value === undefined) return undefined;
  const what = options.integer ? "an integer" : "a number";
  const n = value.trim() === "" ? NaN : Number(value);
  if (!Number.isFinite(n) || (options.integer && !Number.isInteger(n))) {
    throw new TypeError(
      `Invalid ${flag}: expected ${what} from ${options.min} to ${options.max}, got "${value}"`,
    );
  }
  if (n < options.min || n > options.max) {
    throw new RangeError(
      `Invalid ${flag}: expected ${what} from ${options.min} to ${options.max}, got ${n}`,
    );
  }
  return n;
}

/** The flags every entry point shares, as `node:util` `parseArgs` options. */
export const SANDBOX_FLAG_OPTIONS = {
  timeout: { type: "string" },
  memory: { type: "string" },
  "pool-size": { type: "string" },
  "max-output-bytes": { type: "string" },
  "session-secret": { type: "string" },
  "cache-dir": { type: "string" },
} as const satisfies ParseArgsOptionsConfig;

/** What {@linkcode parseSandboxFlags} returns. */
export interface ParsedSandboxFlags<V> {
  /** Options for `new PyodideSandbox()`: permissions and limits. */
  sandboxOptions: SandboxOptions;
  /** The values of the caller's own flags (and the shared ones, as text). */
  values: V;
  /** Positional arguments. */
  positionals: string[];
}

/**
 * Parses the permission flags, the shared limit flags (`--timeout SECONDS`,
 * `--memory MB`, `--pool-size N`, `--max-output-bytes N`,
 * `--session-secret S` or env `SANDBOX_SESSION_SECRET`, `--cache-dir DIR`)
 * and the caller's own flags. Unknown flags are rejected.
 *
 * @param args Command-line arguments (`Deno.args`).
 * @param extra The caller's own `parseArgs` options.
 * @param config `allowPositionals` (default false) and an environment
 *   lookup (default `Deno.env.get`, errors ignored).
 * @returns The sandbox options, the flag values and the positionals.
 * @throws {TypeError} When a flag is unknown, lacks its value or is not a
 *   number where one is expected.
 * @throws {RangeError} When a number is out of range.
 * @example
 * ```ts
 * import { parseSandboxFlags } from "./_cli_flags.ts";
 * const { sandboxOptions, values } = parseSandboxFlags(
 *   ["--allow-net=example.com", "--timeout", "5", "--port", "9000"],
 *   { port: { type: "string" } },
 * );
 * // sandboxOptions: { allowNet: ["example.com"], timeoutSeconds: 5 }
 * // values.port: "9000"
 * ```
 */
export function parseSandboxFlags<T extends ParseArgsOptionsConfig>(
  args: readonly string[],
  extra: T,
  config: {
    allowPositionals?: boolean;
    env?: (name: string) => string | undefined;
  } = {},
): ParsedSandboxFlags<
  ReturnType<typeof parseArgs<{ options: T & typeof SANDBOX_FLAG_OPTIONS }>>[
    "values"
  ]
> {
  const { permissions, rest } = extractPermissionFlags(args);
  for (const name of Object.keys(extra)) {
    if (name.startsWith("allow-") || name in SANDBOX_FLAG_OPTIONS) {
      throw new TypeError(
        `Invalid flag definition: "--${name}" is already a shared flag`,
      );
    }
  }
  const options = { ...SANDBOX_FLAG_OPTIONS, ...extra } as
    & T
    & typeof SANDBOX_FLAG_OPTIONS;
  let parsed;
  try {
    parsed = parseArgs({
      args: rest,
      options,
      strict: true,
      allowPositionals: config.allowPositionals ?? false,
    });
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    throw new TypeError(`Invalid command line: ${message}`);
  }
  const v = parsed.values as Record<string, unknown>;
  const text = (name: string): string | undefined => {
    const value = v[name];
    if (value === undefined) return undefined;
    if (typeof value !== "string") {
      throw new TypeError(`Invalid --${name}: expected a value`);
    }
    return value;
  };
  const env = config.env ?? envLookup;
  const sandboxOptions: SandboxOptions = { ...permissions };
  const timeout = parseNumberFlag("--timeout", text("timeout"), {
    min: 0.001,
    max: 86_400,
  });
  if (timeout !== undefined) sandboxOptions.timeoutSeconds = timeout;
  const memory = parseNumberFlag("--memory", text("memory"), {
    min: 64,
    max: 4096,
    integer: true,
  });
  if (memory !== undefined) sandboxOptions.memoryLimitMb = memory;
  const pool = parseNumberFlag("--pool-size", text("pool-size"), {
    min: 0,
    max: 64,
    integer: true,
  });
  if (pool !== undefined) sandboxOptions.poolSize = pool;
  const maxOutput = parseNumberFlag(
    "--max-output-bytes",
    text("max-output-bytes"),
    { min: 0, max: 1024 ** 3, integer: true },
  );
  if (maxOutput !== undefined) sandboxOptions.maxOutputBytes = maxOutput;
  const secret = text("session-secret") ?? env("SANDBOX_SESSION_SECRET");
  if (secret !== undefined && secret !== "") {
    sandboxOptions.sessionSecret = secret;
  }
  const cacheDir = text("cache-dir");
  if (cacheDir !== undefined) sandboxOptions.cacheDir = cacheDir;
  return {
    sandboxOptions,
    values: parsed.values as ParsedSandboxFlags<
      ReturnType<
        typeof parseArgs<{ options: T & typeof SANDBOX_FLAG_OPTIONS }>
      >[
        "values"
      ]
    >["values"],
    positionals: parsed.positionals,
  };
}

/**
 * Reads an environment variable; `undefined` when it is unset, empty, or the
 * env permission is missing.
 *
 * @param name The variable.
 * @returns Its value.
 * @example
 * ```ts
 * import { envLookup } from "./_cli_flags.ts";
 * envLookup("SANDBOX_TOKEN");
 * ```
 */
export function envLookup(name: string): string | undefined {
  try {
    return Deno.env.get(name) || undefined;
  } catch {
    return undefined;
  }
}

/**
 * Prints `error: <message>` to stderr and exits with `code`.
 *
 * @param message What went wrong.
 * @param code The exit code.
 * @returns Never.
 * @example
 * ```ts ignore
 * import { fail } from "./_cli_flags.ts";
 * fail("Invalid --port: expected an integer", 2);
 * ```
 */
export function fail(message: string, code: number): never {
  console.error(`error: ${message}`);
  Deno.exit(code);
}

/** Where the code of a `python`-like command line comes from. */
export type PythonSource =
  | { kind: "code"; code: string }
  | { kind: "file"; path: string }
  | { kind: "stdin" };

/** What {@linkcode splitPythonArgs} returns. */
export interface PythonCommandLine {
  /** The runner's own flags, in order, for {@linkcode parseSandboxFlags}. */
  flags: string[];
  /** The code: `-c CODE`, a file, or stdin (none given, or `-`). */
  source: PythonSource;
  /** `sys.argv` as CPython sets it: `["-c", ...]`, `[file, ...]`, `[""]`. */
  argv: string[];
}

function optionTakesValue(
  options: ParseArgsOptionsConfig,
  name: string,
): boolean {
  return Object.hasOwn(options, name) && options[name].type === "string";
}

function shortOption(
  options: ParseArgsOptionsConfig,
  letter: string,
): string | undefined {
  return Object.keys(options).find((name) => options[name].short === letter);
}

/**
 * Splits a command line the way `python` does: the runner's flags come
 * first; `-c CODE`, a file name or `-` ends them, and everything after it
 * (flags included) belongs to the Python program's `sys.argv`. `--` ends the
 * flags too; the next argument is then the file name.
 *
 * @param args Command-line arguments.
 * @param options The runner's `parseArgs` options (to know which flags take
 *   a value). `-c`/`--code` is handled here and must not be among them.
 * @returns The runner's flags, the code's source and `sys.argv`.
 * @throws {TypeError} When `-c` has no code after it.
 * @example
 * ```ts
 * import { splitPythonArgs } from "./_cli_flags.ts";
 * const line = splitPythonArgs(["--timeout", "5", "job.py", "--fast", "x"], {
 *   timeout: { type: "string" },
 * });
 * // line.flags: ["--timeout", "5"]
 * // line.source: { kind: "file", path: "job.py" }
 * // line.argv: ["job.py", "--fast", "x"]
 * ```
 */
export function splitPythonArgs(
  args: readonly string[],
  options: ParseArgsOptionsConfig,
): PythonCommandLine {
  const flags: string[] = [];
  const program = (source: PythonSource, argv: string[]) => ({
    flags,
    source,
    argv,
  });
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    const rest = args.slice(i + 1);
    if (arg === "-c" || arg === "--code") {
      if (rest.length === 0) {
        throw new TypeError(`Invalid ${arg}: expected the code after it`);
      }
      return program({ kind: "code", code: rest[0] }, ["-c", ...rest.slice(1)]);
    }
    if (arg.startsWith("--code=")) {
      return program({ kind: "code", code: arg.slice(7) }, ["-c", ...rest]);
    }
    if (/^-c./s.test(arg)) {
      return program({ kind: "code", code: arg.slice(2) }, ["-c", ...rest]);
    }
    if (arg === "--") {
      if (rest.length === 0) return program({ kind: "stdin" }, [""]);
      const [first, ...more] = rest;
      return first === "-"
        ? program({ kind: "stdin" }, ["-", ...more])
        : program({ kind: "file", path: first }, [first, ...more]);
    }
    if (arg === "-") return program({ kind: "stdin" }, ["-", ...rest]);
    if (!arg.startsWith("-")) {
      return program({ kind: "file", path: arg }, [arg, ...rest]);
    }
    flags.push(arg);
    const long = arg.startsWith("--") && !arg.includes("=")
      ? arg.slice(2)
      : undefined;
    const short = !arg.startsWith("--") && arg.length === 2
      ? shortOption(options, arg[1])
      : undefined;
    const name = long ?? short;
    if (name !== undefined && optionTakesValue(options, name) && rest.length) {
      flags.push(rest[0]);
      i++;
    }
  }
  return program({ kind: "stdin" }, [""]);
}

/**
 * Whether a hostname only listens on the loopback interface
 * (`localhost`, `127.0.0.0/8`, `::1`).
 *
 * @param hostname The `--hostname` value.
 * @returns True for loopback names and addresses.
 * @example
 * ```ts
 * import { isLoopbackHostname } from "./_cli_flags.ts";
 * isLoopbackHostname("127.0.0.1"); // true
 * isLoopbackHostname("0.0.0.0"); // false
 * ```
 */
export function isLoopbackHostname(hostname: string): boolean {
  const h = hostname.toLowerCase().replace(/^\[(.*)\]$/, "$1");
  if (h === "localhost" || h === "::1" || h === "0:0:0:0:0:0:0:1") return true;
  return /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/**
 * The URL a server listens on, for its start-up line.
 *
 * @param addr The listening address.
 * @param path The path to append.
 * @returns E.g. `http://127.0.0.1:8000/`.
 * @example
 * ```ts
 * import { listenUrl } from "./_cli_flags.ts";
 * listenUrl({ transport: "tcp", hostname: "::1", port: 80 }); // "http://[::1]:80/"
 * ```
 */
export function listenUrl(addr: Deno.NetAddr, path = "/"): string {
  const host = addr.hostname.includes(":")
    ? `[${addr.hostname}]`
    : addr.hostname;
  return `http://${host}:${addr.port}${path}`;
}

/**
 * The package flags of `deno task run`, `serve` and `mcp`, as `parseArgs`
 * options: `--package NAME` (repeatable), `--package-dir DIR`,
 * `--package-index URL` (repeatable).
 */
export const PACKAGE_FLAG_OPTIONS = {
  package: { type: "string", multiple: true },
  "package-dir": { type: "string" },
  "package-index": { type: "string", multiple: true },
} as const satisfies ParseArgsOptionsConfig;

/**
 * Copies parsed package flags into sandbox options (only the ones given).
 *
 * @param values Flag values parsed with {@linkcode PACKAGE_FLAG_OPTIONS}.
 * @param sandboxOptions The options to complete.
 * @returns `sandboxOptions`, with `packages`, `packageDir` and
 *   `packageIndexUrls` set from the flags.
 * @example
 * ```ts
 * import { applyPackageFlags } from "./_cli_flags.ts";
 * applyPackageFlags({ package: ["six"], "package-dir": "./wheels" }, {});
 * // { packages: ["six"], packageDir: "./wheels" }
 * ```
 */
export function applyPackageFlags(
  values: {
    package?: string[];
    "package-dir"?: string;
    "package-index"?: string[];
  },
  sandboxOptions: SandboxOptions,
): SandboxOptions {
  if (values.package !== undefined) sandboxOptions.packages = values.package;
  if (values["package-dir"] !== undefined) {
    sandboxOptions.packageDir = values["package-dir"];
  }
  if (values["package-index"] !== undefined) {
    sandboxOptions.packageIndexUrls = values["package-index"];
  }
  return sandboxOptions;
}

/**
 * The default-index and preload flags of `deno task run`, `serve` and
 * `mcp`, as `parseArgs` options: `--no-package-index` (no index at all:
 * offline) and `--preload NAMES` (comma-separated, repeatable).
 */
export const PRELOAD_FLAG_OPTIONS = {
  preload: { type: "string", multiple: true },
  "no-package-index": { type: "boolean" },
} as const satisfies ParseArgsOptionsConfig;

/**
 * Copies parsed `--preload` and `--no-package-index` flags into sandbox
 * options (only the ones given). Apply it after
 * {@linkcode applyPackageFlags}.
 *
 * @param values Flag values parsed with {@linkcode PRELOAD_FLAG_OPTIONS}
 *   (and `package-index`, to refuse both index flags at once).
 * @param sandboxOptions The options to complete.
 * @returns `sandboxOptions`, with `preload` and `packageIndexUrls` set.
 * @throws {TypeError} When a `--preload` name is empty, or when
 *   `--no-package-index` comes with `--package-index`.
 * @example
 * ```ts
 * import { applyPreloadFlags } from "./_cli_flags.ts";
 * applyPreloadFlags({ preload: ["numpy,pandas"] }, {});
 * // { preload: ["numpy", "pandas"] }
 * applyPreloadFlags({ "no-package-index": true }, {});
 * // { packageIndexUrls: [] }
 * ```
 */
export function applyPreloadFlags(
  values: {
    preload?: string[];
    "no-package-index"?: boolean;
    "package-index"?: string[];
  },
  sandboxOptions: SandboxOptions,
): SandboxOptions {
  if (values.preload !== undefined) {
    const names = values.preload.flatMap((list) => list.split(","))
      .map((name) => name.trim());
    if (names.some((name) => name === "")) {
      throw new TypeError(
        `Invalid --preload: expected comma-separated package names, got "${
          values.preload.join(",")
        }"`,
      );
    }
    sandboxOptions.preload = [...new Set(names)];
  }
  if (values["no-package-index"]) {
    if (values["package-index"]?.length) {
      throw new TypeError(
        "Invalid flags: --no-package-index cannot be used with --package-index",
      );
    }
    sandboxOptions.packageIndexUrls = [];
  }
  return sandboxOptions;
}
