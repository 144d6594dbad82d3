/**
 * Packages: imports detected and installed from a local wheel folder (with
 * and without a `pyodide-lock.json`) and from a loopback package index, with
 * sha256 checks, the `"install"` error kind, and installed packages kept in
 * session state. Real Pyodide, real children, wheels built by the tests.
 *
 * @module
 */

import assert from "node:assert/strict";
import { PyodideSandbox } from "../mod.ts";
import { buildWheel, pyodideLock, sha256Hex } from "./_wheel.ts";
import { distrustPreload } from "../_snapshot.ts";
import {
  assertDenied,
  assertNoDenoChildren,
  PROBE_PY,
  startFileServer,
  TEST_DENO_PATH,
  withSandbox,
  withTempDir,
} from "./_helpers.ts";

/** A dependency, pulled in through `Requires-Dist`. */
const HELPER = buildWheel("helper-dep", "2.0.1", {
  "helperdep/__init__.py": "VALUE = 40\n",
});

/** Distribution `fancy-lib`, import name `fancy`, with a submodule. */
const FANCY = buildWheel("fancy-lib", "1.2.3", {
  "fancy/__init__.py": "from helperdep import VALUE\nNAME = 'fancy'\n",
  "fancy/sub.py":
    "import helperdep\n\ndef answer():\n    return helperdep.VALUE + 2\n",
}, ["helper-dep>=2"]);

/** A `pyodide-lock.json` listing FANCY and HELPER. */
async function lockFile(
  options: { wrongSha?: boolean } = {},
): Promise<string> {
  const fancySha = options.wrongSha
    ? "0".repeat(64)
    : await sha256Hex(FANCY.data);
  return JSON.stringify(
    pyodideLock(
      { arch: "wasm32", platform: "emscripten_4_0_9", version: "0.0.0" },
      [{
        name: "fancy-lib",
        version: "1.2.3",
        fileName: FANCY.fileName,
        imports: ["fancy"],
        depends: ["helper-dep"],
        sha256: fancySha,
      }, {
        name: "helper-dep",
        version: "2.0.1",
        fileName: HELPER.fileName,
        imports: ["helperdep"],
        depends: [],
        sha256: await sha256Hex(HELPER.data),
      }],
    ),
  );
}

async function writeWheels(dir: string, lock?: string): Promise<void> {
  for (const wheel of [FANCY, HELPER]) {
    await Deno.writeFile(`${dir}/${wheel.fileName}`, wheel.data);
  }
  if (lock !== undefined) {
    await Deno.writeTextFile(`${dir}/pyodide-lock.json`, lock);
  }
}

const USE_FANCY = `
import fancy.sub
print("answer", fancy.sub.answer())
(fancy.NAME, fancy.__file__)
`;

Deno.test("PyodideSandbox installs detected imports from a packageDir of wheels without a lock file, dependencies included, and keeps them in session state", async () => {
  await withTempDir(async (dir) => {
    await writeWheels(dir);
    await withSandbox({
      poolSize: 0,
      denoPath: TEST_DENO_PATH,
      packageDir: dir,
      stateful: true,
    }, async (sandbox) => {
      // The distribution name (fancy-lib) differs from the import name
      // (fancy); the code imports a submodule; helper-dep comes from
      // Requires-Dist only.
      const first = await sandbox.execute(USE_FANCY);
      assert.equal(first.status, "success", first.stderr);
      // Install logs never reach the user's output.
      assert.equal(first.stdout, "answer 42\n");
      assert.equal(first.stderr, "");
      const [name, file] = first.result as [string, string];
      assert.equal(name, "fancy");
      assert.ok(
        file.startsWith("/lib/python3.14/site-packages/fancy/"),
        `installed into site-packages, got ${file}`,
      );
      // The wheels' files are not the code's output files.
      assert.deepEqual(first.files, []);
      assert.deepEqual(
        first.sessionMetadata?.packages,
        ["fancy-lib==1.2.3", "helper-dep==2.0.1"],
      );

      // Resumed from the bytes: still importable, still recorded, even
      // with the folder gone.
      await Deno.remove(`${dir}/${FANCY.fileName}`);
      await Deno.remove(`${dir}/${HELPER.fileName}`);
      const second = await sandbox.execute(
        "import fancy.sub, helperdep\nfancy.sub.answer() + helperdep.VALUE",
        {
          sessionBytes: first.sessionBytes,
          sessionMetadata: first.sessionMetadata,
        },
      );
      assert.equal(second.status, "success", second.stderr);
      assert.equal(second.result, 82);
      assert.deepEqual(
        second.sessionMetadata?.packages,
        ["fancy-lib==1.2.3", "helper-dep==2.0.1"],
      );
    });
  });
  await assertNoDenoChildren("after the packageDir test");
});

Deno.test("PyodideSandbox installs the packages option even when no import names them, and a package that cannot be found gives kind install", async () => {
  await withTempDir(async (dir) => {
    await writeWheels(dir);
    const sandbox = new PyodideSandbox({
      poolSize: 0,
      denoPath: TEST_DENO_PATH,
      packageDir: dir,
      packages: ["fancy-lib"],
    });
    const missing = new PyodideSandbox({
      poolSize: 0,
      denoPath: TEST_DENO_PATH,
      packageDir: dir,
      packages: ["no-such-dist"],
      // Stateful too: the install error is not hidden by a session error.
      stateful: true,
    });
    try {
      // An import the finder cannot see: only the packages option installs it.
      const result = await sandbox.execute(
        "import importlib\nimportlib.import_module('fan' + 'cy').NAME",
      );
      assert.equal(result.status, "success", result.stderr);
      assert.equal(result.result, "fancy");
      assert.equal(result.stdout, "");

      const failed = await missing.execute("print('never runs')");
      assert.equal(failed.status, "error");
      assert.equal(failed.error?.kind, "install");
      assert.ok(
        failed.error?.message.includes('"no-such-dist"'),
        `names the package: ${failed.error?.message}`,
      );
      assert.ok(
        failed.error?.message.includes(dir),
        `names where it looked: ${failed.error?.message}`,
      );
      assert.equal(failed.stdout, "", "the code did not run");
      assert.ok(failed.stderr.includes("no-such-dist"), failed.stderr);
      assert.equal(failed.sessionBytes, undefined);
    } finally {
      await sandbox.close();
      await missing.close();
    }
  });
  // Without any package source, a required package is an install error too.
  const offline = new PyodideSandbox({
    poolSize: 0,
    denoPath: TEST_DENO_PATH,
    packages: ["fancy-lib"],
    packageIndexUrls: [],
  });
  try {
    const result = await offline.execute("1");
    assert.equal(result.error?.kind, "install");
    assert.match(result.error!.message, /"fancy-lib".*no packageDir/);
  } finally {
    await offline.close();
  }
  await assertNoDenoChildren("after the packages option test");
});

Deno.test("PyodideSandbox checks the sha256 of wheels listed in a packageDir lock file before installing them", async () => {
  await withTempDir(async (root) => {
    const good = `${root}/good`;
    const bad = `${root}/bad`;
    await Deno.mkdir(good);
    await Deno.mkdir(bad);
    await writeWheels(good, await lockFile());
    await writeWheels(bad, await lockFile({ wrongSha: true }));
    const goodSandbox = new PyodideSandbox({
      poolSize: 0,
      denoPath: TEST_DENO_PATH,
      packageDir: good,
    });
    const badSandbox = new PyodideSandbox({
      poolSize: 0,
      denoPath: TEST_DENO_PATH,
      packageDir: bad,
    });
    try {
      const ok = await goodSandbox.execute(USE_FANCY);
      assert.equal(ok.status, "success", ok.stderr);
      assert.equal(ok.stdout, "answer 42\n");

      const rejected = await badSandbox.execute(USE_FANCY);
      assert.equal(rejected.status, "error");
      assert.equal(rejected.error?.kind, "install");
      assert.match(rejected.error!.message, /"fancy-lib".*integrity/);
      assert.ok(
        rejected.error!.message.includes(FANCY.fileName),
        rejected.error!.message,
      );
      assert.equal(rejected.stdout, "", "the code did not run");
    } finally {
      await goodSandbox.close();
      await badSandbox.close();
    }
  });
  await assertNoDenoChildren("after the lock file test");
});

/** A loopback package index serving a lock file and wheels. */
function startIndex(files: Record<string, Uint8Array | string>): {
  url: string;
  hits: string[];
  close: () => Promise<void>;
} {
  const server = startFileServer((path) =>
    files[path.slice(1)] as BodyInit | undefined
  );
  return {
    url: `${server.url}/simple/`,
    hits: server.hits,
    close: server.close,
  };
}

Deno.test("PyodideSandbox installs from a package index through the host: the child gets no network and user code cannot reach the index", async () => {
  const index = startIndex({
    "simple/pyodide-lock.json": await lockFile(),
    [`simple/${FANCY.fileName}`]: FANCY.data,
    [`simple/${HELPER.fileName}`]: HELPER.data,
  });
  const sandbox = new PyodideSandbox({
    poolSize: 0,
    denoPath: TEST_DENO_PATH,
    packageIndexUrls: [index.url],
    // No wheel cache: every wheel is fetched (the cache has its own tests).
    packageCacheMb: 0,
  });
  const missing = new PyodideSandbox({
    poolSize: 0,
    denoPath: TEST_DENO_PATH,
    packageIndexUrls: [index.url],
    packages: ["no-such-dist"],
  });
  try {
    assert.ok(
      !sandbox.buildCommand().args.some((a) => a.startsWith("--allow-net")),
      "the child command grants no network",
    );
    const result = await sandbox.execute(
      PROBE_PY + USE_FANCY + `
report = await aprobe(lambda: js.fetch(${
        JSON.stringify(index.url)
      } + "pyodide-lock.json"))
(fancy.NAME, report)
`,
    );
    assert.equal(result.status, "success", result.stderr);
    assert.equal(result.stdout, "answer 42\n");
    const [name, report] = result.result as [string, string];
    assert.equal(name, "fancy");
    assertDenied(report, "fetching the index from user code", "net");
    // Only the host's fetches reached the index: the lock file and the two
    // wheels, none from the code.
    assert.deepEqual(
      [...index.hits].sort(),
      [
        "/simple/pyodide-lock.json",
        `/simple/${FANCY.fileName}`,
        `/simple/${HELPER.fileName}`,
      ].sort(),
    );

    const failed = await missing.execute("1");
    assert.equal(failed.error?.kind, "install");
    assert.ok(
      failed.error!.message.includes('"no-such-dist"') &&
        failed.error!.message.includes(`${index.url}pyodide-lock.json`),
      `names the package and the index: ${failed.error!.message}`,
    );
  } finally {
    await sandbox.close();
    await missing.close();
    await index.close();
  }
  await assertNoDenoChildren("after the index test");
});

Deno.test("PyodideSandbox reports an unreachable package index as an install error naming it, and tries it again on the next call", async () => {
  // Down for the first request, then up.
  let down = true;
  const lock = await lockFile();
  const hits: string[] = [];
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (request) => {
      const path = new URL(request.url).pathname;
      hits.push(path);
      if (down) {
        down = false;
        return new Response("maintenance", { status: 503 });
      }
      if (path === "/pyodide-lock.json") return new Response(lock);
      if (path === `/${FANCY.fileName}`) {
        return new Response(FANCY.data as BodyInit);
      }
      if (path === `/${HELPER.fileName}`) {
        return new Response(HELPER.data as BodyInit);
      }
      return new Response("not found", { status: 404 });
    },
  );
  const url = `http://127.0.0.1:${server.addr.port}`;
  const sandbox = new PyodideSandbox({
    poolSize: 0,
    denoPath: TEST_DENO_PATH,
    packageIndexUrls: [url],
    packages: ["fancy-lib"],
  });
  try {
    const failed = await sandbox.execute("1");
    assert.equal(failed.error?.kind, "install");
    assert.ok(
      failed.error!.message.includes('"fancy-lib"') &&
        failed.error!.message.includes(`${url}/pyodide-lock.json`) &&
        failed.error!.message.includes("unreachable") &&
        failed.error!.message.includes("503"),
      failed.error!.message,
    );
    const recovered = await sandbox.execute("import fancy\nfancy.NAME");
    assert.equal(recovered.status, "success", recovered.stderr);
    assert.equal(recovered.result, "fancy");
    assert.equal(hits.filter((h) => h === "/pyodide-lock.json").length, 2);
  } finally {
    await sandbox.close();
    await server.shutdown();
  }
});

Deno.test("PyodideSession installs packages, save() records them, and a session reopened from the bytes can import them", async () => {
  await withTempDir(async (dir) => {
    await writeWheels(dir, await lockFile());
    const sandbox = new PyodideSandbox({
      poolSize: 0,
      denoPath: TEST_DENO_PATH,
      packageDir: dir,
    });
    try {
      const session = await sandbox.openSession();
      let saved;
      try {
        const first = await session.execute("import fancy\nfancy.NAME");
        assert.equal(first.result, "fancy", first.stderr);
        assert.equal(first.stdout, "");
        saved = await session.save();
      } finally {
        await session.close();
      }
      assert.deepEqual(
        saved.sessionMetadata.packages,
        ["fancy-lib==1.2.3", "helper-dep==2.0.1"],
      );
      const reopened = await sandbox.openSession(saved);
      try {
        const again = await reopened.execute(
          "import fancy.sub\nfancy.sub.answer()",
        );
        assert.equal(again.result, 42, again.stderr);
        const resaved = await reopened.save();
        assert.deepEqual(
          resaved.sessionMetadata.packages,
          ["fancy-lib==1.2.3", "helper-dep==2.0.1"],
        );
      } finally {
        await reopened.close();
      }
    } finally {
      await sandbox.close();
    }
  });
  await assertNoDenoChildren("after the session packages test");
});

/** A module that records the process that imported it. */
const COUNTED = buildWheel("counted-mod", "0.1.0", {
  "counted/__init__.py":
    "import js as _js\nPID = int(_js.Deno.pid)\nTABLE = [i * i for i in range(50_000)]\n",
});

async function preloadFiles(cacheDir: string): Promise<string[]> {
  return (await Array.fromAsync(Deno.readDir(cacheDir)))
    .map((e) => e.name)
    .filter((n) => /^snapshot-.*-preload-[0-9a-f]+\.bin$/.test(n));
}

Deno.test("PyodideSandbox preload: pooled calls and sessions start from a snapshot with the packages installed and imported, verified and rebuilt when corrupted", async () => {
  await withTempDir(async (root) => {
    const wheels = `${root}/wheels`;
    const cacheDir = `${root}/cache`;
    await Deno.mkdir(wheels);
    await writeWheels(wheels);
    await Deno.writeFile(`${wheels}/${COUNTED.fileName}`, COUNTED.data);
    const options = {
      denoPath: TEST_DENO_PATH,
      cacheDir,
      packageDir: wheels,
      packageIndexUrls: [],
      preload: ["counted-mod", "fancy-lib"],
    };
    const probe =
      "import sys\nbefore = ['counted' in sys.modules, 'fancy' in sys.modules]\nimport counted, fancy, js\n[before, counted.PID != js.Deno.pid, fancy.VALUE]";
    const pooled = new PyodideSandbox({ ...options, poolSize: 1 });
    let path: string;
    try {
      await pooled.warmup();
      const first = await pooled.execute(probe, { timeoutSeconds: 120 });
      assert.equal(first.status, "success", JSON.stringify(first.error));
      // Imported when the snapshot was built, not by the call.
      assert.deepEqual(first.result, [[true, true], true, 40]);
      const second = await pooled.execute(probe, { timeoutSeconds: 120 });
      assert.deepEqual(second.result, [[true, true], true, 40]);

      const session = await pooled.openSession();
      try {
        const step = await session.execute(probe, { timeoutSeconds: 120 });
        assert.deepEqual(step.result, [[true, true], true, 40]);
      } finally {
        await session.close();
      }
      const files = await preloadFiles(cacheDir);
      assert.equal(files.length, 1, `one preloaded snapshot: ${files}`);
      path = `${cacheDir}/${files[0]}`;
      const record = JSON.parse(await Deno.readTextFile(`${path}.json`));
      assert.equal(record.size, (await Deno.stat(path)).size);
      assert.equal(record.pyodideVersion, "314.0.7");
      assert.ok(
        record.packages.some((p: string) =>
          p.startsWith("counted-mod==0.1.0 ") && /[0-9a-f]{64}$/.test(p)
        ),
        JSON.stringify(record.packages),
      );
    } finally {
      await pooled.close();
    }

    // Corrupted on disk: detected by its sha256 and rebuilt.
    const bytes = await Deno.readFile(path);
    bytes[bytes.length >> 1] ^= 0xff;
    await Deno.writeFile(path, bytes);
    distrustPreload(path);
    await withSandbox({ ...options, poolSize: 0 }, async (again) => {
      const result = await again.execute(probe, { timeoutSeconds: 120 });
      assert.equal(result.status, "success", JSON.stringify(result.error));
      assert.deepEqual(result.result, [[true, true], true, 40]);
      const record = JSON.parse(await Deno.readTextFile(`${path}.json`));
      const rebuilt = await Deno.readFile(path);
      assert.notDeepEqual(rebuilt, bytes, "the corrupted file was replaced");
      assert.equal(record.size, rebuilt.length);
    });

    // Another package set (or another wheel) is another snapshot.
    await withSandbox({
      ...options,
      poolSize: 0,
      preload: ["fancy-lib"],
    }, async (other) => {
      const result = await other.execute(
        "import sys\n['counted' in sys.modules, 'fancy' in sys.modules]",
        { timeoutSeconds: 120 },
      );
      assert.deepEqual(result.result, [false, true]);
      assert.equal((await preloadFiles(cacheDir)).length, 2);
    });

    // A preload that cannot be found fails calls with kind install.
    await withSandbox({
      ...options,
      poolSize: 0,
      preload: ["no-such-dist"],
    }, async (missing) => {
      const result = await missing.execute("1", { timeoutSeconds: 120 });
      assert.equal(result.error?.kind, "install", JSON.stringify(result.error));
      assert.ok(result.error!.message.includes('"no-such-dist"'));
    });
  });
  await assertNoDenoChildren("after the preload test");
});
