/**
 * The cache folder is trusted by every child: who may own it, what runner
 * file in it runs, and hosts with different Deno caches sharing one.
 */

import assert from "node:assert/strict";
import { dirname, extname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { PyodideSandbox } from "../mod.ts";
import { TEST_DENO_PATH } from "./_helpers.ts";

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));
const MOD_URL = new URL("../mod.ts", import.meta.url).href;

interface HostRun {
  code: number;
  stdout: string;
  stderr: string;
  /** The JSON lines the host script printed. */
  results: { status: string; stdout: string; error?: { message: string } }[];
}

/**
 * A host script: imports the module from `modUrl`, runs `print(6 * 7)` in
 * `rounds` fresh sandboxes on the cache folder given as its first argument,
 * with the deno binary given as its second (or its own). With a third
 * argument "plant", it replaces the runner copy in the cache folder between
 * the rounds by planted code of the same size with the same mtime.
 */
function hostScript(modUrl: string, rounds: number): string {
  return `
import { PyodideSandbox } from ${JSON.stringify(modUrl)};
const [cacheDir, denoPath, mode] = Deno.args;
const PLANTED = 'console.error("PLANTED RUNNER RAN"); Deno.exit(3);';
for (let i = 0; i < ${rounds}; i++) {
  if (i > 0 && mode === "plant") {
    for (const entry of Deno.readDirSync(cacheDir)) {
      if (!/^runner-[0-9a-f]+$/.test(entry.name)) continue;
      const path = cacheDir + "/" + entry.name + "/runner.ts";
      const stat = Deno.statSync(path);
      const text = PLANTED + " ".repeat(Math.max(0, stat.size - PLANTED.length));
      Deno.writeTextFileSync(path, text);
      Deno.utimeSync(path, stat.atime, stat.mtime);
    }
  }
  const sandbox = new PyodideSandbox({
    cacheDir,
    poolSize: 0,
    ...(denoPath ? { denoPath } : {}),
  });
  try {
    const r = await sandbox.execute("print(6 * 7)", { timeoutSeconds: 120 });
    console.log(JSON.stringify({ status: r.status, stdout: r.stdout, error: r.error }));
  } catch (error) {
    console.log(JSON.stringify({ status: "threw", stdout: "", error: { message: String(error) } }));
  } finally {
    await sandbox.close();
  }
}
`;
}

async function writeScript(dir: string, source: string): Promise<string> {
  const path = join(dir, "host.ts");
  await Deno.writeTextFile(path, source);
  return path;
}

function startHost(
  script: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<HostRun> {
  const child = new Deno.Command(TEST_DENO_PATH, {
    args: ["run", "-A", "--no-lock", "--no-config", script, ...args],
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  });
  return child.output().then((out) => {
    const stdout = new TextDecoder().decode(out.stdout);
    return {
      code: out.code,
      stdout,
      stderr: new TextDecoder().decode(out.stderr),
      results: stdout.split("\n").filter((l) => l.startsWith("{")).map((l) =>
        JSON.parse(l)
      ),
    };
  });
}

function assertAllSucceeded(run: HostRun, rounds: number, what: string): void {
  const detail = `${what}: exit ${run.code}\n${run.stdout}\n${run.stderr}`;
  assert.equal(run.code, 0, detail);
  assert.equal(run.results.length, rounds, detail);
  for (const r of run.results) {
    assert.equal(r.status, "success", detail);
    assert.equal(r.stdout, "42\n", detail);
  }
}

async function withTempDir(
  prefix: string,
  fn: (dir: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** Runs `fn` and returns how it failed: a rejection or an error result. */
async function failureOf(cacheDir: string): Promise<string> {
  const sandbox = new PyodideSandbox({
    cacheDir,
    poolSize: 0,
    denoPath: TEST_DENO_PATH,
  });
  try {
    const result = await sandbox.execute("print(1)");
    assert.notEqual(result.status, "success", "the cache folder was used");
    return result.error?.message ?? "";
  } catch (error) {
    return (error as Error).message;
  } finally {
    await sandbox.close();
  }
}

Deno.test("PyodideSandbox refuses a cache folder that other users can write", async () => {
  // Attacks (SECURITY.md): "cachedir.world_writable"
  await withTempDir("cache-dir-mode-", async (base) => {
    for (const mode of [0o777, 0o770, 0o702]) {
      const cacheDir = join(base, mode.toString(8));
      await Deno.mkdir(cacheDir);
      await Deno.chmod(cacheDir, mode);
      const message = await failureOf(cacheDir);
      assert.equal(
        message.split(" (")[0],
        `Unsafe cache folder: ${cacheDir} is writable by other users`,
        message,
      );
      // Nothing was put into it.
      assert.deepEqual([...Deno.readDirSync(cacheDir)], []);
    }
  });
});

Deno.test("PyodideSandbox refuses a cache folder owned by another user", async () => {
  // Attacks (SECURITY.md): "cachedir.foreign_owner"
  // Needs root (CI runs as root) to hand a folder to another user.
  assert.equal(
    Deno.uid(),
    0,
    "this test must run as root to chown a folder to another user",
  );
  await withTempDir("cache-dir-owner-", async (base) => {
    const cacheDir = join(base, "theirs");
    await Deno.mkdir(cacheDir, { mode: 0o700 });
    await Deno.chown(cacheDir, 65534, 65534);
    const message = await failureOf(cacheDir);
    assert.match(
      message,
      new RegExp(
        `^Unsafe cache folder: ${cacheDir} is owned by another user \\(uid 65534`,
      ),
    );
  });
});

Deno.test("defaultCacheDir() without a home is a private folder of this process, not a fixed shared path", async () => {
  // Attacks (SECURITY.md): "cachedir.shared_tmp_fallback"
  const source = `
import { defaultCacheDir } from ${
    JSON.stringify(new URL("../_setup.ts", import.meta.url).href)
  };
const a = defaultCacheDir();
const b = defaultCacheDir();
const stat = Deno.statSync(a);
console.log(JSON.stringify({ a, b, mode: stat.mode & 0o777, uid: stat.uid }));
Deno.removeSync(a);
`;
  await withTempDir("cache-dir-default-", async (dir) => {
    const script = await writeScript(dir, source);
    const paths: string[] = [];
    for (let i = 0; i < 2; i++) {
      const out = await new Deno.Command(TEST_DENO_PATH, {
        args: ["run", "-A", "--no-lock", "--no-config", script],
        clearEnv: true,
        env: { PATH: Deno.env.get("PATH") ?? "", TMPDIR: dir },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(out.stdout);
      assert.ok(out.success, new TextDecoder().decode(out.stderr));
      const { a, b, mode, uid } = JSON.parse(text);
      assert.equal(a, b, "stable within a process");
      assert.ok(a.startsWith(join(dir, "pyodide-sandbox-")), a);
      assert.notEqual(a, join(dir, `pyodide-sandbox-${Deno.uid()}`));
      assert.equal(mode, 0o700);
      assert.equal(uid, Deno.uid());
      paths.push(a);
    }
    assert.notEqual(paths[0], paths[1], "each process has its own");
  });
});

/** Serves the module's files over HTTP, as a registry would. */
function serveModule(): { url: string; close: () => Promise<void> } {
  const types: Record<string, string> = {
    ".ts": "application/typescript",
    ".js": "application/javascript",
    ".json": "application/json",
  };
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    async (request) => {
      const path = join(
        ROOT,
        decodeURIComponent(new URL(request.url).pathname),
      );
      if (!path.startsWith(ROOT + "/")) {
        return new Response("no", { status: 404 });
      }
      try {
        return new Response(await Deno.readFile(path), {
          headers: {
            "content-type": types[extname(path)] ?? "text/plain",
          },
        });
      } catch {
        return new Response("missing", { status: 404 });
      }
    },
  );
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    close: () => server.shutdown(),
  };
}

function runnerCopies(cacheDir: string): string[] {
  return [...Deno.readDirSync(cacheDir)]
    .map((e) => e.name)
    .filter((n) => /^runner-[0-9a-f]+$/.test(n));
}

Deno.test("PyodideSandbox imported from a registry replaces a planted runner file and never runs it", async () => {
  // Attacks (SECURITY.md): "cachedir.planted_runner"
  const served = serveModule();
  try {
    await withTempDir("cache-dir-runner-", async (dir) => {
      const cacheDir = join(dir, "cache");
      const script = await writeScript(
        dir,
        hostScript(`${served.url}/mod.ts`, 2),
      );
      const original = await Deno.readFile(join(ROOT, "runner.ts"));

      // A first host writes the runner copy; a planted one replaces it.
      const first = await startHost(script, [cacheDir]);
      assertAllSucceeded(first, 2, "first host");
      const [name] = runnerCopies(cacheDir);
      assert.ok(name, "the runner was copied into the cache folder");
      const path = join(cacheDir, name, "runner.ts");
      assert.deepEqual(await Deno.readFile(path), original);
      await Deno.writeTextFile(
        path,
        'console.error("PLANTED RUNNER RAN"); Deno.exit(3);',
      );

      // The next host (and, within it, a same-size plant with the old
      // mtime between two calls) runs the real runner.
      const second = await startHost(script, [cacheDir, "", "plant"]);
      assertAllSucceeded(second, 2, "second host");
      assert.doesNotMatch(second.stdout + second.stderr, /PLANTED/);
      assert.deepEqual(await Deno.readFile(path), original);
      assert.deepEqual(runnerCopies(cacheDir), [name]);
    });
  } finally {
    await served.close();
  }
});

/** A DENO_DIR of its own with Pyodide in its npm cache (copied). */
async function seededDenoDir(dir: string): Promise<string> {
  const info = JSON.parse(
    new TextDecoder().decode(
      (await new Deno.Command(TEST_DENO_PATH, {
        args: ["info", "--json"],
        stdout: "piped",
      }).output()).stdout,
    ),
  );
  const denoDir = join(dir, "other-deno-dir");
  await Deno.mkdir(denoDir);
  const copy = await new Deno.Command("cp", {
    args: ["-r", info.npmCache, join(denoDir, "npm")],
  }).output();
  assert.ok(copy.success, "copying the npm cache");
  const cache = await new Deno.Command(TEST_DENO_PATH, {
    args: ["cache", "--no-config", "npm:pyodide@314.0.7"],
    env: { DENO_DIR: denoDir },
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(cache.success, new TextDecoder().decode(cache.stderr));
  return denoDir;
}

Deno.test("Two hosts with different DENO_DIRs and deno paths share one cacheDir at once", async () => {
  // Attacks (SECURITY.md): "cachedir.shared_hosts"
  await withTempDir("cache-dir-shared-", async (dir) => {
    const cacheDir = join(dir, "cache");
    const otherDenoDir = await seededDenoDir(dir);
    const denoA = join(dir, "deno-a");
    const denoB = join(dir, "deno-b");
    await Deno.symlink(Deno.execPath(), denoA);
    await Deno.symlink(Deno.execPath(), denoB);
    const rounds = 3;
    const script = await writeScript(dir, hostScript(MOD_URL, rounds));
    for (const order of ["a first", "b first"]) {
      const a = () => startHost(script, [cacheDir, denoA]);
      const b = () =>
        startHost(script, [cacheDir, denoB], { DENO_DIR: otherDenoDir });
      const [runA, runB] = order === "a first"
        ? await Promise.all([a(), b()])
        : await Promise.all([b(), a()]).then(([y, x]) => [x, y]);
      assertAllSucceeded(runA, rounds, `host A (${order})`);
      assertAllSucceeded(runB, rounds, `host B (${order})`);
    }
    // Each Deno cache got a child folder of its own.
    const folders = [...Deno.readDirSync(join(cacheDir, "deno-dir"))]
      .filter((e) => e.isDirectory).map((e) => e.name);
    assert.equal(folders.length, 2, `child deno folders: ${folders}`);
    const targets = folders.map((f) =>
      Deno.readLinkSync(join(cacheDir, "deno-dir", f, "npm"))
    ).sort();
    assert.ok(
      targets.some((t) => t.startsWith(otherDenoDir)) &&
        targets.some((t) => !t.startsWith(otherDenoDir)),
      `npm links: ${targets}`,
    );
  });
});
