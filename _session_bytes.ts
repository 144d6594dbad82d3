/**
 * Session bytes: the packed interpreter state a child returns, wrapped with
 * a header and a SHA-256 checksum or, with a `sessionSecret`, an
 * HMAC-SHA256 signature. Verified in the host before any child sees them.
 *
 * Layout: `"PYSBSESS"`, format u8, mac kind u8, header length u32, header
 * JSON, payload, 32-byte checksum or signature over everything before it.
 *
 * Format 2 (written since): the header has `base`, the sha256 of the base
 * snapshot the payload is a difference from (see `_state_diff.ts`), and
 * the payload is that difference, deflated. Format 1 (still read): no
 * `base`, the payload is a whole packed snapshot and files, deflated.
 *
 * Also where the bases live: {@linkcode exportBase}, {@linkcode importBase}
 * and {@linkcode resolveBase}.
 *
 * @module
 */

import { join } from "node:path";
import { PYODIDE_VERSION } from "./runner.ts";
import type { SessionMetadata } from "./result.ts";
import type { Environment } from "./_setup.ts";
import { writeFileAtomicSync } from "./_fs.ts";
import { constantTimeEqual, toHex } from "./_bytes.ts";
import { sha256Bytes } from "./_wheel_cache.ts";
import {
  type BaseSnapshot,
  distrustSnapshot,
  ensureBase,
  sha256File,
} from "./_snapshot.ts";
import {
  SNAPSHOT_FIXED_BYTES,
  snapshotBuildId,
  snapshotImageOffset,
} from "./_state_diff.ts";

const MAGIC = new TextEncoder().encode("PYSBSESS");
const FORMAT = 2;
const FORMAT_FULL = 1;
const MAC_SHA256 = 1;
const MAC_HMAC = 2;
const MAC_BYTES = 32;

/** Session bytes that cannot be used; becomes an error of kind `"session"`. */
export class SessionError extends Error {
  /**
   * Creates the error.
   *
   * @param message What is wrong.
   * @param options Standard error options.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SessionError";
  }
}

interface Header {
  pyodideVersion: string;
  createdAt: string;
  updatedAt: string;
  /** Format 2: the sha256 of the base snapshot the payload diffs against. */
  base?: string;
}

async function mac(
  data: Uint8Array,
  secret: Uint8Array | undefined,
): Promise<Uint8Array> {
  const bytes = data as Uint8Array<ArrayBuffer>;
  if (!secret) {
    return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  }
  const key = await crypto.subtle.importKey(
    "raw",
    secret as Uint8Array<ArrayBuffer>,
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  return new Uint8Array(await crypto.subtle.sign("HMAC", key, bytes));
}

/**
 * Wraps a child's packed state into session bytes and their metadata.
 *
 * @param payload The compressed state from the child.
 * @param previous Metadata of the session this continues, if any.
 * @param secret The HMAC key, if configured.
 * @param extra More metadata fields.
 * @param base The sha256 of the base snapshot the payload is a difference
 *   from (format 2); without it, the payload is a whole state (format 1,
 *   kept for tests of old bytes).
 * @returns The bytes and metadata to hand to the caller.
 */
export async function sealSession(
  payload: Uint8Array,
  previous: SessionMetadata | undefined,
  secret: Uint8Array | undefined,
  extra: Record<string, unknown> = {},
  base?: string,
): Promise<{ sessionBytes: Uint8Array; sessionMetadata: SessionMetadata }> {
  const now = new Date().toISOString();
  const header: Header = {
    pyodideVersion: PYODIDE_VERSION,
    createdAt: previous?.createdAt ?? now,
    updatedAt: now,
  };
  // A random salt (not in the metadata): no two seals give the same
  // bytes, even of the same state in the same millisecond, so a child kept
  // under its bytes' seal is reachable only with the bytes its own call
  // returned.
  const salt = toHex(crypto.getRandomValues(new Uint8Array(16)));
  const head = new TextEncoder().encode(
    JSON.stringify(base ? { ...header, base, salt } : { ...header, salt }),
  );
  const body = new Uint8Array(
    MAGIC.length + 6 + head.length + payload.length + MAC_BYTES,
  );
  body.set(MAGIC, 0);
  body[MAGIC.length] = base ? FORMAT : FORMAT_FULL;
  body[MAGIC.length + 1] = secret ? MAC_HMAC : MAC_SHA256;
  new DataView(body.buffer).setUint32(MAGIC.length + 2, head.length);
  body.set(head, MAGIC.length + 6);
  body.set(payload, MAGIC.length + 6 + head.length);
  const signed = body.subarray(0, body.length - MAC_BYTES);
  body.set(await mac(signed, secret), body.length - MAC_BYTES);
  return {
    sessionBytes: body,
    sessionMetadata: { ...extra, ...header } as SessionMetadata,
  };
}

/**
 * The seal of session bytes: their trailing SHA-256 or HMAC, which covers
 * a random salt and so differs for every seal. An id for bytes this host
 * sealed or has checked ({@linkcode unsealSessionState}).
 *
 * @param bytes Session bytes, sealed or checked here.
 * @returns The seal, in hex.
 */
export function sessionSeal(bytes: Uint8Array): string {
  return toHex(bytes.subarray(bytes.length - MAC_BYTES));
}

/**
 * Checks session bytes and their metadata and returns the payload for the
 * child.
 *
 * @param bytes Session bytes from the caller.
 * @param metadata Their metadata.
 * @param secret The HMAC key, if configured.
 * @returns The payload.
 * @throws {SessionError} When the bytes are corrupted, tampered with,
 *   unsigned while a secret is set, or from another Pyodide version.
 */
export async function unsealSession(
  bytes: Uint8Array,
  metadata: SessionMetadata,
  secret: Uint8Array | undefined,
): Promise<Uint8Array> {
  return (await unsealSessionState(bytes, metadata, secret)).payload;
}

/**
 * The sha256 of the base snapshot that format-2 session bytes need, read
 * from their header without checking the checksum or signature.
 *
 * @param bytes Session bytes.
 * @returns The sha256 (hex), or `undefined` for format-1 or unreadable
 *   bytes.
 */
export function sessionBaseOf(bytes: Uint8Array): string | undefined {
  if (!(bytes instanceof Uint8Array)) return undefined;
  if (bytes.length < MAGIC.length + 6 + MAC_BYTES) return undefined;
  if (!constantTimeEqual(bytes.subarray(0, MAGIC.length), MAGIC)) {
    return undefined;
  }
  if (bytes[MAGIC.length] !== FORMAT) return undefined;
  const headLength = new DataView(bytes.buffer, bytes.byteOffset).getUint32(
    MAGIC.length + 2,
  );
  if (headLength > bytes.length - MAGIC.length - 6 - MAC_BYTES) {
    return undefined;
  }
  try {
    const header = JSON.parse(
      new TextDecoder().decode(
        bytes.subarray(MAGIC.length + 6, MAGIC.length + 6 + headLength),
      ),
    );
    const base = header?.base;
    return typeof base === "string" && /^[0-9a-f]{64}$/.test(base)
      ? base
      : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Checks session bytes and their metadata and returns the payload for the
 * child and the base snapshot it is a difference from.
 *
 * @param bytes Session bytes from the caller.
 * @param metadata Their metadata.
 * @param secret The HMAC key, if configured.
 * @returns The payload and, for format 2, the base's sha256.
 * @throws {SessionError} When the bytes are corrupted, tampered with,
 *   unsigned while a secret is set, or from another Pyodide version.
 */
export async function unsealSessionState(
  bytes: Uint8Array,
  metadata: SessionMetadata,
  secret: Uint8Array | undefined,
): Promise<{ payload: Uint8Array; base?: string }> {
  const minimum = MAGIC.length + 6 + MAC_BYTES;
  if (
    bytes.length < minimum ||
    !constantTimeEqual(bytes.subarray(0, MAGIC.length), MAGIC)
  ) {
    throw new SessionError(
      "Invalid session bytes: not session bytes made by pyodide-sandbox",
    );
  }
  const format = bytes[MAGIC.length];
  if (format !== FORMAT && format !== FORMAT_FULL) {
    throw new SessionError(
      `Invalid session bytes: unsupported format ${bytes[MAGIC.length]}`,
    );
  }
  const kind = bytes[MAGIC.length + 1];
  if (kind !== MAC_SHA256 && kind !== MAC_HMAC) {
    throw new SessionError("Invalid session bytes: unknown checksum kind");
  }
  if (secret && kind !== MAC_HMAC) {
    throw new SessionError(
      "Invalid session bytes: they are not signed, and this sandbox has a sessionSecret",
    );
  }
  if (!secret && kind === MAC_HMAC) {
    throw new SessionError(
      "Invalid session bytes: they are signed, and this sandbox has no sessionSecret to check them with",
    );
  }
  const signed = bytes.subarray(0, bytes.length - MAC_BYTES);
  const expected = await mac(signed, secret);
  if (!constantTimeEqual(expected, bytes.subarray(bytes.length - MAC_BYTES))) {
    throw new SessionError(
      secret
        ? "Invalid session bytes: the signature does not match (tampered, or signed with another secret)"
        : "Invalid session bytes: the checksum does not match (corrupted or tampered)",
    );
  }
  const headLength = new DataView(bytes.buffer, bytes.byteOffset).getUint32(
    MAGIC.length + 2,
  );
  if (headLength > signed.length - MAGIC.length - 6) {
    throw new SessionError("Invalid session bytes: unreadable header");
  }
  let header: Header;
  try {
    header = JSON.parse(
      new TextDecoder().decode(
        bytes.subarray(MAGIC.length + 6, MAGIC.length + 6 + headLength),
      ),
    );
  } catch (error) {
    throw new SessionError("Invalid session bytes: unreadable header", {
      cause: error,
    });
  }
  if (header.pyodideVersion !== PYODIDE_VERSION) {
    throw new SessionError(
      `Invalid session bytes: made by Pyodide ${header.pyodideVersion}, this sandbox runs Pyodide ${PYODIDE_VERSION}`,
    );
  }
  if (
    metadata.pyodideVersion !== header.pyodideVersion ||
    metadata.createdAt !== header.createdAt
  ) {
    throw new SessionError(
      "Invalid session metadata: it does not belong to these session bytes",
    );
  }
  const payload = bytes.subarray(MAGIC.length + 6 + headLength, signed.length);
  if (format === FORMAT_FULL) return { payload };
  if (typeof header.base !== "string" || !/^[0-9a-f]{64}$/.test(header.base)) {
    throw new SessionError(
      "Invalid session bytes: the header names no base snapshot",
    );
  }
  return { payload, base: header.base };
}

// Base snapshots: the one of this host, the ones imported from others
// (`<cacheDir>/bases/<sha256>.snap`) and the ones of older runners still in
// the cache folder.

/** Bases other than this host's, verified by this process, by path. */
const basesVerified = new Map<string, string>();

function fileFingerprint(stat: Deno.FileInfo): string {
  return `${stat.size}:${stat.mtime?.getTime()}:${stat.ino}`;
}

/** The folder of imported base snapshots, by sha256. */
function basesDir(env: Environment): string {
  return join(env.cacheDir, "bases");
}

/**
 * Reads this host's base snapshot, checked against its sha256 as it is
 * read.
 *
 * @param env The environment.
 * @returns The sha256 and the bytes.
 * @throws {Error} When the snapshot cannot be built or changed on disk.
 */
export async function exportBase(
  env: Environment,
): Promise<{ sha256: string; bytes: Uint8Array }> {
  const base = await ensureBase(env);
  const bytes = await Deno.readFile(base.path);
  if ((await sha256Bytes(bytes)) !== base.sha256) {
    distrustSnapshot(base.path);
    throw new Error(
      "The base snapshot changed on disk while it was read: try again",
    );
  }
  return { sha256: base.sha256, bytes };
}

/** The first 48 bytes of a file. */
async function fileHead(path: string): Promise<Uint8Array> {
  using file = await Deno.open(path);
  const head = new Uint8Array(SNAPSHOT_FIXED_BYTES);
  let read = 0;
  while (read < head.length) {
    const n = await file.read(head.subarray(read));
    if (n === null) break;
    read += n;
  }
  return head;
}

/**
 * Checks that bytes look like a Pyodide snapshot of this Pyodide build: the
 * header's magic and layout, and the build id of this host's base.
 */
async function checkSnapshotBytes(
  bytes: Uint8Array,
  own: BaseSnapshot,
): Promise<void> {
  const offset = snapshotImageOffset(bytes);
  if (typeof offset === "string") {
    throw new RangeError(
      `Invalid base snapshot: not a Pyodide ${PYODIDE_VERSION} memory snapshot (${offset})`,
    );
  }
  if (snapshotBuildId(await fileHead(own.path)) !== snapshotBuildId(bytes)) {
    throw new RangeError(
      `Invalid base snapshot: it was made by another build of Pyodide than this host's Pyodide ${PYODIDE_VERSION}`,
    );
  }
}

/**
 * Stores a base snapshot from another host, content-addressed in
 * `<cacheDir>/bases/<sha256>.snap` (folder 0700, file 0600, written through
 * a temporary file and a rename).
 *
 * @param env The environment.
 * @param bytes The snapshot (from {@linkcode exportBase} on the other host).
 * @returns Its sha256.
 * @throws {RangeError} When the bytes are not a snapshot of this Pyodide.
 */
export async function importBase(
  env: Environment,
  bytes: Uint8Array,
): Promise<string> {
  const own = await ensureBase(env);
  await checkSnapshotBytes(bytes, own);
  const sha256 = await sha256Bytes(bytes);
  if (sha256 === own.sha256) return sha256;
  const dir = basesDir(env);
  Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
  Deno.chmodSync(dir, 0o700);
  const path = join(dir, `${sha256}.snap`);
  writeFileAtomicSync(path, bytes);
  basesVerified.set(path, fileFingerprint(await Deno.stat(path)));
  return sha256;
}

/** Whether a file hashes to `sha256` (cached by its fingerprint). */
async function hashesTo(path: string, sha256: string): Promise<boolean> {
  let stat;
  try {
    stat = await Deno.stat(path);
  } catch {
    return false;
  }
  const print = fileFingerprint(stat);
  if (basesVerified.get(path) === print) return true;
  basesVerified.delete(path);
  if ((await sha256File(path).catch(() => "")) !== sha256) return false;
  basesVerified.set(path, print);
  return true;
}

/** The base snapshot of an older runner still in the cache folder. */
async function olderBase(
  env: Environment,
  sha256: string,
): Promise<string | undefined> {
  try {
    for await (const entry of Deno.readDir(env.cacheDir)) {
      if (!/^snapshot-[^/]*\.bin\.json$/.test(entry.name)) continue;
      const record = JSON.parse(
        await Deno.readTextFile(join(env.cacheDir, entry.name)),
      );
      if (record?.sha256 !== sha256 || record.packages) continue;
      const path = join(env.cacheDir, entry.name.slice(0, -5));
      if (await hashesTo(path, sha256)) return path;
    }
  } catch {
    // Not found.
  }
  return undefined;
}

/**
 * The path of a verified base snapshot with this sha256: this host's base,
 * an imported one, or an older runner's still in the cache folder (each
 * hashed again whenever its file changed).
 *
 * @param env The environment.
 * @param sha256 The base the session bytes need.
 * @returns The path, or `undefined` when this host does not have it.
 * @throws {Error} When this host's own snapshot cannot be built.
 */
export async function resolveBase(
  env: Environment,
  sha256: string,
): Promise<string | undefined> {
  const own = await ensureBase(env);
  if (own.sha256 === sha256) return own.path;
  if (!/^[0-9a-f]{64}$/.test(sha256)) return undefined;
  const imported = join(basesDir(env), `${sha256}.snap`);
  if (await hashesTo(imported, sha256)) return imported;
  return await olderBase(env, sha256);
}

/**
 * Checks session bytes and finds the base snapshot they need.
 *
 * @param env The environment.
 * @param bytes Session bytes.
 * @param metadata Their metadata.
 * @param secret The HMAC key, if configured.
 * @returns The payload for the child and its base (none for format-1
 *   bytes, which hold a whole snapshot).
 * @throws {SessionError} When the bytes are rejected or their base is not
 *   on this host.
 */
export async function openSessionBytes(
  env: Environment,
  bytes: Uint8Array,
  metadata: SessionMetadata,
  secret: Uint8Array | undefined,
): Promise<{ payload: Uint8Array; base?: BaseSnapshot }> {
  const { payload, base } = await unsealSessionState(bytes, metadata, secret);
  if (!base) return { payload };
  const path = await resolveBase(env, base);
  if (!path) {
    throw new SessionError(
      `Invalid session bytes: they were made against base snapshot ${base}, which this host does not have; export it on the host that made them (exportBaseSnapshot()) and import it here (importBaseSnapshot())`,
    );
  }
  return { payload, base: { path, sha256: base } };
}
