/**
 * The HTTP API described as data: the route table (method, path, what each
 * operation takes and answers) that `handler.ts` dispatches on, the JSON
 * schemas of the bodies, and the OpenAPI 3.1 document built from both.
 * Mostly a data table; the only logic is {@linkcode openApiDocument}.
 *
 * @module
 */

import { ERROR_KINDS } from "./result.ts";
import { MODULE_VERSION } from "./_version.ts";

/** An HTTP method the API uses. */
export type Method = "GET" | "POST" | "DELETE";

/** The operations the API serves, one per route. */
export type OperationId =
  | "getPlayground"
  | "getHealth"
  | "getMetrics"
  | "getOpenApi"
  | "execute"
  | "createSession"
  | "listSessions"
  | "executeInSession"
  | "exportSession"
  | "deleteSession";

/** Static description of one route: what the handler serves and documents. */
export interface RouteDoc {
  /** The method. */
  method: Method;
  /** The path under the base path, with `{id}` for the session id. */
  path: string;
  /** The OpenAPI operation id, also the key of the handler's operation. */
  operationId: OperationId;
  /** One line for the document. */
  summary: string;
  /** Whether the bearer token is required (when the server has one). */
  auth: boolean;
  /** The JSON body, by schema name. */
  requestBody?: { schema: string; required: boolean };
  /** Status code to the schema name of its body ("" for none). */
  responses: Record<string, string>;
}

/** The listed status codes, each answered with an `Error` body. */
function errors(...codes: string[]): Record<string, string> {
  return Object.fromEntries(codes.map((code) => [code, "Error"]));
}

/** The playground page's route, served only with `playground: true`. */
export const PLAYGROUND_ROUTE: RouteDoc = {
  method: "GET",
  path: "/",
  operationId: "getPlayground",
  summary: "The playground page (HTML), when the server enables it",
  auth: false,
  responses: { "200": "Html" },
};

/** The API's routes; the router and the OpenAPI document are built from it. */
export const API_ROUTES: readonly RouteDoc[] = [
  {
    method: "GET",
    path: "/healthz",
    operationId: "getHealth",
    summary: "Liveness: 200 while serving, 503 while shutting down",
    auth: false,
    responses: { "200": "Health", ...errors("503") },
  },
  {
    method: "GET",
    path: "/metrics",
    operationId: "getMetrics",
    summary: "Metrics in Prometheus text format",
    auth: true,
    responses: { "200": "Metrics", ...errors("401", "503") },
  },
  {
    method: "GET",
    path: "/openapi.json",
    operationId: "getOpenApi",
    summary: "This OpenAPI 3.1 document",
    auth: true,
    responses: { "200": "OpenApi", ...errors("401", "503") },
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
      ...errors("400", "401", "413", "415", "429", "503"),
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
      ...errors("400", "401", "413", "415", "429", "503"),
    },
  },
  {
    method: "GET",
    path: "/v1/sessions",
    operationId: "listSessions",
    summary: "List live sessions with their age and size",
    auth: true,
    responses: { "200": "SessionList", ...errors("401", "503") },
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
      ...errors("400", "401", "404", "413", "415", "429", "503"),
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
      ...errors("401", "404", "409", "503"),
    },
  },
  {
    method: "DELETE",
    path: "/v1/sessions/{id}",
    operationId: "deleteSession",
    summary: "Close a session",
    auth: true,
    responses: { "204": "", ...errors("401", "404", "503") },
  },
];

const DESCRIPTIONS: Record<string, string> = {
  "200": "OK",
  "201": "Created",
  "204": "Deleted",
  "400": "Bad JSON or fields",
  "401": "Missing or invalid bearer token",
  "404": "Unknown session",
  "409": "The session was lost and cannot be exported",
  "413": "Body over the size limit",
  "415": "Body is not application/json",
  "429": "Queue or session limit full",
  "503": "Shutting down",
};

/** The media type of each response schema that is not JSON. */
const MEDIA_TYPES: Record<string, string> = {
  Metrics: "text/plain",
  Html: "text/html",
};

const BASE64 = { type: "string", contentEncoding: "base64" };

/** A reference to one of {@linkcode SCHEMAS}. */
function ref(schema: string): { $ref: string } {
  return { $ref: `#/components/schemas/${schema}` };
}

/** Session state as bytes and metadata, in results, imports and exports. */
const SESSION_STATE = {
  sessionBytes: BASE64,
  sessionMetadata: ref("SessionMetadata"),
};

/** Binary MIME types whose display data is base64 text. */
const BINARY_DISPLAY_TYPES = ["image/png", "image/jpeg", "image/gif"];

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
  Html: { type: "string" },
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
  JsonValue: {
    description: "Any JSON value",
    type: ["null", "boolean", "number", "string", "array", "object"],
  },
  MimeBundle: {
    type: "object",
    description:
      "One rich display: MIME type to data. Text types (text/plain, always present, text/html, text/markdown, image/svg+xml) are strings, binary types (image/png, image/jpeg, image/gif) are base64 strings, application/json is the JSON value",
    required: ["text/plain"],
    properties: {
      "text/plain": { type: "string" },
      "text/html": { type: "string" },
      "text/markdown": { type: "string" },
      "image/svg+xml": { type: "string" },
      "application/json": ref("JsonValue"),
      ...Object.fromEntries(BINARY_DISPLAY_TYPES.map((t) => [t, BASE64])),
    },
    additionalProperties: ref("JsonValue"),
  },
  ResultFile: {
    type: "object",
    required: ["path", "size", "content", "truncated"],
    properties: {
      path: { type: "string" },
      size: { type: "integer" },
      content: BASE64,
      truncated: { type: "boolean" },
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
      result: {
        ...ref("JsonValue"),
        description: "JSON value of the last expression",
      },
      executionTime: { type: "number" },
      timing: {
        type: "object",
        description: "Where the time budget went, in milliseconds",
        properties: {
          queuedMs: { type: "number" },
          startMs: { type: "number" },
          runMs: { type: "number" },
        },
      },
      ...SESSION_STATE,
      error: ref("ExecutionError"),
      displays: {
        type: "array",
        description: "Rich displays in output order",
        items: ref("MimeBundle"),
      },
      files: {
        type: "array",
        description: "Files created or changed under the working folder",
        items: ref("ResultFile"),
      },
    },
  },
  SessionMetadata: {
    type: "object",
    required: ["pyodideVersion", "createdAt", "updatedAt"],
    properties: {
      pyodideVersion: { type: "string" },
      createdAt: { type: "string", format: "date-time" },
      updatedAt: { type: "string", format: "date-time" },
      packages: {
        type: "array",
        description: "Packages installed in the session, to reinstall on load",
        items: { type: "string" },
      },
    },
    additionalProperties: ref("JsonValue"),
  },
  SessionImport: {
    type: "object",
    additionalProperties: false,
    properties: { ...SESSION_STATE },
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
    properties: { ...SESSION_STATE },
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
            createdAt: { type: "string", format: "date-time" },
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

/** A schema reference in a media-type map. */
function content(schema: string): Record<string, unknown> {
  return {
    [MEDIA_TYPES[schema] ?? "application/json"]: {
      schema: ref(schema),
    },
  };
}

/** The OpenAPI operation object of one route. */
function operation(route: RouteDoc): Record<string, unknown> {
  const responses: Record<string, unknown> = {};
  for (const [code, schema] of Object.entries(route.responses)) {
    responses[code] = schema
      ? { description: DESCRIPTIONS[code] ?? code, content: content(schema) }
      : { description: DESCRIPTIONS[code] ?? code };
  }
  responses.default = {
    description: "Unexpected error",
    content: content("Error"),
  };
  const op: Record<string, unknown> = {
    operationId: route.operationId,
    summary: route.summary,
    responses,
  };
  if (!route.auth) op.security = [];
  if (route.requestBody) {
    op.requestBody = {
      required: route.requestBody.required,
      content: content(route.requestBody.schema),
    };
  }
  return op;
}

/**
 * Builds the OpenAPI 3.1 document of the API (the routes every handler
 * serves, {@linkcode API_ROUTES}). The base path goes into the `servers`
 * entry, as a URL relative to where the document is fetched, so generated
 * clients call the right paths behind a prefix.
 *
 * @param basePath The prefix the API is mounted under (`""` for none).
 * @returns The document, a JSON-safe object of its own (changing it
 *   changes no later document).
 * @example
 * ```ts
 * import { openApiDocument } from "./mod.ts";
 * const doc = openApiDocument();
 * console.log(Object.keys(doc.paths as object).includes("/v1/execute")); // true
 * ```
 */
export function openApiDocument(basePath = ""): Record<string, unknown> {
  return routesDocument(basePath, API_ROUTES);
}

/**
 * Builds the OpenAPI 3.1 document of a route table: what a handler serves
 * (the API's routes, plus the playground page when it is on).
 *
 * @param basePath The prefix the API is mounted under (`""` for none).
 * @param routes The routes to document.
 * @returns The document, a JSON-safe object of its own.
 */
export function routesDocument(
  basePath: string,
  routes: readonly RouteDoc[],
): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const route of routes) {
    const item = paths[route.path] ??= {};
    if (route.path.includes("{id}")) {
      item.parameters = [{
        name: "id",
        in: "path",
        required: true,
        schema: { type: "string" },
      }];
    }
    item[route.method.toLowerCase()] = operation(route);
  }
  return {
    openapi: "3.1.0",
    info: {
      title: "Pyodide sandbox",
      version: MODULE_VERSION,
      description:
        "Runs untrusted Python in Pyodide inside child Deno processes. Bytes are base64 in JSON.",
    },
    servers: [{
      url: basePath || "/",
      description: "This server (relative to the document's URL)",
    }],
    security: [{ bearerAuth: [] }],
    paths,
    components: {
      // A copy: callers may change their document.
      schemas: structuredClone(SCHEMAS),
      securitySchemes: { bearerAuth: { type: "http", scheme: "bearer" } },
    },
  };
}
