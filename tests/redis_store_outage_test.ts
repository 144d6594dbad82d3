/**
 * The Redis session store when Redis is stopped, frozen or unreachable,
 * over TLS, and with a password that must never show, against a real
 * `redis-server` on a free loopback port.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  redisSessionStore,
  type RedisSessionStoreOptions,
} from "../redis_store.ts";
import {
  counterOf,
  createCounter as create,
  liveRedisServers,
  openStore,
  rejectsWithin,
  sealCounter,
  startRedis,
} from "./_redis.ts";
import { eventually } from "./_helpers.ts";

Deno.test("with Redis stopped, operations fail with SessionStoreUnavailableError within 5 s; restarted, they succeed again", async () => {
  await using redis = await startRedis({ appendonly: true });
  await using store = openStore(redis, { operationTimeoutMs: 2000 });
  await create(store, "s", 3);
  assert.equal(await store.ping(), true);
  assert.equal(store.stats().reachable, true);
  await redis.stop();
  const token = crypto.randomUUID();
  const saved = await sealCounter(4);
  const operations: [string, () => Promise<unknown>][] = [
    ["read", () => store.read("s")],
    ["acquireLease", () => store.acquireLease("s", token, 5000)],
    [
      "waitForLease",
      () => store.waitForLease("s", token, 5000, { timeoutMs: 3000 }),
    ],
    ["write", () =>
      store.write("s", saved.sessionBytes, {
        expectedVersion: 1,
        leaseToken: token,
        metadata: saved.sessionMetadata,
      })],
    ["list", () => store.list()],
    ["delete", () => store.delete("s")],
  ];
  const before = store.stats().errors;
  const messages: string[] = [];
  for (const [what, fn] of operations) {
    messages.push((await rejectsWithin(what, fn, 5000)).message);
  }
  assert.equal(store.stats().errors - before, operations.length);
  assert.equal(store.stats().reachable, false, messages.join("\n"));
  assert.equal(await store.ping(), false);
  await redis.restart();
  await eventually("the store reconnects", () => store.ping(), 30);
  // The appendonly file kept the record across the restart.
  const record = await store.read("s");
  assert.equal(record?.version, 1);
  assert.equal(
    await counterOf(record!.sessionBytes, record!.sessionMetadata),
    3,
  );
  assert.equal(await store.acquireLease("s", token, 5000), true);
  assert.equal(
    await store.write("s", saved.sessionBytes, {
      expectedVersion: 1,
      leaseToken: token,
      metadata: saved.sessionMetadata,
    }),
    2,
  );
});

Deno.test("a Redis that stops answering (SIGSTOP) fails operations within the bound instead of hanging", async () => {
  await using redis = await startRedis();
  await using store = openStore(redis, { operationTimeoutMs: 1000 });
  await create(store, "s", 1);
  redis.pause();
  try {
    const error = await rejectsWithin("read", () => store.read("s"), 5000);
    assert.match(error.message, /timed out after 1000 ms/);
    await rejectsWithin(
      "lease",
      () => store.acquireLease("s", "t", 1000),
      5000,
    );
    assert.equal(await store.ping(), false);
  } finally {
    redis.resume();
  }
  await eventually("Redis answers again", () => store.ping(), 30);
  assert.equal((await store.read("s"))?.version, 1);
});

Deno.test("a Redis that was never reachable fails within the bound, and a closed store fails at once", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  const store = redisSessionStore(`redis://127.0.0.1:${port}`, {
    operationTimeoutMs: 1000,
  });
  const error = await rejectsWithin("read", () => store.read("s"), 5000);
  assert.match(
    error.message,
    /cannot reach redis:\/\/127\.0\.0\.1:\d+ within 1000 ms/,
  );
  await store.close();
  await rejectsWithin("after close", () => store.read("s"), 500);
});

Deno.test("the Redis password never appears in errors, their causes, the store's URL or stats", async () => {
  const password = "pw-Very-Secret-7f3a9c";
  await using redis = await startRedis({ password });
  const wrong = "pw-Wrong-Secret-1b2c3d";
  const noLeak = (what: string, value: unknown) => {
    const text = [
      String(value),
      Deno.inspect(value, { depth: 10, showHidden: true }),
      JSON.stringify(value, Object.getOwnPropertyNames(value ?? {})),
    ].join("\n");
    for (const secret of [password, wrong]) {
      assert.ok(!text.includes(secret), `${what} shows a password: ${text}`);
    }
  };
  const bad = redisSessionStore(
    redis.url.replace(encodeURIComponent(password), wrong),
    {
      operationTimeoutMs: 1500,
    },
  );
  try {
    noLeak("url", bad.url);
    assert.match(bad.url, /^redis:\/\/:\*\*\*@127\.0\.0\.1:\d+$/);
    const error = await rejectsWithin(
      "wrong password",
      () => bad.read("s"),
      5000,
    );
    noLeak("wrong password error", error);
    noLeak("stats", bad.stats());
  } finally {
    await bad.close();
  }
  await using good = openStore(redis, { operationTimeoutMs: 1500 });
  await create(good, "s");
  await redis.stop();
  const down = await rejectsWithin("stopped", () => good.read("s"), 5000);
  noLeak("outage error", down);
  for (
    const url of [
      `redis://:${password}@127.0.0.1:notaport`,
      `http://:${password}@127.0.0.1`,
      `redis://:${password}@127.0.0.1/db?x=1`,
      `redis://:${password}@`,
    ]
  ) {
    const invalid = (() => {
      try {
        redisSessionStore(url);
      } catch (e) {
        return e;
      }
    })();
    assert.ok(invalid instanceof TypeError, `${url}: ${invalid}`);
    assert.match(invalid.message, /^Invalid session store URL: /);
    noLeak("invalid URL error", invalid);
  }
});

Deno.test("rediss:// connects over TLS with the given CA; without it, or over plain TCP, it fails within the bound", async () => {
  const password = "pw-Tls-Secret-9d8e7f";
  await using redis = await startRedis({ tls: true, password });
  assert.match(redis.url, /^rediss:\/\//);
  await using store = openStore(redis, { tls: { ca: redis.caCert } });
  await create(store, "s", 2);
  const record = await store.read("s");
  assert.equal(
    await counterOf(record!.sessionBytes, record!.sessionMetadata),
    2,
  );
  const failures = [
    redisSessionStore(redis.url, { operationTimeoutMs: 1500 }),
    redisSessionStore(redis.url.replace("rediss:", "redis:"), {
      operationTimeoutMs: 1500,
    }),
  ];
  for (const [i, bad] of failures.entries()) {
    try {
      const error = await rejectsWithin(
        `store ${i}`,
        () => bad.read("s"),
        5000,
      );
      assert.ok(!Deno.inspect(error, { depth: 10 }).includes(password));
    } finally {
      await bad.close();
    }
  }
});

Deno.test("redisSessionStore() rejects invalid options and arguments with TypeError", async () => {
  for (
    const options of [
      { prefix: "a*b" },
      { idleSeconds: 0 },
      { operationTimeoutMs: 1.5 },
      { maxSessions: -1 },
      { sessionSecret: "short" },
      { verify: "yes" },
    ]
  ) {
    assert.throws(
      () =>
        redisSessionStore(
          "redis://127.0.0.1",
          options as RedisSessionStoreOptions,
        ),
      TypeError,
      JSON.stringify(options),
    );
  }
  assert.throws(() => redisSessionStore(42 as unknown as string), TypeError);
  await using store = redisSessionStore("rediss://user:pw@[::1]:6380/2");
  assert.equal(store.url, "rediss://user:***@[::1]:6380/2");
  await assert.rejects(store.acquireLease("bad id!", "t", 1000), TypeError);
  await assert.rejects(store.acquireLease("id", "t", 0), TypeError);
  await assert.rejects(store.acquireLease("id", "bad token!", 1000), TypeError);
  assert.equal(store.stats().operations, 0, "nothing was sent");
});

Deno.test("no redis-server is left running after the tests", () => {
  assert.deepEqual(liveRedisServers(), []);
});
