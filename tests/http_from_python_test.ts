/**
 * Synchronous HTTP from Python (`urllib.request.urlopen`) for hosts that
 * `allowNet` grants: the child fetches with its own grants and Python waits
 * through JSPI. Real children, loopback servers.
 *
 * @module
 */

import assert from "node:assert/strict";
import { PyodideSandbox } from "../mod.ts";
import {
  assertNoDenoChildren,
  TEST_DENO_PATH,
  withTempDir,
} from "./_helpers.ts";

/** A loopback server with a few behaviours, counting its requests. */
function startServer(): {
  host: string;
  url: string;
  hits: () => number;
  close: () => Promise<void>;
} {
  let hits = 0;
  const hanging: (() => void)[] = [];
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    async (request) => {
      hits++;
      const url = new URL(request.url);
      if (url.pathname === "/big") {
        return new Response(new Uint8Array(1_500_000).fill(120));
      }
      if (url.pathname.startsWith("/status/")) {
        return new Response(`status body ${url.pathname.slice(8)}`, {
          status: Number(url.pathname.slice(8)),
          headers: { "x-kind": "status" },
        });
      }
      if (url.pathname === "/never") {
        // Never answers (until the server closes).
        await new Promise<void>((resolve) => hanging.push(resolve));
        return new Response("too late");
      }
      return Response.json({
        method: request.method,
        path: url.pathname + url.search,
        header: request.headers.get("x-test"),
        type: request.headers.get("content-type"),
        body: await request.text(),
      }, { headers: { "x-reply": "yes" } });
    },
  );
  const host = `127.0.0.1:${server.addr.port}`;
  return {
    host,
    url: `http://${host}`,
    hits: () => hits,
    close: async () => {
      for (const resolve of hanging) resolve();
      await server.shutdown();
    },
  };
}

/** Requests a denied host and a granted one, and reports what happened. */
function requests(url: string, denied: string): string {
  return `
import urllib.request, urllib.error, json
out = {}
r = urllib.request.urlopen("${url}/get?q=1")
out["get"] = [r.status, r.headers["x-reply"], json.loads(r.read())]
req = urllib.request.Request("${url}/post", data=b'{"a": 1}', method="POST",
    headers={"X-Test": "hello", "Content-Type": "application/json"})
with urllib.request.urlopen(req) as r:
    out["post"] = [r.getcode(), json.loads(r.read())]
big = urllib.request.urlopen("${url}/big").read()
out["big"] = [len(big), big[:3].decode()]
codes = []
for code in (404, 500):
    try:
        urllib.request.urlopen("${url}/status/%d" % code)
        codes.append("no error")
    except urllib.error.HTTPError as e:
        codes.append([e.code, e.headers["x-kind"], e.read().decode()])
out["errors"] = codes
out["created"] = urllib.request.urlopen("${url}/status/201").status
try:
    urllib.request.urlopen("http://${denied}/")
    out["denied"] = "allowed"
except PermissionError as e:
    out["denied"] = [type(e).__name__, isinstance(e, urllib.error.URLError), str(e)]
try:
    urllib.request.urlopen("${url}/never", timeout=0.5)
    out["own_timeout"] = "answered"
except urllib.error.URLError as e:
    out["own_timeout"] = str(e)
out
`;
}

interface Report {
  get: [number, string, { method: string; path: string }];
  post: [
    number,
    { method: string; header: string; type: string; body: string },
  ];
  big: [number, string];
  errors: [number, string, string][];
  created: number;
  denied: [string, boolean, string];
  own_timeout: string;
}

function checkReport(report: Report, deniedHost: string): void {
  assert.equal(report.get[0], 200);
  assert.equal(report.get[1], "yes");
  assert.equal(report.get[2].method, "GET");
  assert.equal(report.get[2].path, "/get?q=1");
  assert.equal(report.post[0], 200);
  assert.deepEqual(report.post[1], {
    method: "POST",
    path: "/post",
    header: "hello",
    type: "application/json",
    body: '{"a": 1}',
  });
  assert.deepEqual(report.big, [1_500_000, "xxx"]);
  assert.deepEqual(report.errors, [
    [404, "status", "status body 404"],
    [500, "status", "status body 500"],
  ]);
  assert.equal(report.created, 201);
  const [type, isUrlError, message] = report.denied;
  assert.equal(type, "NetworkPermissionError");
  assert.equal(isUrlError, true, "also a urllib.error.URLError");
  assert.ok(message.includes(deniedHost), `names the host: ${message}`);
  assert.ok(message.includes("allowNet"), `names the permission: ${message}`);
  assert.match(report.own_timeout, /timed out/);
}

Deno.test("urllib.request.urlopen() works synchronously for granted hosts: GET, POST with headers and body, HTTPError for 4xx/5xx, a 1.5 MB body, a denied host, its own timeout", async () => {
  const server = startServer();
  const other = startServer();
  await withTempDir(async (cacheDir) => {
    const sandbox = new PyodideSandbox({
      poolSize: 0,
      denoPath: TEST_DENO_PATH,
      cacheDir,
      allowNet: [server.host],
      packageIndexUrls: [],
    });
    try {
      const result = await sandbox.execute(requests(server.url, other.host), {
        timeoutSeconds: 60,
      });
      assert.equal(result.status, "success", JSON.stringify(result.error));
      checkReport(result.result as unknown as Report, other.host);
      assert.equal(other.hits(), 0, "the denied host got no request");
    } finally {
      await sandbox.close();
    }
  });
  await server.close();
  await other.close();
  await assertNoDenoChildren("after the urllib test");
});

Deno.test("urllib.request.urlopen() on a server that never answers is interrupted by the call's timeout (kind timeout), in a call and in a live session that survives it", async () => {
  const server = startServer();
  await withTempDir(async (cacheDir) => {
    const sandbox = new PyodideSandbox({
      poolSize: 0,
      denoPath: TEST_DENO_PATH,
      cacheDir,
      allowNet: [server.host],
      packageIndexUrls: [],
    });
    try {
      const never =
        `import urllib.request\nurllib.request.urlopen("${server.url}/never").read()`;
      const started = performance.now();
      const call = await sandbox.execute(never, { timeoutSeconds: 20 });
      assert.equal(call.error?.kind, "timeout", JSON.stringify(call.error));
      assert.ok(performance.now() - started < 60_000, "never a hang");

      const session = await sandbox.openSession();
      try {
        const first = await session.execute(
          `import urllib.request, json\nx = json.loads(urllib.request.urlopen("${server.url}/s").read())["path"]\nx`,
          { timeoutSeconds: 60 },
        );
        assert.equal(first.status, "success", JSON.stringify(first.error));
        assert.equal(first.result, "/s");
        const timedOut = await session.execute(never, { timeoutSeconds: 2 });
        assert.equal(timedOut.error?.kind, "timeout");
        assert.equal(session.alive, true, "a soft interrupt keeps the session");
        const after = await session.execute(
          `y = urllib.request.urlopen("${server.url}/after").status\n[x, y]`,
          { timeoutSeconds: 60 },
        );
        assert.equal(after.status, "success", JSON.stringify(after.error));
        assert.deepEqual(after.result, ["/s", 200]);
        // Whole report inside the session too.
        const other = startServer();
        try {
          const all = await session.execute(requests(server.url, other.host), {
            timeoutSeconds: 60,
          });
          assert.equal(all.status, "success", JSON.stringify(all.error));
          checkReport(all.result as unknown as Report, other.host);
        } finally {
          await other.close();
        }
      } finally {
        await session.close();
      }
    } finally {
      await sandbox.close();
    }
  });
  await server.close();
  await assertNoDenoChildren("after the urllib timeout test");
});

Deno.test("urllib.request.urlopen() without any allowNet names the host and the missing permission", async () => {
  const server = startServer();
  await withTempDir(async (cacheDir) => {
    const sandbox = new PyodideSandbox({
      poolSize: 0,
      denoPath: TEST_DENO_PATH,
      cacheDir,
      packageIndexUrls: [],
    });
    try {
      const result = await sandbox.execute(
        `import urllib.request\nurllib.request.urlopen("${server.url}/x")`,
        { timeoutSeconds: 60 },
      );
      assert.equal(result.error?.kind, "exception");
      assert.equal(result.error?.type, "NetworkPermissionError");
      assert.ok(result.error!.message.includes(server.host));
      assert.ok(result.error!.message.includes("Requires net access"));
      assert.equal(server.hits(), 0);
    } finally {
      await sandbox.close();
    }
  });
  await server.close();
});
