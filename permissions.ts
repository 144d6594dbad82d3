/**
 * Typed permission options for the sandbox and their `deno run` flags.
 *
 * Untrusted Python reaches the whole `Deno` namespace through `import js`,
 * so these flags are the sandbox's only boundary: each grant is a grant to
 * the untrusted code.
 *
 * @module
 */

import { dirname, isAbsolute, join, resolve } from "node:path";

/** The permission names the sandbox can grant. */
export type PermissionName = "env" | "read" | "write" | "net" | "run" | "ffi";

/** All permission names, in the order their flags are emitted. */
export const PERMISSION_NAMES: readonly PermissionName[] = [
  "env",
  "read",
  "write",
  "net",
  "run",
  "ffi",
];

/**
 * What the untrusted Python code may do. `true` grants the whole permission,
 * a list grants exactly those entries, `false` or `[]` grants nothing.
 *
 * @example Grant read access to one folder
 * ```ts
 * import type { PermissionOptions } from "./permissions.ts";
 * const permissions: PermissionOptions = { allowRead: ["./data"] };
 * ```
 */
export interface PermissionOptions {
  /**
   * Environment variables the code may read. A list also passes exactly
   * those variables (names, or prefixes ending in `*`) to the child; `true`
   * passes the host's whole environment.
   * @default {false}
   */
  allowEnv?: boolean | string[];
  /**
   * Files and folders the code may read. Relative paths resolve against the
   * caller's working directory when the sandbox is constructed.
   * @default {false}
   */
  allowRead?: boolean | string[];
  /**
   * Files and folders the code may write. Relative paths resolve against the
   * caller's working directory when the sandbox is constructed.
   * @default {false}
   */
  allowWrite?: boolean | string[];
  /**
   * Hosts (`host`, `host:port`) the code may connect to or listen on.
   * @default {false}
   */
  allowNet?: boolean | string[];
  /**
   * Programs the code may run. Any grant amounts to giving up the sandbox.
   * @default {false}
   */
  allowRun?: boolean | string[];
  /**
   * Native libraries the code may load. Any grant amounts to giving up the
   * sandbox.
   * @default {false}
   */
  allowFfi?: boolean | string[];
}

const OPTION_KEYS: Record<PermissionName, keyof PermissionOptions> = {
  env: "allowEnv",
  read: "allowRead",
  write: "allowWrite",
  net: "allowNet",
  run: "allowRun",
  ffi: "allowFfi",
};

/**
 * Returns the option name (`allowRead`, ...) of a permission name.
 *
 * @param name A permission name.
 * @returns The matching key of {@linkcode PermissionOptions}.
 * @example
 * ```ts
 * import { permissionOptionKey } from "./permissions.ts";
 * permissionOptionKey("read"); // "allowRead"
 * ```
 */
export function permissionOptionKey(
  name: PermissionName,
): keyof PermissionOptions {
  return OPTION_KEYS[name];
}

function checkEntry(name: PermissionName, entry: unknown): string {
  if (typeof entry !== "string") {
    throw new TypeError(
      `Invalid --allow-${name} entry: expected a string, got ${typeof entry}`,
    );
  }
  if (entry.length === 0) {
    throw new TypeError(
      `Invalid --allow-${name} entry: empty strings cannot be expressed as a flag`,
    );
  }
  if (entry.includes(",")) {
    throw new TypeError(
      `Invalid --allow-${name} entry: "${entry}" contains a comma, which Deno's flag syntax cannot express`,
    );
  }
  if (entry.includes("\0")) {
    throw new TypeError(
      `Invalid --allow-${name} entry: ${
        JSON.stringify(entry)
      } contains a NUL character`,
    );
  }
  return entry;
}

/**
 * Builds one `deno run` permission flag.
 *
 * @param name The permission.
 * @param value `true` for the whole permission, a list for exactly those
 *   entries, `false` or `[]` for nothing.
 * @returns `--allow-<name>`, `--allow-<name>=a,b`, or `undefined` when
 *   nothing is granted.
 * @throws {TypeError} When the name is unknown, the value is neither a
 *   boolean nor an array, or an entry is empty or contains a comma or NUL.
 * @example
 * ```ts
 * import { buildPermissionFlag } from "./permissions.ts";
 * buildPermissionFlag("net", ["example.com:443"]); // "--allow-net=example.com:443"
 * buildPermissionFlag("read", true); // "--allow-read"
 * buildPermissionFlag("env", false); // undefined
 * ```
 */
export function buildPermissionFlag(
  name: PermissionName,
  value: boolean | string[],
): string | undefined {
  if (!PERMISSION_NAMES.includes(name)) {
    throw new TypeError(
      `Invalid permission name: "${name}", expected one of ${
        PERMISSION_NAMES.join(", ")
      }`,
    );
  }
  if (value === true) return `--allow-${name}`;
  if (value === false || value === undefined) return undefined;
  if (!Array.isArray(value)) {
    throw new TypeError(
      `Invalid ${
        OPTION_KEYS[name]
      } value: expected a boolean or an array of strings, got ${typeof value}`,
    );
  }
  const entries = value.map((entry) => checkEntry(name, entry));
  if (entries.length === 0) return undefined;
  return `--allow-${name}=${[...new Set(entries)].join(",")}`;
}

/**
 * Validates permission options and resolves relative read/write paths
 * against `cwd`.
 *
 * @param options The user's options.
 * @param cwd The folder relative paths resolve against.
 * @returns A complete, normalised copy.
 * @throws {TypeError} When a value or entry is invalid.
 * @example
 * ```ts
 * import { normalizePermissions } from "./permissions.ts";
 * normalizePermissions({ allowRead: ["data"] }, "/srv").allowRead; // ["/srv/data"]
 * ```
 */
export function normalizePermissions(
  options: PermissionOptions,
  cwd: string,
): Required<PermissionOptions> {
  const out = {} as Required<PermissionOptions>;
  for (const name of PERMISSION_NAMES) {
    const key = OPTION_KEYS[name];
    const value = options[key] ?? false;
    buildPermissionFlag(name, value);
    if (typeof value === "boolean") {
      out[key] = value;
    } else if (name === "read" || name === "write") {
      out[key] = withRealPaths(
        value.map((p) => isAbsolute(p) ? p : resolve(cwd, p)),
      );
    } else {
      out[key] = [...value];
    }
    if (Array.isArray(out[key])) {
      for (const entry of out[key] as string[]) checkEntry(name, entry);
    }
  }
  return out;
}

/**
 * Each path, followed by its real path when that differs (the path exists
 * and goes through a symbolic link): the user's path keeps working, and the
 * real one is what symbolic links inside the grants are checked against.
 */
function withRealPaths(paths: string[]): string[] {
  const out: string[] = [];
  for (const path of paths) {
    if (!out.includes(path)) out.push(path);
    // Undefined: not there (yet), or not ours to look at.
    const real = orNothing(() => Deno.realPathSync(path));
    if (real === undefined) continue;
    if (!real.includes(",") && !real.includes("\0") && !out.includes(real)) {
      out.push(real);
    }
  }
  return out;
}

/** Most folder entries looked at for symbolic links per child start. */
export const LINK_SCAN_LIMIT = 4096;

/** What a file-system call returns, or undefined when it throws. */
function orNothing<T>(call: () => T): T | undefined {
  try {
    return call();
  } catch {
    return undefined;
  }
}

/** The names in a folder; none when it cannot be read. */
function entryNames(path: string): string[] {
  return orNothing(() => [...Deno.readDirSync(path)].map((e) => e.name)) ??
    [];
}

function within(path: string, root: string): boolean {
  return path === root ||
    path.startsWith(root.endsWith("/") ? root : root + "/");
}

/**
 * Symbolic links inside the granted folders whose real target is outside
 * every grant: Deno follows a link under a granted path, so such a link
 * would grant its target. Looks at no more than {@linkcode LINK_SCAN_LIMIT}
 * entries; a path containing a comma is replaced by its nearest folder
 * that has none (which denies more, never less).
 */
function escapingLinks(grants: string[], allowed: string[]): string[] {
  const found = new Set<string>();
  let budget = LINK_SCAN_LIMIT;
  const expressible = (path: string): string => {
    while (path.includes(",")) path = dirname(path);
    return path;
  };
  const visit = (path: string, depth: number): void => {
    if (budget-- <= 0 || depth > 32) return;
    const info = orNothing(() => Deno.lstatSync(path));
    if (info === undefined) return;
    if (info.isSymlink) {
      // Undefined: dangling, or out of the host's own reach.
      const real = orNothing(() => Deno.realPathSync(path));
      if (real === undefined || !allowed.some((root) => within(real, root))) {
        found.add(expressible(path));
      }
      return;
    }
    if (!info.isDirectory) return;
    for (const name of entryNames(path)) visit(join(path, name), depth + 1);
  };
  for (const grant of grants) {
    const info = orNothing(() => Deno.lstatSync(grant));
    if (info === undefined) continue;
    // The grant itself may be a link: the user named it, so look inside.
    if (info.isSymlink) {
      if (!orNothing(() => Deno.statSync(grant).isDirectory)) continue;
      for (const name of entryNames(grant)) visit(join(grant, name), 1);
    } else {
      visit(grant, 0);
    }
  }
  return [...found].sort();
}

/**
 * Deny flags for the symbolic links inside list grants that lead outside
 * every grant of their kind (measured: `--deny-read=<link>` and
 * `--deny-write=<link>` stop Deno's own access through the link, for links
 * to files and to folders, however the path is spelled).
 *
 * @param permissions Normalised permissions.
 * @param runnerReads Paths the runner itself reads (allowed link targets).
 * @returns `--deny-read=...` and `--deny-write=...` flags, possibly none.
 * @example
 * ```ts
 * import { linkDenyFlags, normalizePermissions } from "./permissions.ts";
 * linkDenyFlags(normalizePermissions({ allowRead: ["/no/such"] }, "/"), []); // []
 * ```
 */
export function linkDenyFlags(
  permissions: Required<PermissionOptions>,
  runnerReads: string[],
): string[] {
  const flags: string[] = [];
  const read = permissions.allowRead;
  const write = permissions.allowWrite;
  if (Array.isArray(read) && read.length > 0) {
    const allowed = [...read, ...runnerReads];
    const links = escapingLinks(read, allowed);
    if (links.length) flags.push(`--deny-read=${links.join(",")}`);
  }
  if (Array.isArray(write) && write.length > 0) {
    const links = escapingLinks(write, write);
    if (links.length) flags.push(`--deny-write=${links.join(",")}`);
  }
  return flags;
}

/**
 * Builds all permission flags for the child: the user's grants, with the
 * runner's own read needs merged into (never replacing) the read list.
 *
 * @param permissions Normalised permissions.
 * @param runnerReads Paths the runner itself must read.
 * @returns The flags, in a stable order.
 * @example
 * ```ts
 * import { buildPermissionFlags, normalizePermissions } from "./permissions.ts";
 * const perms = normalizePermissions({ allowRead: ["/data"] }, "/");
 * buildPermissionFlags(perms, ["/cache/snapshot.bin"]);
 * // ["--allow-read=/data,/cache/snapshot.bin"]
 * ```
 */
export function buildPermissionFlags(
  permissions: Required<PermissionOptions>,
  runnerReads: string[],
): string[] {
  const flags: string[] = [];
  for (const name of PERMISSION_NAMES) {
    let value = permissions[OPTION_KEYS[name]];
    if (name === "read" && value !== true) {
      value = [...(value || []), ...runnerReads];
    }
    const flag = buildPermissionFlag(name, value);
    if (flag) flags.push(flag);
  }
  flags.push(...linkDenyFlags(permissions, runnerReads));
  return flags;
}
