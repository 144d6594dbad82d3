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
 * `--max-body-bytes N`, `--max-output-bytes N`, `--session-secret S` (or
 * env `SANDBOX_SESSION_SECRET`), `--cache-dir DIR`, `--package NAME`,
 * `--package-dir DIR`, `--package-index URL`, `--cors-origin ORIGIN`,
 * `--playground`, `--session-store redis://HOST:PORT[/DB]` (sessions shared
 * by every replica through Redis; all replicas need the same
 * `--session-secret`, or `--insecure-store`), `--session-checkpoint-seconds
 * N` (with a store: write sessions back at most every N seconds and on
 * drain instead of after every step), `--help` and `--version`.
 *
 * The module also exports {@linkcode redisSessionStore}, the store to pass
 * as `createHandler({ sessionStore })`.
 *
 * SIGTERM or SIGINT stops accepting connections, lets running calls finish
 * or time out, kills every child and exits 0. Exit code 1: the server
 * could not start; 2: invalid command line.
 *
 * @module
 */

import { createHandler } from "./handler.ts";
import { parseNumberFlag } from "./_cli_flags.ts";
import {
  parseServeFlags,
  serveHttp,
  STORE_FLAG_OPTIONS,
  STORE_FLAGS_HELP,
  storeFromFlags,
} from "./_serve.ts";

export * from "./redis_store.ts";

const PROGRAM = "pyodide-sandbox server";

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
  --max-output-bytes N       Largest stdout and stderr of one call
  --session-secret S         HMAC key for session bytes (or env
                             SANDBOX_SESSION_SECRET); share it between replicas
  --cache-dir DIR            Snapshot cache folder
  --package NAME             Install a package in every child (repeatable)
  --package-dir DIR          Folder of wheels to install from (offline)
  --package-index URL        Index serving pyodide-lock.json (repeatable)
  --no-package-index         No package index at all (offline)
  --preload NAMES            Packages in the snapshot, comma-separated (repeatable)
  --cors-origin ORIGIN       Let web pages from ORIGIN call the API
                             (repeatable; "*" for any, needs a token; off
                             by default)
  --playground               Serve the playground page at / (off by default)
${STORE_FLAGS_HELP}  --help                     Show this help
  --version                  Show the module and Pyodide versions
`;

const FLAGS = {
  "max-concurrency": { type: "string" },
  "max-queue": { type: "string" },
  "max-sessions": { type: "string" },
  "session-idle-seconds": { type: "string" },
  "max-body-bytes": { type: "string" },
  "cors-origin": { type: "string", multiple: true },
  playground: { type: "boolean" },
  ...STORE_FLAG_OPTIONS,
} as const;

/**
 * Parses flags, starts the server and handles shutdown.
 *
 * @param args Command-line arguments.
 * @returns Settles when the server has finished.
 */
async function main(args: string[]): Promise<void> {
  const { values, sandboxOptions, listen } = parseServeFlags(args, {
    program: PROGRAM,
    usage: USAGE,
    flags: FLAGS,
  });
  const int = (flag: string, value: string | undefined, min: number) =>
    parseNumberFlag(flag, value, { min, max: 2 ** 31, integer: true });
  await serveHttp({
    ...listen,
    program: PROGRAM,
    notes: (url) => values.playground ? [`Playground: ${url}`] : [],
  }, () => {
    const { store, checkpointSeconds, idleSeconds: idle } = storeFromFlags(
      values,
      sandboxOptions.sessionSecret,
    );
    const handler = createHandler({
      sandboxOptions,
      token: listen.token,
      maxTimeoutSeconds: sandboxOptions.timeoutSeconds,
      maxConcurrency: int("--max-concurrency", values["max-concurrency"], 1),
      maxQueue: int("--max-queue", values["max-queue"], 0),
      maxSessions: int("--max-sessions", values["max-sessions"], 0),
      sessionIdleSeconds: idle,
      maxBodyBytes: int("--max-body-bytes", values["max-body-bytes"], 1),
      playground: values.playground === true,
      corsOrigins: values["cors-origin"],
      ...(store
        ? { sessionStore: store, sessionCheckpointSeconds: checkpointSeconds }
        : {}),
    });
    if (store) console.error(`Session store: ${store.url}`);
    return {
      handle: handler,
      warmup: () => handler.sandbox.warmup(),
      close: async (options) => {
        await handler.close(options);
        await store?.close();
      },
    };
  });
}

if (import.meta.main) {
  await main(Deno.args);
}
