/**
 * The audit trail (`onAudit`, `auditLog`, `auditCode`), with real children.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { type AuditRecord, PyodideSandbox } from "../mod.ts";
import { withSandbox } from "./_helpers.ts";

async function sha256(text: string): Promise<string> {
  const digest = await crypto.subtle.digest(
    "SHA-256",
    new TextEncoder().encode(text),
  );
  return Array.from(
    new Uint8Array(digest),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
}

Deno.test("PyodideSandbox onAudit receives one record per execution with the documented fields", async () => {
  const records: AuditRecord[] = [];
  await withSandbox({
    poolSize: 0,
    allowNet: ["127.0.0.1:9"],
    timeoutSeconds: 30,
    maxOutputBytes: 4096,
    onAudit: (r) => {
      records.push(r);
    },
  }, async (sandbox) => {
    const code =
      "import sys\nprint('héllo')\nsys.stderr.write('warn\\n')\n6 * 7";
    const before = Date.now();
    const result = await sandbox.execute(code);
    assert.equal(result.result, 42);
    assert.equal(records.length, 1);
    const r = records[0];
    assert.deepEqual(Object.keys(r).sort(), [
      "codeBytes",
      "codeSha256",
      "durationMs",
      "limits",
      "permissions",
      "sandboxId",
      "status",
      "stderrBytes",
      "stdoutBytes",
      "time",
      "truncated",
    ]);
    assert.equal(new Date(r.time).toISOString(), r.time);
    assert.ok(Math.abs(new Date(r.time).getTime() - before) < 5000);
    assert.equal(r.sandboxId, sandbox.id);
    assert.match(r.sandboxId, /^[0-9a-f-]{36}$/);
    assert.equal(r.codeSha256, await sha256(code));
    assert.equal(r.codeBytes, new TextEncoder().encode(code).length);
    assert.deepEqual(r.permissions, {
      allowEnv: false,
      allowRead: false,
      allowWrite: false,
      allowNet: ["127.0.0.1:9"],
      allowRun: false,
      allowFfi: false,
    });
    assert.deepEqual(r.limits, {
      timeoutSeconds: 30,
      memoryLimitMb: 512,
      maxOutputBytes: 4096,
      maxCodeBytes: 10 * 1024 * 1024,
    });
    assert.ok(r.durationMs > 0 && r.durationMs < 30_000);
    assert.equal(r.status, "success");
    assert.equal(r.stdoutBytes, 7);
    assert.equal(r.stderrBytes, 5);
    assert.equal(r.truncated, false);

    await sandbox.execute("print('y' * 5000)", { timeoutSeconds: 20 });
    assert.equal(records.length, 2);
    assert.equal(records[1].truncated, true);
    assert.equal(records[1].stdoutBytes, 5001);
    assert.equal(records[1].limits.timeoutSeconds, 20);
  });
});

Deno.test("PyodideSandbox audit records cover exceptions, timeouts, memory errors, crashes and aborts", async () => {
  const records: AuditRecord[] = [];
  await withSandbox({
    poolSize: 0,
    onAudit: (r) => {
      records.push(r);
    },
  }, async (sandbox) => {
    const expect = async (
      run: () => Promise<unknown>,
      status: string,
      errorKind?: string,
    ) => {
      const count = records.length;
      await run();
      assert.equal(records.length, count + 1);
      const r = records.at(-1)!;
      assert.equal(r.status, status);
      assert.equal(r.errorKind, errorKind);
      return r;
    };
    await expect(() => sandbox.execute("1 / 0"), "error", "exception");
    const timeout = await expect(
      () => sandbox.execute("while True: pass", { timeoutSeconds: 1 }),
      "error",
      "timeout",
    );
    assert.equal(timeout.limits.timeoutSeconds, 1);
    const memory = await expect(
      () =>
        sandbox.execute("b = bytearray(512 * 1024 * 1024)", {
          memoryLimitMb: 128,
        }),
      "error",
      "memory",
    );
    assert.equal(memory.limits.memoryLimitMb, 128);
    await expect(
      () => sandbox.execute("import js\njs.Deno.exit(3)"),
      "error",
      "crash",
    );
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error("stop")), 500);
    await expect(
      () =>
        assert.rejects(
          sandbox.execute("import time\ntime.sleep(30)", {
            signal: controller.signal,
          }),
          /stop/,
        ),
      "aborted",
    );
    await assert.rejects(sandbox.execute(7 as unknown as string), TypeError);
    assert.equal(records.length, 5, "a rejected bad call is not audited");
  });
});

Deno.test("PyodideSandbox auditLog appends one JSON line per execution and auditCode adds the code", async () => {
  const dir = await Deno.makeTempDir();
  const log = join(dir, "audit.jsonl");
  await Deno.writeTextFile(log, '{"earlier":true}\n');
  const first = new PyodideSandbox({ poolSize: 0, auditLog: log });
  const second = new PyodideSandbox({
    poolSize: 0,
    auditLog: log,
    auditCode: true,
  });
  try {
    await Promise.all([
      first.execute("print('a')"),
      second.execute("print('b')\n'b'"),
      first.execute("raise KeyError('x')"),
    ]);
    const lines = (await Deno.readTextFile(log)).trimEnd().split("\n");
    assert.equal(lines.length, 4);
    assert.deepEqual(JSON.parse(lines[0]), { earlier: true });
    const records = lines.slice(1).map((l) => JSON.parse(l) as AuditRecord);
    const fromFirst = records.filter((r) => r.sandboxId === first.id);
    const fromSecond = records.filter((r) => r.sandboxId === second.id);
    assert.equal(fromFirst.length, 2);
    assert.equal(fromSecond.length, 1);
    assert.ok(fromFirst.every((r) => r.code === undefined));
    assert.equal(fromSecond[0].code, "print('b')\n'b'");
    assert.deepEqual(
      fromFirst.map((r) => r.errorKind ?? r.status).sort(),
      ["exception", "success"],
    );
    const fresh = join(dir, "fresh.jsonl");
    await new PyodideSandbox({ skipDenoCheck: true, auditLog: fresh }).close();
    assert.equal((await Deno.stat(fresh)).mode! & 0o777, 0o600);
  } finally {
    await first.close();
    await second.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("PyodideSession.execute() calls are audited with the session's id", async () => {
  const records: AuditRecord[] = [];
  await withSandbox({
    poolSize: 0,
    onAudit: (r) => {
      records.push(r);
    },
  }, async (sandbox) => {
    const session = await sandbox.openSession();
    try {
      await session.execute("x = 1");
      await session.execute("import time\nwhile True: time.sleep(0.01)", {
        timeoutSeconds: 0.5,
      });
      await session.execute("x + 1");
    } finally {
      await session.close();
    }
    assert.equal(records.length, 3);
    assert.ok(records.every((r) => r.sessionId === session.id));
    assert.deepEqual(
      records.map((r) => r.errorKind ?? r.status),
      ["success", "timeout", "success"],
    );
  });
});

Deno.test("PyodideSandbox.execute() rejects when the audit record cannot be delivered", async () => {
  const dir = await Deno.makeTempDir();
  const log = join(dir, "audit.jsonl");
  const failing = new PyodideSandbox({
    poolSize: 0,
    onAudit: () => {
      throw new Error("audit store down");
    },
  });
  const logged = new PyodideSandbox({ poolSize: 0, auditLog: log });
  try {
    await assert.rejects(
      failing.execute("1"),
      /^Error: The onAudit callback failed: audit store down$/,
    );
    // The log's path becomes a folder after the constructor checked it.
    await Deno.remove(log);
    await Deno.mkdir(log);
    await assert.rejects(
      logged.execute("1"),
      /^Error: Failed to write the audit log: .*audit\.jsonl/,
    );
  } finally {
    await failing.close();
    await logged.close();
    await Deno.remove(dir, { recursive: true });
  }
});
