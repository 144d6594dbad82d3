/**
 * The Redis session store against a real `redis-server` (started by the
 * test on a free loopback port): leases, fencing, concurrency, expiry,
 * listing, blobs and tamper detection (outages, TLS and password hygiene:
 * redis_store_outage_test.ts).
 *
 * @module
 */

import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { Redis } from "ioredis";
import { type RedisSessionStore, SessionFenceError } from "../redis_store.ts";
import { sealSession, SessionError, unsealSession } from "../_session_bytes.ts";
import {
  counterOf,
  createCounter as create,
  liveRedisServers,
  openStore,
  sealCounter,
  startRedis,
  STORE_TEST_SECRET as SECRET,
} from "./_redis.ts";
import { eventually } from "./_helpers.ts";
import { holdLease } from "../_redis_lease.ts";

Deno.test("acquireLease() is exclusive between two store instances", async () => {
  await using redis = await startRedis();
  assert.equal(liveRedisServers().length, 1, "the leak check sees it");
  await using a = openStore(redis);
  await using b = openStore(redis);
  const ta = crypto.randomUUID();
  const tb = crypto.randomUUID();
  assert.equal(await a.acquireLease("s1", ta, 10_000), true);
  assert.equal(await b.acquireLease("s1", tb, 10_000), false);
  assert.equal(await b.renewLease("s1", tb, 10_000), false);
  assert.equal(await b.releaseLease("s1", tb), false, "not b's to release");
  assert.equal(await a.renewLease("s1", ta, 10_000), true);
  assert.equal(await b.acquireLease("s1", tb, 10_000), false);
  assert.equal(await a.releaseLease("s1", ta), true);
  assert.equal(await b.acquireLease("s1", tb, 10_000), true);
  assert.equal(await a.acquireLease("s1", ta, 10_000), false);
  // Another session's lease is independent.
  assert.equal(await a.acquireLease("s2", ta, 10_000), true);
});

Deno.test("an expired lease lets another owner take over, and waitForLease() waits for it", async () => {
  await using redis = await startRedis();
  await using a = openStore(redis);
  await using b = openStore(redis);
  const ta = crypto.randomUUID();
  const tb = crypto.randomUUID();
  assert.equal(await a.acquireLease("s", ta, 300), true);
  assert.equal(
    await b.waitForLease("s", tb, 10_000, { timeoutMs: 20_000 }),
    true,
  );
  assert.equal(await a.renewLease("s", ta, 10_000), false, "a's lease is gone");
  assert.equal(await a.releaseLease("s", ta), false, "a cannot release b's");
  assert.equal(b.stats().leaseWaits, 1);
  // A deadline in the past gives up at once without taking it.
  const tc = crypto.randomUUID();
  assert.equal(
    await a.waitForLease("s", tc, 1000, { deadline: Date.now() + 100 }),
    false,
  );
  assert.equal(a.stats().leaseWaitTimeouts, 1);
  // An abort signal stops the wait.
  const stop = new AbortController();
  const waiting = a.waitForLease("s", tc, 1000, {
    timeoutMs: 30_000,
    signal: stop.signal,
  });
  setTimeout(() => stop.abort(), 50);
  await assert.rejects(waiting, { name: "AbortError" });
});

Deno.test("holdLease() renews a lease past its TTL until released, and reports a lost lease", async () => {
  await using redis = await startRedis();
  await using a = openStore(redis);
  await using b = openStore(redis);
  const held = await holdLease(a, "s", 300, { timeoutMs: 5000 });
  assert.ok(held);
  await new Promise((r) => setTimeout(r, 1000));
  assert.equal(held.lost, false);
  assert.equal(await b.acquireLease("s", crypto.randomUUID(), 1000), false);
  assert.equal(await held.release(), true);
  const other = await holdLease(b, "s", 300, { timeoutMs: 5000 });
  assert.ok(other);
  assert.equal(await holdLease(a, "s", 300, { timeoutMs: 200 }), null);
  // Deleting the session removes its lease: the holder finds out.
  await a.delete("s");
  await eventually("the lease is reported lost", () => other.lost, 10);
  assert.match(String(other.signal.reason), /Lease lost on "s"/);
  assert.equal(await other.release(), false);
});

Deno.test("write() is refused once the writer's lease expired and another replica took it", async () => {
  await using redis = await startRedis();
  await using a = openStore(redis);
  await using b = openStore(redis);
  const ta = crypto.randomUUID();
  assert.equal(await a.acquireLease("s", ta, 300), true);
  const first = await sealCounter(1);
  assert.equal(
    await a.write("s", first.sessionBytes, {
      expectedVersion: 0,
      leaseToken: ta,
      metadata: first.sessionMetadata,
    }),
    1,
  );
  const tb = crypto.randomUUID();
  assert.equal(
    await b.waitForLease("s", tb, 10_000, { timeoutMs: 20_000 }),
    true,
  );
  const stale = await sealCounter(99, first.sessionMetadata);
  const error = await a.write("s", stale.sessionBytes, {
    expectedVersion: 1,
    leaseToken: ta,
    metadata: stale.sessionMetadata,
  }).catch((e) => e);
  assert.ok(error instanceof SessionFenceError, String(error));
  assert.equal(error.reason, "lease");
  const record = await b.read("s");
  assert.equal(record?.version, 1);
  assert.equal(
    await counterOf(record!.sessionBytes, record!.sessionMetadata),
    1,
  );
  assert.equal(a.stats().fenceRefusals, 1);
  // Even with no holder at all, an expired lease cannot write.
  assert.equal(await b.releaseLease("s", tb), true);
  await assert.rejects(
    a.write("s", stale.sessionBytes, {
      expectedVersion: 1,
      leaseToken: ta,
      metadata: stale.sessionMetadata,
    }),
    (e: unknown) => e instanceof SessionFenceError && e.reason === "lease",
  );
});

Deno.test("write() is refused when a newer version was written", async () => {
  await using redis = await startRedis();
  await using a = openStore(redis);
  const metadata = await create(a, "s", 1);
  const token = crypto.randomUUID();
  assert.equal(await a.acquireLease("s", token, 10_000), true);
  const second = await sealCounter(2, metadata);
  const write = (expectedVersion: number) =>
    a.write("s", second.sessionBytes, {
      expectedVersion,
      leaseToken: token,
      metadata: second.sessionMetadata,
    });
  assert.equal(await write(1), 2);
  assert.equal(await a.version("s"), 2);
  assert.equal(await a.version("missing"), null);
  for (const stale of [0, 1, 5]) {
    const error = await write(stale).catch((e) => e);
    assert.ok(error instanceof SessionFenceError, String(error));
    assert.equal(error.reason, "version");
    assert.equal(error.currentVersion, 2);
  }
  assert.equal((await a.read("s"))?.version, 2);
});

Deno.test("20 concurrent increments through two store instances lose nothing and never apply twice", async () => {
  await using redis = await startRedis();
  await using a = openStore(redis);
  await using b = openStore(redis);
  await create(a, "counter", 0);
  const written: number[] = [];
  async function worker(store: RedisSessionStore, steps: number) {
    for (let i = 0; i < steps; i++) {
      const token = crypto.randomUUID();
      assert.equal(
        await store.waitForLease("counter", token, 10_000, {
          timeoutMs: 60_000,
        }),
        true,
      );
      try {
        const record = await store.read("counter");
        assert.ok(record);
        const n = await counterOf(record.sessionBytes, record.sessionMetadata);
        const next = await sealCounter(n + 1, record.sessionMetadata);
        const version = await store.write("counter", next.sessionBytes, {
          expectedVersion: record.version,
          leaseToken: token,
          metadata: next.sessionMetadata,
        });
        assert.equal(version, record.version + 1);
        written.push(n + 1);
      } finally {
        await store.releaseLease("counter", token);
      }
    }
  }
  await Promise.all([worker(a, 10), worker(b, 10)]);
  const record = await a.read("counter");
  assert.equal(record?.version, 21);
  assert.equal(
    await counterOf(record!.sessionBytes, record!.sessionMetadata),
    20,
  );
  assert.deepEqual([...written].sort((x, y) => x - y), [
    ...Array.from({ length: 20 }, (_, i) => i + 1),
  ]);
  assert.ok(a.stats().operations > 0 && b.stats().operations > 0);
  assert.equal(a.stats().errors + b.stats().errors, 0);
});

Deno.test("idle records expire after idleSeconds, and touch() restarts the clock", async () => {
  await using redis = await startRedis();
  await using store = openStore(redis, { idleSeconds: 1 });
  await create(store, "idle");
  await create(store, "kept");
  assert.equal(await store.count(), 2);
  for (let i = 0; i < 3; i++) {
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(await store.touch("kept"), true);
  }
  assert.equal(await store.read("idle"), null);
  assert.ok(await store.read("kept"));
  assert.deepEqual((await store.list()).map((s) => s.id), ["kept"]);
  assert.equal(await store.count(), 1);
  assert.equal(await store.touch("idle"), false);
});

Deno.test("delete() removes a session group-wide and list() shows every replica's sessions", async () => {
  await using redis = await startRedis();
  await using a = openStore(redis);
  await using b = openStore(redis);
  await using other = openStore(redis, { prefix: "othergroup:" });
  for (const id of ["one", "two", "three"]) await create(a, id);
  await create(other, "elsewhere");
  const token = crypto.randomUUID();
  assert.equal(await a.acquireLease("two", token, 10_000), true);
  const listed = await b.list();
  assert.deepEqual(listed.map((s) => s.id).sort(), ["one", "three", "two"]);
  for (const s of listed) {
    assert.equal(s.version, 1);
    assert.ok(s.sizeBytes > 0);
    assert.equal(s.leased, s.id === "two");
    assert.ok(s.expiresInMs > 0 && s.expiresInMs <= 600_000);
    assert.ok(!Number.isNaN(Date.parse(s.createdAt)));
  }
  assert.equal(await b.delete("two"), true);
  assert.equal(await b.delete("two"), false);
  assert.equal(await a.read("two"), null);
  // The holder of a deleted session can neither write nor bring it back.
  const saved = await sealCounter(5);
  for (const expectedVersion of [1, 0]) {
    await assert.rejects(
      a.write("two", saved.sessionBytes, {
        expectedVersion,
        leaseToken: token,
        metadata: saved.sessionMetadata,
      }),
      SessionFenceError,
    );
  }
  assert.deepEqual((await b.list()).map((s) => s.id).sort(), ["one", "three"]);
  assert.equal((await b.list(1)).length, 1);
  assert.deepEqual((await other.list()).map((s) => s.id), ["elsewhere"]);
});

Deno.test("maxSessions limits the sessions of the whole store", async () => {
  await using redis = await startRedis();
  await using a = openStore(redis, { maxSessions: 2 });
  await using b = openStore(redis, { maxSessions: 2 });
  await create(a, "one");
  await create(b, "two");
  const token = crypto.randomUUID();
  assert.equal(await a.acquireLease("three", token, 5000), true);
  const saved = await sealCounter(0);
  await assert.rejects(
    a.write("three", saved.sessionBytes, {
      expectedVersion: 0,
      leaseToken: token,
      metadata: saved.sessionMetadata,
    }),
    { name: "SessionStoreFullError" },
  );
  await b.delete("one");
  assert.equal(
    await a.write("three", saved.sessionBytes, {
      expectedVersion: 0,
      leaseToken: token,
      metadata: saved.sessionMetadata,
    }),
    1,
  );
  await using small = openStore(redis, { maxSessionBytes: 10 });
  await assert.rejects(
    small.write("x", saved.sessionBytes, {
      expectedVersion: 0,
      leaseToken: token,
      metadata: saved.sessionMetadata,
    }),
    RangeError,
  );
});

Deno.test("putBlob() writes a blob once and getBlob() reads it back checked against its hash", async () => {
  await using redis = await startRedis();
  await using a = openStore(redis);
  await using b = openStore(redis);
  const bytes = new Uint8Array(100_000);
  for (let i = 0; i < bytes.length; i += 65536) {
    crypto.getRandomValues(bytes.subarray(i, i + 65536));
  }
  const sha = Array.from(
    new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)),
    (x) => x.toString(16).padStart(2, "0"),
  ).join("");
  assert.equal(await b.getBlob(sha), null);
  assert.equal(await a.putBlob(sha, bytes), true);
  assert.equal(await b.putBlob(sha, bytes), false, "written once");
  assert.deepEqual(await b.getBlob(sha), bytes);
  await assert.rejects(
    a.putBlob(sha, bytes.subarray(1)),
    TypeError,
    "bytes must match the hash",
  );
  await assert.rejects(a.getBlob("not-a-hash"), TypeError);
  // Bytes changed inside Redis are caught on read.
  const raw = new Redis(redis.url, { lazyConnect: true });
  try {
    await raw.setrange(`pysb:b:${sha}`, 10, "X");
  } finally {
    raw.disconnect();
  }
  await assert.rejects(b.getBlob(sha), SessionError);
});

Deno.test("session bytes or metadata tampered with inside Redis give a SessionError when read", async () => {
  await using redis = await startRedis();
  await using store = openStore(redis);
  await create(store, "s", 7);
  const raw = new Redis(redis.url, { lazyConnect: true });
  try {
    const key = "pysb:s:s";
    const original = await raw.hgetBuffer(key, "bytes");
    assert.ok(original);
    const flipped = Uint8Array.from(original);
    flipped[flipped.length - 40] ^= 1;
    await raw.hset(key, "bytes", Buffer.from(flipped));
    await assert.rejects(store.read("s"), SessionError);
    // A store that does not verify hands the bytes on, and the module's
    // own check (used when a sandbox resumes them) still refuses them.
    await using unchecked = openStore(redis, { verify: false });
    const record = await unchecked.read("s");
    await assert.rejects(
      unsealSession(record!.sessionBytes, record!.sessionMetadata, SECRET),
      SessionError,
    );
    await raw.hset(key, "bytes", original);
    assert.equal(
      await counterOf(
        (await store.read("s"))!.sessionBytes,
        record!.sessionMetadata,
      ),
      7,
    );
    for (const meta of ["{not json", "[]", JSON.stringify({ createdAt: 1 })]) {
      await raw.hset(key, "meta", meta);
      await assert.rejects(store.read("s"), SessionError);
    }
    // Forged bytes signed with another key are refused too.
    const forged = await sealSession(
      new Uint8Array([1]),
      undefined,
      crypto.getRandomValues(new Uint8Array(32)),
    );
    await raw.hset(
      key,
      "bytes",
      Buffer.from(forged.sessionBytes),
      "meta",
      JSON.stringify(forged.sessionMetadata),
    );
    await assert.rejects(store.read("s"), SessionError);
    // Altered bookkeeping fields and junk keys under the prefix are
    // refused on read and left out of list(), never thrown on.
    await create(store, "t", 1);
    await raw.hset("pysb:s:t", "version", "NaN", "createdAt", "garbage");
    await assert.rejects(store.read("t"), SessionError);
    await raw.set("pysb:s:junk*key", "not a hash");
    await raw.hset("pysb:s:u", "version", "2", "createdAt", "x", "size", "y");
    const listed = await store.list();
    assert.deepEqual(listed.map((e) => e.id).sort(), ["s", "u"]);
    const u = listed.find((e) => e.id === "u")!;
    assert.equal(u.createdAt, new Date(0).toISOString());
    assert.equal(u.sizeBytes, 0);
  } finally {
    raw.disconnect();
  }
});

Deno.test("no redis-server is left running after the tests", () => {
  assert.deepEqual(liveRedisServers(), []);
});
