/**
 * Forged session bytes for the attack battery: what an attacker without the
 * `sessionSecret` can build (any payload and header with a valid unkeyed
 * checksum), and a decompression bomb to put in them.
 *
 * @module
 */

import type { SessionMetadata } from "../mod.ts";

/**
 * Builds session bytes the way an attacker without the `sessionSecret`
 * can: any payload and header, with a valid (unkeyed) SHA-256 checksum.
 *
 * @param payload The compressed state the child will inflate.
 * @param header The header; defaults to a current one.
 * @returns Bytes and matching metadata.
 */
export async function forgeSession(
  payload: Uint8Array,
  header?: { pyodideVersion: string; createdAt: string; updatedAt: string },
): Promise<{ sessionBytes: Uint8Array; sessionMetadata: SessionMetadata }> {
  const { PYODIDE_VERSION } = await import("../mod.ts");
  const now = new Date().toISOString();
  const h = header ??
    { pyodideVersion: PYODIDE_VERSION, createdAt: now, updatedAt: now };
  const magic = new TextEncoder().encode("PYSBSESS");
  const head = new TextEncoder().encode(JSON.stringify(h));
  const body = new Uint8Array(
    magic.length + 6 + head.length + payload.length + 32,
  );
  body.set(magic, 0);
  body[magic.length] = 1; // format
  body[magic.length + 1] = 1; // unkeyed sha256
  new DataView(body.buffer).setUint32(magic.length + 2, head.length);
  body.set(head, magic.length + 6);
  body.set(payload, magic.length + 6 + head.length);
  const signed = body.subarray(0, body.length - 32);
  body.set(
    new Uint8Array(await crypto.subtle.digest("SHA-256", signed)),
    body.length - 32,
  );
  return { sessionBytes: body, sessionMetadata: { ...h } as SessionMetadata };
}

/**
 * A small deflate-raw stream that inflates to `megabytes` MB of zeros: a
 * decompression bomb for forged session bytes. Built in 16 MB steps, so the
 * host never holds the inflated size.
 *
 * @param megabytes Inflated size (a multiple of 16).
 * @returns The compressed bytes.
 */
export async function zeroBomb(megabytes: number): Promise<Uint8Array> {
  const stream = new CompressionStream("deflate-raw");
  const writer = stream.writable.getWriter();
  const chunk = new Uint8Array(16 * 1024 * 1024);
  const writing = (async () => {
    for (let i = 0; i < megabytes / 16; i++) await writer.write(chunk);
    await writer.close();
  })();
  const out = new Uint8Array(await new Response(stream.readable).arrayBuffer());
  await writing;
  return out;
}
