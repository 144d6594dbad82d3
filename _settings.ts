/**
 * The settings table of the sandboxes: every option, its default and how it
 * is checked. Option validation, the sets of known option keys and the
 * numeric ranges ({@linkcode OPTION_RANGES}, for CLI and server flags) are
 * all derived from the tables here.
 *
 * @module
 */

import { resolve } from "node:path";
import { normalizePermissions, type PermissionOptions } from "./permissions.ts";
import type { MimeBundle, SessionMetadata } from "./result.ts";
import type {
  ExecuteOptions,
  HostFunction,
  SandboxOptions,
  SessionOptions,
} from "./options.ts";
import type { CallOutcome } from "./_child.ts";
import { defaultCacheDir, resolveDenoPath } from "./_setup.ts";
import { DEFAULT_PACKAGE_INDEX_URL, PackageResolver } from "./_packages.ts";
import {
  checkFunctions,
  checkNumber,
  checkSecret,
  checkSessionPair,
  checkStrings,
  type NumberRange,
  packInputFiles,
} from "./_checks.ts";
import { checkFilterAuditOptions, type FilterAuditSettings } from "./_audit.ts";

/** The smallest accepted `memoryLimitMb`: the base snapshot alone is 31 MB. */
const MIN_MEMORY_MB = 64;
/** The largest `memoryLimitMb`: WebAssembly's 32-bit heap tops out at 4 GiB. */
const MAX_MEMORY_MB = 4096;
const MIB = 1024 * 1024;
const GIB = 1024 ** 3;

export type { NumberRange } from "./_checks.ts";

/** A numeric option: its default and accepted range. */
type NumberSetting = { type: "number"; default: number } & NumberRange;

/** How one option is checked. */
type Setting =
  | NumberSetting
  | { type: "boolean"; default: boolean }
  | { type: "function" | "string" }
  /** Checked as a group: permissions, output filters and audit. */
  | { type: "permission" | "audit" }
  /** Checked by code of its own (settingsFrom, callSettingsFrom). */
  | { type: "special" };

function range(
  defaultValue: number,
  min: number,
  max: number,
  integer = true,
): NumberSetting {
  return { type: "number", default: defaultValue, min, max, integer };
}

const PERMISSION = { type: "permission" } as const;
const AUDIT = { type: "audit" } as const;
const SPECIAL = { type: "special" } as const;
const STRING = { type: "string" } as const;
const FUNCTION = { type: "function" } as const;

/** Every sandbox option, in the order error messages list them. */
const SANDBOX_SETTINGS = {
  allowEnv: PERMISSION,
  allowRead: PERMISSION,
  allowWrite: PERMISSION,
  allowNet: PERMISSION,
  allowRun: PERMISSION,
  allowFfi: PERMISSION,
  stateful: { type: "boolean", default: false },
  timeoutSeconds: range(60, 0.001, 86_400, false),
  memoryLimitMb: range(512, MIN_MEMORY_MB, MAX_MEMORY_MB),
  skipDenoCheck: { type: "boolean", default: false },
  denoPath: STRING,
  sessionSecret: SPECIAL,
  cacheDir: STRING,
  poolSize: range(2, 0, 64),
  maxConcurrency: range(4, 1, 1024),
  maxOutputBytes: range(MIB, 0, GIB),
  maxCodeBytes: range(10 * MIB, 1, GIB),
  redact: AUDIT,
  redactEnv: AUDIT,
  onAudit: AUDIT,
  auditLog: AUDIT,
  auditCode: AUDIT,
  functions: SPECIAL,
  maxFileBytes: range(10 * MIB, 0, GIB),
  maxTotalFileBytes: range(50 * MIB, 0, 4 * GIB),
  maxDisplayBytes: range(16 * MIB, 0, GIB),
  packages: SPECIAL,
  packageDir: SPECIAL,
  packageIndexUrls: SPECIAL,
  packageCacheMb: range(1024, 0, 1_048_576, false),
  preload: SPECIAL,
} as const satisfies { readonly [K in keyof SandboxOptions]-?: Setting };

/** Every per-call option. */
const EXECUTE_SETTINGS = {
  timeoutSeconds: SANDBOX_SETTINGS.timeoutSeconds,
  memoryLimitMb: SANDBOX_SETTINGS.memoryLimitMb,
  sessionBytes: SPECIAL,
  sessionMetadata: SPECIAL,
  stdin: STRING,
  signal: SPECIAL,
  onStdout: FUNCTION,
  onStderr: FUNCTION,
  onDisplay: FUNCTION,
  files: SPECIAL,
} as const satisfies { readonly [K in keyof ExecuteOptions]-?: Setting };

/** Every option of a live session. */
const SESSION_SETTINGS = {
  sessionBytes: SPECIAL,
  sessionMetadata: SPECIAL,
  memoryLimitMb: SANDBOX_SETTINGS.memoryLimitMb,
} as const satisfies { readonly [K in keyof SessionOptions]-?: Setting };

/** The sandbox options that are numbers. */
export type NumberOption =
  | "timeoutSeconds"
  | "memoryLimitMb"
  | "poolSize"
  | "maxConcurrency"
  | "maxOutputBytes"
  | "maxCodeBytes"
  | "maxFileBytes"
  | "maxTotalFileBytes"
  | "maxDisplayBytes"
  | "packageCacheMb";

/**
 * The accepted range of every numeric sandbox option, for flag validators
 * that must accept exactly what the sandbox accepts.
 *
 * @example
 * ```ts
 * import { OPTION_RANGES } from "./_settings.ts";
 * console.log(OPTION_RANGES.memoryLimitMb); // { min: 64, max: 4096, integer: true }
 * ```
 */
export const OPTION_RANGES: Readonly<Record<NumberOption, NumberRange>> = Object
  .fromEntries(
    Object.entries(SANDBOX_SETTINGS).flatMap(([name, s]) =>
      s.type === "number"
        ? [[name, { min: s.min, max: s.max, integer: s.integer }]]
        : []
    ),
  ) as Record<NumberOption, NumberRange>;

/**
 * The default of every numeric sandbox option.
 *
 * @example
 * ```ts
 * import { OPTION_DEFAULTS } from "./_settings.ts";
 * console.log(OPTION_DEFAULTS.timeoutSeconds); // 60
 * ```
 */
export const OPTION_DEFAULTS: Readonly<Record<NumberOption, number>> = Object
  .fromEntries(
    Object.entries(SANDBOX_SETTINGS).flatMap(([name, s]) =>
      s.type === "number" ? [[name, s.default]] : []
    ),
  ) as Record<NumberOption, number>;

/** The resolved, validated options of a sandbox. */
export interface Settings extends FilterAuditSettings {
  permissions: Required<PermissionOptions>;
  stateful: boolean;
  skipDenoCheck: boolean;
  timeoutSeconds: number;
  memoryLimitMb: number;
  denoPath: string;
  sessionSecret?: Uint8Array;
  cacheDir: string;
  poolSize: number;
  maxConcurrency: number;
  maxOutputBytes: number;
  maxCodeBytes: number;
  functions: Record<string, HostFunction>;
  maxFileBytes: number;
  maxTotalFileBytes: number;
  maxDisplayBytes: number;
  packages: string[];
  packageResolver: PackageResolver;
  /** Packages of the preloaded snapshot (`preload`). */
  preload: string[];
}

/** Validated per-call settings. */
export interface CallSettings {
  code: string;
  timeoutSeconds: number;
  memoryLimitMb: number;
  stdin?: string;
  sessionBytes?: Uint8Array;
  sessionMetadata?: SessionMetadata;
  signal?: AbortSignal;
  onStdout?: (text: string) => void;
  onStderr?: (text: string) => void;
  onDisplay?: (bundle: MimeBundle) => void;
  files?: { index: { path: string; size: number }[]; bin: Uint8Array };
  /** Receives the child's outcome (the audit trail counts output bytes). */
  onOutcome?: (outcome: CallOutcome) => void;
}

/**
 * Checks a `memoryLimitMb`.
 *
 * @param value The value given.
 * @returns The value.
 * @throws {TypeError} When it is not an integer.
 * @throws {RangeError} When it is out of range.
 */
export function checkMemory(value: unknown): number {
  return checkNumber("memoryLimitMb", value, OPTION_RANGES.memoryLimitMb);
}

/**
 * Checks the keys of an options object against a settings table and the
 * type of every value the table can check on its own.
 */
function checkTable(
  what: string,
  options: unknown,
  table: Readonly<Record<string, Setting>>,
  nullIsDefault = false,
): Record<string, unknown> {
  if (options === null || typeof options !== "object") {
    throw new TypeError(
      `Invalid ${what} options: expected an object, got ${
        options === null ? "null" : typeof options
      }`,
    );
  }
  const given = options as Record<string, unknown>;
  for (const key of Object.keys(given)) {
    if (!Object.hasOwn(table, key)) {
      throw new TypeError(
        `Unknown ${what} option: "${key}", expected one of ${
          Object.keys(table).join(", ")
        }`,
      );
    }
  }
  for (const [name, setting] of Object.entries(table)) {
    const value = given[name];
    if (value === undefined) continue;
    // A sandbox's null number or flag has always meant its default.
    if (value === null && nullIsDefault && "default" in setting) continue;
    if (setting.type === "number") checkNumber(name, value, setting);
    const expected = setting.type === "string" || setting.type === "boolean" ||
        setting.type === "function"
      ? setting.type
      : undefined;
    if (expected && typeof value !== expected) {
      throw new TypeError(
        `Invalid ${name}: expected ${
          expected === "boolean" ? "a boolean" : `a ${expected}`
        }, got ${typeof value}`,
      );
    }
  }
  return given;
}

function packageResolver(
  o: SandboxOptions,
  place: { cacheDir: string; denoPath: string; packageCacheMb: number },
): PackageResolver {
  const urls = checkStrings(
    "packageIndexUrls",
    o.packageIndexUrls ?? [DEFAULT_PACKAGE_INDEX_URL],
  );
  for (const url of urls) {
    if (!URL.canParse(url) || !/^https?:$/.test(new URL(url).protocol)) {
      throw new TypeError(
        `Invalid packageIndexUrls entry: "${url}" is not an http(s) URL`,
      );
    }
  }
  return new PackageResolver({
    packageDir: o.packageDir === undefined
      ? undefined
      : resolve(Deno.cwd(), checkStrings("packageDir", [o.packageDir])[0]),
    packageIndexUrls: urls,
    ...place,
  });
}

/**
 * Validates sandbox options and fills in the defaults.
 *
 * @param options The options given to the constructor.
 * @returns The resolved settings.
 * @throws {TypeError} When an option is unknown or has the wrong type.
 * @throws {RangeError} When a number is out of range.
 */
export function settingsFrom(options: SandboxOptions): Settings {
  const o = checkTable(
    "sandbox",
    options,
    SANDBOX_SETTINGS,
    true,
  ) as SandboxOptions;
  const sessionSecret = checkSecret(o.sessionSecret);
  const num = (name: NumberOption) => o[name] ?? OPTION_DEFAULTS[name];
  const denoPath = resolveDenoPath(o.denoPath);
  const cacheDir = o.cacheDir ?? defaultCacheDir();
  return {
    permissions: normalizePermissions(o, Deno.cwd()),
    ...checkFilterAuditOptions(o),
    stateful: o.stateful ?? SANDBOX_SETTINGS.stateful.default,
    skipDenoCheck: o.skipDenoCheck ?? SANDBOX_SETTINGS.skipDenoCheck.default,
    timeoutSeconds: num("timeoutSeconds"),
    memoryLimitMb: num("memoryLimitMb"),
    denoPath,
    sessionSecret,
    cacheDir,
    poolSize: num("poolSize"),
    maxConcurrency: num("maxConcurrency"),
    maxOutputBytes: num("maxOutputBytes"),
    maxCodeBytes: num("maxCodeBytes"),
    functions: checkFunctions(o.functions ?? {}),
    packages: checkStrings("packages", o.packages ?? []),
    packageResolver: packageResolver(o, {
      cacheDir,
      denoPath,
      packageCacheMb: num("packageCacheMb"),
    }),
    preload: checkStrings("preload", o.preload ?? []),
    maxFileBytes: num("maxFileBytes"),
    maxTotalFileBytes: num("maxTotalFileBytes"),
    maxDisplayBytes: num("maxDisplayBytes"),
  };
}

/**
 * Validates a call's code and options against a sandbox's settings.
 *
 * @param settings The sandbox's settings.
 * @param code Python source.
 * @param options Per-call options.
 * @returns The effective settings of the call.
 * @throws {TypeError} When the code is not a string or an option is
 *   invalid.
 * @throws {RangeError} When the code is too large or a limit is out of
 *   range.
 */
export function callSettingsFrom(
  settings: Settings,
  code: unknown,
  options: ExecuteOptions,
): CallSettings {
  if (typeof code !== "string") {
    throw new TypeError(
      `Invalid code: expected a string of Python source, got ${
        code === null ? "null" : typeof code
      }`,
    );
  }
  const o = checkTable("execute", options, EXECUTE_SETTINGS) as ExecuteOptions;
  const bytes = new TextEncoder().encode(code).length;
  if (bytes > settings.maxCodeBytes) {
    throw new RangeError(
      `Invalid code: ${bytes} bytes is more than maxCodeBytes (${settings.maxCodeBytes})`,
    );
  }
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) {
    throw new TypeError("Invalid signal: expected an AbortSignal");
  }
  checkSessionPair(o.sessionBytes, o.sessionMetadata);
  return {
    code,
    timeoutSeconds: o.timeoutSeconds ?? settings.timeoutSeconds,
    memoryLimitMb: o.memoryLimitMb ?? settings.memoryLimitMb,
    stdin: o.stdin,
    sessionBytes: o.sessionBytes,
    sessionMetadata: o.sessionMetadata,
    signal: o.signal,
    onStdout: o.onStdout,
    onStderr: o.onStderr,
    onDisplay: o.onDisplay,
    files: o.files === undefined ? undefined : packInputFiles(o.files),
  };
}

/**
 * Validates the options of a live session.
 *
 * @param settings The sandbox's settings.
 * @param options The options given to `openSession()`.
 * @returns The options, with the memory limit resolved.
 * @throws {TypeError} When an option is unknown or has the wrong type.
 * @throws {RangeError} When the memory limit is out of range.
 */
export function sessionSettingsFrom(
  settings: Settings,
  options: SessionOptions,
): SessionOptions & { memoryLimitMb: number } {
  const o = checkTable("session", options, SESSION_SETTINGS) as SessionOptions;
  checkSessionPair(o.sessionBytes, o.sessionMetadata);
  return { ...o, memoryLimitMb: o.memoryLimitMb ?? settings.memoryLimitMb };
}

/**
 * The environment variables passed to children: the host's variables
 * that `allowEnv` names (a trailing `*` matches a prefix).
 *
 * @param allow The normalized `allowEnv`.
 * @returns Name to value.
 */
export function passedEnv(
  allow: Required<PermissionOptions>["allowEnv"],
): Record<string, string> {
  if (allow === false) return {};
  let all: Record<string, string>;
  try {
    all = Deno.env.toObject();
  } catch {
    return {};
  }
  if (allow === true) return all;
  const out: Record<string, string> = {};
  for (const entry of allow) {
    if (entry.endsWith("*")) {
      const prefix = entry.slice(0, -1);
      for (const [k, v] of Object.entries(all)) {
        if (k.startsWith(prefix)) out[k] = v;
      }
    } else if (entry in all) {
      out[entry] = all[entry];
    }
  }
  return out;
}
