/**
 * `createHandler()`'s options beyond the API itself: CORS (off, listed origins,
 * `"*"`), the playground page, and `close()` with `graceSeconds: 0`.
 */

import assert from "node:assert/strict";
import { eventually } from "./_helpers.ts";
import { createHandler } from "../handler.ts";
import {
  call,
  jsonOf,
  preflight,
  TOKEN,
  withIdleHandler,
  withTempHandler,
} from "./_http_helpers.ts";

const APP = "https://app.example.com";
const EVIL = "https://evil.example.net";

Deno.test("CORS is off by default: no CORS headers, and a preflight gets 405", async () => {
  await withIdleHandler({ token: TOKEN }, async (base) => {
    const pre = await preflight(`${base}/v1/execute`, APP);
    await jsonOf(pre, 405);
    assert.equal(pre.headers.get("access-control-allow-origin"), null);
    const listed = await call(base, "GET", "/v1/sessions", undefined, {
      origin: APP,
    });
    await jsonOf(listed, 200);
    for (const [name] of listed.headers) {
      assert.ok(!name.startsWith("access-control-"), name);
    }
  });
});

Deno.test("CORS with a listed origin answers its preflight with the path's methods and headers, and only that origin", async () => {
  await withIdleHandler({ token: TOKEN, corsOrigins: [APP] }, async (base) => {
    // A preflight carries no token: it is answered before auth.
    const pre = await preflight(`${base}/v1/sessions`, APP);
    assert.equal(pre.status, 204);
    await pre.body?.cancel();
    const h = pre.headers;
    assert.equal(h.get("access-control-allow-origin"), APP);
    assert.equal(h.get("access-control-allow-credentials"), "true");
    assert.deepEqual(
      h.get("access-control-allow-methods")!.split(", ").sort(),
      ["GET", "POST"],
    );
    assert.deepEqual(
      h.get("access-control-allow-headers")!.split(", ").sort(),
      ["authorization", "content-type"],
    );
    assert.match(h.get("vary")!, /origin/);
    assert.equal(
      (await preflight(`${base}/v1/sessions/abc`, APP, "DELETE")).headers
        .get("access-control-allow-methods"),
      "DELETE",
    );

    const denied = await preflight(`${base}/v1/sessions`, EVIL);
    assert.match(String((await jsonOf(denied, 403)).error), /evil\.example/);
    assert.equal(denied.headers.get("access-control-allow-origin"), null);
    assert.equal(denied.headers.get("access-control-allow-methods"), null);
    await jsonOf(await preflight(`${base}/nowhere`, APP), 404);

    // Actual requests: the listed origin can read answers, errors included.
    const ok = await call(base, "GET", "/v1/sessions", undefined, {
      origin: APP,
    });
    await jsonOf(ok, 200);
    assert.equal(ok.headers.get("access-control-allow-origin"), APP);
    assert.match(
      ok.headers.get("access-control-expose-headers")!,
      /retry-after/,
    );
    const anonymous = await fetch(`${base}/v1/sessions`, {
      headers: { origin: APP },
    });
    await jsonOf(anonymous, 401);
    assert.equal(anonymous.headers.get("access-control-allow-origin"), APP);
    // Another origin's request is served (the token decides) but gets no
    // CORS headers, so a browser keeps the answer from that page.
    const other = await call(base, "GET", "/v1/sessions", undefined, {
      origin: EVIL,
    });
    await jsonOf(other, 200);
    assert.equal(other.headers.get("access-control-allow-origin"), null);
    assert.equal(other.headers.get("access-control-allow-credentials"), null);
    assert.match(other.headers.get("vary")!, /origin/i);
  });
});

Deno.test('CORS with "*" lets any origin in without credentials, and needs a token', async () => {
  assert.throws(
    () => createHandler({ corsOrigins: ["*"] }),
    (e: unknown) =>
      e instanceof RangeError && /"\*" needs a token/.test(e.message),
  );
  for (
    const bad of ["https://app.example.com/path", "null", "ftp://x.example"]
  ) {
    assert.throws(
      () => createHandler({ token: TOKEN, corsOrigins: [bad] }),
      (e: unknown) => e instanceof TypeError && e.message.includes(bad),
      bad,
    );
  }
  assert.throws(
    () => createHandler({ corsOrigins: "*" as unknown as string[] }),
    TypeError,
  );
  await withIdleHandler({ token: TOKEN, corsOrigins: ["*"] }, async (base) => {
    for (const origin of [APP, EVIL]) {
      const pre = await preflight(`${base}/v1/execute`, origin);
      assert.equal(pre.status, 204);
      await pre.body?.cancel();
      assert.equal(pre.headers.get("access-control-allow-origin"), "*");
      assert.equal(pre.headers.get("access-control-allow-credentials"), null);
      assert.equal(pre.headers.get("access-control-allow-methods"), "POST");
      const listed = await call(base, "GET", "/v1/sessions", undefined, {
        origin,
      });
      await jsonOf(listed, 200);
      assert.equal(listed.headers.get("access-control-allow-origin"), "*");
      assert.equal(
        listed.headers.get("access-control-allow-credentials"),
        null,
      );
    }
  });
});

Deno.test("the playground page is off by default and served at / with playground: true, without a token, under the base path", async () => {
  await withIdleHandler({ token: TOKEN }, async (base) => {
    await jsonOf(await fetch(`${base}/`), 404);
  });
  await withIdleHandler(
    { token: TOKEN, playground: true, basePath: "/box" },
    async (base) => {
      for (const path of ["/box", "/box/"]) {
        const page = await fetch(base + path);
        assert.equal(page.status, 200);
        assert.match(page.headers.get("content-type")!, /^text\/html/);
        assert.match(
          page.headers.get("content-security-policy")!,
          /default-src 'none'/,
        );
        assert.match(await page.text(), /<html|<!doctype html/i);
      }
      const head = await fetch(`${base}/box/`, { method: "HEAD" });
      assert.equal(head.status, 200);
      await head.body?.cancel();
      const post = await fetch(`${base}/box/`, { method: "POST" });
      await jsonOf(post, 405);
      assert.equal(post.headers.get("allow"), "GET, HEAD");
      // The API itself still needs the token.
      await jsonOf(await fetch(`${base}/box/v1/sessions`), 401);
      await jsonOf(await fetch(`${base}/`), 404);
    },
  );
  assert.throws(
    () => createHandler({ playground: "yes" as unknown as boolean }),
    TypeError,
  );
});

Deno.test({
  name:
    "close() called again with graceSeconds: 0 stops waiting for a running call and ends its child",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  await withTempHandler({ maxTimeoutSeconds: 600 }, async (handler) => {
    const running = handler(
      new Request("http://127.0.0.1/v1/execute", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ code: "import time\ntime.sleep(600)" }),
      }),
    );
    try {
      await eventually("the call to run", async () => {
        const health = await (await handler(
          new Request("http://127.0.0.1/healthz"),
        )).json();
        return health.running === 1;
      }, 120);
      // The first close would wait up to 605 s for the call.
      const first = handler.close();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const stuck = new Promise<string>((resolve) => {
        timer = setTimeout(() => resolve("stuck"), 120_000);
      });
      try {
        const second = handler.close({ graceSeconds: 0 }).then(() => "closed");
        assert.equal(await Promise.race([second, stuck]), "closed");
        assert.equal(
          await Promise.race([first.then(() => "closed"), stuck]),
          "closed",
        );
      } finally {
        clearTimeout(timer);
      }
      const response = await running;
      const body = await response.json();
      assert.notEqual(body.status, "success", JSON.stringify(body));
      await jsonOf(await handler(new Request("http://127.0.0.1/healthz")), 503);
    } finally {
      await handler.close({ graceSeconds: 0 });
      await running.catch(() => {});
    }
  });
});
