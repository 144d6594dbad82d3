/**
 * Attacks from REAL Python against the real runner, in a separate host
 * process (tests/_fixtures/evil_host.ts) so that an unhandled rejection or
 * exit shows as that host's death: malformed host-call requests (with an
 * unprotected control), hostile displays, and an idle session flooding
 * stdout between calls.
 *
 * @module
 */

import assert from "node:assert/strict";
import { type HostReport, runHost } from "./_evil.ts";

const MiB = 1024 * 1024;

const CALL = (payload: string) =>
  `import js, json\nr = js.__pyodideSandboxCall(${payload})\nprint(r)\n"went on"`;

/** Requests real Python sends through the runner's host-call global. */
const MALFORMED: [string, string, RegExp][] = [
  [
    "an install request with args None",
    CALL(`json.dumps({"name": "\\u0000install", "args": None})`),
    /Invalid (install|host call) request: /,
  ],
  [
    "a name that is an object with a bad toString",
    CALL(`json.dumps({"name": {"toString": 1}, "args": []})`),
    /Invalid host call request: /,
  ],
  [
    "args that are a string",
    CALL(`json.dumps({"name": "echo", "args": "x"})`),
    /Invalid host call request: /,
  ],
  [
    "an install request with numbers for lists",
    CALL(`json.dumps({"name": "\\u0000install", "args": [1, 2, 3]})`),
    /Invalid install request: /,
  ],
];

function assertHostFine(report: HostReport): void {
  assert.equal(report.code, 0, `the host died:\n${report.stderr}`);
  assert.ok(report.done, `the host did not finish:\n${report.output}`);
  assert.equal(report.results.at(-1)?.status, "success", "print(1) after");
  assert.deepEqual(report.children, [], "no child left");
}

for (const kind of ["real", "sync-real"] as const) {
  const name = kind === "real" ? "PyodideSandbox" : "SyncPyodideSandbox";
  Deno.test(`${name}: a malformed host-call request from Python gets an error reply and the host survives`, async () => {
    // Attacks (SECURITY.md): "hostcall.python_malformed"
    const report = await runHost({
      kind,
      functions: ["echo"],
      options: { timeoutSeconds: 20 },
      calls: MALFORMED.map(([, code]) => ({ code })),
    }, 150);
    assertHostFine(report);
    assert.equal(report.thrown.length, 0, report.thrown.join("\n"));
    for (const [i, [what, , pattern]] of MALFORMED.entries()) {
      const r = report.results[i];
      assert.equal(r.status, "success", `${what}: ${JSON.stringify(r)}`);
      assert.equal(r.result, "went on", what);
      const reply = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
      assert.equal(reply.ok, false, what);
      assert.match(reply.message, pattern, what);
    }
  });
}

Deno.test("Control: the unguarded host-call pattern, fed the same requests, kills its host", async () => {
  // Attacks (SECURITY.md): "hostcall.control_unguarded"
  for (
    const request of [
      { name: "\u0000install", args: null },
      { name: { toString: 1 }, args: [] },
    ]
  ) {
    const report = await runHost({ kind: "real", calls: [], naive: request });
    assert.notEqual(report.code, 0, `the control survived ${report.output}`);
    assert.equal(report.done, false);
    assert.match(report.stderr, /TypeError/);
  }
});

Deno.test("PyodideSandbox.execute() with redact drops a null display from Python instead of rejecting", async () => {
  // Attacks (SECURITY.md): "display.null_with_redact"
  const report = await runHost({
    kind: "real",
    options: { redact: ["secret"] },
    calls: [{
      code: 'import js\njs.__pyodideSandboxDisplay("null")\n' +
        'js.__pyodideSandboxDisplay("[1]")\n' +
        'js.__pyodideSandboxDisplay(\'{"text/plain": "a secret"}\')\n7',
    }],
  });
  assertHostFine(report);
  assert.deepEqual(report.thrown, []);
  const [r] = report.results;
  assert.equal(r.status, "success", JSON.stringify(r));
  assert.equal(r.result, 7);
  assert.deepEqual(r.displays, [{ "text/plain": "a [REDACTED]" }]);
  const notes = r.stderr.split("\n").filter((l) =>
    l.startsWith("Dropped a display: ")
  );
  assert.equal(notes.length, 2, r.stderr);
});

Deno.test("PyodideSandbox.execute() keeps host memory bounded against 16 displays of 20 MB from Python", async () => {
  // Attacks (SECURITY.md): "display.huge_from_python"
  const report = await runHost({
    kind: "real",
    options: { timeoutSeconds: 60 },
    calls: [{
      code:
        "import js, json\nbig = json.dumps({'text/plain': 'x' * 20_000_000})\n" +
        "for _ in range(16):\n    js.__pyodideSandboxDisplay(big)\n1",
    }],
  }, 180);
  assertHostFine(report);
  assert.deepEqual(report.thrown, []);
  const [r] = report.results;
  assert.ok(r.displays.length <= 1, `${r.displays.length} displays kept`);
  assert.ok(
    report.growth < 100 * MiB,
    `host peak RSS grew by ${Math.round(report.growth / MiB)} MB`,
  );
});

Deno.test("PyodideSession keeps at most maxOutputBytes of an idle background task's stdout and reports truncation", async () => {
  // Attacks (SECURITY.md): "idle.background_flood"
  const report = await runHost({
    kind: "real",
    session: true,
    options: { maxOutputBytes: 100_000, timeoutSeconds: 30 },
    calls: [
      {
        code: "import asyncio, sys\nasync def flood():\n" +
          "    line = 'y' * 1_000_000\n    while True:\n" +
          "        sys.stdout.write(line)\n        await asyncio.sleep(0)\n" +
          "task = asyncio.ensure_future(flood())\n1",
        pauseMs: 6000,
      },
      { code: "task.cancel()\n2" },
    ],
  }, 180);
  assertHostFine(report);
  const [, next] = report.results;
  assert.equal(next.status, "success", JSON.stringify(next));
  assert.equal(next.result, 2);
  assert.equal(next.stdoutTruncated, true);
  assert.ok(next.stdoutLength <= 100_000, `kept ${next.stdoutLength}`);
  assert.ok(
    report.growth < 100 * MiB,
    `host peak RSS grew by ${Math.round(report.growth / MiB)} MB while idle`,
  );
});
