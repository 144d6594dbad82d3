/**
 * A real `redis-server` for the tests: started on a free loopback port with
 * its own temporary folder, ready once it answers PING, stopped and removed
 * afterwards. `stop()`/`restart()` simulate a store outage. Also fixtures
 * for store tests: sealed counter sessions and a time-bound failure check.
 *
 * When `redis-server` is not installed the tests fail (they are never
 * skipped silently): `.ci/run` installs it with apt-get.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  type RedisSessionStore,
  redisSessionStore,
  type RedisSessionStoreOptions,
  SessionStoreUnavailableError,
} from "../redis_store.ts";
import { sealSession, unsealSession } from "../_session_bytes.ts";
import type { SessionMetadata } from "../result.ts";

/** Options of {@linkcode startRedis}. */
export interface StartRedisOptions {
  /** Require this password (`--requirepass`). */
  password?: string;
  /** Keep an append-only file, so data survives `restart()`. */
  appendonly?: boolean;
  /** Serve TLS only (`rediss://`), with a fresh CA and certificate. */
  tls?: boolean;
  /** How long to wait for PING to answer, in milliseconds. */
  startTimeoutMs?: number;
}

/** A running test Redis. */
export interface TestRedis {
  /** Its URL, with the password when one is set. */
  url: string;
  /** Its loopback port. */
  port: number;
  /** Its password, if any. */
  password?: string;
  /** The CA certificate (PEM) that signed its certificate, with `tls`. */
  caCert?: string;
  /** Its data folder (removed by `close()`). */
  dir: string;
  /** Whether the server process is running. */
  readonly running: boolean;
  /** Freezes the server (SIGSTOP): connections stay open, nothing answers. */
  pause(): void;
  /** Lets a paused server run again (SIGCONT). */
  resume(): void;
  /** Stops the server (SIGTERM, then SIGKILL) and keeps its folder. */
  stop(): Promise<void>;
  /** Starts it again on the same port and folder. */
  restart(): Promise<void>;
  /** Stops it and removes its folder. */
  close(): Promise<void>;
  /** Runs `await using` cleanup. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** Servers started by this test module, by pid. */
const started = new Set<number>();

/**
 * Lists the redis-server processes this test module started that still
 * run (a leak check: modules running beside it are not counted).
 *
 * @returns Their pids.
 */
export function liveRedisServers(): number[] {
  return [...started].filter((pid) => {
    try {
      const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
      const state = stat.slice(
        stat.lastIndexOf(")") + 2,
        stat.lastIndexOf(")") + 3,
      );
      return state !== "Z" && stat.includes("(redis-server");
    } catch {
      return false;
    }
  });
}

const SEARCH = ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin"];

/**
 * Finds `redis-server` on PATH (or the usual folders).
 *
 * @returns Its path.
 * @throws {Error} When it is not installed, saying how to install it.
 */
export function findRedisServer(): string {
  const path = Deno.env.get("PATH") ?? "";
  for (const dir of [...path.split(":").filter(Boolean), ...SEARCH]) {
    const candidate = `${dir}/redis-server`;
    try {
      if (Deno.statSync(candidate).isFile) return candidate;
    } catch {
      // Not there.
    }
  }
  throw new Error(
    "redis-server is not installed: the session store tests need it; install it with `apt-get install -y redis-server` (.ci/run does this)",
  );
}

/**
 * A free port below the kernel's ephemeral range, picked at random: a
 * port the kernel hands out (port 0) may be one a stopped test Redis just
 * freed, and another test's server there would answer its clients.
 */
function freePort(): number {
  for (;;) {
    // Not Math.random: `deno test` may seed it alike in every module.
    const port = 20_000 +
      crypto.getRandomValues(new Uint32Array(1))[0] % 12_000;
    try {
      Deno.listen({ hostname: "127.0.0.1", port }).close();
      return port;
    } catch {
      // Taken: try another.
    }
  }
}

async function answersPing(port: number, ca?: string): Promise<boolean> {
  let conn: Deno.TcpConn | Deno.TlsConn | undefined;
  try {
    conn = ca === undefined
      ? await Deno.connect({ hostname: "127.0.0.1", port })
      : await Deno.connectTls({ hostname: "127.0.0.1", port, caCerts: [ca] });
    await conn.write(new TextEncoder().encode("*1\r\n$4\r\nPING\r\n"));
    const buf = new Uint8Array(64);
    const timer = setTimeout(() => conn?.close(), 1000);
    const n = await conn.read(buf).finally(() => clearTimeout(timer));
    const reply = new TextDecoder().decode(buf.subarray(0, n ?? 0));
    // "-NOAUTH" also means the server is up (it wants the password).
    return reply.startsWith("+PONG") || reply.startsWith("-NOAUTH");
  } catch {
    return false;
  } finally {
    try {
      conn?.close();
    } catch {
      // Closed by the timer.
    }
  }
}

async function openssl(dir: string, args: string[]): Promise<void> {
  let output: Deno.CommandOutput;
  try {
    output = await new Deno.Command("openssl", {
      args,
      cwd: dir,
      stdin: "null",
    })
      .output();
  } catch (error) {
    throw new Error(
      "openssl is not installed: the TLS session store test needs it to make a certificate",
      { cause: error },
    );
  }
  if (!output.success) {
    throw new Error(
      `openssl ${args[0]} failed: ${new TextDecoder().decode(output.stderr)}`,
    );
  }
}

/** Makes a CA and a certificate for 127.0.0.1 signed by it. */
async function makeCertificates(dir: string): Promise<string> {
  const days = ["-days", "2"];
  await openssl(dir, [
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    "ca.key",
    "-out",
    "ca.crt",
    ...days,
    "-subj",
    "/CN=sandbox-test-ca",
  ]);
  await openssl(dir, [
    "req",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    "server.key",
    "-out",
    "server.csr",
    "-subj",
    "/CN=localhost",
  ]);
  await Deno.writeTextFile(
    `${dir}/ext.cnf`,
    "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
  );
  await openssl(dir, [
    "x509",
    "-req",
    "-in",
    "server.csr",
    "-CA",
    "ca.crt",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-out",
    "server.crt",
    ...days,
    "-extfile",
    "ext.cnf",
  ]);
  return await Deno.readTextFile(`${dir}/ca.crt`);
}

function readLog(dir: string): string {
  try {
    return Deno.readTextFileSync(`${dir}/redis.log`).split("\n").slice(-15)
      .join("\n");
  } catch {
    return "(no log)";
  }
}

function redisArgs(
  dir: string,
  port: number,
  tls: boolean,
  options: StartRedisOptions,
): string[] {
  const listen = tls
    ? [
      ["--port", "0"],
      ["--tls-port", String(port)],
      ["--tls-cert-file", `${dir}/server.crt`],
      ["--tls-key-file", `${dir}/server.key`],
      ["--tls-ca-cert-file", `${dir}/ca.crt`],
      ["--tls-auth-clients", "no"],
    ]
    : [["--port", String(port)]];
  const pairs = [
    ...listen,
    ["--bind", "127.0.0.1"],
    ["--dir", dir],
    ["--save", ""],
    ["--appendonly", options.appendonly ? "yes" : "no"],
    ["--daemonize", "no"],
    ["--logfile", `${dir}/redis.log`],
  ];
  if (options.password !== undefined) {
    pairs.push(["--requirepass", options.password]);
  }
  return pairs.flat();
}

/** A redis-server process on one port and folder, restartable. */
class RedisProcess implements TestRedis {
  readonly url: string;
  readonly port: number;
  readonly password?: string;
  readonly caCert?: string;
  readonly dir: string;
  #binary: string;
  #options: StartRedisOptions;
  #child: Deno.ChildProcess | undefined;

  constructor(
    binary: string,
    dir: string,
    port: number,
    caCert: string | undefined,
    options: StartRedisOptions,
  ) {
    this.#binary = binary;
    this.#options = options;
    this.dir = dir;
    this.port = port;
    this.caCert = caCert;
    this.password = options.password;
    const auth = options.password === undefined
      ? ""
      : `:${encodeURIComponent(options.password)}@`;
    const scheme = caCert === undefined ? "redis" : "rediss";
    this.url = `${scheme}://${auth}127.0.0.1:${port}`;
  }

  get running(): boolean {
    return this.#child !== undefined;
  }

  async spawn(): Promise<void> {
    const args = redisArgs(
      this.dir,
      this.port,
      this.caCert !== undefined,
      this.#options,
    );
    const child = new Deno.Command(this.#binary, {
      args,
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    this.#child = child;
    started.add(child.pid);
    let done = false;
    child.status.then(() => done = true);
    const timeoutMs = this.#options.startTimeoutMs ?? 30_000;
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline && !done) {
      if (await answersPing(this.port, this.caCert)) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    await this.stop();
    throw new Error(
      `redis-server did not answer PING on port ${this.port} within ${timeoutMs} ms: ${
        readLog(this.dir)
      }`,
    );
  }

  pause(): void {
    this.#child?.kill("SIGSTOP");
  }

  resume(): void {
    this.#child?.kill("SIGCONT");
  }

  async stop(): Promise<void> {
    const running = this.#child;
    this.#child = undefined;
    if (!running) return;
    const kill = (signal: Deno.Signal) => {
      try {
        running.kill(signal);
      } catch {
        // Already gone.
      }
    };
    kill("SIGCONT");
    kill("SIGTERM");
    const timer = setTimeout(() => kill("SIGKILL"), 10_000);
    await running.status.finally(() => clearTimeout(timer));
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.spawn();
  }

  async close(): Promise<void> {
    await this.stop();
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * Starts a `redis-server` on a free loopback port with a temporary folder
 * and waits until it answers PING.
 *
 * @param options Password, persistence, TLS and start-up timeout.
 * @returns The running server; call `close()` (or `await using`).
 * @throws {Error} When `redis-server` (or, with `tls`, openssl) is missing
 *   or the server does not start.
 */
export async function startRedis(
  options: StartRedisOptions = {},
): Promise<TestRedis> {
  const binary = findRedisServer();
  const dir = await Deno.makeTempDir({ prefix: "sandbox-test-redis-" });
  try {
    const caCert = options.tls ? await makeCertificates(dir) : undefined;
    for (let attempt = 0;; attempt++) {
      const server = new RedisProcess(binary, dir, freePort(), caCert, options);
      try {
        await server.spawn();
        return server;
      } catch (error) {
        // Another process may have taken the port between probe and bind.
        if (attempt >= 2) throw error;
      }
    }
  } catch (error) {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw error;
  }
}

/** The HMAC key the store tests seal session bytes with. */
export const STORE_TEST_SECRET: Uint8Array = new TextEncoder().encode(
  "a-test-secret-of-32-bytes-length",
);

/**
 * A store on a test Redis with {@linkcode STORE_TEST_SECRET}.
 *
 * @param redis The Redis.
 * @param options More store options.
 * @returns The store (close it, or `await using`).
 */
export function openStore(
  redis: TestRedis,
  options: RedisSessionStoreOptions = {},
): RedisSessionStore {
  return redisSessionStore(redis.url, {
    sessionSecret: STORE_TEST_SECRET,
    ...options,
  });
}

/**
 * Sealed bytes holding a counter, as `session.save()` would give.
 *
 * @param n The counter.
 * @param previous The metadata of the state this continues.
 * @returns Bytes and metadata.
 */
export async function sealCounter(
  n: number,
  previous?: SessionMetadata,
): Promise<{ sessionBytes: Uint8Array; sessionMetadata: SessionMetadata }> {
  const payload = new TextEncoder().encode(JSON.stringify({ n }));
  return await sealSession(payload, previous, STORE_TEST_SECRET);
}

/**
 * Opens sealed counter bytes (checking their HMAC).
 *
 * @param bytes The bytes.
 * @param metadata Their metadata.
 * @returns The counter.
 */
export async function counterOf(
  bytes: Uint8Array,
  metadata: SessionMetadata,
): Promise<number> {
  const payload = await unsealSession(bytes, metadata, STORE_TEST_SECRET);
  return JSON.parse(new TextDecoder().decode(payload)).n;
}

/**
 * Creates session `id` at version 1 holding counter `n`, lease released.
 *
 * @param store The store.
 * @param id The session's id.
 * @param n The counter.
 * @returns The session's metadata.
 */
export async function createCounter(
  store: RedisSessionStore,
  id: string,
  n = 0,
): Promise<SessionMetadata> {
  const token = crypto.randomUUID();
  assert.equal(await store.acquireLease(id, token, 5000), true);
  const saved = await sealCounter(n);
  const version = await store.write(id, saved.sessionBytes, {
    expectedVersion: 0,
    leaseToken: token,
    metadata: saved.sessionMetadata,
  });
  assert.equal(version, 1);
  assert.equal(await store.releaseLease(id, token), true);
  return saved.sessionMetadata;
}

/**
 * Asserts that an operation fails with SessionStoreUnavailableError
 * within a bound.
 *
 * @param what Described in failure messages.
 * @param fn The operation.
 * @param ms The bound.
 * @returns The error.
 */
export async function rejectsWithin(
  what: string,
  fn: () => Promise<unknown>,
  ms: number,
): Promise<SessionStoreUnavailableError> {
  const started = performance.now();
  const error = await fn().then(
    () => assert.fail(`${what}: expected SessionStoreUnavailableError`),
    (e) => e,
  );
  const elapsed = performance.now() - started;
  assert.ok(
    error instanceof SessionStoreUnavailableError,
    `${what}: got ${error}`,
  );
  assert.equal(error.name, "SessionStoreUnavailableError");
  assert.match(error.message, /^session store unavailable: /);
  assert.ok(elapsed < ms, `${what}: took ${elapsed} ms, bound ${ms} ms`);
  return error;
}
