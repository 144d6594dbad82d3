/**
 * The service core the HTTP and MCP servers share: which sandbox they run
 * code in (and whether they own it), the live sessions, admission control
 * (running plus queued executions are bounded), bearer-token auth, metrics
 * of what ran, and an orderly close. The servers are thin adapters that
 * translate their protocol into calls on a {@linkcode SandboxService}.
 *
 * @module
 */

import { PyodideSandbox } from "./sandbox.ts";
import type {
  ExecuteOptions,
  SandboxOptions,
  SessionOptions,
} from "./options.ts";
import { type CodeExecutionResult, ERROR_KINDS } from "./result.ts";
import { SessionLimitError, SessionStore } from "./_session_store.ts";
import { bearerProblem } from "./_auth.ts";
import type { RedisSessionStore } from "./_redis_store.ts";
import { ReplicatedSessions } from "./_replicated_sessions.ts";

/** Options of a {@linkcode SandboxService}; each is checked on creation. */
export interface ServiceOptions {
  /**
   * The sandbox to run code in; without it one is created from
   * `sandboxOptions` and closed by `close()`.
   * @default {undefined}
   */
  sandbox?: PyodideSandbox;
  /**
   * Options of the sandbox created without `sandbox`; `maxConcurrency`
   * defaults to the service's.
   * @default {{}}
   */
  sandboxOptions?: SandboxOptions;
  /**
   * The bearer token requests must carry; none means no auth.
   * @default {undefined}
   */
  token?: string;
  /**
   * Default and maximum timeout of a call, in seconds.
   * @default {sandboxOptions.timeoutSeconds, or 60}
   */
  maxTimeoutSeconds?: number;
  /**
   * Executions running at once.
   * @default {4}
   */
  maxConcurrency?: number;
  /**
   * Executions waiting for a slot at most; more are refused.
   * @default {16}
   */
  maxQueue?: number;
  /**
   * Live sessions at most.
   * @default {16}
   */
  maxSessions?: number;
  /**
   * Sessions unused this many seconds are closed.
   * @default {600}
   */
  sessionIdleSeconds?: number;
  /**
   * A shared session store (see `redisSessionStore()`): sessions live in
   * it and any replica serves any of them; `maxSessions` then bounds the
   * live children this replica caches. Left open by `close()`.
   * @default {undefined}
   */
  sessionStore?: { readonly url: string };
  /**
   * With a `sessionStore`: 0 writes each step back before answering
   * (durable); N > 0 writes a session back at most every N seconds and on
   * close instead, so a crash loses at most N seconds of acknowledged
   * steps (checkpoint mode).
   * @default {0}
   */
  sessionCheckpointSeconds?: number;
}

/** Thrown when running plus queued executions are at their limit. */
export class QueueFullError extends Error {
  /**
   * @param running The concurrency limit.
   * @param queued The queue limit.
   */
  constructor(running: number, queued: number) {
    super(
      `Too many requests: ${running} executions are running and ${queued} waiting; retry later`,
    );
    this.name = "QueueFullError";
  }
}

/** Thrown for work that arrives while the service is closing. */
export class ShuttingDownError extends Error {
  constructor() {
    super("The server is shutting down");
    this.name = "ShuttingDownError";
  }
}

/** Why a request was refused, as counted in the metrics. */
export type RejectReason = "queue_full" | "session_limit" | "body_too_large";

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
export class Metrics {
  #executions = new Map<string, number>();
  #buckets: number[] = HISTOGRAM_BUCKETS.map(() => 0);
  #sum = 0;
  #count = 0;
  #requests = new Map<string, number>();
  #rejected = new Map<string, number>();

  constructor() {
    this.#executions.set(`success|none`, 0);
    for (const kind of ERROR_KINDS) this.#executions.set(`error|${kind}`, 0);
    for (const reason of ["queue_full", "session_limit", "body_too_large"]) {
      this.#rejected.set(reason, 0);
    }
  }

  /**
   * Counts one finished execution.
   *
   * @param result Its result.
   */
  execution(result: CodeExecutionResult): void {
    const key = result.status === "success"
      ? "success|none"
      : `error|${result.error?.kind ?? "crash"}`;
    this.#executions.set(key, (this.#executions.get(key) ?? 0) + 1);
    const t = result.executionTime;
    HISTOGRAM_BUCKETS.forEach((le, i) => {
      if (t <= le) this.#buckets[i]++;
    });
    this.#sum += t;
    this.#count++;
  }

  /**
   * Counts one response.
   *
   * @param status Its status code.
   */
  request(status: number): void {
    const key = String(status);
    this.#requests.set(key, (this.#requests.get(key) ?? 0) + 1);
  }

  /**
   * Counts one refusal.
   *
   * @param reason Why.
   */
  reject(reason: RejectReason): void {
    this.#rejected.set(reason, (this.#rejected.get(reason) ?? 0) + 1);
  }

  /**
   * Renders everything in Prometheus text format.
   *
   * @param gauges Name to `[help, value]` of the current gauges.
   * @returns The text.
   */
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
    for (const [key, n] of this.#executions) {
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
        `${p}execution_duration_seconds_bucket{le="${le}"} ${this.#buckets[i]}`,
      );
    });
    lines.push(
      `${p}execution_duration_seconds_bucket{le="+Inf"} ${this.#count}`,
      `${p}execution_duration_seconds_sum ${this.#sum}`,
      `${p}execution_duration_seconds_count ${this.#count}`,
    );
    for (const [name, [help, value]] of Object.entries(gauges)) {
      head(name, "gauge", help);
      lines.push(`${p}${name} ${value}`);
    }
    head("http_requests_total", "counter", "HTTP responses, by status code.");
    for (const [code, n] of [...this.#requests].sort()) {
      lines.push(`${p}http_requests_total{code="${code}"} ${n}`);
    }
    head(
      "rejected_requests_total",
      "counter",
      "Requests refused for a full queue, the session limit or a large body.",
    );
    for (const [reason, n] of this.#rejected) {
      lines.push(`${p}rejected_requests_total{reason="${reason}"} ${n}`);
    }
    return lines.join("\n") + "\n";
  }
}

function typeName(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  return typeof value;
}

/**
 * Checks an integer option.
 *
 * @param name The option's name, for messages.
 * @param value The given value.
 * @param fallback Its default.
 * @param min The smallest accepted value.
 * @returns The value, or the default when undefined.
 * @throws {TypeError} When it is not an integer.
 * @throws {RangeError} When it is below `min`.
 */
export function integerOption(
  name: string,
  value: unknown,
  fallback: number,
  min = 1,
): number {
  const v = value ?? fallback;
  if (typeof v !== "number" || !Number.isInteger(v)) {
    throw new TypeError(
      `Invalid ${name}: expected an integer, got ${
        typeof v === "number" ? v : typeName(v)
      }`,
    );
  }
  if (v < min) {
    throw new RangeError(`Invalid ${name}: expected at least ${min}, got ${v}`);
  }
  return v;
}

/** A finite positive number option, or its default. */
function positiveOption(name: string, value: unknown, fallback: number) {
  const v = value ?? fallback;
  if (typeof v !== "number" || Number.isNaN(v)) {
    throw new TypeError(
      `Invalid ${name}: expected a number, got ${
        typeof v === "number" ? v : typeName(v)
      }`,
    );
  }
  if (!(v > 0) || v === Infinity) {
    throw new RangeError(
      `Invalid ${name}: expected a positive number, got ${v}`,
    );
  }
  return v;
}

/** Checks the token option. */
function tokenOption(token: unknown): string | undefined {
  if (token === undefined) return undefined;
  if (typeof token !== "string") {
    throw new TypeError(
      `Invalid token: expected a string, got ${typeName(token)}`,
    );
  }
  if (token.length === 0) {
    throw new RangeError("Invalid token: expected a non-empty string");
  }
  return token;
}

/** Checks the sessionCheckpointSeconds option (0, the default, is durable). */
function checkpointOption(value: unknown): number {
  if (value === undefined || value === 0) return 0;
  return positiveOption("sessionCheckpointSeconds", value, 0);
}

/** Checks the sessionStore option by shape (the class is loaded lazily). */
function storeOption(store: unknown): RedisSessionStore {
  const s = store as Record<string, unknown> | null;
  if (
    s === null || typeof s !== "object" ||
    !["waitForLease", "write", "read", "version", "list", "ping", "stats"]
      .every((m) => typeof s[m] === "function")
  ) {
    throw new TypeError(
      "Invalid sessionStore: expected a store from redisSessionStore()",
    );
  }
  return store as RedisSessionStore;
}

/**
 * A sandbox with its sessions, limits, token and metrics: what a server
 * serves. Every method is safe to call concurrently.
 */
export class SandboxService {
  /** The sandbox code runs in. */
  readonly sandbox: PyodideSandbox;
  /** The live sessions. */
  readonly sessions: SessionStore;
  /** The shared sessions, when a `sessionStore` was given. */
  readonly replicated: ReplicatedSessions | undefined;
  /** What ran and what was refused. */
  readonly metrics: Metrics = new Metrics();
  /** Default and maximum timeout of a call, in seconds. */
  readonly maxTimeoutSeconds: number;
  /** Executions running at once. */
  readonly maxConcurrency: number;
  /** Executions waiting for a slot at most. */
  readonly maxQueue: number;
  #token: string | undefined;
  #ownSandbox: boolean;
  #active = new Set<Promise<unknown>>();
  #executions = 0;
  #closing = false;
  #closed: Promise<void> | undefined;
  #hurry: (() => void) | undefined;

  /**
   * @param options The sandbox (or its options), the token and the limits.
   * @throws {TypeError} When an option has the wrong type.
   * @throws {RangeError} When a limit is out of range.
   */
  constructor(options: ServiceOptions = {}) {
    if (options === null || typeof options !== "object") {
      throw new TypeError(
        `Invalid options: expected an object, got ${typeName(options)}`,
      );
    }
    this.#token = tokenOption(options.token);
    if (
      options.sandbox !== undefined &&
      !(options.sandbox instanceof PyodideSandbox)
    ) {
      throw new TypeError("Invalid sandbox: expected a PyodideSandbox");
    }
    const o = options;
    this.maxConcurrency = integerOption("maxConcurrency", o.maxConcurrency, 4);
    this.maxQueue = integerOption("maxQueue", o.maxQueue, 16, 0);
    this.maxTimeoutSeconds = positiveOption(
      "maxTimeoutSeconds",
      o.maxTimeoutSeconds,
      o.sandboxOptions?.timeoutSeconds ?? 60,
    );
    const maxSessions = integerOption("maxSessions", o.maxSessions, 16, 0);
    const idleSeconds = positiveOption(
      "sessionIdleSeconds",
      o.sessionIdleSeconds,
      600,
    );
    this.#ownSandbox = o.sandbox === undefined;
    this.sandbox = o.sandbox ??
      new PyodideSandbox({
        maxConcurrency: this.maxConcurrency,
        ...o.sandboxOptions,
      });
    this.sessions = new SessionStore(this.sandbox, {
      maxSessions,
      idleSeconds,
    });
    const checkpointSeconds = checkpointOption(o.sessionCheckpointSeconds);
    this.replicated = o.sessionStore === undefined
      ? undefined
      : new ReplicatedSessions(this.sandbox, storeOption(o.sessionStore), {
        maxSessions,
        idleSeconds,
        checkpointSeconds,
      });
  }

  /** True once `close()` was called. */
  get closing(): boolean {
    return this.#closing;
  }

  /** Admitted executions that are not waiting for a slot. */
  get running(): number {
    return Math.max(0, this.#executions - this.sandbox.queueLength);
  }

  /**
   * Checks a request's bearer token.
   *
   * @param req The request.
   * @returns Undefined when authorized (or without a token), else why not.
   */
  async authProblem(req: Request): Promise<string | undefined> {
    if (this.#token === undefined) return undefined;
    return await bearerProblem(req, this.#token);
  }

  /**
   * Tracks a piece of work, so that `close()` waits for it.
   *
   * @param work The work.
   * @returns The same promise.
   */
  track<T>(work: Promise<T>): Promise<T> {
    this.#active.add(work);
    const done = () => this.#active.delete(work);
    work.then(done, done);
    return work;
  }

  /** Runs `fn` if running plus queued executions are under their limit. */
  async #admitted<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#closing) throw new ShuttingDownError();
    if (this.#executions >= this.maxConcurrency + this.maxQueue) {
      this.metrics.reject("queue_full");
      throw new QueueFullError(this.maxConcurrency, this.maxQueue);
    }
    this.#executions++;
    try {
      return await fn();
    } finally {
      this.#executions--;
    }
  }

  /** The effective per-call timeout: capped at the maximum, which is the default. */
  #capped(options: ExecuteOptions): ExecuteOptions {
    const asked = options.timeoutSeconds ?? this.maxTimeoutSeconds;
    return {
      ...options,
      timeoutSeconds: Math.min(asked, this.maxTimeoutSeconds),
    };
  }

  /**
   * Runs code in a fresh interpreter, under admission control and the
   * timeout cap, and counts the result.
   *
   * @param code Python source.
   * @param options Per-call options.
   * @returns The result.
   * @throws {QueueFullError} When the queue is full.
   * @throws {ShuttingDownError} While closing.
   */
  execute(
    code: string,
    options: ExecuteOptions = {},
  ): Promise<CodeExecutionResult> {
    return this.#admitted(async () => {
      const result = await this.sandbox.execute(code, this.#capped(options));
      this.metrics.execution(result);
      return result;
    });
  }

  /**
   * Runs code in a stored session, like {@linkcode SandboxService.execute}.
   *
   * @param id The session's id.
   * @param code Python source.
   * @param options Per-call options.
   * @returns The result.
   * @throws {UnknownSessionError} When there is no such session.
   * @throws {QueueFullError} When the queue is full.
   */
  executeInSession(
    id: string,
    code: string,
    options: ExecuteOptions = {},
  ): Promise<CodeExecutionResult> {
    return this.#admitted(async () => {
      const result = await (this.replicated ?? this.sessions).execute(
        id,
        code,
        this.#capped(options),
      );
      this.metrics.execution(result);
      return result;
    });
  }

  /**
   * Opens a stored session, counting a refusal at the session limit.
   *
   * @param options Saved state to resume from.
   * @returns The new session's id.
   * @throws {SessionLimitError} At the session limit.
   * @throws {ShuttingDownError} While closing.
   */
  async createSession(options: SessionOptions = {}): Promise<string> {
    if (this.#closing) throw new ShuttingDownError();
    try {
      return await (this.replicated ?? this.sessions).create(options);
    } catch (error) {
      if (error instanceof SessionLimitError) {
        this.metrics.reject("session_limit");
      }
      throw error;
    }
  }

  /**
   * Deletes a stored session (group-wide with a `sessionStore`).
   *
   * @param id The session's id.
   * @returns False when there was no such session.
   */
  async deleteSession(id: string): Promise<boolean> {
    return await (this.replicated ?? this.sessions).delete(id);
  }

  /**
   * Stops taking work, waits for tracked work (at most `graceSeconds`, by
   * default the maximum timeout plus 5 s), then closes every session and,
   * if the service created it, the sandbox. Calling it again returns the
   * same promise.
   *
   * @param options How long to wait for running work.
   * @returns Settles when everything is closed.
   */
  close(
    { graceSeconds = this.maxTimeoutSeconds + 5 }: { graceSeconds?: number } =
      {},
  ): Promise<void> {
    this.#closing = true;
    if (this.#closed) {
      // A second call may only shorten the wait.
      const hurry = this.#hurry;
      if (hurry) Deno.unrefTimer(setTimeout(hurry, graceSeconds * 1000));
      return this.#closed;
    }
    this.#closed = (async () => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        Promise.allSettled([...this.#active]),
        new Promise<void>((resolve) => {
          this.#hurry = resolve;
          timer = setTimeout(resolve, graceSeconds * 1000);
        }),
      ]);
      clearTimeout(timer);
      this.#hurry = undefined;
      await this.sessions.close();
      await this.replicated?.close();
      if (this.#ownSandbox) await this.sandbox.close();
    })();
    return this.#closed;
  }
}
