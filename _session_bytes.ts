/**
 * Session bytes: the packed interpreter state a child returns, wrapped with
 * a header and a SHA-256 checksum or, with a `sessionSecret`, an
 * HMAC-SHA256 signature. Verified in the host before any child sees them.
 *
 * Layout: `"PYSBSESS"`, format u8, mac kind u8, header length u32, header
 * JSON, payload, 32-byte checksum or signature over everything before it.
 *
 * @module
 */

import { PYODIDE_VERSION } from "./runner.ts";
import type { SessionMetadata } from "./result.ts";

const MAGIC = new TextEncoder().encode("PYSBSESS");
const FORMAT = 1;
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

function timingSafeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

/**
 * Wraps a child's packed state into session bytes and their metadata.
 *
 * @param payload The compressed state from the child.
 * @param previous Metadata of the session this continues, if any.
 * @param secret The HMAC key, if configured.
 * @param extra More metadata fields.
 * @returns The bytes and metadata to hand to the caller.
 */
export async function sealSession(
  payload: Uint8Array,
  previous: SessionMetadata | undefined,
  secret: Uint8Array | undefined,
  extra: Record<string, unknown> = {},
): Promise<{ sessionBytes: Uint8Array; sessionMetadata: SessionMetadata }> {
  const now = new Date().toISOString();
  const header: Header = {
    pyodideVersion: PYODIDE_VERSION,
    createdAt: previous?.createdAt ?? now,
    updatedAt: now,
  };
  const head = new TextEncoder().encode(JSON.stringify(header));
  const body = new Uint8Array(
    MAGIC.length + 6 + head.length + payload.length + MAC_BYTES,
  );
  body.set(MAGIC, 0);
  body[MAGIC.length] = FORMAT;
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
  const minimum = MAGIC.length + 6 + MAC_BYTES;
  if (
    bytes.length < minimum ||
    !timingSafeEqual(bytes.subarray(0, MAGIC.length), MAGIC)
  ) {
    throw new SessionError(
      "Invalid session bytes: not session bytes made by pyodide-sandbox",
    );
  }
  if (bytes[MAGIC.length] !== FORMAT) {
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
  if (!timingSafeEqual(expected, bytes.subarray(bytes.length - MAC_BYTES))) {
    throw new SessionError(
      secret
        ? "Invalid session bytes: the signature does not match (tampered, or signed with another secret)"
        : "Invalid session bytes: the checksum does not match (corrupted or tampered)",
    );
  }
  const headLength = new DataView(bytes.buffer, bytes.byteOffset).getUint32(
    MAGIC.length + 2,
  );
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
  return bytes.subarray(MAGIC.length + 6 + headLength, signed.length);
}
