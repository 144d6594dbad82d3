/**
 * Errors of the Redis session store, and the scrubbing that keeps the Redis
 * password out of every message and cause they carry.
 *
 * @module
 */

/**
 * The session store (Redis) could not be reached or failed, or an
 * operation did not finish within its time bound. A server answers 503.
 * The message never contains the Redis password.
 */
export class SessionStoreUnavailableError extends Error {
  /**
   * Creates the error.
   *
   * @param detail What failed (already free of secrets).
   * @param options Standard error options; `cause` is a scrubbed copy of
   *   the client's error, never the client's error object itself.
   */
  constructor(detail: string, options?: ErrorOptions) {
    super(`session store unavailable: ${detail}`, options);
    this.name = "SessionStoreUnavailableError";
  }
}

/** Why a fenced write was refused. */
export type FenceReason = "lease" | "version";

/**
 * A fenced write was refused: the caller no longer holds the session's
 * lease (it expired or another replica took it), or the stored version is
 * not the one the caller expected (someone wrote newer state). The caller
 * must drop its copy of the session and not answer with it.
 */
export class SessionFenceError extends Error {
  /** `"lease"` when the lease was lost, `"version"` on a version mismatch. */
  readonly reason: FenceReason;
  /** The version found in the store (0 when there is no record). */
  readonly currentVersion: number | null;

  /**
   * Creates the error.
   *
   * @param id The session's id.
   * @param reason Why the write was refused.
   * @param currentVersion The version found, when known.
   */
  constructor(id: string, reason: FenceReason, currentVersion: number | null) {
    super(
      reason === "lease"
        ? `Session write refused: this replica no longer holds the lease on "${id}"`
        : `Session write refused: "${id}" is at version ${currentVersion}, not the version this write expected`,
    );
    this.name = "SessionFenceError";
    this.reason = reason;
    this.currentVersion = currentVersion;
  }
}

/** The store's session limit (`maxSessions`) is reached. */
export class SessionStoreFullError extends Error {
  /**
   * Creates the error.
   *
   * @param max The limit.
   */
  constructor(max: number) {
    super(
      `Session store full: it holds ${max} sessions, its limit; delete some (or wait for idle ones to expire) and retry`,
    );
    this.name = "SessionStoreFullError";
  }
}

const URL_CREDENTIALS = /\b(rediss?:\/\/)[^@\s/]*@/gi;
const MAX_DETAIL = 500;

/**
 * Replaces every secret (and URL credentials) in a text by `***`.
 *
 * @param text The text.
 * @param secrets Strings to hide (empty ones are ignored).
 * @returns The scrubbed text, at most 500 characters.
 */
export function scrub(text: string, secrets: readonly string[]): string {
  let out = text.replace(URL_CREDENTIALS, "$1:***@");
  for (const secret of secrets) {
    if (secret.length > 0) out = out.split(secret).join("***");
  }
  return out.length > MAX_DETAIL ? `${out.slice(0, MAX_DETAIL)}...` : out;
}

/**
 * Copies a client error into a plain `Error` with a scrubbed message, name
 * and code, dropping everything else (client errors can carry the command's
 * arguments: an AUTH password, session bytes).
 *
 * @param error What the client threw.
 * @param secrets Strings to hide.
 * @returns The copy.
 */
export function scrubbedCause(
  error: unknown,
  secrets: readonly string[],
): Error {
  const source = error instanceof Error ? error : undefined;
  const copy = new Error(scrub(source?.message ?? String(error), secrets));
  copy.name = scrub(source?.name ?? "Error", secrets).slice(0, 80);
  const code = (source as { code?: unknown } | undefined)?.code;
  if (typeof code === "string") {
    (copy as { code?: string }).code = scrub(code, secrets).slice(0, 80);
  }
  copy.stack = `${copy.name}: ${copy.message}`;
  return copy;
}

/**
 * Turns anything the client threw into a {@linkcode SessionStoreUnavailableError}
 * (our own typed errors pass through unchanged).
 *
 * @param error What was thrown.
 * @param what The operation, for the message.
 * @param secrets Strings to hide.
 * @returns The error to throw.
 */
export function toStoreError(
  error: unknown,
  what: string,
  secrets: readonly string[],
): Error {
  if (
    error instanceof SessionStoreUnavailableError ||
    error instanceof SessionFenceError ||
    error instanceof SessionStoreFullError ||
    (error instanceof DOMException && error.name === "AbortError")
  ) {
    return error as Error;
  }
  const cause = scrubbedCause(error, secrets);
  return new SessionStoreUnavailableError(`${what} failed: ${cause.message}`, {
    cause,
  });
}
