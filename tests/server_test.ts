import assert from "node:assert/strict";
import { childrenOf, isRunning } from "./_fixtures/procs.ts";
import { eventually, withTempDir } from "./_helpers.ts";
import { buildWheel } from "./_wheel.ts";
import { fileURLToPath } from "node:url";
import {
  call,
  jsonOf,
  readUntil,
  runServer,
  serverEnv,
  TOKEN,
  withServerProcess,
} from "./_http_helpers.ts";

Deno.test("server.ts refuses to listen on a non-loopback hostname without a token", async () => {
  const out = await runServer(["--hostname", "0.0.0.0", "--port", "0"]);
  assert.notEqual(out.code, 0);
  assert.equal(out.code, 1);
  assert.match(
    out.stderr,
    /Refusing to listen on 0\.0\.0\.0 without a token.*--token.*SANDBOX_TOKEN/,
  );
  assert.equal(out.stdout, "");
});

Deno.test("server.ts exits 0 on SIGTERM after finishing the running call, and kills every child", async () => {
  const args = [
    ...["--hostname", "0.0.0.0", "--port", "0"],
    ...["--pool-size", "1", "--timeout", "20"],
  ];
  await withServerProcess(args, serverEnv({ SANDBOX_TOKEN: TOKEN }), async (
    child,
    stderr,
  ) => {
    const m = await readUntil(
      child.stdout,
      /listening on http:\/\/[^:]+:(\d+)\//,
    );
    const base = `http://127.0.0.1:${m[1]}`;
    await jsonOf(
      await fetch(`${base}/v1/execute`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: '{"code": "1"}',
      }),
      401,
    );
    const running = call(base, "POST", "/v1/execute", {
      code: "import time\ntime.sleep(1.5)\nprint('finished')",
    });
    await eventually("the call to run", async () => {
      const h = await jsonOf(await fetch(`${base}/healthz`), 200);
      return h.running === 1;
    }, 20);
    await eventually(
      "the pool to refill",
      () => childrenOf(child.pid).length >= 2,
      20,
    );
    const children = childrenOf(child.pid);
    child.kill("SIGTERM");
    const result = await jsonOf(await running, 200);
    assert.equal(result.stdout, "finished\n");
    const status = await child.status;
    assert.equal(status.code, 0, await stderr);
    assert.match(await stderr, /SIGTERM: shutting down/);
    await eventually(
      "every child to end",
      () => children.every((pid) => !isRunning(pid)),
      10,
    );
  });
});

Deno.test("examples/server_handler.ts serves the API inside its own Deno.serve app", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-read",
      "--allow-write",
      "--allow-run",
      "--allow-env",
      "--allow-net",
      fileURLToPath(new URL("../examples/server_handler.ts", import.meta.url)),
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  assert.match(
    stdout,
    /^App on http:\/\/127\.0\.0\.1:\d+\/\n200 success "mean: 2\.5\\n"\n$/,
  );
});

Deno.test("server.ts without a token answers only Host headers naming loopback", async () => {
  const args = ["--port", "0", "--pool-size", "0"];
  await withServerProcess(args, serverEnv(), async (child) => {
    const m = await readUntil(
      child.stdout,
      /listening on http:\/\/127\.0\.0\.1:(\d+)\/ \(auth: none/,
    );
    const port = Number(m[1]);
    const raw = async (host: string): Promise<string> => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      await conn.write(
        new TextEncoder().encode(
          `GET /v1/sessions HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`,
        ),
      );
      return await new Response(conn.readable).text();
    };
    assert.match(await raw(`127.0.0.1:${port}`), /^HTTP\/1\.1 200/);
    assert.match(await raw(`localhost:${port}`), /^HTTP\/1\.1 200/);
    const rebound = await raw(`attacker.example:${port}`);
    assert.match(rebound, /^HTTP\/1\.1 403/);
    assert.match(rebound, /unexpected Host header/);
    child.kill("SIGTERM");
    assert.equal((await child.status).code, 0);
  });
});

Deno.test("server.ts --help prints every flag and the exit codes on stdout and exits 0", async () => {
  const out = await runServer(["--help"]);
  assert.equal(out.code, 0, out.stderr);
  assert.equal(out.stderr, "");
  for (
    const flag of [
      "--cors-origin ORIGIN",
      "--package NAME",
      "--package-dir DIR",
      "--package-index URL",
      "--playground",
      "--version",
    ]
  ) {
    assert.ok(out.stdout.includes(flag), flag);
  }
  assert.match(
    out.stdout,
    /Exit codes:\n\s+0 .*\n(.*\n)*\s+1 .*\n(.*\n)*\s+2 /,
  );
  const bad = await runServer(["--no-such-flag"]);
  assert.equal(bad.code, 2);
  assert.equal(bad.stdout, "");
  assert.match(bad.stderr, /Unknown option '--no-such-flag'/);
});

Deno.test("server.ts --version prints the version in deno.json and the pinned Pyodide version", async () => {
  const config = JSON.parse(
    await Deno.readTextFile(new URL("../deno.json", import.meta.url)),
  );
  const pyodide = String(config.imports.pyodide).split("@").pop();
  const out = await runServer(["--version"]);
  assert.equal(out.code, 0, out.stderr);
  assert.equal(
    out.stdout,
    `pyodide-sandbox server ${config.version} (Pyodide ${pyodide})\n`,
  );
});

Deno.test("server.ts passes --package-index and --cors-origin to the sandbox and the handler, refusing bad values with exit 2", async () => {
  const index = await runServer(["--package-index", "ftp://example.com/"]);
  assert.equal(index.code, 2, index.stderr);
  assert.match(
    index.stderr,
    /packageIndexUrls entry: "ftp:\/\/example\.com\/"/,
  );
  const cors = await runServer(["--cors-origin", "*"]);
  assert.equal(cors.code, 2, cors.stderr);
  assert.match(cors.stderr, /"\*" needs a token/);
});

Deno.test({
  name:
    "server.ts --playground --package-dir --package serves the page and runs code that imports the wheel",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  await withTempDir(async (dir) => {
    const wheels = `${dir}/wheels`;
    await Deno.mkdir(wheels);
    const wheel = buildWheel("served-lib", "0.3.0", {
      "served_lib/__init__.py": "ANSWER = 'from the wheel'\n",
    });
    await Deno.writeFile(`${wheels}/${wheel.fileName}`, wheel.data);
    const args = [
      ...["--port", "0", "--pool-size", "0", "--timeout", "120"],
      ...["--cache-dir", `${dir}/cache`, "--playground"],
      ...["--package-dir", wheels, "--package", "served-lib"],
    ];
    await withServerProcess(args, serverEnv(), async (child, stderr) => {
      const m = await readUntil(
        child.stdout,
        /listening on (http:\/\/127\.0\.0\.1:\d+)\/ .*\nPlayground: http:\/\/127\.0\.0\.1:\d+\/\n/,
      );
      const base = m[1];
      const page = await fetch(`${base}/`);
      assert.equal(page.status, 200);
      assert.match(page.headers.get("content-type")!, /^text\/html/);
      assert.ok(page.headers.get("content-security-policy"));
      await page.body?.cancel();
      const r = await jsonOf(
        await call(base, "POST", "/v1/execute", {
          code: "import served_lib\nserved_lib.ANSWER",
        }),
        200,
      );
      assert.equal(r.status, "success", JSON.stringify(r));
      assert.equal(r.result, "from the wheel");
      child.kill("SIGTERM");
      assert.equal((await child.status).code, 0, await stderr);
    });
  });
});

Deno.test("server.ts exits 0 on SIGTERM during warm-up and leaves no child behind", async () => {
  await withTempDir(async (dir) => {
    // A fresh cache folder: warm-up builds the snapshot, which takes a while.
    const args = ["--port", "0", "--pool-size", "1", "--cache-dir", dir];
    await withServerProcess(args, serverEnv(), async (child, stderr) => {
      await eventually(
        "warm-up to start a child",
        () => childrenOf(child.pid).length >= 1,
        120,
      );
      const children = childrenOf(child.pid);
      child.kill("SIGTERM");
      const status = await child.status;
      assert.equal(status.code, 0, await stderr);
      assert.match(await stderr, /SIGTERM: shutting down/);
      await eventually(
        "every child to end",
        () => children.every((pid) => !isRunning(pid)),
        30,
      );
    });
  });
});
