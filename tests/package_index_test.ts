/**
 * The default package index (the Pyodide distribution, fetched by the host
 * and verified against the local lock) and the host's wheel cache. A
 * loopback server stands in for the CDN (this machine cannot reach it),
 * serving wheels the tests build, checked against a lock the test writes.
 *
 * @module
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { PyodideSandbox, type SandboxOptions } from "../mod.ts";
import { applyPreloadFlags } from "../_cli_flags.ts";
import {
  DEFAULT_PACKAGE_INDEX_URL,
  fetchBytes,
  PackageResolver,
  TEST_INDEX_ENV,
} from "../_packages.ts";
import {
  DEFAULT_PACKAGE_CACHE_MB,
  sha256Bytes,
  WheelCache,
} from "../_wheel_cache.ts";
import { PYODIDE_VERSION } from "../runner.ts";
import { buildWheel, pyodideLock } from "./_wheel.ts";
import {
  assertNoDenoChildren,
  moduleTempDir,
  startFileServer,
  TEST_DENO_PATH,
  withTempDir,
} from "./_helpers.ts";

const HELPER = buildWheel("helper-dep", "2.0.1", {
  "helperdep/__init__.py": "VALUE = 40\n",
});
/** Its lock entry names the dependency; the wheel's METADATA does not. */
const FANCY = buildWheel("fancy-lib", "1.2.3", {
  "fancy/__init__.py": "from helperdep import VALUE\nNAME = 'fancy'\n",
});
const USE_FANCY = "import fancy\nprint('value', fancy.VALUE)\nfancy.NAME";

/** One cache folder for the module (the base snapshot is built once). */
const CACHE_DIR = moduleTempDir("sandbox-index-test-");

interface Cdn {
  base: string;
  lockPath: string;
  /** Requests per path. */
  hits: Map<string, number>;
  total(): number;
  close(): Promise<void>;
}

/**
 * Serves FANCY and HELPER under `/pyodide/v<version>/full/`, and writes a
 * lock for them (its sha256s from `lockData`, so a test can make the
 * served bytes differ from the locked ones).
 */
async function startCdn(
  dir: string,
  options: {
    serve?: Record<string, Uint8Array | number>;
    lockData?: Record<string, Uint8Array>;
  } = {},
): Promise<Cdn> {
  const files: Record<string, Uint8Array | number> = {
    [FANCY.fileName]: FANCY.data,
    [HELPER.fileName]: HELPER.data,
    ...options.serve,
  };
  const server = startFileServer((path) => {
    const file = files[path.split("/").pop()!];
    if (typeof file === "number") return new Response("no", { status: file });
    return file as Uint8Array<ArrayBuffer> | undefined;
  });
  const lockData = {
    fancy: FANCY.data,
    helper: HELPER.data,
    ...options.lockData,
  };
  const lock = pyodideLock({ arch: "wasm32", python: "3.14.2" }, [{
    name: "fancy-lib",
    version: "1.2.3",
    fileName: FANCY.fileName,
    imports: ["fancy"],
    depends: ["helper-dep"],
    sha256: await sha256Bytes(lockData.fancy),
  }, {
    name: "helper-dep",
    version: "2.0.1",
    fileName: HELPER.fileName,
    imports: ["helperdep"],
    depends: [],
    sha256: await sha256Bytes(lockData.helper),
  }]);
  const lockPath = join(dir, "pyodide-lock.json");
  await Deno.writeTextFile(lockPath, JSON.stringify(lock));
  return {
    base: `${server.url}/pyodide/v${PYODIDE_VERSION}/full/`,
    lockPath,
    get hits() {
      const hits = new Map<string, number>();
      for (const path of server.hits) hits.set(path, (hits.get(path) ?? 0) + 1);
      return hits;
    },
    total: () => server.hits.length,
    close: server.close,
  };
}

/** A sandbox whose default index is the stand-in CDN. */
function cdnSandbox(cdn: Cdn, options: SandboxOptions = {}): PyodideSandbox {
  Deno.env.set(TEST_INDEX_ENV.baseUrl, cdn.base);
  Deno.env.set(TEST_INDEX_ENV.lockPath, cdn.lockPath);
  try {
    return new PyodideSandbox({
      poolSize: 0,
      denoPath: TEST_DENO_PATH,
      cacheDir: CACHE_DIR,
      ...options,
    });
  } finally {
    // Read when the sandbox was made: other modules never see them.
    Deno.env.delete(TEST_INDEX_ENV.baseUrl);
    Deno.env.delete(TEST_INDEX_ENV.lockPath);
  }
}

async function run(sandbox: PyodideSandbox, code: string) {
  try {
    return await sandbox.execute(code, { timeoutSeconds: 120 });
  } finally {
    await sandbox.close();
  }
}

async function clearWheelCache(): Promise<void> {
  await Deno.remove(join(CACHE_DIR, "wheels"), { recursive: true })
    .catch(() => {});
}

Deno.test("DEFAULT_PACKAGE_INDEX_URL is the Pyodide CDN for exactly the pinned version, and the cache defaults to 1024 MiB", () => {
  assert.equal(
    DEFAULT_PACKAGE_INDEX_URL,
    "https://cdn.jsdelivr.net/pyodide/v314.0.7/full/",
  );
  assert.equal(PYODIDE_VERSION, "314.0.7");
  assert.equal(DEFAULT_PACKAGE_CACHE_MB, 1024);
});

Deno.test("PyodideSandbox installs from the default index by default: the host fetches the wheels (dependencies from the local lock), never the lock, and a second use makes no request", async () => {
  await clearWheelCache();
  await withTempDir(async (dir) => {
    const cdn = await startCdn(dir);
    try {
      const first = await run(cdnSandbox(cdn), USE_FANCY);
      assert.equal(first.status, "success", JSON.stringify(first.error));
      assert.equal(first.stdout, "value 40\n");
      assert.equal(first.result, "fancy");
      assert.deepEqual(
        [...cdn.hits.keys()].sort(),
        [
          `/pyodide/v${PYODIDE_VERSION}/full/${FANCY.fileName}`,
          `/pyodide/v${PYODIDE_VERSION}/full/${HELPER.fileName}`,
        ].sort(),
        "the two wheels, and no pyodide-lock.json from the network",
      );
      assert.equal(cdn.total(), 2);

      // The wheel cache: content-addressed, private.
      const wheels = join(CACHE_DIR, "wheels");
      assert.equal((await Deno.stat(wheels)).mode! & 0o777, 0o700);
      const names = (await Array.fromAsync(Deno.readDir(wheels)))
        .map((e) => e.name).sort();
      assert.deepEqual(
        names,
        [
          `${await sha256Bytes(FANCY.data)}.whl`,
          `${await sha256Bytes(HELPER.data)}.whl`,
        ].sort(),
      );
      for (const name of names) {
        assert.equal(
          (await Deno.stat(join(wheels, name))).mode! & 0o777,
          0o600,
        );
      }

      // Another sandbox (another resolver) on the same cache folder.
      const second = await run(cdnSandbox(cdn), USE_FANCY);
      assert.equal(second.status, "success", JSON.stringify(second.error));
      assert.equal(cdn.total(), 2, "the second use made no request");

      // A corrupted cached wheel is detected by its hash and fetched again.
      const cached = join(wheels, `${await sha256Bytes(FANCY.data)}.whl`);
      const bytes = await Deno.readFile(cached);
      bytes[bytes.length >> 1] ^= 0xff;
      await Deno.writeFile(cached, bytes);
      const third = await run(cdnSandbox(cdn), USE_FANCY);
      assert.equal(third.status, "success", JSON.stringify(third.error));
      assert.equal(
        cdn.total(),
        3,
        "only the corrupted wheel was fetched again",
      );
      assert.deepEqual(await Deno.readFile(cached), FANCY.data, "repaired");
    } finally {
      await cdn.close();
    }
  });
  await assertNoDenoChildren("after the default index test");
});

Deno.test("A wheel whose bytes do not match the local lock gives kind install and is never handed to a child or cached", async () => {
  await clearWheelCache();
  await withTempDir(async (dir) => {
    const tampered = buildWheel("fancy-lib", "1.2.3", {
      "fancy/__init__.py": "print('tampered code ran')\nNAME = 'evil'\n",
    });
    const cdn = await startCdn(dir, {
      serve: { [FANCY.fileName]: tampered.data },
    });
    try {
      const result = await run(cdnSandbox(cdn), USE_FANCY);
      assert.equal(result.error?.kind, "install", JSON.stringify(result.error));
      assert.match(result.error!.message, /"fancy-lib".*integrity/);
      assert.ok(result.error!.message.includes(`${cdn.base}${FANCY.fileName}`));
      assert.equal(result.stdout, "", "neither the code nor the wheel ran");
      assert.ok(!result.stderr.includes("tampered"), result.stderr);
      const names = await Array.fromAsync(
        Deno.readDir(join(CACHE_DIR, "wheels")),
      )
        .catch(() => []);
      const bad = `${await sha256Bytes(tampered.data)}.whl`;
      assert.ok(!names.some((e) => e.name === bad), "not cached");
    } finally {
      await cdn.close();
    }
  });
});

Deno.test("A failed host fetch gives kind install naming the package and the URL; packageIndexUrls: [] means no index and no request", async () => {
  await clearWheelCache();
  await withTempDir(async (dir) => {
    const cdn = await startCdn(dir, { serve: { [HELPER.fileName]: 503 } });
    try {
      const failed = await run(cdnSandbox(cdn), USE_FANCY);
      assert.equal(failed.error?.kind, "install", JSON.stringify(failed.error));
      const message = failed.error!.message;
      assert.ok(message.includes('"helper-dep"'), message);
      assert.ok(message.includes(`${cdn.base}${HELPER.fileName}`), message);
      assert.ok(message.includes("503"), message);

      const before = cdn.total();
      const offline = await run(
        cdnSandbox(cdn, { packageIndexUrls: [] }),
        USE_FANCY,
      );
      assert.equal(offline.error?.kind, "exception");
      assert.equal(offline.error?.type, "ModuleNotFoundError");
      assert.equal(cdn.total(), before, "no request without an index");
    } finally {
      await cdn.close();
    }
  });
  await assertNoDenoChildren("after the fetch error test");
});

Deno.test("fetchBytes() has its own timeout and size cap", async () => {
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    async (request) => {
      if (new URL(request.url).pathname === "/slow") {
        await new Promise((r) => setTimeout(r, 3000));
      }
      return new Response(new Uint8Array(5000));
    },
  );
  const url = `http://127.0.0.1:${server.addr.port}`;
  try {
    await assert.rejects(fetchBytes(`${url}/slow`, 200), /within 200 ms/);
    await assert.rejects(fetchBytes(`${url}/big`, 5000, 4000), /cap of 4000/);
    assert.equal((await fetchBytes(`${url}/big`, 5000, 5000)).length, 5000);
  } finally {
    await server.shutdown();
  }
});

Deno.test("PackageResolver with the default index checks wheels against the local lock and resolves lock dependencies", async () => {
  await withTempDir(async (dir) => {
    const cdn = await startCdn(dir);
    try {
      const resolver = new PackageResolver({
        packageIndexUrls: [DEFAULT_PACKAGE_INDEX_URL],
        localLockPath: cdn.lockPath,
        cacheDir: dir,
      });
      // Not the CDN (unreachable here): the lock names the CDN's URLs.
      await assert.rejects(
        resolver.resolve(["fancy"], [], []),
        (error: Error) =>
          error.name === "InstallError" &&
          error.message.includes(DEFAULT_PACKAGE_INDEX_URL),
      );
      Deno.env.set(TEST_INDEX_ENV.baseUrl, cdn.base);
      const local = new PackageResolver({
        packageIndexUrls: [DEFAULT_PACKAGE_INDEX_URL],
        localLockPath: cdn.lockPath,
        cacheDir: dir,
      });
      Deno.env.delete(TEST_INDEX_ENV.baseUrl);
      const wheels = await local.resolve(["fancy"], [], []);
      assert.deepEqual(wheels.map((w) => w.name), ["helper-dep", "fancy-lib"]);
      assert.deepEqual(wheels[1].data, FANCY.data);
      assert.deepEqual(
        await local.resolve(["fancy"], [], ["helper-dep"]).then(
          (w) => w.map((x) => x.name),
        ),
        ["fancy-lib"],
      );
    } finally {
      await cdn.close();
    }
  });
});

Deno.test("WheelCache evicts the least recently used wheels above its cap and skips a link in place of its folder", async () => {
  await withTempDir(async (dir) => {
    // 0.002 MiB = 2097 bytes: room for two 900-byte wheels.
    const cache = new WheelCache(dir, 0.002);
    const blobs = [1, 2, 3].map((n) => new Uint8Array(900).fill(n));
    const shas = await Promise.all(blobs.map(sha256Bytes));
    await cache.put(shas[0], blobs[0]);
    await new Promise((r) => setTimeout(r, 20));
    await cache.put(shas[1], blobs[1]);
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(await cache.get(shas[0]), blobs[0], "used: now newest");
    await new Promise((r) => setTimeout(r, 20));
    await cache.put(shas[2], blobs[2]);
    assert.equal(await cache.get(shas[1]), undefined, "least recently used");
    assert.deepEqual(await cache.get(shas[0]), blobs[0]);
    assert.deepEqual(await cache.get(shas[2]), blobs[2]);
    assert.equal(await cache.get("../../etc/passwd"), undefined);

    const linked = join(dir, "linked");
    await Deno.mkdir(linked);
    const target = join(dir, "elsewhere");
    await Deno.mkdir(target);
    await Deno.symlink(target, join(linked, "wheels"));
    const viaLink = new WheelCache(linked, 10);
    await viaLink.put(shas[0], blobs[0]);
    assert.deepEqual(await Array.fromAsync(Deno.readDir(target)), []);
    assert.equal(await viaLink.get(shas[0]), undefined);
  });
});

Deno.test("WheelCache shared by concurrent host processes stays consistent (temporary file, then rename)", async () => {
  await withTempDir(async (dir) => {
    const blobs = [1, 2, 3, 4].map((n) => new Uint8Array(300_000).fill(n));
    const shas = await Promise.all(blobs.map(sha256Bytes));
    const module = new URL("../_wheel_cache.ts", import.meta.url).href;
    const script = `
      import { WheelCache } from ${JSON.stringify(module)};
      const cache = new WheelCache(${JSON.stringify(dir)}, 100);
      const shas = ${JSON.stringify(shas)};
      for (let round = 0; round < 15; round++) {
        for (let i = 0; i < shas.length; i++) {
          await cache.put(shas[i], new Uint8Array(300000).fill(i + 1));
          const got = await cache.get(shas[(i + round) % shas.length]);
          if (got && got[0] !== ((i + round) % shas.length) + 1) Deno.exit(3);
        }
      }
    `;
    const hosts = [0, 1, 2].map(() =>
      new Deno.Command(Deno.execPath(), {
        args: ["eval", "--no-config", script],
        stdout: "null",
        stderr: "piped",
      }).output()
    );
    const cache = new WheelCache(dir, 100);
    for (let i = 0; i < 20; i++) {
      const got = await cache.get(shas[i % 4]);
      if (got) assert.deepEqual(got, blobs[i % 4]);
    }
    for (const out of await Promise.all(hosts)) {
      assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    }
    for (let i = 0; i < 4; i++) {
      assert.deepEqual(await cache.get(shas[i]), blobs[i]);
    }
    const left = (await Array.fromAsync(Deno.readDir(join(dir, "wheels"))))
      .filter((e) => e.name.endsWith(".tmp"));
    assert.deepEqual(left, [], "no temporary file left");
  });
});

Deno.test("PackageResolver ignores lock entries whose file_name leaves the lock's folder or index (a path or another URL)", async () => {
  await withTempDir(async (root) => {
    const secret = join(root, "secret.whl");
    await Deno.writeFile(secret, FANCY.data);
    const dir = join(root, "wheels");
    await Deno.mkdir(dir);
    let otherHits = 0;
    const other = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      () => {
        otherHits++;
        return new Response(FANCY.data as Uint8Array<ArrayBuffer>);
      },
    );
    const index = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      () => Response.json(lock(`http://127.0.0.1:${other.addr.port}/x.whl`)),
    );
    function lock(fileName: string) {
      return {
        packages: {
          "fancy-lib": {
            name: "fancy-lib",
            version: "1.2.3",
            file_name: fileName,
            imports: ["fancy"],
            depends: [],
          },
        },
      };
    }
    try {
      for (const fileName of ["../secret.whl", secret, "a/../../secret.whl"]) {
        await Deno.writeTextFile(
          join(dir, "pyodide-lock.json"),
          JSON.stringify(lock(fileName)),
        );
        const resolver = new PackageResolver({
          packageDir: dir,
          packageIndexUrls: [],
        });
        await assert.rejects(
          resolver.resolve([], ["fancy-lib"], []),
          /"fancy-lib" was not found/,
          fileName,
        );
      }
      const remote = new PackageResolver({
        packageIndexUrls: [`http://127.0.0.1:${index.addr.port}/`],
      });
      await assert.rejects(
        remote.resolve([], ["fancy-lib"], []),
        /"fancy-lib" was not found/,
      );
      assert.equal(otherHits, 0);
    } finally {
      await index.shutdown();
      await other.shutdown();
    }
  });
});

Deno.test("applyPreloadFlags() splits --preload lists and turns --no-package-index into packageIndexUrls: []", () => {
  assert.deepEqual(
    applyPreloadFlags({ preload: ["numpy,pandas", " numpy ", "six"] }, {}),
    { preload: ["numpy", "pandas", "six"] },
  );
  assert.deepEqual(applyPreloadFlags({ "no-package-index": true }, {}), {
    packageIndexUrls: [],
  });
  assert.deepEqual(applyPreloadFlags({}, {}), {});
  assert.throws(
    () => applyPreloadFlags({ preload: ["numpy,,pandas"] }, {}),
    TypeError,
  );
  assert.throws(
    () =>
      applyPreloadFlags({
        "no-package-index": true,
        "package-index": ["https://example.com/"],
      }, {}),
    /--no-package-index cannot be used with --package-index/,
  );
});

Deno.test("PyodideSandbox checks packageCacheMb and preload", () => {
  assert.throws(
    () => new PyodideSandbox({ packageCacheMb: -1 }),
    RangeError,
  );
  assert.throws(
    () => new PyodideSandbox({ preload: "numpy" as unknown as string[] }),
    TypeError,
  );
  assert.throws(
    () => new PyodideSandbox({ preload: [""] }),
    TypeError,
  );
});
