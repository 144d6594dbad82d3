/**
 * Request checks shared by the HTTP and MCP servers: bearer tokens compared
 * in constant time, and the Host check that keeps a token-less loopback
 * server out of reach of web pages (DNS rebinding).
 *
 * @module
 */

import { constantTimeEqual } from "./_bytes.ts";

/**
 * Compares two strings in time that does not depend on where they differ:
 * both are hashed with SHA-256 and the digests compared in full.
 *
 * @param given The presented token.
 * @param expected The real token.
 * @returns True when they are equal.
 */
export async function tokenMatches(
  given: string,
  expected: string,
): Promise<boolean> {
  const enc = new TextEncoder();
  const [a, b] = await Promise.all([
    crypto.subtle.digest("SHA-256", enc.encode(given)),
    crypto.subtle.digest("SHA-256", enc.encode(expected)),
  ]);
  return constantTimeEqual(new Uint8Array(a), new Uint8Array(b));
}

/**
 * Checks a request's `Authorization: Bearer <token>` header.
 *
 * @param req The request.
 * @param token The expected token.
 * @returns Undefined when authorized, otherwise the reason.
 */
export async function bearerProblem(
  req: Request,
  token: string,
): Promise<string | undefined> {
  const header = req.headers.get("authorization") ?? "";
  const m = /^Bearer[ ]+(\S+)\s*$/i.exec(header);
  if (m && await tokenMatches(m[1], token)) return undefined;
  return header
    ? "Unauthorized: the bearer token is not valid"
    : "Unauthorized: send Authorization: Bearer <token>";
}

/** The `WWW-Authenticate` header sent with a 401. */
export const WWW_AUTHENTICATE = 'Bearer realm="pyodide-sandbox"';

/**
 * The `Host` header values a loopback server answers to.
 *
 * @param addr The address the server listens on.
 * @returns Lower-case `host:port` values.
 */
export function loopbackHosts(addr: Deno.NetAddr): Set<string> {
  const shown = addr.hostname.includes(":")
    ? `[${addr.hostname}]`
    : addr.hostname;
  return new Set(
    [shown, "localhost", "127.0.0.1", "[::1]"].map((h) =>
      `${h}:${addr.port}`.toLowerCase()
    ),
  );
}

/**
 * Refuses a request whose `Host` header is not in the allowed set.
 *
 * @param req The request.
 * @param allowed Allowed `host:port` values, or undefined to allow any.
 * @returns A 403 response, or undefined when the host is allowed.
 */
export function hostProblem(
  req: Request,
  allowed: Set<string> | undefined,
): Response | undefined {
  if (!allowed) return undefined;
  const host = (req.headers.get("host") ?? "").toLowerCase();
  if (allowed.has(host)) return undefined;
  return Response.json(
    { error: `Forbidden: unexpected Host header "${host}"` },
    { status: 403 },
  );
}
