/**
 * The sandbox's JSON HTTP API as a plain `(req: Request) => Promise<Response>`
 * function: serve it with `Deno.serve`, or mount it in a Hono or Oak app.
 * `deno task serve` (server.ts) is this handler plus flags, auth checks at
 * start-up and graceful shutdown.
 *
 * The handler is a thin HTTP adapter: a route table (method, `URLPattern`,
 * handler, in the style of std's `http/unstable_route.ts`) over the shared
 * service core (`_service.ts`: sandbox, sessions, admission, auth, close).
 * The OpenAPI document is generated from the same table (`_openapi.ts`).
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

import type { PyodideSandbox } from "./sandbox.ts";
import { SessionError } from "./_session_bytes.ts";
import type { SandboxOptions } from "./options.ts";
import { UnknownSessionError } from "./_session_store.ts";
import { WWW_AUTHENTICATE } from "./_auth.ts";
import { integerOption, SandboxService } from "./_service.ts";
import { storeMetrics } from "./_http.ts";
import {
  API_ROUTES,
  openApiDocument,
  type OperationId,
  PLAYGROUND_ROUTE,
  type RouteDoc,
  routesDocument,
} from "./_openapi.ts";
import {
  errorResponse,
  HttpError,
  json,
  parseExecute,
  parseImport,
  readJson,
} from "./_http.ts";
import { CorsPolicy } from "./_cors.ts";
import { playgroundPage } from "./_playground.ts";

export { openApiDocument };

/**
 * A shared session store, as returned by `redisSessionStore(url, options)`
 * of the `./server` entry (its full API is documented there). Only
 * stores made by that function are accepted.
 */
export interface SharedSessionStore {
  /** The store's URL, with the password shown as `***`. */
  readonly url: string;
  /**
   * Closes the store's connection.
   *
   * @returns Settles when closed.
   */
  close(): Promise<void>;
}

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
   * Bearer token every request except `GET /healthz` (and the playground
   * page) must carry (`Authorization: Bearer <token>`). Without it there is
   * no auth: only serve such a handler on loopback.
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
  /**
   * Serve the playground page (a single HTML page to write and run Python
   * in) at `GET /` (under `basePath`). The page itself needs no token; the
   * token is typed into the page and sent with the API calls it makes.
   * @default {false}
   */
  playground?: boolean;
  /**
   * Origins (`scheme://host[:port]`) whose web pages may call the API, or
   * `"*"` for every origin. Off by default: no CORS headers are sent and
   * preflights get `405`. A listed origin is answered with its own name
   * and `Access-Control-Allow-Credentials: true`; `"*"` never allows
   * credentials and needs a `token`. Requests from other origins get no
   * CORS headers, and their preflights `403`.
   * @default {[]}
   */
  corsOrigins?: string[];
  /**
   * A shared session store from `redisSessionStore()` (server.ts): any
   * replica serves any session, each step is written back before it is
   * answered (see `sessionCheckpointSeconds`), `maxSessions` bounds this
   * replica's cached live children.
   * Not closed by `close()`. Without it sessions live in this process.
   * @default {undefined}
   */
  sessionStore?: SharedSessionStore;
  /**
   * With a `sessionStore`: `0` writes every step back before answering
   * (durable); `N > 0` keeps the session's lease and writes it back at
   * most every N seconds, on idle expiry and on `close()` instead, so a
   * crash loses at most N seconds of acknowledged steps.
   * @default {0}
   */
  sessionCheckpointSeconds?: number;
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
   * every session and, if the handler created it, the sandbox. A second
   * call can only shorten the wait.
   *
   * @param options How long to wait for running requests.
   * @returns Settles when everything is closed.
   */
  close(options?: { graceSeconds?: number }): Promise<void>;
  /** Same as `close()`. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** What a route's handler gets: the request and the path's parameters. */
type RouteHandler = (
  req: Request,
  params: Record<string, string>,
) => Promise<Response>;

/**
 * One entry of the route table: its documentation, the methods and the
 * `URLPattern` it matches, and its handler.
 */
interface Route extends RouteDoc {
  methods: readonly string[];
  pattern: URLPattern;
  handler: RouteHandler;
}

/** The handler's own settings, past the service's. */
interface HttpSettings {
  basePath: string;
  maxBodyBytes: number;
  playground: boolean;
  cors: CorsPolicy;
}

function httpSettings(options: HandlerOptions): HttpSettings {
  const basePath = (options.basePath ?? "").replace(/\/+$/, "");
  if (basePath && !basePath.startsWith("/")) {
    throw new TypeError(
      `Invalid basePath: expected a path starting with "/", got "${basePath}"`,
    );
  }
  if (
    options.playground !== undefined && typeof options.playground !== "boolean"
  ) {
    throw new TypeError(
      `Invalid playground: expected a boolean, got ${typeof options
        .playground}`,
    );
  }
  return {
    basePath,
    maxBodyBytes: integerOption(
      "maxBodyBytes",
      options.maxBodyBytes,
      32 * 1024 * 1024,
    ),
    playground: options.playground ?? false,
    cors: new CorsPolicy(options.corsOrigins, options.token !== undefined),
  };
}

/** The handler of every operation, by operation id. */
function operations(
  service: SandboxService,
  settings: HttpSettings,
  document: () => Record<string, unknown>,
): Record<OperationId, RouteHandler> {
  const { sandbox, sessions, replicated } = service;
  const max = settings.maxBodyBytes;
  return {
    getPlayground: () => Promise.resolve(playgroundPage()),
    async getHealth() {
      const body: Record<string, unknown> = {
        status: service.closing ? "shutting_down" : "ok",
        poolSize: sandbox.poolSize,
        sessions: (replicated ?? sessions).size,
        running: service.running,
        queued: sandbox.queueLength,
      };
      if (replicated) {
        const { store } = replicated;
        body.store = { url: store.url, reachable: await store.ping() };
      }
      return json(body, service.closing ? 503 : 200);
    },
    getMetrics() {
      const text = service.metrics.render({
        queue_length: ["Executions waiting for a slot.", sandbox.queueLength],
        running_executions: [
          "Executions admitted and not waiting.",
          service.running,
        ],
        pool_size: ["Warm children waiting in the pool.", sandbox.poolSize],
        sessions: ["Live sessions.", (replicated ?? sessions).size],
      }) + (replicated ? storeMetrics(replicated.store.stats()) : "");
      return Promise.resolve(
        new Response(text, {
          headers: { "content-type": "text/plain; version=0.0.4" },
        }),
      );
    },
    getOpenApi: () => Promise.resolve(json(document())),
    async execute(req) {
      const { code, options } = parseExecute((await readJson(req, max, true))!);
      // No abort signal from the request: Deno.serve aborts it after every
      // response, and the timeout bounds the call anyway.
      return json(await service.execute(code, options));
    },
    async createSession(req) {
      const saved = parseImport(await readJson(req, max, false));
      return json({ id: await service.createSession(saved) }, 201);
    },
    listSessions: async () =>
      json({ sessions: await (replicated ?? sessions).list() }),
    async executeInSession(req, { id }) {
      if (!replicated && !sessions.has(id)) throw new UnknownSessionError(id);
      const { code, options } = parseExecute((await readJson(req, max, true))!);
      // No abort signal: a client that goes away must not kill the session.
      return json(await service.executeInSession(id, code, options));
    },
    async exportSession(_req, { id }) {
      try {
        return json(await (replicated ?? sessions).export(id));
      } catch (error) {
        if (error instanceof SessionError) {
          throw new HttpError(409, error.message);
        }
        throw error;
      }
    },
    async deleteSession(_req, { id }) {
      if (!(await (replicated ?? sessions).delete(id))) {
        throw new UnknownSessionError(id);
      }
      return new Response(null, { status: 204 });
    },
  };
}

/** Builds the route table from the route documentation. */
function routeTable(
  docs: readonly RouteDoc[],
  handlers: Record<OperationId, RouteHandler>,
): Route[] {
  return docs.map((doc) => ({
    ...doc,
    methods: doc.operationId === "getPlayground"
      ? ["GET", "HEAD"]
      : [doc.method],
    pattern: new URLPattern({
      pathname: doc.path.replace(/\{(\w+)\}/g, ":$1"),
    }),
    handler: handlers[doc.operationId],
  }));
}

/** The route a path and method select, or the methods the path serves. */
function match(
  routes: readonly Route[],
  method: string,
  pathname: string,
): { route: Route; params: Record<string, string> } | string[] {
  const allowed: string[] = [];
  for (const route of routes) {
    const found = route.pattern.exec({ pathname });
    if (!found) continue;
    const params: Record<string, string> = {};
    try {
      for (const [name, value] of Object.entries(found.pathname.groups)) {
        params[name] = decodeURIComponent(value ?? "");
      }
    } catch {
      continue;
    }
    if (route.methods.includes(method)) return { route, params };
    allowed.push(...route.methods);
  }
  return allowed;
}

/**
 * Routes one request: the base path, the table, preflights, `405` with
 * `Allow`, the token, and `503` while closing.
 */
async function dispatch(
  req: Request,
  routes: readonly Route[],
  settings: HttpSettings,
  service: SandboxService,
): Promise<Response> {
  let path = new URL(req.url).pathname;
  const base = settings.basePath;
  if (base) {
    if (path !== base && !path.startsWith(base + "/")) {
      throw new HttpError(404, `Not found: ${path}`);
    }
    path = path.slice(base.length) || "/";
  }
  const found = match(routes, req.method, path);
  if (Array.isArray(found)) {
    if (found.length === 0) throw new HttpError(404, `Not found: ${path}`);
    if (settings.cors.isPreflight(req)) {
      return settings.cors.preflight(req, found);
    }
    throw new HttpError(
      405,
      `Method not allowed: ${req.method} ${path}, expected ${
        found.join(" or ")
      }`,
      { allow: found.join(", ") },
    );
  }
  const { route, params } = found;
  if (route.auth) {
    const problem = await service.authProblem(req);
    if (problem) {
      throw new HttpError(401, problem, {
        "www-authenticate": WWW_AUTHENTICATE,
      });
    }
  }
  if (service.closing && route.operationId !== "getHealth") {
    throw new HttpError(503, "The server is shutting down", {
      connection: "close",
    });
  }
  return await route.handler(req, params);
}

/**
 * Creates a request handler serving the sandbox's JSON API: `POST
 * /v1/execute`, the `/v1/sessions` routes, `GET /healthz`, `GET /metrics`
 * and `GET /openapi.json` (and, with `playground: true`, the playground
 * page at `GET /`).
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
      `Invalid handler options: expected an object, got ${
        Array.isArray(options) ? "array" : typeof options
      }`,
    );
  }
  const settings = httpSettings(options);
  const service = new SandboxService(options);
  const docs = settings.playground
    ? [PLAYGROUND_ROUTE, ...API_ROUTES]
    : API_ROUTES;
  let document: Record<string, unknown> | undefined;
  const routes = routeTable(
    docs,
    operations(
      service,
      settings,
      () => document ??= routesDocument(settings.basePath, routes),
    ),
  );

  const handler = async (req: Request): Promise<Response> => {
    const response = await service.track(
      dispatch(req, routes, settings, service).catch(errorResponse),
    );
    if (response.status === 413) service.metrics.reject("body_too_large");
    service.metrics.request(response.status);
    return settings.cors.apply(req, response);
  };

  const close = (closeOptions?: { graceSeconds?: number }) =>
    service.close(closeOptions);
  return Object.assign(handler, {
    sandbox: service.sandbox,
    close,
    [Symbol.asyncDispose]: () => close(),
  });
}
