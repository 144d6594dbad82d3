/**
 * The module imported from a URL, as JSR and http users import it: the
 * repository is served over loopback HTTP and a separate host process
 * (`deno run --allow-import=127.0.0.1:PORT`, no config, no import map)
 * imports `mod.ts` and `cli.ts` from it.
 */

import assert from "node:assert/strict";
import { extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { TEST_DENO_PATH, withTempDir } from "./_helpers.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

const TYPES: Record<string, string> = {
  ".ts": "application/typescript; charset=utf-8",
  ".json": "application/json; charset=utf-8",
  ".py": "text/plain; charset=utf-8",
};

/** A read-only loopback file server over the repository. */
interface RepoServer {
  /** `http://127.0.0.1:<port>`. */
  base: string;
  /** `127.0.0.1:<port>`. */
  host: string;
  /** Paths requested so far. */
  hits: string[];
  close(): Promise<void>;
}

function serveRepository(): RepoServer {
  const hits: string[] = [];
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    async (request) => {
      const path = decodeURIComponent(new URL(request.url).pathname);
      hits.push(path);
      const file = normalize(join(ROOT, path));
      if (!file.startsWith(ROOT) || path.includes("\0")) {
        return new Response("bad path", { status: 400 });
      }
      try {
        return new Response(await Deno.readFile(file), {
          headers: {
            "content-type": TYPES[extname(file)] ?? "application/octet-stream",
          },
        });
      } catch {
        return new Response("not found", { status: 404 });
      }
    },
  );
  const host = `127.0.0.1:${server.addr.port}`;
  return {
    base: `http://${host}`,
    host,
    hits,
    close: () => server.shutdown(),
  };
}

/** The host process's permissions, as README "Host permissions" lists. */
function hostFlags(server: RepoServer): string[] {
  return [
    "run",
    "--no-config",
    "--no-lock",
    `--allow-import=${server.host}`,
    "--allow-read",
    "--allow-write",
    // The deno that runs the children: the host's own binary.
    `--allow-run=${Deno.execPath()}`,
    "--allow-env",
  ];
}

interface Output {
  code: number;
  stdout: string;
  stderr: string;
}

async function runDeno(args: string[], cwd: string): Promise<Output> {
  const out = await new Deno.Command(TEST_DENO_PATH, {
    args,
    cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

/** The user's program: both sandboxes and both kinds of live session. */
const HOST_PROGRAM = `
const [base, cacheDir] = Deno.args;
const { PyodideSandbox, SyncPyodideSandbox } = await import(base + "/mod.ts");
const report = {};
const sandbox = new PyodideSandbox({ cacheDir, poolSize: 0, timeoutSeconds: 300 });
report.async = (await sandbox.execute("print('async', 6 * 7)")).stdout;
const session = await sandbox.openSession();
await session.execute("x = 41");
report.asyncSession = (await session.execute("x + 1")).result;
await session.close();
await sandbox.close();
const sync = new SyncPyodideSandbox({ cacheDir, poolSize: 0, timeoutSeconds: 300 });
report.sync = sync.execute("print('sync', 6 * 7)").stdout;
const syncSession = sync.openSession();
syncSession.execute("y = 1");
report.syncSession = syncSession.execute("y + 1").result;
syncSession.close();
sync.close();
console.log(JSON.stringify(report));
`;

Deno.test("mod.ts imported over http runs PyodideSandbox, SyncPyodideSandbox and live sessions of both", async () => {
  const server = serveRepository();
  try {
    await withTempDir(async (dir) => {
      const cacheDir = join(dir, "cache");
      await Deno.writeTextFile(join(dir, "host.ts"), HOST_PROGRAM);
      const run = await runDeno(
        [...hostFlags(server), "host.ts", server.base, cacheDir],
        dir,
      );
      assert.equal(run.code, 0, run.stderr);
      assert.doesNotMatch(run.stderr, /scheme file or data/);
      const report = JSON.parse(run.stdout.trim().split("\n").at(-1)!);
      assert.deepEqual(report, {
        async: "async 42\n",
        asyncSession: 42,
        sync: "sync 42\n",
        syncSession: 2,
      });
      // The modules came from the server, and the child ran a checked copy
      // of the runner in the cache folder (it runs with --no-remote).
      for (const path of ["/mod.ts", "/_sync_worker.ts", "/runner.ts"]) {
        assert.ok(server.hits.includes(path), `${path} was not fetched`);
      }
      const copies = [...Deno.readDirSync(cacheDir)]
        .filter((e) => e.isDirectory && e.name.startsWith("runner-"));
      assert.equal(copies.length, 1, "one materialized runner folder");
      Deno.statSync(join(cacheDir, copies[0].name, "runner.ts"));
    });
  } finally {
    await server.close();
  }
});

Deno.test("cli.ts run from an http URL behaves like python: sys.argv, exit codes and --version", async () => {
  const server = serveRepository();
  try {
    await withTempDir(async (dir) => {
      const cacheDir = join(dir, "cache");
      const cli = [...hostFlags(server), `${server.base}/cli.ts`];
      const run = await runDeno(
        [...cli, "--cache-dir", cacheDir, "-c", "import sys; print(sys.argv)"]
          .concat(["a", "--b"]),
        dir,
      );
      assert.equal(run.code, 0, run.stderr);
      assert.equal(run.stdout, "['-c', 'a', '--b']\n");
      const exit = await runDeno(
        [...cli, "--cache-dir", cacheDir, "-c", "import sys; sys.exit(3)"],
        dir,
      );
      assert.equal(exit.code, 3, exit.stderr);
      assert.doesNotMatch(exit.stderr, /Traceback/);
      const version = await runDeno([...cli, "--version"], dir);
      assert.equal(version.code, 0, version.stderr);
      assert.match(
        version.stdout,
        /^pyodide-sandbox \d+\.\d+\.\d+ .*314\.0\.7/,
      );
    });
  } finally {
    await server.close();
  }
});

/** Specifiers an importer resolves without deno.json's import map. */
function resolvesWithoutImportMap(specifier: string): boolean {
  return /^(\.\.?\/|node:|npm:|jsr:|https?:|data:)/.test(specifier);
}

Deno.test("the module graphs of the entry points use no bare specifiers (URL importers have no import map)", async () => {
  for (const entry of ["mod.ts", "cli.ts", "server.ts", "mcp.ts"]) {
    const out = await runDeno(["info", "--json", entry], ROOT);
    assert.equal(out.code, 0, out.stderr);
    const info = JSON.parse(out.stdout) as {
      modules: { specifier: string; dependencies?: { specifier: string }[] }[];
    };
    const bare = info.modules
      .filter((m) => m.specifier.startsWith("file:"))
      .flatMap((m) =>
        (m.dependencies ?? [])
          .filter((d) => !resolvesWithoutImportMap(d.specifier))
          .map((d) => `${m.specifier.slice(ROOT.length + 7)}: ${d.specifier}`)
      );
    assert.deepEqual(bare, [], `${entry} imports bare specifiers`);
  }
});
