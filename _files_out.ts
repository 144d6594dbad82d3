/**
 * The files the command line reads and writes for a run: a result's files
 * written into a host folder (`--files-out`) without trusting their paths
 * (the files index comes from the child, which runs untrusted code, so a
 * path may try to climb out of the folder or lead through a symbolic link),
 * and the session files of `--session` (checked field by field when read,
 * written atomically with private permissions).
 *
 * @module
 */

import { join } from "node:path";
import type { ResultFile, SessionMetadata } from "./result.ts";
import { decodeBase64, encodeBase64 } from "./_bytes.ts";
import { writeFileAtomicSync } from "./_fs.ts";

/** A session file of `--session`: the saved state, base64, and its metadata. */
export interface SessionFile {
  /** The session bytes, base64. */
  sessionBytes: string;
  /** Their metadata. */
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

/**
 * Reads a session file written by {@linkcode writeSessionFile}.
 *
 * @param path The file.
 * @returns The session and its decoded bytes, or undefined when the file
 *   does not exist (a new session).
 * @throws {TypeError} `Invalid session file: ...` when the file cannot be
 *   read or is not such a session.
 */
export async function readSessionFile(
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
 * Writes a session file atomically (a private temporary file renamed over
 * it), so an interrupted run never leaves half a session.
 *
 * @param path The file.
 * @param saved The saved state.
 */
export function writeSessionFile(
  path: string,
  saved: { sessionBytes: Uint8Array; sessionMetadata: SessionMetadata },
): void {
  const file: SessionFile = {
    sessionBytes: encodeBase64(saved.sessionBytes),
    sessionMetadata: saved.sessionMetadata,
  };
  writeFileAtomicSync(path, new TextEncoder().encode(JSON.stringify(file)));
}

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

/**
 * Writes result files into `--files-out` with
 * {@linkcode writeResultFiles} and names on stderr each file not written.
 *
 * @param dir The host folder.
 * @param files The result's files.
 * @returns Whether every file that belongs there was written.
 * @throws {Error} When `dir` cannot be created or is not a folder.
 */
export async function writeFilesOut(
  dir: string,
  files: ResultFile[] | undefined,
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
 * Reads the host files of `--file SANDBOX_PATH=HOST_PATH` flags.
 *
 * @param specs The flags' values.
 * @returns The files by sandbox path.
 * @throws {TypeError} When a value has no `=` or an empty sandbox path.
 * @throws {Error} When a host file cannot be read.
 */
export async function readInputFiles(
  specs: string[],
): Promise<Record<string, Uint8Array>> {
  const files: Record<string, Uint8Array> = {};
  for (const spec of specs) {
    const at = spec.indexOf("=");
    if (at <= 0) {
      throw new TypeError(
        `Invalid --file: expected SANDBOX_PATH=HOST_PATH, got "${spec}"`,
      );
    }
    files[spec.slice(0, at)] = await Deno.readFile(spec.slice(at + 1));
  }
  return files;
}
