/**
 * Writes a result's files into a host folder (the CLI's `--files-out`)
 * without trusting their paths: the files index comes from the child, which
 * runs untrusted code, so a path may try to climb out of the folder or lead
 * through a symbolic link.
 *
 * @module
 */

import { join } from "node:path";
import type { ResultFile } from "./result.ts";

/** The sandbox's working folder: result paths are taken relative to it. */
export const SANDBOX_HOME = "/home/pyodide";

/** What happened to one entry of the files list. */
export interface FileOutcome {
  /** The path as the result gave it (made printable). */
  path: string;
  /**
   * `"written"`; `"skipped"` for a clean path outside the working folder
   * (a granted write path, whose file is already on the host); `"refused"`
   * for a path or entry that is malformed or would leave the folder.
   */
  status: "written" | "skipped" | "refused";
  /** Where it was written, when written. */
  target?: string;
  /** Why it was skipped or refused. */
  reason?: string;
}

function printable(path: unknown): string {
  if (typeof path !== "string") return `(${typeof path})`;
  // deno-lint-ignore no-control-regex
  return JSON.stringify(path.slice(0, 200)).slice(1, -1).replace(/\x00/g, "");
}

/**
 * Splits a sandbox path into the segments below {@linkcode SANDBOX_HOME}.
 *
 * @returns The segments, or the reason the path is not written.
 */
function segmentsOf(
  path: unknown,
): { segments: string[] } | { skip: string } | { refuse: string } {
  if (typeof path !== "string") return { refuse: "the path is not a string" };
  if (path.includes("\0")) return { refuse: "the path contains a NUL byte" };
  if (path.includes("\\")) return { refuse: "the path contains a backslash" };
  const parts = path.split("/");
  if (parts[0] !== "") return { refuse: "the path is not absolute" };
  if (parts.slice(1).some((p) => p === "" || p === "." || p === "..")) {
    return { refuse: 'the path is not normalized (empty, "." or "..")' };
  }
  const home = SANDBOX_HOME.split("/");
  if (!home.every((part, i) => parts[i] === part)) {
    return {
      skip:
        `it is outside ${SANDBOX_HOME} (a granted write path already on the host)`,
    };
  }
  const segments = parts.slice(home.length);
  if (segments.length === 0) return { refuse: "the path is the folder itself" };
  if (
    Deno.build.os === "windows" && segments.some((s) => /[:<>"|?*]/.test(s))
  ) {
    return { refuse: "the path has characters Windows does not allow" };
  }
  return { segments };
}

async function lstatOrNull(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.lstat(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw error;
  }
}

/** Creates (one by one) or checks the folders leading to a file. */
async function enterFolders(root: string, folders: string[]): Promise<string> {
  let current = root;
  for (const name of folders) {
    current = join(current, name);
    const stat = await lstatOrNull(current);
    if (stat === null) {
      try {
        await Deno.mkdir(current);
      } catch (error) {
        if (!(error instanceof Deno.errors.AlreadyExists)) throw error;
      }
      const made = await Deno.lstat(current);
      if (!made.isDirectory) throw new Error(`${current} is not a folder`);
    } else if (stat.isSymlink) {
      throw new Error(`${current} is a symbolic link`);
    } else if (!stat.isDirectory) {
      throw new Error(`${current} is not a folder`);
    }
  }
  return current;
}

async function writeOne(
  root: string,
  segments: string[],
  content: Uint8Array,
): Promise<string> {
  const folder = await enterFolders(root, segments.slice(0, -1));
  const target = join(folder, segments[segments.length - 1]);
  const stat = await lstatOrNull(target);
  if (stat?.isSymlink) throw new Error(`${target} is a symbolic link`);
  if (stat && !stat.isFile) throw new Error(`${target} is not a regular file`);
  // A new file (O_EXCL never follows a link) renamed over the target: the
  // rename replaces whatever is there instead of writing through it.
  const tmp = join(folder, `.${crypto.randomUUID()}.tmp`);
  try {
    await Deno.writeFile(tmp, content, { createNew: true });
    await Deno.rename(tmp, target);
  } catch (error) {
    await Deno.remove(tmp).catch(() => {});
    throw error;
  }
  return target;
}

/**
 * Writes result files below `dir`, each at its path relative to
 * {@linkcode SANDBOX_HOME}. `dir` is created when missing and resolved to its
 * real path; nothing is written outside it: a path with `..`, `.`, empty
 * segments, a NUL byte or a backslash is refused, a path outside the working
 * folder is skipped, and a symbolic link met on the way (or at the target) is
 * refused, never followed. Folders are created one at a time.
 *
 * @param dir The host folder.
 * @param files The result's files (untrusted: checked entry by entry).
 * @returns One outcome per entry, in order.
 * @throws {Error} When `dir` cannot be created or is not a folder.
 */
export async function writeResultFiles(
  dir: string,
  files: readonly ResultFile[],
): Promise<FileOutcome[]> {
  await Deno.mkdir(dir, { recursive: true });
  const root = await Deno.realPath(dir);
  if (!(await Deno.stat(root)).isDirectory) {
    throw new Error(`Cannot write result files: ${dir} is not a folder`);
  }
  const outcomes: FileOutcome[] = [];
  for (const file of Array.isArray(files) ? files : []) {
    const path = printable(file?.path);
    const split = segmentsOf(file?.path);
    if ("skip" in split) {
      outcomes.push({ path, status: "skipped", reason: split.skip });
      continue;
    }
    if ("refuse" in split) {
      outcomes.push({ path, status: "refused", reason: split.refuse });
      continue;
    }
    if (!(file.content instanceof Uint8Array)) {
      outcomes.push({
        path,
        status: "refused",
        reason: "the content is not bytes",
      });
      continue;
    }
    try {
      const target = await writeOne(root, split.segments, file.content);
      outcomes.push({ path, status: "written", target });
    } catch (error) {
      outcomes.push({
        path,
        status: "refused",
        reason: error instanceof Error ? error.message : String(error),
      });
    }
  }
  return outcomes;
}
