/**
 * `deno task serve`: the sandbox's JSON HTTP API on `Deno.serve`.
 *
 * ```sh
 * SANDBOX_TOKEN=secret deno task serve --hostname 0.0.0.0 --port 8000 --allow-net=api.example.com --timeout 30 --max-concurrency 4
 * ```
 *
 * Flags: `--hostname` (default `127.0.0.1`), `--port` (default `8000`, `0`
 * picks a free one), `--token` (or env `SANDBOX_TOKEN`; required unless the
 * hostname is loopback), the permission flags of `deno run`
 * (`--allow-read[=PATHS]`, `--allow-write`, `--allow-net`, `--allow-env`,
 * `--allow-run`, `--allow-ffi`), `--timeout SECONDS` (default and maximum
 * per request), `--memory MB`, `--pool-size N`, `--max-concurrency N`,
 * `--max-queue N`, `--max-sessions N`, `--session-idle-seconds S`,
 * `--max-body-bytes N`, `--session-secret S` (or env
 * `SANDBOX_SESSION_SECRET`), `--cache-dir DIR`.
 *
 * SIGTERM or SIGINT stops accepting connections, lets running calls finish
 * or time out, kills every child and exits 0.
 *
 * @module
 */

import { createHandler, type SandboxHandler } from "./handler.ts";
import { hostProblem, loopbackHosts } from "./_auth.ts";
import {
  envLookup,
  fail,
  isLoopbackHostname,
  listenUrl,
  parseNumberFlag,
  parseSandboxFlags,
} from "./_cli_flags.ts";

const USAGE = `Usage: deno task serve [flags]

  --hostname HOST            Interface to listen on (default 127.0.0.1)
  --port PORT                Port (default 8000; 0 picks a free one)
  --token TOKEN              Bearer token (or env SANDBOX_TOKEN); required
                             when HOST is not loopback
  --allow-read[=PATHS]       Permissions of the sandboxed code, spelled as in
  --allow-write[=PATHS]      deno run; nothing is granted by default
  --allow-net[=HOSTS]
  --allow-env[=NAMES]
  --allow-run[=PROGRAMS]     (amounts to giving up the sandbox)
  --allow-ffi[=PATHS]        (amounts to giving up the sandbox)
  --timeout SECONDS          Default and maximum per-request timeout (60)
  --memory MB                Python heap limit per child (512)
  --pool-size N              Warm children for stateless calls (2)
  --max-concurrency N        Executions at once (4)
  --max-queue N              Executions waiting at most; more get 429 (16)
  --max-sessions N           Live sessions at most; more get 429 (16)
  --session-idle-seconds S   Close sessions unused this long (600)
  --max-body-bytes N         Largest request body; more get 413 (33554432)
  --session-secret S         HMAC key for session bytes (or env
                             SANDBOX_SESSION_SECRET); share it between replicas
  --cache-dir DIR            Snapshot cache folder
  --help                     Show this help
`;

/** Parses flags, starts the server and handles shutdown. */
async function main(args: string[]): Promise<void> {
  let parsed;
  try {
    parsed = parseSandboxFlags(args, {
      hostname: { type: "string" },
      port: { type: "string" },
      token: { type: "string" },
      "max-concurrency": { type: "string" },
      "max-queue": { type: "string" },
      "max-sessions": { type: "string" },
      "session-idle-seconds": { type: "string" },
      "max-body-bytes": { type: "string" },
      help: { type: "boolean" },
    });
  } catch (error) {
    fail(`${(error as Error).message}\n\n${USAGE}`, 2);
  }
  const { values, sandboxOptions } = parsed;
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const hostname = values.hostname ?? "127.0.0.1";
  const token = values.token ?? envLookup("SANDBOX_TOKEN");
  let handler: SandboxHandler;
  let port: number;
  try {
    port = parseNumberFlag("--port", values.port ?? "8000", {
      min: 0,
      max: 65535,
      integer: true,
    })!;
    const int = (flag: string, value: string | undefined, min: number) =>
      parseNumberFlag(flag, value, { min, max: 2 ** 31, integer: true });
    if (!isLoopbackHostname(hostname) && !token) {
      fail(
        `Refusing to listen on ${hostname} without a token: binding to anything but loopback needs --token or the SANDBOX_TOKEN environment variable, so that only holders of the token can run code`,
        1,
      );
    }
    handler = createHandler({
      sandboxOptions,
      token,
      maxTimeoutSeconds: sandboxOptions.timeoutSeconds,
      maxConcurrency: int("--max-concurrency", values["max-concurrency"], 1),
      maxQueue: int("--max-queue", values["max-queue"], 0),
      maxSessions: int("--max-sessions", values["max-sessions"], 0),
      sessionIdleSeconds: parseNumberFlag(
        "--session-idle-seconds",
        values["session-idle-seconds"],
        { min: 0.001, max: 365 * 86_400 },
      ),
      maxBodyBytes: int("--max-body-bytes", values["max-body-bytes"], 1),
    });
  } catch (error) {
    fail((error as Error).message, 2);
  }
  try {
    await handler.sandbox.warmup();
  } catch (error) {
    await handler.close({ graceSeconds: 0 });
    fail(`The sandbox could not start: ${(error as Error).message}`, 1);
  }

  // Without a token, also refuse Host headers other than our own names, so a
  // web page cannot reach the server through DNS rebinding.
  let allowedHosts: Set<string> | undefined;
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve({
      hostname,
      port,
      onListen(addr) {
        if (!token) allowedHosts = loopbackHosts(addr);
        console.log(
          `pyodide-sandbox server listening on ${listenUrl(addr)} (auth: ${
            token ? "bearer token" : "none, loopback only"
          })`,
        );
      },
    }, (req) => {
      const refused = hostProblem(req, allowedHosts);
      return refused ? Promise.resolve(refused) : handler(req);
    });
  } catch (error) {
    await handler.close({ graceSeconds: 0 });
    fail(
      `Could not listen on ${hostname}:${port}: ${(error as Error).message}`,
      1,
    );
  }

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) {
      console.error(`${signal} again: killing running calls`);
      await handler.close({ graceSeconds: 0 });
      Deno.exit(0);
    }
    stopping = true;
    console.error(
      `${signal}: shutting down (finishing running calls, then stopping every child)`,
    );
    await Promise.all([server.shutdown(), handler.close()]);
    console.error("Stopped");
    Deno.exit(0);
  };
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    try {
      Deno.addSignalListener(signal, () => void stop(signal));
    } catch {
      // Not every platform has every signal.
    }
  }
  await server.finished;
}

if (import.meta.main) {
  await main(Deno.args);
}
