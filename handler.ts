/**
 * The sandbox's JSON HTTP API as a plain `(req: Request) => Promise<Response>`
 * function: serve it with `Deno.serve`, or mount it in a Hono or Oak app.
 * `deno task serve` (server.ts) is this handler plus flags, auth checks at
 * start-up and graceful shutdown.
 *
 * ```ts ignore
 * import { createHandler } from "./handler.ts";
 *
 * const handler = createHandler({ token: "secret", sandboxOptions: { allowNet: ["api.example.com"] } });
 * Deno.serve({ hostname: "127.0.0.1", port: 8000 }, handler);
 * ```
 *
 * @module
 */

import { concatBytes } from "./_bytes.ts";
import {
  type ExecuteOptions,
  PyodideSandbox,
  type SandboxOptions,
  SessionError,
} from "./sandbox.ts";
import {
  type CodeExecutionResult,
  ERROR_KINDS,
  type SessionMetadata,
} from "./result.ts";
import {
  SessionLimitError,
  SessionStore,
  UnknownSessionError,
} from "./_session_store.ts";
import { bearerProblem, WWW_AUTHENTICATE } from "./_auth.ts";

/**
 * Options of {@linkcode createHandler}. Permissions and limits are set here
 * by the operator, never by a request.
 *
 * @example
 * ```ts
 * import type { HandlerOptions } from "./handler.ts";
 * const options: HandlerOptions = { token: "secret", maxConcurrency: 2, maxQueue: 8 };
 * ```
 */
export interface HandlerOptions {
  /**
   * The sandbox to run code in. Without it the handler creates one from
   * `sandboxOptions` and closes it in `close()`; a sandbox passed here is
   * left open.
   * @default {undefined}
   */
  sandbox?: PyodideSandbox;
  /**
   * Options of the sandbox the handler creates (ignored with `sandbox`).
   * `maxConcurrency` defaults to the handler's.
   * @default {{}}
   */
  sandboxOptions?: SandboxOptions;
  /**
   * Bearer token every request except `GET /healthz` must carry
   * (`Authorization: Bearer <token>`). Without it there is no auth: only
   * serve such a handler on loopback.
   * @default {undefined}
   */
  token?: string;
  /**
   * Largest accepted request body in bytes (`413` above). Session imports
   * carry base64 session bytes, so leave room for them.
   * @default {33554432}
   */
  maxBodyBytes?: number;
  /**
   * The server's maximum per-request timeout in seconds; a request's
   * `timeoutSeconds` is capped at it, and it is the default (also over the
   * `timeoutSeconds` of a `sandbox` you pass: set both).
   * @default {sandboxOptions.timeoutSeconds, or 60}
   */
  maxTimeoutSeconds?: number;
  /**
   * Executions running at once (stateless and session calls together).
   * With your own `sandbox`, set this to its `maxConcurrency`.
   * @default {4}
   */
  maxConcurrency?: number;
  /**
   * Executions waiting for a slot at most; further ones get `429`.
   * @default {16}
   */
  maxQueue?: number;
  /**
   * Live sessions at most; further creations get `429`.
   * @default {16}
   */
  maxSessions?: number;
  /**
   * Sessions unused for this many seconds are closed.
   * @default {600}
   */
  sessionIdleSeconds?: number;
  /**
   * A path prefix the API is mounted under (e.g. `"/sandbox"`).
   * @default {""}
   */
  basePath?: string;
}

/**
 * The request handler returned by {@linkcode createHandler}: a function
 * serving the API, plus the sandbox it uses and a `close()` for shutdown.
 */
export interface SandboxHandler {
  /**
   * Serves one request.
   *
   * @param req The request.
   * @returns The response.
   */
  (req: Request): Promise<Response>;
  /** The sandbox the handler runs code in. */
  readonly sandbox: PyodideSandbox;
  /**
   * Stops taking requests (`503`), waits for running ones (at most
   * `graceSeconds`, by default the maximum timeout plus 5 s), then closes
   * every session and, if the handler created it, the sandbox.
   *
   * @param options How long to wait for running requests.
   * @returns Settles when everything is closed.
   */
  close(options?: { graceSeconds?: number }): Promise<void>;
  /** Same as `close()`. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** An HTTP method the API uses. */
type Method = "GET" | "POST" | "DELETE";

/** Static description of one route: what the handler serves and documents. */
interface RouteSpec {
  method: Method;
  path: string;
  operationId: OperationId;
  summary: string;
  auth: boolean;
  requestBody?: { schema: string; required: boolean };
  responses: Record<string, string>;
}

type OperationId =
  | "getHealth"
  | "getMetrics"
  | "getOpenApi"
  | "execute"
  | "createSession"
  | "listSessions"
  | "executeInSession"
  | "exportSession"
  | "deleteSession";

const JSON_ERRORS = {
  "400": "Bad JSON or fields",
  "401": "Missing or invalid bearer token",
  "413": "Body over the size limit",
  "415": "Body is not application/json",
};

/** The API's routes; the router and the OpenAPI document are built from it. */
const ROUTES: readonly RouteSpec[] = [
  {
    method: "GET",
    path: "/healthz",
    operationId: "getHealth",
    summary: "Liveness: 200 while serving, 503 while shutting down",
    auth: false,
    responses: { "200": "Health", "503": "Error" },
  },
  {
    method: "GET",
    path: "/metrics",
    operationId: "getMetrics",
    summary: "Metrics in Prometheus text format",
    auth: true,
    responses: { "200": "Metrics", "401": "Error", "503": "Error" },
  },
  {
    method: "GET",
    path: "/openapi.json",
    operationId: "getOpenApi",
    summary: "This OpenAPI 3.1 document",
    auth: true,
    responses: { "200": "OpenApi", "401": "Error", "503": "Error" },
  },
  {
    method: "POST",
    path: "/v1/execute",
    operationId: "execute",
    summary: "Run code in a fresh interpreter",
    auth: true,
    requestBody: { schema: "ExecuteRequest", required: true },
    responses: {
      "200": "CodeExecutionResult",
      "400": "Error",
      "401": "Error",
      "413": "Error",
      "415": "Error",
      "429": "Error",
      "503": "Error",
    },
  },
  {
    method: "POST",
    path: "/v1/sessions",
    operationId: "createSession",
    summary: "Open a live session, optionally importing exported bytes",
    auth: true,
    requestBody: { schema: "SessionImport", required: false },
    responses: {
      "201": "SessionCreated",
      "400": "Error",
      "401": "Error",
      "413": "Error",
      "415": "Error",
      "429": "Error",
      "503": "Error",
    },
  },
  {
    method: "GET",
    path: "/v1/sessions",
    operationId: "listSessions",
    summary: "List live sessions with their age and size",
    auth: true,
    responses: { "200": "SessionList", "401": "Error", "503": "Error" },
  },
  {
    method: "POST",
    path: "/v1/sessions/{id}/execute",
    operationId: "executeInSession",
    summary: "Run code in a live session",
    auth: true,
    requestBody: { schema: "ExecuteRequest", required: true },
    responses: {
      "200": "CodeExecutionResult",
      "400": "Error",
      "401": "Error",
      "404": "Error",
      "413": "Error",
      "415": "Error",
      "429": "Error",
      "503": "Error",
    },
  },
  {
    method: "GET",
    path: "/v1/sessions/{id}/export",
    operationId: "exportSession",
    summary: "Save a session's state as base64 bytes and metadata",
    auth: true,
    responses: {
      "200": "SessionExport",
      "401": "Error",
      "404": "Error",
      "409": "Error",
      "503": "Error",
    },
  },
  {
    method: "DELETE",
    path: "/v1/sessions/{id}",
    operationId: "deleteSession",
    summary: "Close a session",
    auth: true,
    responses: {
      "204": "",
      "401": "Error",
      "404": "Error",
      "503": "Error",
    },
  },
];

const DESCRIPTIONS: Record<string, string> = {
  "200": "OK",
  "201": "Created",
  "204": "Deleted",
  "404": "Unknown session",
  "409": "The session was lost and cannot be exported",
  "429": "Queue or session limit full",
  "503": "Shutting down",
  ...JSON_ERRORS,
};

const BASE64 = { type: "string", contentEncoding: "base64" };

const SCHEMAS: Record<string, unknown> = {
  Error: {
    type: "object",
    required: ["error"],
    properties: { error: { type: "string" } },
  },
  Health: {
    type: "object",
    required: ["status"],
    properties: {
      status: { type: "string", enum: ["ok", "shutting_down"] },
      poolSize: { type: "integer" },
      sessions: { type: "integer" },
      running: { type: "integer" },
      queued: { type: "integer" },
    },
  },
  Metrics: { type: "string" },
  OpenApi: { type: "object" },
  ExecuteRequest: {
    type: "object",
    required: ["code"],
    additionalProperties: false,
    properties: {
      code: { type: "string", description: "Python source" },
      timeoutSeconds: {
        type: "number",
        exclusiveMinimum: 0,
        description: "Capped at the server's maximum, which is the default",
      },
      stdin: { type: "string", description: "What input() reads" },
      files: {
        type: "object",
        description:
          "Files written into the sandbox before the run: text, or {base64} for bytes",
        additionalProperties: {
          oneOf: [
            { type: "string" },
            {
              type: "object",
              required: ["base64"],
              additionalProperties: false,
              properties: { base64: BASE64 },
            },
          ],
        },
      },
    },
  },
  ExecutionError: {
    type: "object",
    required: ["kind", "message"],
    properties: {
      kind: {
        type: "string",
        description: `One of ${ERROR_KINDS.join(", ")} (or a newer kind)`,
      },
      type: { type: "string" },
      message: { type: "string" },
      traceback: { type: "string" },
    },
  },
  CodeExecutionResult: {
    type: "object",
    required: ["status", "stdout", "stderr", "result", "executionTime"],
    properties: {
      status: { type: "string", enum: ["success", "error"] },
      stdout: { type: "string" },
      stderr: { type: "string" },
      stdoutTruncated: { type: "boolean" },
      stderrTruncated: { type: "boolean" },
      result: { description: "JSON value of the last expression" },
      executionTime: { type: "number" },
      sessionBytes: BASE64,
      sessionMetadata: { $ref: "#/components/schemas/SessionMetadata" },
      error: { $ref: "#/components/schemas/ExecutionError" },
      displays: {
        type: "array",
        description:
          "Rich displays as MIME bundles (binary types such as image/png as base64)",
        items: { type: "object" },
      },
      files: {
        type: "array",
        description: "Files created or changed under the working folder",
        items: {
          type: "object",
          required: ["path", "size", "content", "truncated"],
          properties: {
            path: { type: "string" },
            size: { type: "integer" },
            content: BASE64,
            truncated: { type: "boolean" },
          },
        },
      },
    },
  },
  SessionMetadata: {
    type: "object",
    required: ["pyodideVersion", "createdAt", "updatedAt"],
    properties: {
      pyodideVersion: { type: "string" },
      createdAt: { type: "string" },
      updatedAt: { type: "string" },
    },
  },
  SessionImport: {
    type: "object",
    additionalProperties: false,
    properties: {
      sessionBytes: BASE64,
      sessionMetadata: { $ref: "#/components/schemas/SessionMetadata" },
    },
    dependentRequired: {
      sessionBytes: ["sessionMetadata"],
      sessionMetadata: ["sessionBytes"],
    },
  },
  SessionCreated: {
    type: "object",
    required: ["id"],
    properties: { id: { type: "string" } },
  },
  SessionExport: {
    type: "object",
    required: ["sessionBytes", "sessionMetadata"],
    properties: {
      sessionBytes: BASE64,
      sessionMetadata: { $ref: "#/components/schemas/SessionMetadata" },
    },
  },
  SessionList: {
    type: "object",
    required: ["sessions"],
    properties: {
      sessions: {
        type: "array",
        items: {
          type: "object",
          required: ["id", "createdAt", "ageSeconds", "idleSeconds"],
          properties: {
            id: { type: "string" },
            createdAt: { type: "string" },
            ageSeconds: { type: "number" },
            idleSeconds: { type: "number" },
            executions: { type: "integer" },
            sizeBytes: {
              type: ["integer", "null"],
              description: "Size of the last imported or exported bytes",
            },
            alive: { type: "boolean" },
          },
        },
      },
    },
  },
};

/**
 * Builds the OpenAPI 3.1 document of the API, from the same route table
 * the handler dispatches on.
 *
 * @param basePath The prefix the API is mounted under.
 * @returns The document, a JSON-safe object.
 * @example
 * ```ts
 * import { openApiDocument } from "./handler.ts";
 * const doc = openApiDocument();
 * console.log(Object.keys(doc.paths as object).includes("/v1/execute")); // true
 * ```
 */
export function openApiDocument(basePath = ""): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const route of ROUTES) {
    const key = basePath + route.path;
    const item = paths[key] ??= {};
    if (route.path.includes("{id}")) {
      item.parameters = [{
        name: "id",
        in: "path",
        required: true,
        schema: { type: "string" },
      }];
    }
    const responses: Record<string, unknown> = {};
    for (const [code, schema] of Object.entries(route.responses)) {
      const response: Record<string, unknown> = {
        description: DESCRIPTIONS[code] ?? code,
      };
      if (schema) {
        response.content = {
          [schema === "Metrics" ? "text/plain" : "application/json"]: {
            schema: { $ref: `#/components/schemas/${schema}` },
          },
        };
      }
      responses[code] = response;
    }
    responses.default = {
      description: "Unexpected error",
      content: {
        "application/json": {
          schema: { $ref: "#/components/schemas/Error" },
        },
      },
    };
    const operation: Record<string, unknown> = {
      operationId: route.operationId,
      summary: route.summary,
      responses,
    };
    if (!route.auth) operation.security = [];
    if (route.requestBody) {
      operation.requestBody = {
        required: route.requestBody.required,
        content: {
          "application/json": {
            schema: {
              $ref: `#/components/schemas/${route.requestBody.schema}`,
            },
          },
        },
      };
    }
    item[route.method.toLowerCase()] = operation;
  }
  return {
    openapi: "3.1.0",
    info: {
      title: "Pyodide sandbox",
      version: "1",
      description:
        "Runs untrusted Python in Pyodide inside child Deno processes. Bytes are base64 in JSON.",
    },
    security: [{ bearerAuth: [] }],
    paths,
    components: {
      schemas: SCHEMAS,
      securitySchemes: { bearerAuth: { type: "http", scheme: "bearer" } },
    },
  };
}

/** An error answered with a status code and a JSON `{ error }` body. */
class HttpError extends Error {
  status: number;
  headers?: Record<string, string>;
  constructor(
    status: number,
    message: string,
    headers?: Record<string, string>,
  ) {
    super(message);
    this.status = status;
    this.headers = headers;
  }
}

const HISTOGRAM_BUCKETS = [
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30,
  60,
  120,
];

/** Counters and a histogram, rendered in Prometheus text format. */
class Metrics {
  executions = new Map<string, number>();
  buckets: number[] = HISTOGRAM_BUCKETS.map(() => 0);
  sum = 0;
  count = 0;
  requests = new Map<string, number>();
  rejected = new Map<string, number>();

  constructor() {
    this.executions.set(`success|none`, 0);
    for (const kind of ERROR_KINDS) this.executions.set(`error|${kind}`, 0);
    for (const reason of ["queue_full", "session_limit", "body_too_large"]) {
      this.rejected.set(reason, 0);
    }
  }

  execution(result: CodeExecutionResult): void {
    const key = result.status === "success"
      ? "success|none"
      : `error|${result.error?.kind ?? "crash"}`;
    this.executions.set(key, (this.executions.get(key) ?? 0) + 1);
    const t = result.executionTime;
    HISTOGRAM_BUCKETS.forEach((le, i) => {
      if (t <= le) this.buckets[i]++;
    });
    this.sum += t;
    this.count++;
  }

  request(status: number): void {
    const key = String(status);
    this.requests.set(key, (this.requests.get(key) ?? 0) + 1);
  }

  reject(reason: string): void {
    this.rejected.set(reason, (this.rejected.get(reason) ?? 0) + 1);
  }

  render(gauges: Record<string, [string, number]>): string {
    const p = "pyodide_sandbox_";
    const lines: string[] = [];
    const head = (name: string, type: string, help: string) => {
      lines.push(`# HELP ${p}${name} ${help}`, `# TYPE ${p}${name} ${type}`);
    };
    head(
      "executions_total",
      "counter",
      "Executions finished, by status and error kind.",
    );
    for (const [key, n] of this.executions) {
      const [status, kind] = key.split("|");
      lines.push(
        `${p}executions_total{status="${status}",kind="${kind}"} ${n}`,
      );
    }
    head(
      "execution_duration_seconds",
      "histogram",
      "Wall-clock time of executions, start-up included.",
    );
    HISTOGRAM_BUCKETS.forEach((le, i) => {
      lines.push(
        `${p}execution_duration_seconds_bucket{le="${le}"} ${this.buckets[i]}`,
      );
    });
    lines.push(
      `${p}execution_duration_seconds_bucket{le="+Inf"} ${this.count}`,
      `${p}execution_duration_seconds_sum ${this.sum}`,
      `${p}execution_duration_seconds_count ${this.count}`,
    );
    for (const [name, [help, value]] of Object.entries(gauges)) {
      head(name, "gauge", help);
      lines.push(`${p}${name} ${value}`);
    }
    head("http_requests_total", "counter", "HTTP responses, by status code.");
    for (const [code, n] of [...this.requests].sort()) {
      lines.push(`${p}http_requests_total{code="${code}"} ${n}`);
    }
    head(
      "rejected_requests_total",
      "counter",
      "Requests refused for a full queue, the session limit or a large body.",
    );
    for (const [reason, n] of this.rejected) {
      lines.push(`${p}rejected_requests_total{reason="${reason}"} ${n}`);
    }
    return lines.join("\n") + "\n";
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

function jsonType(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  return typeof value;
}

/** JSON with every `Uint8Array` as a base64 string. */
function json(
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

/** Reads a JSON object body; `undefined` for an empty body when allowed. */
async function readJson(
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
interface ExecuteRequest {
  code: string;
  options: ExecuteOptions & { files?: Record<string, string | Uint8Array> };
}

function parseExecute(
  body: Record<string, unknown>,
  maxTimeoutSeconds: number,
): ExecuteRequest {
  checkFields(body, ["code", "timeoutSeconds", "stdin", "files"]);
  if (typeof body.code !== "string") {
    throw new HttpError(
      400,
      `Invalid code: expected a string, got ${jsonType(body.code)}`,
    );
  }
  let timeout = maxTimeoutSeconds;
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
    timeout = Math.min(t, maxTimeoutSeconds);
  }
  const options: ExecuteRequest["options"] = { timeoutSeconds: timeout };
  if (body.stdin !== undefined) {
    if (typeof body.stdin !== "string") {
      throw new HttpError(
        400,
        `Invalid stdin: expected a string, got ${jsonType(body.stdin)}`,
      );
    }
    options.stdin = body.stdin;
  }
  if (body.files !== undefined) {
    const files = body.files;
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
    options.files = out;
  }
  return { code: body.code, options };
}

function parseImport(
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

function checkPositiveInteger(
  name: string,
  value: number | undefined,
  fallback: number,
  min = 1,
): number {
  const v = value ?? fallback;
  if (typeof v !== "number" || !Number.isInteger(v)) {
    throw new TypeError(`Invalid ${name}: expected an integer, got ${v}`);
  }
  if (v < min) {
    throw new RangeError(`Invalid ${name}: expected at least ${min}, got ${v}`);
  }
  return v;
}

function checkPositiveNumber(
  name: string,
  value: number | undefined,
  fallback: number,
): number {
  const v = value ?? fallback;
  if (typeof v !== "number" || Number.isNaN(v)) {
    throw new TypeError(`Invalid ${name}: expected a number, got ${v}`);
  }
  if (!(v > 0) || v === Infinity) {
    throw new RangeError(
      `Invalid ${name}: expected a positive number, got ${v}`,
    );
  }
  return v;
}

/** Maps a thrown error to a response. */
function errorResponse(error: unknown): Response {
  if (error instanceof HttpError) {
    return json({ error: error.message }, error.status, error.headers);
  }
  if (error instanceof UnknownSessionError) {
    return json({ error: error.message }, 404);
  }
  if (error instanceof SessionLimitError) {
    return json({ error: error.message }, 429);
  }
  if (error instanceof SessionError) {
    return json({ error: error.message }, 400);
  }
  if (error instanceof TypeError || error instanceof RangeError) {
    return json({ error: `Invalid request: ${error.message}` }, 400);
  }
  const message = error instanceof Error ? error.message : String(error);
  return json({ error: `Internal error: ${message}` }, 500);
}

/**
 * Creates a request handler serving the sandbox's JSON API: `POST
 * /v1/execute`, the `/v1/sessions` routes, `GET /healthz`, `GET /metrics`
 * and `GET /openapi.json`.
 *
 * @param options The sandbox (or its options), the token and the limits.
 * @returns A `(req: Request) => Promise<Response>` function with `sandbox`
 *   and `close()`.
 * @throws {TypeError} When an option has the wrong type.
 * @throws {RangeError} When a limit is out of range.
 * @example
 * ```ts ignore
 * import { createHandler } from "./handler.ts";
 * const handler = createHandler({ token: Deno.env.get("SANDBOX_TOKEN") });
 * const server = Deno.serve({ hostname: "127.0.0.1", port: 8000 }, handler);
 * // later
 * await server.shutdown();
 * await handler.close();
 * ```
 */
export function createHandler(options: HandlerOptions = {}): SandboxHandler {
  if (options === null || typeof options !== "object") {
    throw new TypeError(
      `Invalid handler options: expected an object, got ${jsonType(options)}`,
    );
  }
  if (options.token !== undefined) {
    if (typeof options.token !== "string") {
      throw new TypeError(
        `Invalid token: expected a string, got ${jsonType(options.token)}`,
      );
    }
    if (options.token.length === 0) {
      throw new RangeError("Invalid token: expected a non-empty string");
    }
  }
  if (
    options.sandbox !== undefined &&
    !(options.sandbox instanceof PyodideSandbox)
  ) {
    throw new TypeError("Invalid sandbox: expected a PyodideSandbox");
  }
  const basePath = (options.basePath ?? "").replace(/\/+$/, "");
  if (basePath && !basePath.startsWith("/")) {
    throw new TypeError(
      `Invalid basePath: expected a path starting with "/", got "${basePath}"`,
    );
  }
  const maxConcurrency = checkPositiveInteger(
    "maxConcurrency",
    options.maxConcurrency,
    4,
  );
  const maxQueue = checkPositiveInteger("maxQueue", options.maxQueue, 16, 0);
  const maxBodyBytes = checkPositiveInteger(
    "maxBodyBytes",
    options.maxBodyBytes,
    32 * 1024 * 1024,
  );
  const maxTimeoutSeconds = checkPositiveNumber(
    "maxTimeoutSeconds",
    options.maxTimeoutSeconds,
    options.sandboxOptions?.timeoutSeconds ?? 60,
  );
  const maxSessions = checkPositiveInteger(
    "maxSessions",
    options.maxSessions,
    16,
    0,
  );
  const sessionIdleSeconds = checkPositiveNumber(
    "sessionIdleSeconds",
    options.sessionIdleSeconds,
    600,
  );
  const token = options.token;
  const ownSandbox = options.sandbox === undefined;
  const sandbox = options.sandbox ??
    new PyodideSandbox({ maxConcurrency, ...options.sandboxOptions });
  const store = new SessionStore(sandbox, {
    maxSessions,
    idleSeconds: sessionIdleSeconds,
  });
  const metrics = new Metrics();
  const active = new Set<Promise<unknown>>();
  let executions = 0;
  let closing = false;
  let closed: Promise<void> | undefined;
  const document = openApiDocument(basePath);

  /** Admission control: running plus queued executions are bounded. */
  async function admitted<T>(fn: () => Promise<T>): Promise<T> {
    if (executions >= maxConcurrency + maxQueue) {
      metrics.reject("queue_full");
      throw new HttpError(
        429,
        `Too many requests: ${maxConcurrency} executions are running and ${maxQueue} waiting; retry later`,
        { "retry-after": "1" },
      );
    }
    executions++;
    try {
      return await fn();
    } finally {
      executions--;
    }
  }

  function record(result: CodeExecutionResult): Response {
    metrics.execution(result);
    return json(result);
  }

  const operations: Record<
    OperationId,
    (req: Request, id: string) => Promise<Response>
  > = {
    getHealth() {
      const queued = sandbox.queueLength;
      return Promise.resolve(json(
        {
          status: closing ? "shutting_down" : "ok",
          poolSize: sandbox.poolSize,
          sessions: store.size,
          running: Math.max(0, executions - queued),
          queued,
        },
        closing ? 503 : 200,
      ));
    },
    getMetrics() {
      const queued = sandbox.queueLength;
      const text = metrics.render({
        queue_length: ["Executions waiting for a slot.", queued],
        running_executions: [
          "Executions admitted and not waiting.",
          Math.max(0, executions - queued),
        ],
        pool_size: ["Warm children waiting in the pool.", sandbox.poolSize],
        sessions: ["Live sessions.", store.size],
      });
      return Promise.resolve(
        new Response(text, {
          headers: { "content-type": "text/plain; version=0.0.4" },
        }),
      );
    },
    getOpenApi() {
      return Promise.resolve(json(document));
    },
    async execute(req) {
      const body = await readJson(req, maxBodyBytes, true);
      const { code, options } = parseExecute(body!, maxTimeoutSeconds);
      // No abort signal from the request: Deno.serve aborts it after every
      // response, and the timeout bounds the call anyway.
      return await admitted(async () =>
        record(await sandbox.execute(code, options))
      );
    },
    async createSession(req) {
      const body = await readJson(req, maxBodyBytes, false);
      const saved = parseImport(body);
      try {
        return json({ id: await store.create(saved) }, 201);
      } catch (error) {
        if (error instanceof SessionLimitError) metrics.reject("session_limit");
        throw error;
      }
    },
    listSessions() {
      return Promise.resolve(json({ sessions: store.list() }));
    },
    async executeInSession(req, id) {
      if (!store.has(id)) throw new UnknownSessionError(id);
      const body = await readJson(req, maxBodyBytes, true);
      const { code, options } = parseExecute(body!, maxTimeoutSeconds);
      // No abort signal: a client that goes away must not kill the session.
      return await admitted(async () =>
        record(await store.execute(id, code, options))
      );
    },
    async exportSession(_req, id) {
      try {
        return json(await store.export(id));
      } catch (error) {
        if (error instanceof SessionError) {
          throw new HttpError(409, error.message);
        }
        throw error;
      }
    },
    async deleteSession(_req, id) {
      if (!(await store.delete(id))) throw new UnknownSessionError(id);
      return new Response(null, { status: 204 });
    },
  };

  async function route(req: Request): Promise<Response> {
    const url = new URL(req.url);
    let path = url.pathname;
    if (basePath) {
      if (path !== basePath && !path.startsWith(basePath + "/")) {
        throw new HttpError(404, `Not found: ${path}`);
      }
      path = path.slice(basePath.length) || "/";
    }
    const segments = path.split("/");
    const allowed: Method[] = [];
    for (const r of ROUTES) {
      const pattern = r.path.split("/");
      if (pattern.length !== segments.length) continue;
      let id = "";
      const match = pattern.every((p, i) => {
        if (p === "{id}") {
          try {
            id = decodeURIComponent(segments[i]);
          } catch {
            return false;
          }
          return segments[i].length > 0;
        }
        return p === segments[i];
      });
      if (!match) continue;
      if (r.method !== req.method) {
        allowed.push(r.method);
        continue;
      }
      if (r.auth && token !== undefined) {
        const problem = await bearerProblem(req, token);
        if (problem) {
          throw new HttpError(401, problem, {
            "www-authenticate": WWW_AUTHENTICATE,
          });
        }
      }
      if (closing && r.operationId !== "getHealth") {
        throw new HttpError(503, "The server is shutting down", {
          connection: "close",
        });
      }
      return await operations[r.operationId](req, id);
    }
    if (allowed.length > 0) {
      throw new HttpError(
        405,
        `Method not allowed: ${req.method} ${path}, expected ${
          allowed.join(" or ")
        }`,
        { allow: allowed.join(", ") },
      );
    }
    throw new HttpError(404, `Not found: ${path}`);
  }

  const handler = async (req: Request): Promise<Response> => {
    const run = route(req).catch(errorResponse);
    active.add(run);
    try {
      const response = await run;
      if (response.status === 413) metrics.reject("body_too_large");
      metrics.request(response.status);
      return response;
    } finally {
      active.delete(run);
    }
  };

  function close(
    { graceSeconds = maxTimeoutSeconds + 5 }: { graceSeconds?: number } = {},
  ): Promise<void> {
    closing = true;
    closed ??= (async () => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        Promise.allSettled([...active]),
        new Promise((r) => timer = setTimeout(r, graceSeconds * 1000)),
      ]);
      clearTimeout(timer);
      await store.close();
      if (ownSandbox) await sandbox.close();
    })();
    return closed;
  }

  return Object.assign(handler, {
    sandbox,
    close,
    [Symbol.asyncDispose]: () => close(),
  });
}
