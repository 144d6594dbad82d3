/**
 * Cross-origin access to the HTTP API, off unless the operator lists
 * origins (`corsOrigins`, `--cors-origin`). A listed origin gets
 * `Access-Control-Allow-Origin` with its own name (and credentials); `*`
 * lets every origin in but never with credentials, and is refused without
 * a token (any page on the web could otherwise run code). Other origins
 * get no CORS headers at all, so browsers keep their responses from the
 * page, and their preflights are refused.
 *
 * @module
 */

import { json } from "./_http.ts";

/** The request headers a cross-origin client may send. */
export const CORS_ALLOW_HEADERS = "authorization, content-type";

/** The response headers a cross-origin client may read. */
const EXPOSE_HEADERS = "retry-after, www-authenticate";

/** How long browsers may cache a preflight answer, in seconds. */
const MAX_AGE = "600";

function checkOrigin(origin: unknown): string {
  if (typeof origin !== "string") {
    throw new TypeError(
      `Invalid corsOrigins entry: expected a string, got ${
        origin === null ? "null" : typeof origin
      }`,
    );
  }
  if (origin === "*") return origin;
  let parsed: URL | undefined;
  try {
    parsed = new URL(origin);
  } catch {
    // Reported below.
  }
  if (
    !parsed || !/^https?:$/.test(parsed.protocol) || parsed.origin !== origin
  ) {
    throw new TypeError(
      `Invalid corsOrigins entry: "${origin}" is not an origin, expected "*" or scheme://host[:port] such as ${
        parsed && /^https?:$/.test(parsed.protocol)
          ? `"${parsed.origin}"`
          : `"https://app.example.com"`
      }`,
    );
  }
  return origin;
}

/** Which origins may call the API from a browser. */
export class CorsPolicy {
  #origins: Set<string>;
  #any: boolean;

  /**
   * @param origins Allowed origins (`scheme://host[:port]`) or `"*"`.
   * @param hasToken Whether the API requires a bearer token.
   * @throws {TypeError} When an entry is not an origin.
   * @throws {RangeError} For `"*"` without a token.
   */
  constructor(origins: readonly string[] | undefined, hasToken: boolean) {
    if (origins !== undefined && !Array.isArray(origins)) {
      throw new TypeError(
        `Invalid corsOrigins: expected an array of origins, got ${typeof origins}`,
      );
    }
    this.#origins = new Set((origins ?? []).map(checkOrigin));
    this.#any = this.#origins.delete("*");
    if (this.#any && !hasToken) {
      throw new RangeError(
        'Invalid corsOrigins: "*" needs a token, otherwise any web page could run code through the API',
      );
    }
  }

  /** Whether any origin is allowed. */
  get enabled(): boolean {
    return this.#any || this.#origins.size > 0;
  }

  /** The CORS headers a request's origin earns (none when not allowed). */
  #headers(req: Request): Record<string, string> | undefined {
    const origin = req.headers.get("origin");
    if (origin === null) return undefined;
    if (this.#origins.has(origin)) {
      return {
        "access-control-allow-origin": origin,
        "access-control-allow-credentials": "true",
      };
    }
    if (this.#any) return { "access-control-allow-origin": "*" };
    return undefined;
  }

  /**
   * Whether a request is a CORS preflight this policy answers.
   *
   * @param req The request.
   * @returns True for `OPTIONS` with `Origin` and
   *   `Access-Control-Request-Method`, when CORS is on.
   */
  isPreflight(req: Request): boolean {
    return this.enabled && req.method === "OPTIONS" &&
      req.headers.has("origin") &&
      req.headers.has("access-control-request-method");
  }

  /**
   * Answers a preflight: `204` with the allowed methods and headers for an
   * allowed origin, `403` without CORS headers for any other.
   *
   * @param req The preflight request.
   * @param methods The methods the requested path serves.
   * @returns The response.
   */
  preflight(req: Request, methods: readonly string[]): Response {
    const allowed = this.#headers(req);
    if (!allowed) {
      return json(
        {
          error: `Forbidden: origin "${
            req.headers.get("origin")
          }" is not allowed to call this API (see --cors-origin)`,
        },
        403,
        { vary: "origin" },
      );
    }
    return new Response(null, {
      status: 204,
      headers: {
        ...allowed,
        "access-control-allow-methods": methods.join(", "),
        "access-control-allow-headers": CORS_ALLOW_HEADERS,
        "access-control-max-age": MAX_AGE,
        vary:
          "origin, access-control-request-method, access-control-request-headers",
      },
    });
  }

  /**
   * Adds the CORS headers a request earns to its response (and
   * `Vary: Origin` whenever CORS is on, for caches).
   *
   * @param req The request.
   * @param response Its response.
   * @returns The response to send.
   */
  apply(req: Request, response: Response): Response {
    if (!this.enabled) return response;
    const headers = new Headers(response.headers);
    headers.append("vary", "origin");
    const allowed = this.#headers(req);
    if (allowed) {
      for (const [name, value] of Object.entries(allowed)) {
        headers.set(name, value);
      }
      headers.set("access-control-expose-headers", EXPOSE_HEADERS);
    }
    return new Response(response.body, {
      status: response.status,
      statusText: response.statusText,
      headers,
    });
  }
}
