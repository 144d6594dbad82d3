/**
 * The HTTP plumbing of `handler.ts`: JSON responses (bytes as base64),
 * errors answered as `{ "error" }` with their status, request bodies read
 * under a size cap, and the validation of the execute and session-import
 * bodies. Every request is client input: nothing here trusts a field's
 * type or size.
 *
 * @module
 */

import { concatBytes } from "./_bytes.ts";
import type { ExecuteOptions } from "./options.ts";
import { SessionError } from "./_session_bytes.ts";
import type { SessionMetadata } from "./result.ts";
import { SessionLimitError, UnknownSessionError } from "./_session_store.ts";
import { QueueFullError, ShuttingDownError } from "./_service.ts";
import {
  SessionFenceError,
  SessionStoreFullError,
  SessionStoreUnavailableError,
} from "./_redis_errors.ts";
import { SessionBusyError } from "./_replicated_sessions.ts";
import type { StoreStats } from "./_redis_types.ts";

/** An error answered with a status code and a JSON `{ error }` body. */
export class HttpError extends Error {
  /** The status code. */
  status: number;
  /** Extra response headers. */
  headers?: Record<string, string>;
  /**
   * @param status The status code.
   * @param message The error text.
   * @param headers Extra response headers.
   */
  constructor(
    status: number,
    message: string,
    headers?: Record<string, string>,
  ) {
    super(message);
    this.name = "HttpError";
    this.status = status;
    this.headers = headers;
  }
}

function toBase64(bytes: Uint8Array): string {
  return (bytes as Uint8Array & { toBase64(): string }).toBase64();
}

function fromBase64(field: string, text: unknown): Uint8Array {
  if (typeof text !== "string") {
    throw new HttpError(
      400,
      `Invalid ${field}: expected a base64 string, got ${jsonType(text)}`,
    );
  }
  try {
    return (Uint8Array as unknown as {
      fromBase64(s: string): Uint8Array;
    }).fromBase64(text);
  } catch {
    throw new HttpError(400, `Invalid ${field}: not valid base64`);
  }
}

/**
 * The JSON name of a value's type, for messages.
 *
 * @param value Any value.
 * @returns `"null"`, `"array"` or its `typeof`.
 */
export function jsonType(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  return typeof value;
}

/**
 * A JSON response, with every `Uint8Array` as a base64 string.
 *
 * @param body The value.
 * @param status The status code.
 * @param headers Extra headers.
 * @returns The response.
 */
export function json(
  body: unknown,
  status = 200,
  headers: Record<string, string> = {},
): Response {
  const text = JSON.stringify(
    body,
    (_key, value) => value instanceof Uint8Array ? toBase64(value) : value,
  );
  return new Response(text, {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

async function readBody(req: Request, max: number): Promise<Uint8Array> {
  const declared = req.headers.get("content-length");
  if (declared !== null && Number(declared) > max) {
    throw new HttpError(
      413,
      `Request body too large: ${declared} bytes is more than the limit of ${max}`,
    );
  }
  if (!req.body) return new Uint8Array();
  const chunks: Uint8Array[] = [];
  let total = 0;
  const reader = req.body.getReader();
  while (true) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.length;
    if (total > max) {
      await reader.cancel().catch(() => {});
      throw new HttpError(
        413,
        `Request body too large: more than the limit of ${max} bytes`,
      );
    }
    chunks.push(value);
  }
  return concatBytes(chunks);
}

/**
 * Reads a JSON object body of at most `max` bytes.
 *
 * @param req The request.
 * @param max The size cap in bytes.
 * @param required Whether an empty body is an error.
 * @returns The object, or undefined for an empty body when allowed.
 * @throws {HttpError} 400, 413 or 415.
 */
export async function readJson(
  req: Request,
  max: number,
  required: boolean,
): Promise<Record<string, unknown> | undefined> {
  const bytes = await readBody(req, max);
  if (bytes.length === 0) {
    if (required) {
      throw new HttpError(400, "Invalid request: expected a JSON body");
    }
    return undefined;
  }
  const type = req.headers.get("content-type") ?? "";
  if (!/^application\/json\s*(;|$)/i.test(type)) {
    throw new HttpError(
      415,
      `Unsupported content type: expected application/json, got ${
        type ? `"${type}"` : "none"
      }`,
    );
  }
  let body: unknown;
  try {
    body = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (error) {
    throw new HttpError(
      400,
      `Invalid JSON: ${error instanceof Error ? error.message : error}`,
    );
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw new HttpError(
      400,
      `Invalid request: expected a JSON object, got ${jsonType(body)}`,
    );
  }
  return body as Record<string, unknown>;
}

function checkFields(
  body: Record<string, unknown>,
  allowed: readonly string[],
): void {
  for (const key of Object.keys(body)) {
    if (!allowed.includes(key)) {
      throw new HttpError(
        400,
        `Unknown field: "${key}", expected one of ${allowed.join(", ")}`,
      );
    }
  }
}

/** What an execute request asks for. */
export interface ExecuteRequest {
  /** Python source. */
  code: string;
  /** The call's options (the timeout not yet capped). */
  options: ExecuteOptions & { files?: Record<string, string | Uint8Array> };
}

function parseFiles(files: unknown): Record<string, string | Uint8Array> {
  if (files === null || typeof files !== "object" || Array.isArray(files)) {
    throw new HttpError(
      400,
      `Invalid files: expected an object mapping paths to contents, got ${
        jsonType(files)
      }`,
    );
  }
  const out: Record<string, string | Uint8Array> = {};
  for (const [path, content] of Object.entries(files)) {
    if (typeof content === "string") {
      out[path] = content;
    } else if (
      content !== null && typeof content === "object" &&
      !Array.isArray(content) && Object.keys(content).length === 1 &&
      "base64" in content
    ) {
      out[path] = fromBase64(`files["${path}"].base64`, content.base64);
    } else {
      throw new HttpError(
        400,
        `Invalid files["${path}"]: expected a string or {"base64": "..."}, got ${
          jsonType(content)
        }`,
      );
    }
  }
  return out;
}

/**
 * Validates an execute body: `code`, optional `timeoutSeconds`, `stdin`
 * and `files` (text or `{ base64 }`).
 *
 * @param body The JSON object.
 * @returns The code and the call's options.
 * @throws {HttpError} 400 for a missing, unknown or mistyped field.
 */
export function parseExecute(body: Record<string, unknown>): ExecuteRequest {
  checkFields(body, ["code", "timeoutSeconds", "stdin", "files"]);
  if (typeof body.code !== "string") {
    throw new HttpError(
      400,
      `Invalid code: expected a string, got ${jsonType(body.code)}`,
    );
  }
  const options: ExecuteRequest["options"] = {};
  if (body.timeoutSeconds !== undefined) {
    const t = body.timeoutSeconds;
    if (typeof t !== "number" || !Number.isFinite(t) || t <= 0) {
      throw new HttpError(
        400,
        `Invalid timeoutSeconds: expected a positive number, got ${
          typeof t === "number" ? t : jsonType(t)
        }`,
      );
    }
    options.timeoutSeconds = t;
  }
  if (body.stdin !== undefined) {
    if (typeof body.stdin !== "string") {
      throw new HttpError(
        400,
        `Invalid stdin: expected a string, got ${jsonType(body.stdin)}`,
      );
    }
    options.stdin = body.stdin;
  }
  if (body.files !== undefined) options.files = parseFiles(body.files);
  return { code: body.code, options };
}

/**
 * Validates a session-import body: nothing, or `sessionBytes` (base64)
 * with `sessionMetadata` (an object). The bytes' signature is checked
 * when the session opens.
 *
 * @param body The JSON object, or undefined for an empty body.
 * @returns What to open the session from.
 * @throws {HttpError} 400 for a missing half, unknown or mistyped field.
 */
export function parseImport(
  body: Record<string, unknown> | undefined,
): { sessionBytes?: Uint8Array; sessionMetadata?: SessionMetadata } {
  if (!body) return {};
  checkFields(body, ["sessionBytes", "sessionMetadata"]);
  if (body.sessionBytes === undefined && body.sessionMetadata === undefined) {
    return {};
  }
  if (body.sessionBytes === undefined || body.sessionMetadata === undefined) {
    throw new HttpError(
      400,
      "Invalid session import: sessionBytes and sessionMetadata go together",
    );
  }
  const meta = body.sessionMetadata;
  if (meta === null || typeof meta !== "object" || Array.isArray(meta)) {
    throw new HttpError(
      400,
      `Invalid sessionMetadata: expected an object, got ${jsonType(meta)}`,
    );
  }
  return {
    sessionBytes: fromBase64("sessionBytes", body.sessionBytes),
    sessionMetadata: meta as SessionMetadata,
  };
}

/**
 * Maps a thrown error to its JSON response.
 *
 * @param error What was thrown.
 * @returns The response: the error's own status, 404 for an unknown
 *   session, 429 at a limit, 503 while shutting down, 400 for bad input,
 *   otherwise 500.
 */
export function errorResponse(error: unknown): Response {
  if (error instanceof HttpError) {
    return json({ error: error.message }, error.status, error.headers);
  }
  if (error instanceof UnknownSessionError) {
    return json({ error: error.message }, 404);
  }
  if (error instanceof QueueFullError) {
    return json({ error: error.message }, 429, { "retry-after": "1" });
  }
  if (error instanceof SessionLimitError) {
    return json({ error: error.message }, 429);
  }
  if (error instanceof ShuttingDownError) {
    return json({ error: error.message }, 503, { connection: "close" });
  }
  if (error instanceof SessionError) {
    return json({ error: error.message }, 400);
  }
  if (error instanceof SessionStoreUnavailableError) {
    return json({ error: error.message }, 503, { "retry-after": "1" });
  }
  if (error instanceof SessionFenceError || error instanceof SessionBusyError) {
    return json(
      { error: `${error.message}; the step did not count, retry` },
      409,
    );
  }
  if (error instanceof SessionStoreFullError) {
    return json({ error: error.message }, 429);
  }
  if (error instanceof TypeError || error instanceof RangeError) {
    return json({ error: `Invalid request: ${error.message}` }, 400);
  }
  const message = error instanceof Error ? error.message : String(error);
  return json({ error: `Internal error: ${message}` }, 500);
}

/**
 * The session store's counters in Prometheus text format.
 *
 * @param stats The store's counters.
 * @returns The text, ending in a newline.
 */
export function storeMetrics(stats: StoreStats): string {
  const p = "pyodide_sandbox_session_store_";
  const rows: [string, string, string, number][] = [
    [
      "operations_total",
      "counter",
      "Store operations started.",
      stats.operations,
    ],
    ["errors_total", "counter", "Store operations that failed.", stats.errors],
    [
      "lease_waits_total",
      "counter",
      "Lease waits (another replica held it).",
      stats.leaseWaits,
    ],
    [
      "lease_wait_seconds_total",
      "counter",
      "Time spent waiting for leases.",
      stats.leaseWaitMs / 1000,
    ],
    [
      "lease_wait_timeouts_total",
      "counter",
      "Lease waits that reached their deadline.",
      stats.leaseWaitTimeouts,
    ],
    [
      "fence_refusals_total",
      "counter",
      "Writes refused by fencing.",
      stats.fenceRefusals,
    ],
    [
      "reachable",
      "gauge",
      "1 when the last store operation reached Redis.",
      stats.reachable ? 1 : 0,
    ],
  ];
  return rows.map(([name, type, help, value]) =>
    `# HELP ${p}${name} ${help}\n# TYPE ${p}${name} ${type}\n${p}${name} ${value}\n`
  ).join("");
}
