/**
 * Parsing of a Redis URL (`redis://[user][:password]@host[:port][/db]`,
 * `rediss://` for TLS) into client options, and a display form without the
 * password.
 *
 * @module
 */

/** Where and how to connect. */
export interface RedisTarget {
  /** Host name or address. */
  host: string;
  /** TCP port. */
  port: number;
  /** Database number. */
  db: number;
  /** ACL user name, if any. */
  username?: string;
  /** Password, if any. */
  password?: string;
  /** Whether to use TLS (`rediss://`). */
  tls: boolean;
  /** The URL without its credentials, for messages. */
  display: string;
  /** Strings that must never appear in messages (password forms). */
  secrets: string[];
}

/**
 * Shows a URL-like text without its credentials.
 *
 * @param url Anything the caller passed.
 * @returns A safe, shortened text.
 */
export function redactRedisUrl(url: string): string {
  const at = url.lastIndexOf("@");
  const start = url.indexOf("//");
  let out = url;
  if (at >= 0) {
    out = start >= 0 && start < at
      ? `${url.slice(0, start + 2)}***@${url.slice(at + 1)}`
      : `***@${url.slice(at + 1)}`;
  }
  return out.length > 200 ? `${out.slice(0, 200)}...` : out;
}

function invalid(url: string, why: string): TypeError {
  return new TypeError(
    `Invalid session store URL: ${why}; expected redis://[:password@]host[:port][/db] or rediss://... for TLS, got "${
      redactRedisUrl(url)
    }"`,
  );
}

/**
 * Parses a Redis URL.
 *
 * @param url The URL.
 * @returns The connection target.
 * @throws {TypeError} When it is not a string or not a `redis://` or
 *   `rediss://` URL with a host, a valid port and database, and no query.
 */
export function parseRedisUrl(url: unknown): RedisTarget {
  if (typeof url !== "string") {
    throw new TypeError(
      `Invalid session store URL: expected a string such as redis://host:6379, got ${
        url === null ? "null" : typeof url
      }`,
    );
  }
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw invalid(url, "it is not a URL");
  }
  const scheme = parsed.protocol;
  if (scheme !== "redis:" && scheme !== "rediss:") {
    throw invalid(url, `the scheme ${JSON.stringify(scheme)} is not supported`);
  }
  if (!parsed.hostname) throw invalid(url, "it has no host");
  if (parsed.search || parsed.hash) {
    throw invalid(url, "query strings and fragments are not supported");
  }
  const port = parsed.port ? Number(parsed.port) : 6379;
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw invalid(url, "the port is not valid");
  }
  const path = parsed.pathname.replace(/^\//, "");
  if (path !== "" && !/^\d{1,5}$/.test(path)) {
    throw invalid(url, "the database must be a number (/0, /1, ...)");
  }
  let username: string | undefined;
  let password: string | undefined;
  try {
    username = parsed.username ? decodeURIComponent(parsed.username) : "";
    password = parsed.password ? decodeURIComponent(parsed.password) : "";
  } catch {
    throw invalid(url, "the credentials are not valid percent-encoding");
  }
  const host = parsed.hostname.replace(/^\[|\]$/g, "");
  const shownHost = host.includes(":") ? `[${host}]` : host;
  const secrets = [password, parsed.password, encodeURIComponent(password)]
    .filter((s) => s.length > 0);
  return {
    host,
    port,
    db: path === "" ? 0 : Number(path),
    username: username || undefined,
    password: password || undefined,
    tls: scheme === "rediss:",
    display: `${scheme}//${
      username
        ? `${encodeURIComponent(username)}:***@`
        : password
        ? ":***@"
        : ""
    }${shownHost}:${port}${path ? `/${path}` : ""}`,
    secrets: [...new Set(secrets)],
  };
}
