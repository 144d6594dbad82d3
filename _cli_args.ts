/**
 * Parsing shared by the command-line entry points: Deno-style permission
 * flags (`--allow-read`, `--allow-read=/a,/b`) and limit flags.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  PERMISSION_NAMES,
  type PermissionName,
  permissionOptionKey,
  type PermissionOptions,
} from "./permissions.ts";

const PERMISSION_FLAG = /^--allow-(env|read|write|net|run|ffi)(?:=(.*))?$/s;

/** Permission flags split off the rest of the arguments. */
export interface PermissionArgs {
  /** The permissions, keyed as in {@linkcode PermissionOptions}. */
  permissions: PermissionOptions;
  /** The arguments that were not permission flags, in order. */
  rest: string[];
}

/**
 * Takes Deno-style permission flags out of an argument list. A bare flag
 * grants everything; `=a,b` grants a list; repeated flags merge.
 *
 * @param args Command-line arguments.
 * @returns The permissions and the remaining arguments.
 * @throws {TypeError} When a flag has an empty list entry.
 * @example
 * ```ts
 * import { takePermissionArgs } from "./_cli_args.ts";
 * const { permissions, rest } = takePermissionArgs(["--allow-read=/a,/b", "-c", "1"]);
 * // permissions.allowRead = ["/a", "/b"], rest = ["-c", "1"]
 * ```
 */
export function takePermissionArgs(args: string[]): PermissionArgs {
  const permissions: PermissionOptions = {};
  const rest: string[] = [];
  let afterDashes = false;
  for (const arg of args) {
    const match = afterDashes ? null : PERMISSION_FLAG.exec(arg);
    if (arg === "--") afterDashes = true;
    if (!match) {
      rest.push(arg);
      continue;
    }
    const name = match[1] as PermissionName;
    const key = permissionOptionKey(name);
    const current = permissions[key];
    if (match[2] === undefined) {
      permissions[key] = true;
      continue;
    }
    const entries = match[2].split(",");
    if (entries.some((e) => e === "")) {
      throw new TypeError(
        `Invalid --allow-${name} flag: "${arg}" has an empty entry`,
      );
    }
    if (current === true) continue;
    permissions[key] = [...(Array.isArray(current) ? current : []), ...entries];
  }
  return { permissions, rest };
}

/** Help text for the permission flags. */
export const PERMISSION_HELP: string = PERMISSION_NAMES.map((name) =>
  `  --allow-${name}[=LIST]`.padEnd(30) +
  `Grant ${name} access (all, or a comma-separated list)`
).join("\n");

/** Parsed limit flags shared by the entry points. */
export interface LimitArgs {
  timeoutSeconds?: number;
  memoryLimitMb?: number;
}

/**
 * Reads a positive number flag.
 *
 * @param name The flag, for the message.
 * @param value Its text.
 * @returns The number, or undefined when absent.
 * @throws {TypeError} When the text is not a positive number.
 */
export function numberFlag(
  name: string,
  value: string | undefined,
): number | undefined {
  if (value === undefined) return undefined;
  const number = Number(value);
  if (!Number.isFinite(number) || number <= 0 || value.trim() === "") {
    throw new TypeError(
      `Invalid --${name}: expected a positive number, got "${value}"`,
    );
  }
  return number;
}

export { parseArgs };
