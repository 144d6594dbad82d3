/**
 * The child-side file mirror: input files, the host paths granted for
 * reading and writing (copied in and out of Pyodide's filesystem, refusing
 * links out of the grants), the files a run changed, and the session's
 * files packed with its state.
 *
 * @module
 */

import { concatWithIndex, splitIndex, ToParent } from "./_protocol.ts";
import {
  append,
  apply,
  byteLength,
  encodeText,
  mapForEach,
  mapGet,
  mapSet,
  type Pyodide,
  record,
  send,
  sortStrings,
  strEndsWith,
  stringify,
  strStartsWith,
  view,
} from "./_runner_captured.ts";

export const HOME = "/home/pyodide";
export const SITE_PACKAGES = "/lib/python3.14/site-packages";
/** Where Pyodide puts shared libraries (lock `install_dir: "dynlib"`). */
export const DYNLIB_DIR = "/usr/lib";

export function readFiles(pyodide: Pyodide): Uint8Array {
  const FS = pyodide.FS;
  const entries: { path: string; size: number }[] = [];
  const blobs: Uint8Array[] = [];
  function walk(dir: string): void {
    for (const name of FS.readdir(dir) as string[]) {
      if (name === "." || name === "..") continue;
      const path = `${dir}/${name}`;
      const stat = FS.lstat(path);
      if (FS.isDir(stat.mode)) {
        entries.push({ path, size: -1 });
        walk(path);
      } else if (FS.isFile(stat.mode)) {
        const data = FS.readFile(path) as Uint8Array;
        entries.push({ path, size: data.length });
        blobs.push(data);
      }
    }
  }
  walk(HOME);
  walk(SITE_PACKAGES);
  // Shared libraries of installed packages (absent until one is installed).
  if (FS.analyzePath(DYNLIB_DIR).exists) walk(DYNLIB_DIR);
  return concatWithIndex(entries, blobs);
}

export function within(path: string, root: string): boolean {
  return path === root ||
    apply(strStartsWith, path, [
      apply(strEndsWith, root, ["/"]) ? root : root + "/",
    ]);
}

export function sandboxPath(path: string): string {
  const absolute = path.startsWith("/") ? path : `${HOME}/${path}`;
  const parts: string[] = [];
  for (const part of absolute.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") parts.pop();
    else parts.push(part);
  }
  return "/" + parts.join("/");
}

/** Emscripten errno numbers met when writing input files. */
export const ERRNO_NAMES: Record<number, string> = {
  2: "permission denied",
  20: "a file or folder of that name exists",
  31: "it is a folder",
  44: "no such file or folder",
  54: "a parent is not a folder",
};

/** Writes the input files; returns an error message, or "" when done. */
export function writeInputFiles(
  pyodide: Pyodide,
  files: { path: string; size: number }[],
  bin: Uint8Array,
): string {
  let offset = 0;
  for (const file of files) {
    const path = sandboxPath(file.path);
    const dir = path.slice(0, path.lastIndexOf("/")) || "/";
    try {
      pyodide.FS.mkdirTree(dir);
      pyodide.FS.writeFile(path, bin.subarray(offset, offset + file.size));
    } catch (error) {
      const errno = (error as { errno?: number }).errno;
      const reason = errno === undefined
        ? String(error)
        : ERRNO_NAMES[errno] ?? `errno ${errno}`;
      return `Invalid files entry: ${
        stringify(file.path)
      } cannot be written to ${path} (${reason})`;
    }
    offset += file.size;
  }
  return "";
}

/** Folders of Pyodide's own filesystem that host folders may not replace. */
export const RESERVED = ["/lib", "/dev", "/proc", "/sys", "/bin"];
/** Most bytes copied in from host folders per call. */
export const HOST_COPY_LIMIT = 256 * 1024 * 1024;
/** Most files copied in from host folders per call. */
export const HOST_COPY_FILES = 10_000;

/**
 * Whether a host path is a symbolic link whose real target is outside every
 * grant (a link the host placed there: it must not widen the grant).
 */
export function escapesGrants(path: string, grants: string[]): boolean {
  let real: string;
  try {
    real = Deno.realPathSync(path);
  } catch {
    return true; // Dangling, or denied (see linkDenyFlags).
  }
  for (let i = 0; i < grants.length; i++) {
    if (within(real, grants[i])) return false;
  }
  return true;
}

export function copyHostIn(
  pyodide: Pyodide,
  root: string,
  grants: string[],
  warnings: string[],
): void {
  if (RESERVED.some((r) => within(root, r)) || root === "/") {
    warnings.push(
      `Warning: ${root} is not shown to Python's open() (it would replace Pyodide's own files); use js.Deno to reach it`,
    );
    return;
  }
  const FS = pyodide.FS;
  let bytes = 0;
  let count = 0;
  function visit(path: string, depth: number): void {
    let info: Deno.FileInfo;
    try {
      info = Deno.lstatSync(path);
      // A link is followed only when it stays inside the grants (the grant
      // itself may be a link: the user named it).
      if (info.isSymlink) {
        if (path !== root && escapesGrants(path, grants)) {
          warnings.push(
            `Warning: ${path} was not copied in: it is a symbolic link that leads outside the granted paths`,
          );
          return;
        }
        info = Deno.statSync(path);
      }
    } catch {
      return; // Not there, or not readable (a write-only grant).
    }
    if (info.isDirectory) {
      if (depth > 64 || count >= HOST_COPY_FILES) return;
      count++;
      FS.mkdirTree(path);
      let entries: Deno.DirEntry[];
      try {
        entries = [...Deno.readDirSync(path)];
      } catch {
        return;
      }
      for (const entry of entries) visit(`${path}/${entry.name}`, depth + 1);
    } else if (info.isFile) {
      if (count >= HOST_COPY_FILES || bytes + info.size > HOST_COPY_LIMIT) {
        warnings.push(
          `Warning: ${path} was not copied in: host folders are capped at ${HOST_COPY_FILES} files and ${HOST_COPY_LIMIT} bytes per call`,
        );
        return;
      }
      try {
        const data = Deno.readFileSync(path);
        FS.mkdirTree(path.slice(0, path.lastIndexOf("/")) || "/");
        FS.writeFile(path, data);
        bytes += data.length;
        count++;
      } catch {
        // Unreadable: leave it out.
      }
    }
  }
  visit(root, 0);
}

/**
 * The first symbolic link on the way from the grant holding `path` down to
 * `path` (the grant itself excluded), or "" when there is none: writing
 * through one would write outside the grant.
 */
export function linkOnTheWay(path: string, grants: string[]): string {
  let root = "";
  for (let i = 0; i < grants.length; i++) {
    if (within(path, grants[i]) && grants[i].length > root.length) {
      root = grants[i];
    }
  }
  if (!root) return path;
  let current = root;
  const rest = path.slice(root.length).split("/");
  for (let i = 0; i < rest.length; i++) {
    if (!rest[i]) continue;
    current = current === "/" ? `/${rest[i]}` : `${current}/${rest[i]}`;
    try {
      if (Deno.lstatSync(current).isSymlink) return current;
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return "";
      // A write-only grant cannot be looked at: the child's --deny-write
      // flags (linkDenyFlags) cover the links that were there at its start.
      if (error instanceof Deno.errors.NotCapable) return "";
      return current; // Cannot tell: refuse.
    }
  }
  return "";
}

export function copyHostOut(
  pyodide: Pyodide,
  path: string,
  grants: string[],
): void {
  try {
    const link = linkOnTheWay(path, grants);
    if (link) {
      throw new Error(
        `${link} is a symbolic link (or could not be checked), and writes never go through one`,
      );
    }
    const data = pyodide.FS.readFile(path) as Uint8Array;
    try {
      Deno.writeFileSync(path, data);
    } catch (error) {
      // Create missing parents only when needed: a grant of a single file
      // does not allow mkdir on its (existing) folder.
      if (!(error instanceof Deno.errors.NotFound)) throw error;
      Deno.mkdirSync(path.slice(0, path.lastIndexOf("/")) || "/", {
        recursive: true,
      });
      Deno.writeFileSync(path, data);
    }
  } catch (error) {
    send(
      ToParent.stderr,
      null,
      encodeText(
        `Warning: ${path} was not written back to the host: ${error}\n`,
      ),
    );
  }
}

export type FileStates = Map<string, string>;

export function walkFiles(
  pyodide: Pyodide,
  root: string,
  visit: (path: string, stat: { size: number; mtime: Date }) => void,
): void {
  const FS = pyodide.FS;
  let stat;
  try {
    stat = FS.lstat(root);
  } catch {
    return;
  }
  if (FS.isFile(stat.mode)) {
    visit(root, stat);
    return;
  }
  if (!FS.isDir(stat.mode)) return;
  for (const name of FS.readdir(root) as string[]) {
    if (name === "." || name === "..") continue;
    walkFiles(pyodide, root === "/" ? `/${name}` : `${root}/${name}`, visit);
  }
}

export function fileStates(pyodide: Pyodide, roots: string[]): FileStates {
  const states: FileStates = new Map();
  for (let i = 0; i < roots.length; i++) {
    walkFiles(pyodide, roots[i], (path, stat) => {
      apply(mapSet, states, [path, `${stat.size}:${+stat.mtime}`]);
    });
  }
  return states;
}

export function changedFiles(
  pyodide: Pyodide,
  before: FileStates,
  roots: string[],
): string[] {
  const after = fileStates(pyodide, roots);
  const changed: string[] = [];
  apply(mapForEach, after, [(state: string, path: string) => {
    if (apply(mapGet, before, [path]) !== state) append(changed, path);
  }]);
  return changed;
}

export function sendFiles(
  pyodide: Pyodide,
  paths: string[],
  maxFileBytes: number,
  maxTotalFileBytes: number,
): void {
  if (paths.length === 0) return;
  const index: Record<string, unknown>[] = [];
  const blobs: Uint8Array[] = [];
  let total = 0;
  const sorted = sortStrings(paths);
  for (let i = 0; i < sorted.length; i++) {
    const path = sorted[i];
    const data = pyodide.FS.readFile(path) as Uint8Array;
    const size = byteLength(data);
    let length = size < maxFileBytes ? size : maxFileBytes;
    if (length > maxTotalFileBytes - total) length = maxTotalFileBytes - total;
    if (!(length > 0)) length = 0;
    total += length;
    const entry = record();
    entry.path = path;
    entry.size = size;
    entry.length = length;
    entry.truncated = length < size;
    append(index, entry);
    append(blobs, view(data, 0, length));
  }
  const packed = concatWithIndex(index, blobs);
  send(ToParent.files, null, packed);
}

export function writeFiles(pyodide: Pyodide, packed: Uint8Array): void {
  const FS = pyodide.FS;
  const split = splitIndex(packed);
  if (!split || !Array.isArray(split.index)) {
    throw new Error("The session files are damaged");
  }
  const index = split.index as { path: string; size: number }[];
  const data = split.data;
  let offset = 0;
  for (const entry of index) {
    const start = offset;
    if (entry.size > 0) offset += entry.size;
    if (
      !entry.path.startsWith(HOME + "/") &&
      !entry.path.startsWith(SITE_PACKAGES + "/") &&
      !entry.path.startsWith(DYNLIB_DIR + "/")
    ) continue;
    if (entry.size < 0) FS.mkdirTree(entry.path);
    else FS.writeFile(entry.path, data.subarray(start, start + entry.size));
  }
}
