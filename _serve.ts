/**
 * The `main()` the network servers share (`deno task serve`, and `deno
 * task mcp --http`): the listen flags (`--hostname`, `--port`, `--token`
 * or env `SANDBOX_TOKEN`), `--help` and `--version` on stdout, the refusal
 * to listen off loopback without a token, warm-up before listening, the
 * Host check that keeps a token-less loopback server away from web pages,
 * and graceful shutdown on SIGTERM and SIGINT.
 *
 * Exit codes: `0` after `--help`, `--version` or a signal; `1` when the
 * server cannot start (no token off loopback, the sandbox fails to warm
 * up, the address cannot be bound); `2` for an invalid command line.
 *
 * @module
 */

import type { ParseArgsOptionsConfig } from "node:util";
import type { SandboxOptions } from "./options.ts";
import { hostProblem, loopbackHosts } from "./_auth.ts";
import {
  applyPackageFlags,
  applyPreloadFlags,
  envLookup,
  fail,
  isLoopbackHostname,
  listenUrl,
  PACKAGE_FLAG_OPTIONS,
  parseNumberFlag,
  parseSandboxFlags,
  PRELOAD_FLAG_OPTIONS,
} from "./_cli_flags.ts";
import { versionText } from "./_version.ts";
import { redisSessionStore } from "./redis_store.ts";
import type { RedisSessionStore } from "./_redis_store.ts";

/** Exit code: stopped normally. */
export const EXIT_OK = 0;
/** Exit code: the server could not start. */
export const EXIT_START_FAILED = 1;
/** Exit code: the command line was invalid. */
export const EXIT_USAGE = 2;

/** The exit-code paragraph every server's `--help` ends with. */
export const EXIT_CODES_HELP = `Exit codes:
  0  stopped by SIGTERM or SIGINT (after finishing running calls), or
     --help / --version
  1  could not start: no token off loopback, the sandbox failed to warm
     up, or the address could not be bound
  2  invalid command line (unknown flag, bad value)
`;

/** The flags every network server takes, as `parseArgs` options. */
export const SERVE_FLAG_OPTIONS = {
  hostname: { type: "string" },
  port: { type: "string" },
  token: { type: "string" },
  help: { type: "boolean" },
  version: { type: "boolean" },
  ...PACKAGE_FLAG_OPTIONS,
  ...PRELOAD_FLAG_OPTIONS,
} as const satisfies ParseArgsOptionsConfig;

/** The flags of the shared session store, as `parseArgs` options. */
export const STORE_FLAG_OPTIONS = {
  "session-store": { type: "string" },
  "insecure-store": { type: "boolean" },
  "session-checkpoint-seconds": { type: "string" },
} as const satisfies ParseArgsOptionsConfig;

/** The `--help` lines of {@linkcode STORE_FLAG_OPTIONS}. */
export const STORE_FLAGS_HELP =
  `  --session-store URL        Share sessions between replicas through Redis:
                             redis://[:PASSWORD@]HOST:PORT[/DB] or rediss://
                             (every replica needs the same --session-secret)
  --insecure-store           Allow --session-store without --session-secret
  --session-checkpoint-seconds N
                             With --session-store: write a session back at
                             most every N seconds and on drain instead of
                             after every step (a crash loses up to N s)
`;

/** The store the flags ask for. */
export interface StoreSettings {
  /** The store, or undefined without `--session-store`. */
  store: RedisSessionStore | undefined;
  /** `--session-checkpoint-seconds` (0: durable, every step written). */
  checkpointSeconds: number;
  /** `--session-idle-seconds`, if given. */
  idleSeconds: number | undefined;
}

/**
 * Builds the store `--session-store` asks for: refuses it without a
 * session secret unless `--insecure-store`, and the store-only flags
 * without it. Error messages never show the URL's password.
 *
 * @param values The flag values.
 * @param sessionSecret The sandbox's `--session-secret`.
 * @returns The store, the checkpoint interval and `--session-idle-seconds`
 *   (also the store's TTL).
 * @throws {TypeError} When the flags do not fit together or the URL is invalid.
 * @throws {RangeError} When `--session-idle-seconds` or
 *   `--session-checkpoint-seconds` is out of range.
 */
export function storeFromFlags(
  values: Record<string, unknown>,
  sessionSecret: string | Uint8Array | undefined,
): StoreSettings {
  const idleSeconds = parseNumberFlag(
    "--session-idle-seconds",
    values["session-idle-seconds"] as string | undefined,
    { min: 0.001, max: 365 * 86_400 },
  );
  const url = values["session-store"] as string | undefined;
  const insecure = values["insecure-store"] === true;
  const checkpoint = values["session-checkpoint-seconds"] as string | undefined;
  const checkpointSeconds = parseNumberFlag(
    "--session-checkpoint-seconds",
    checkpoint,
    { min: 0, max: 86_400 },
  ) ?? 0;
  if (url === undefined) {
    if (insecure || checkpoint !== undefined) {
      throw new TypeError(
        `Invalid ${
          insecure ? "--insecure-store" : "--session-checkpoint-seconds"
        }: it only applies with --session-store`,
      );
    }
    return { store: undefined, checkpointSeconds, idleSeconds };
  }
  if (sessionSecret === undefined && !insecure) {
    throw new TypeError(
      "Refusing --session-store without --session-secret: every replica must share the HMAC key (--session-secret or env SANDBOX_SESSION_SECRET) so stored bytes are authenticated; pass --insecure-store to accept unauthenticated bytes",
    );
  }
  const store = redisSessionStore(url, {
    sessionSecret,
    ...(idleSeconds === undefined
      ? {}
      : { idleSeconds: Math.max(1, Math.ceil(idleSeconds)) }),
  });
  return { store, checkpointSeconds, idleSeconds };
}

/** Where and how to listen. */
export interface ListenOptions {
  /** The interface (`--hostname`, default `127.0.0.1`). */
  hostname: string;
  /** The port (`--port`, default `8000`; `0` picks a free one). */
  port: number;
  /** The bearer token (`--token` or env `SANDBOX_TOKEN`). */
  token: string | undefined;
}

/** How an entry point describes itself to {@linkcode parseServeFlags}. */
export interface EntryPoint<T extends ParseArgsOptionsConfig> {
  /** Its name in `--version` and log lines, e.g. `pyodide-sandbox server`. */
  program: string;
  /** Its `--help` text (the exit codes are appended). */
  usage: string;
  /** Its own flags, past {@linkcode SERVE_FLAG_OPTIONS} and the sandbox's. */
  flags: T;
}

/** What {@linkcode parseServeFlags} returns. */
export interface ParsedServeFlags<V> {
  /** Every flag's value. */
  values: V;
  /** The sandbox's options: permissions, limits and packages. */
  sandboxOptions: SandboxOptions;
  /** Where to listen. */
  listen: ListenOptions;
}

/**
 * Parses a server's command line. `--help` and `--version` print to
 * stdout and exit 0; an invalid command line prints the error and the
 * usage to stderr and exits 2.
 *
 * @param args Command-line arguments.
 * @param entry The program's name, usage and own flags.
 * @returns The flag values, the sandbox's options and where to listen.
 * @example
 * ```ts ignore
 * import { parseServeFlags } from "./_serve.ts";
 * const { values, sandboxOptions, listen } = parseServeFlags(Deno.args, {
 *   program: "my server",
 *   usage: "Usage: my-server [flags]\n",
 *   flags: { verbose: { type: "boolean" } },
 * });
 * ```
 */
export function parseServeFlags<T extends ParseArgsOptionsConfig>(
  args: readonly string[],
  entry: EntryPoint<T>,
): ParsedServeFlags<
  ReturnType<
    typeof parseSandboxFlags<T & typeof SERVE_FLAG_OPTIONS>
  >["values"]
> {
  const usage = `${entry.usage}\n${EXIT_CODES_HELP}`;
  let parsed;
  try {
    parsed = parseSandboxFlags(args, { ...SERVE_FLAG_OPTIONS, ...entry.flags });
  } catch (error) {
    fail(`${(error as Error).message}\n\n${usage}`, EXIT_USAGE);
  }
  const { values, sandboxOptions } = parsed;
  const v = values as Record<string, unknown>;
  if (v.help) {
    console.log(usage.trimEnd());
    Deno.exit(EXIT_OK);
  }
  if (v.version) {
    console.log(versionText(entry.program));
    Deno.exit(EXIT_OK);
  }
  let port: number;
  try {
    applyPackageFlags(v, sandboxOptions);
    applyPreloadFlags(v, sandboxOptions);
    port = parseNumberFlag("--port", (v.port as string) ?? "8000", {
      min: 0,
      max: 65535,
      integer: true,
    })!;
  } catch (error) {
    fail((error as Error).message, EXIT_USAGE);
  }
  return {
    values,
    sandboxOptions,
    listen: {
      hostname: (v.hostname as string | undefined) ?? "127.0.0.1",
      port,
      token: (v.token as string | undefined) ?? envLookup("SANDBOX_TOKEN"),
    },
  };
}

/** What {@linkcode serveHttp} serves: a handler with warm-up and close. */
export interface ServedApp {
  /**
   * Serves one request (after the Host check).
   *
   * @param req The request.
   * @returns The response.
   */
  handle(req: Request): Promise<Response>;
  /**
   * Starts the warm children; a rejection stops the server with exit 1.
   *
   * @returns Settles when the sandbox is ready.
   */
  warmup(): Promise<void>;
  /**
   * Stops taking requests, waits for running ones (at most
   * `graceSeconds`), then ends every child.
   *
   * @param options How long to wait.
   * @returns Settles when everything is closed.
   */
  close(options?: { graceSeconds?: number }): Promise<void>;
}

/** How {@linkcode serveHttp} runs. */
export interface ServeHttpOptions extends ListenOptions {
  /** The name in log lines, e.g. `pyodide-sandbox server`. */
  program: string;
  /** The path shown in the "listening on" line. @default {"/"} */
  path?: string;
  /** More lines to print once listening, given the base URL. */
  notes?: (url: string) => string[];
}

/** Exits 1 when asked to listen off loopback without a token. */
function refuseOpenListen(hostname: string, token: string | undefined): void {
  if (!isLoopbackHostname(hostname) && !token) {
    fail(
      `Refusing to listen on ${hostname} without a token: binding to anything but loopback needs --token or the SANDBOX_TOKEN environment variable, so that only holders of the token can run code`,
      EXIT_START_FAILED,
    );
  }
}

/**
 * Stops gracefully on the first SIGTERM/SIGINT, at once on the second
 * (also during warm-up, before there is a server).
 */
function stopOnSignals(
  server: () => Deno.HttpServer<Deno.NetAddr> | undefined,
  app: ServedApp,
): void {
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) {
      console.error(`${signal} again: killing running calls`);
      await app.close({ graceSeconds: 0 });
      Deno.exit(EXIT_OK);
    }
    stopping = true;
    console.error(
      `${signal}: shutting down (finishing running calls, then stopping every child)`,
    );
    await Promise.all([server()?.shutdown(), app.close()]);
    console.error("Stopped");
    Deno.exit(EXIT_OK);
  };
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    try {
      Deno.addSignalListener(signal, () => void stop(signal));
    } catch {
      // Not every platform has every signal.
    }
  }
}

/**
 * Serves an app over HTTP until a signal: refuses a non-loopback hostname
 * without a token (exit 1), creates the app (a `TypeError` or
 * `RangeError` exits 2), warms it up (exit 1 on failure), listens (exit 1
 * when the address cannot be bound), answers only `Host` headers naming
 * loopback when there is no token, and on SIGTERM or SIGINT finishes
 * running calls, ends every child and exits 0.
 *
 * @param options Where to listen, the token and the log name.
 * @param create Builds the app (after the token check).
 * @returns Settles when the server has finished.
 * @example
 * ```ts ignore
 * import { parseServeFlags, serveHttp } from "./_serve.ts";
 * import { createHandler } from "./handler.ts";
 * const { sandboxOptions, listen } = parseServeFlags(Deno.args, {
 *   program: "my server",
 *   usage: "Usage: my-server [flags]\n",
 *   flags: {},
 * });
 * await serveHttp({ ...listen, program: "my server" }, () => {
 *   const handler = createHandler({ sandboxOptions, token: listen.token });
 *   return { handle: handler, warmup: () => handler.sandbox.warmup(), close: handler.close };
 * });
 * ```
 */
export async function serveHttp(
  options: ServeHttpOptions,
  create: () => ServedApp,
): Promise<void> {
  const { hostname, port, token, program } = options;
  refuseOpenListen(hostname, token);
  let app: ServedApp;
  try {
    app = create();
  } catch (error) {
    const usage = error instanceof TypeError || error instanceof RangeError;
    fail(
      (error as Error).message,
      usage ? EXIT_USAGE : EXIT_START_FAILED,
    );
  }
  let server: Deno.HttpServer<Deno.NetAddr> | undefined;
  stopOnSignals(() => server, app);
  try {
    await app.warmup();
  } catch (error) {
    await app.close({ graceSeconds: 0 });
    fail(
      `The sandbox could not start: ${(error as Error).message}`,
      EXIT_START_FAILED,
    );
  }
  // Without a token, also refuse Host headers other than our own names, so a
  // web page cannot reach the server through DNS rebinding.
  let allowedHosts: Set<string> | undefined;
  try {
    server = Deno.serve({
      hostname,
      port,
      onListen(addr) {
        if (!token) allowedHosts = loopbackHosts(addr);
        console.log(
          `${program} listening on ${listenUrl(addr, options.path)} (auth: ${
            token ? "bearer token" : "none, loopback only"
          })`,
        );
        for (const line of options.notes?.(listenUrl(addr)) ?? []) {
          console.log(line);
        }
      },
    }, (req) => {
      const refused = hostProblem(req, allowedHosts);
      return refused ? Promise.resolve(refused) : app.handle(req);
    });
  } catch (error) {
    await app.close({ graceSeconds: 0 });
    fail(
      `Could not listen on ${hostname}:${port}: ${(error as Error).message}`,
      EXIT_START_FAILED,
    );
  }
  await server.finished;
}
