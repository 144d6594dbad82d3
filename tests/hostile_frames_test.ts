/**
 * The host against a FULLY COMPROMISED child (tests/_fixtures/evil_child.ts,
 * which knows the nonce and sends whatever it likes): every frame is
 * validated and capped on the host, a violation kills only that child, and
 * the host and the same sandbox are fine afterwards. The risky attacks run
 * in a separate host process (tests/_fixtures/evil_host.ts), where an
 * unhandled rejection would kill that process and show in its exit code.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { CodeExecutionResult, SandboxOptions } from "../mod.ts";
import { frame, type Op, RESULT, runHost, script, withEvil } from "./_evil.ts";
import { assertSuccess } from "./_helpers.ts";

const VIOLATION = "The sandbox process crashed: protocol violation: ";
const MiB = 1024 * 1024;

function assertViolation(r: CodeExecutionResult, what: string): void {
  assert.equal(r.status, "error", `${what}: ${JSON.stringify(r.error)}`);
  assert.equal(r.error?.kind, "crash", `${what}: ${JSON.stringify(r.error)}`);
  assert.ok(
    r.error?.message.startsWith(VIOLATION),
    `${what}: expected a protocol violation, got ${r.error?.message}`,
  );
}

/** A frame declaring lengths it never sends; the child then waits. */
function declared(type: number, jsonLength: number, binLength: number): Op[] {
  return [
    { op: "frame", type, jsonText: "", jsonLength, binLength, trailer: false },
    { op: "hang" },
  ];
}

const VIOLATIONS: [string, Op[]][] = [
  ["a stdout frame over 64 KiB", [frame(2, null, { fill: 64 * 1024 + 1 })]],
  ["a stderr frame over 64 KiB", [frame(3, null, { fill: 64 * 1024 + 1 })]],
  ["a stdout frame with a 100-byte header", [frame(2, "x".repeat(98))]],
  ["a display header over maxDisplayBytes + 1024", declared(7, 4096, 0)],
  ["a call header over 64 MiB", declared(6, 64 * MiB + 1, 0)],
  ["a files frame over maxTotalFileBytes + 16 MiB", declared(10, 0, 17 * MiB)],
  ["a result header over 128 MiB", declared(4, 128 * MiB + 1, 0)],
  ["a result attachment over the RSS limit", declared(4, 2, 0xffffffff)],
  ["a saved-state attachment over the RSS limit", declared(5, 2, 0xffffffff)],
  ["an unknown frame type", [frame(77), RESULT]],
  ["unparseable JSON", [{ op: "frame", type: 2, jsonText: "{nope" }, RESULT]],
  ["a result whose out is not a string", [{
    op: "result",
    header: { out: 5 },
  }]],
  ["a result whose out is not JSON", [{
    op: "result",
    header: { out: "not json" },
  }]],
  ["a result whose ok is not a boolean", [{
    op: "result",
    out: { ok: "yes", result: 1 },
  }]],
  ["a result whose error has a numeric traceback", [{
    op: "result",
    out: { ok: false, error: { type: "E", message: "m", traceback: 1 } },
  }]],
  ["a result whose packages are not strings", [{
    op: "result",
    header: { packages: [1] },
  }]],
  [
    "17 host calls outstanding",
    [
      ...Array.from({ length: 17 }, () => frame(6, { name: "slow", args: [] })),
      { op: "hang" },
    ],
  ],
];

Deno.test("PyodideSandbox.execute() ends each protocol violation of a compromised child with a crash error", async (t) => {
  // Attacks (SECURITY.md): "frames.protocol_violations", "frames.call_flood"
  await withEvil({
    maxDisplayBytes: 1024,
    maxTotalFileBytes: 1024,
    memoryLimitMb: 256,
    timeoutSeconds: 8,
    functions: { slow: () => new Promise(() => {}) },
  } as SandboxOptions, async (sandbox) => {
    for (const [what, ops] of VIOLATIONS) {
      await t.step(what, async () => {
        const started = performance.now();
        const r = await sandbox.execute(script(...ops));
        assertViolation(r, what);
        // Refused on the header: no waiting for the timeout.
        assert.ok(
          performance.now() - started < 5000,
          `${what}: took ${performance.now() - started} ms`,
        );
      });
    }
  });
});

Deno.test("PyodideSandbox.execute() refuses a 100 MB stdout frame after its header without buffering it", async () => {
  // Attacks (SECURITY.md): "frames.huge_stdout_header"
  const report = await runHost({
    kind: "evil",
    calls: [{ code: "scenario:huge_stdout_frame" }],
  });
  assert.equal(report.code, 0, `host exited: ${report.stderr}`);
  assert.ok(report.done, `host did not finish:\n${report.output}`);
  const [attack, after] = report.results;
  assert.equal(attack.error?.kind, "crash", JSON.stringify(attack.error));
  assert.ok(attack.error?.message.startsWith(VIOLATION), attack.error?.message);
  assert.equal(after.status, "success");
  assert.ok(
    report.growth < 50 * MiB,
    `host peak RSS grew by ${report.growth / MiB} MB`,
  );
  assert.deepEqual(report.children, []);
});

Deno.test("PyodideSandbox.execute() enforces maxOutputBytes on the host whatever the child sends", async () => {
  // Attacks (SECURITY.md): "frames.stream_caps"
  await withEvil({ maxOutputBytes: 1000 }, async (sandbox) => {
    const flood: Op[] = [];
    for (let i = 0; i < 40; i++) {
      flood.push(frame(2, null, { fill: 60_000, byte: 0x61 }));
      flood.push(frame(3, null, { fill: 60_000, byte: 0x62 }));
    }
    const r = await sandbox.execute(script(...flood, RESULT));
    assertSuccess(r);
    assert.equal(r.stdout, "a".repeat(1000));
    assert.ok(r.stderr.startsWith("b".repeat(1000)), r.stderr.slice(0, 100));
    assert.ok(r.stderr.length < 1200, `stderr kept ${r.stderr.length}`);
    assert.equal(r.stdoutTruncated, true);
    assert.equal(r.stderrTruncated, true);
  });
});

Deno.test("PyodideSandbox.execute() ignores frames a compromised child sends after its result", async () => {
  // Attacks (SECURITY.md): "frames.after_result"
  await withEvil({}, async (sandbox) => {
    const r = await sandbox.execute("scenario:after_result");
    assertSuccess(r);
    assert.equal(r.result, 1);
    assert.equal(r.stdout, "");
  });
});

Deno.test("PyodideSession.execute() does not take a stale result frame sent between calls as its result", async () => {
  // Attacks (SECURITY.md): "frames.stale_result"
  await withEvil({}, async (sandbox) => {
    const session = await sandbox.openSession();
    try {
      const first = await session.execute("scenario:after_result");
      assert.equal(first.result, 1);
      await new Promise((r) => setTimeout(r, 300));
      const second = await session.execute(
        script({ op: "result", out: { ok: true, result: 3 } }),
      );
      assertSuccess(second);
      assert.equal(second.result, 3, "the stale result 2 was taken");
    } finally {
      await session.close();
    }
  });
});

Deno.test("PyodideSandbox.execute() cuts a fatal frame's message to 4 KiB", async () => {
  // Attacks (SECURITY.md): "frames.fatal_flood"
  await withEvil({}, async (sandbox) => {
    const r = await sandbox.execute(script(
      frame(9, { message: "A".repeat(50_000) }),
      { op: "exit", code: 70 },
    ));
    assert.equal(r.status, "error");
    assert.equal(r.error?.kind, "crash");
    const run = /A+/.exec(r.stderr)?.[0] ?? "";
    assert.ok(run.length >= 1000, "the fatal message is reported");
    assert.ok(run.length <= 4096, `kept ${run.length} characters of it`);
    assert.ok(r.stderr.length < 8192, `stderr is ${r.stderr.length} long`);
  });
});

Deno.test("PyodideSandbox.execute() answers a malformed host call from a compromised child with an error reply", async () => {
  // Attacks (SECURITY.md): "hostcall.compromised_malformed"
  const bad = [
    { name: { toString: 1 }, args: [] },
    { name: "", args: [] },
    { name: "x".repeat(257), args: [] },
    { name: "echo", args: "x" },
    { name: "echo", args: null },
    { name: "echo" },
    null,
    [1, 2],
    "echo",
  ];
  const ops: Op[] = bad.flatMap((json) => [frame(6, json), { op: "reply" }]);
  const install = [null, "x", [1, 2, 3], [[], []], [["a"], [2], []]];
  ops.push(...install.flatMap((args): Op[] => [
    frame(6, { name: "\u0000install", args }),
    { op: "reply" },
  ]));
  ops.push(frame(6, { name: "echo", args: [7] }), { op: "reply" }, RESULT);
  const report = await runHost({
    kind: "evil",
    functions: ["echo"],
    calls: [{ code: script(...ops) }],
  });
  assert.equal(report.code, 0, `host exited: ${report.stderr}`);
  assert.ok(report.done, `host did not finish:\n${report.output}`);
  const [attack] = report.results;
  assert.equal(attack.status, "success", JSON.stringify(attack));
  const replies = attack.stdout.trim().split("\n").map((l) => JSON.parse(l));
  assert.equal(replies.length, bad.length + install.length + 1);
  for (const [i, reply] of replies.slice(0, bad.length).entries()) {
    assert.equal(reply.ok, false, JSON.stringify(bad[i]));
    assert.match(reply.message, /^Invalid host call request: /);
  }
  for (const reply of replies.slice(bad.length, -1)) {
    assert.equal(reply.ok, false);
    assert.match(reply.message, /^Invalid install request: /);
  }
  assert.deepEqual(replies.at(-1), { ok: true, value: [7] });
  assert.deepEqual(report.children, []);
});

Deno.test("PyodideSandbox.execute() never returns an error status without an error for a compromised child's result", async () => {
  // Attacks (SECURITY.md): "frames.error_without_error"
  await withEvil({}, async (sandbox) => {
    for (
      const out of [
        { ok: false },
        { ok: false, result: 5 },
        { ok: false, error: null },
      ]
    ) {
      const r = await sandbox.execute(script({ op: "result", out }));
      assert.equal(r.status, "error", JSON.stringify(out));
      assert.ok(r.error, `no error for ${JSON.stringify(out)}`);
      assert.equal(typeof r.error.message, "string");
    }
  });
});

Deno.test("SyncPyodideSandbox survives a compromised child's malformed host call and oversized frame", async () => {
  // Attacks (SECURITY.md): "hostcall.sync_survives"
  const report = await runHost({
    kind: "sync-evil",
    functions: ["echo"],
    calls: [
      {
        code: script(
          frame(6, { name: { toString: 1 }, args: [] }),
          { op: "reply" },
          frame(6, { name: "\u0000install", args: null }),
          { op: "reply" },
          RESULT,
        ),
      },
      { code: "scenario:huge_stdout_frame" },
    ],
  }, 120);
  assert.equal(report.code, 0, `host exited: ${report.stderr}`);
  assert.ok(report.done, `host did not finish:\n${report.output}`);
  const [calls, huge, after] = report.results;
  assert.equal(calls.status, "success", JSON.stringify(calls));
  const replies = calls.stdout.trim().split("\n").map((l) => JSON.parse(l));
  assert.equal(replies.length, 2);
  for (const reply of replies) {
    assert.equal(reply.ok, false);
    assert.match(reply.message, /^Invalid (host call|install) request: /);
  }
  assert.ok(huge.error?.message.startsWith(VIOLATION), huge.error?.message);
  assert.equal(after.status, "success");
  assert.ok(report.growth < 50 * MiB, `grew by ${report.growth / MiB} MB`);
  assert.deepEqual(report.children, []);
});
