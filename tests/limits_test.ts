/**
 * Limits and bad input (`maxOutputBytes`, `maxCodeBytes`, the code's type and
 * every option), with real children.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { type AuditRecord, PyodideSandbox } from "../mod.ts";
import { withSandbox } from "./_helpers.ts";

/**
 * A `deno` wrapper that logs every start (arguments, one line each) and then
 * runs the real binary. Counting starts this way is exact even when other
 * test files run child processes in this same process (`--parallel`).
 */
function spyDeno(): {
  path: string;
  starts: () => string[];
  remove: () => void;
} {
  const dir = Deno.makeTempDirSync({ prefix: "hardening-spy-" });
  const path = join(dir, "deno");
  const log = join(dir, "starts.log");
  Deno.writeTextFileSync(
    path,
    `#!/bin/sh\necho "$*" >> '${log}'\nexec '${Deno.execPath()}' "$@"\n`,
    { mode: 0o755 },
  );
  return {
    path,
    starts: () => {
      try {
        return Deno.readTextFileSync(log).split("\n").filter(Boolean);
      } catch {
        return [];
      }
    },
    remove: () => Deno.removeSync(dir, { recursive: true }),
  };
}

Deno.test("PyodideSandbox.execute() keeps maxOutputBytes per stream and flags the rest as truncated", async () => {
  await withSandbox({ poolSize: 0, maxOutputBytes: 1000 }, async (sandbox) => {
    const streamed: string[] = [];
    const flood = await sandbox.execute(
      "import sys\nfor _ in range(50): print('a' * 99)\n" +
        "for _ in range(30): sys.stderr.write('b' * 100)\n'done'",
      { onStdout: (t) => streamed.push(t) },
    );
    assert.equal(flood.status, "success");
    assert.equal(flood.result, "done");
    assert.equal(flood.stdout, ("a".repeat(99) + "\n").repeat(10));
    assert.equal(flood.stdoutTruncated, true);
    assert.equal(flood.stderr, "b".repeat(1000));
    assert.equal(flood.stderrTruncated, true);
    assert.equal(streamed.join(""), flood.stdout);

    const small = await sandbox.execute("print('x' * 998)");
    assert.equal(small.stdout, "x".repeat(998) + "\n");
    assert.equal(small.stdoutTruncated, false);
    assert.equal(small.stderrTruncated, false);
  });
});

Deno.test("PyodideSandbox.execute() rejects code that is not a string with a TypeError and starts no child", async () => {
  const records: AuditRecord[] = [];
  const spy = spyDeno();
  const sandbox = new PyodideSandbox({
    denoPath: spy.path,
    skipDenoCheck: true,
    poolSize: 2,
    onAudit: (r) => {
      records.push(r);
    },
  });
  try {
    const cases: [unknown, string][] = [
      [42, "number"],
      [null, "null"],
      [undefined, "undefined"],
      [{ code: "1" }, "object"],
      [new TextEncoder().encode("1"), "object"],
    ];
    for (const [code, got] of cases) {
      await assert.rejects(
        sandbox.execute(code as string),
        (e: Error) =>
          e instanceof TypeError &&
          e.message ===
            `Invalid code: expected a string of Python source, got ${got}`,
      );
    }
    assert.deepEqual(spy.starts(), [], "deno was never started");
    assert.equal(sandbox.poolSize, 0);
    assert.equal(records.length, 0);
  } finally {
    await sandbox.close();
    spy.remove();
  }
});

Deno.test("PyodideSandbox.execute() rejects code over maxCodeBytes with a RangeError counted in UTF-8 bytes", async () => {
  const spy = spyDeno();
  const options = { poolSize: 0, maxCodeBytes: 10 };
  const spied = new PyodideSandbox({
    ...options,
    denoPath: spy.path,
    skipDenoCheck: true,
  });
  const sandbox = new PyodideSandbox(options);
  try {
    // "'éééé'" is 6 characters but 10 bytes; one more é is 12 bytes.
    await assert.rejects(
      spied.execute("'ééééé'"),
      (e: Error) =>
        e instanceof RangeError &&
        e.message === "Invalid code: 12 bytes is more than maxCodeBytes (10)",
    );
    await assert.rejects(
      spied.execute("x" + " ".repeat(20 * 1024 * 1024)),
      RangeError,
    );
    assert.deepEqual(spy.starts(), [], "deno was never started");
    const ok = await sandbox.execute("'éééé'");
    assert.equal(ok.result, "éééé");
  } finally {
    await spied.close();
    await sandbox.close();
    spy.remove();
  }
});

Deno.test("PyodideSandbox.execute() and openSession() reject invalid options with a message naming what is accepted, starting no child", async () => {
  const spy = spyDeno();
  const sandbox = new PyodideSandbox({
    poolSize: 0,
    denoPath: spy.path,
    skipDenoCheck: true,
  });
  try {
    const cases: [Record<string, unknown>, typeof Error, RegExp][] = [
      [
        { timeout: 5 },
        TypeError,
        /^Unknown execute option: "timeout", expected one of timeoutSeconds, /,
      ],
      [
        { timeoutSeconds: -1 },
        RangeError,
        /^Invalid timeoutSeconds: expected a number from 0\.001 to 86400, got -1$/,
      ],
      [
        { timeoutSeconds: "5" },
        TypeError,
        /^Invalid timeoutSeconds: expected a number from 0\.001 to 86400, got string$/,
      ],
      [{ timeoutSeconds: NaN }, TypeError, /^Invalid timeoutSeconds/],
      [
        { memoryLimitMb: 10 },
        RangeError,
        /^Invalid memoryLimitMb: expected an integer from 64 to 4096, got 10$/,
      ],
      [
        { memoryLimitMb: 100.5 },
        TypeError,
        /^Invalid memoryLimitMb: expected an integer/,
      ],
      [
        { stdin: 5 },
        TypeError,
        /^Invalid stdin: expected a string, got number$/,
      ],
      [
        { signal: "stop" },
        TypeError,
        /^Invalid signal: expected an AbortSignal$/,
      ],
      [
        { onStdout: "log" },
        TypeError,
        /^Invalid onStdout: expected a function, got string$/,
      ],
      [
        { sessionBytes: new Uint8Array(4) },
        TypeError,
        /^Invalid sessionMetadata: session bytes need/,
      ],
      [
        { sessionBytes: "abc", sessionMetadata: {} },
        TypeError,
        /^Invalid sessionBytes: expected a Uint8Array, got string$/,
      ],
    ];
    for (const [options, type, message] of cases) {
      await assert.rejects(
        sandbox.execute("1", options),
        (e: Error) => e instanceof type && message.test(e.message),
        JSON.stringify(options),
      );
    }
    await assert.rejects(
      sandbox.execute("1", null as unknown as Record<string, never>),
      /^TypeError: Invalid execute options: expected an object, got null$/,
    );
    await assert.rejects(
      sandbox.openSession({ memoryLimitMb: 10 }),
      /^RangeError: Invalid memoryLimitMb: expected an integer from 64 to 4096, got 10$/,
    );
    await assert.rejects(
      sandbox.openSession({ stateful: true } as Record<string, unknown>),
      /^TypeError: Unknown session option: "stateful", expected one of /,
    );
    await assert.rejects(
      sandbox.openSession({ sessionBytes: new Uint8Array(8) }),
      /^TypeError: Invalid sessionMetadata/,
    );
    assert.deepEqual(spy.starts(), [], "deno was never started");
  } finally {
    await sandbox.close();
    spy.remove();
  }
});

Deno.test("new PyodideSandbox() validates every option with a message that says what is accepted", () => {
  const dir = Deno.makeTempDirSync();
  const spy = spyDeno();
  try {
    Deno.writeTextFileSync(join(dir, "file"), "");
    const cases: [Record<string, unknown>, typeof Error, RegExp][] = [
      [
        { poolsize: 2 },
        TypeError,
        /^Unknown sandbox option: "poolsize", expected one of .*poolSize/,
      ],
      [
        { maxOutputBytes: -1 },
        RangeError,
        /^Invalid maxOutputBytes: expected an integer from 0 to 1073741824, got -1$/,
      ],
      [
        { maxOutputBytes: "1" },
        TypeError,
        /^Invalid maxOutputBytes: expected an integer/,
      ],
      [
        { maxCodeBytes: 0 },
        RangeError,
        /^Invalid maxCodeBytes: expected an integer from 1 to 1073741824, got 0$/,
      ],
      [
        { poolSize: 1.5 },
        TypeError,
        /^Invalid poolSize: expected an integer from 0 to 64, got 1\.5$/,
      ],
      [
        { maxConcurrency: 0 },
        RangeError,
        /^Invalid maxConcurrency: expected an integer from 1 to 1024, got 0$/,
      ],
      [{ timeoutSeconds: 0 }, RangeError, /^Invalid timeoutSeconds/],
      [
        { stateful: "yes" },
        TypeError,
        /^Invalid stateful: expected a boolean, got string$/,
      ],
      [
        { redact: "secret" },
        TypeError,
        /^Invalid redact: expected an array of non-empty strings and RegExps, got string$/,
      ],
      [
        { redact: ["ok", ""] },
        TypeError,
        /^Invalid redact entry 1: expected a non-empty string or a RegExp, got an empty string$/,
      ],
      [
        { redact: [42] },
        TypeError,
        /^Invalid redact entry 0: expected a non-empty string or a RegExp, got number$/,
      ],
      [
        { redactEnv: 1 },
        TypeError,
        /^Invalid redactEnv: expected a boolean, got number$/,
      ],
      [
        { onAudit: "log" },
        TypeError,
        /^Invalid onAudit: expected a function, got string$/,
      ],
      [
        { auditLog: "" },
        TypeError,
        /^Invalid auditLog: expected a file path, got ""$/,
      ],
      [
        { auditLog: 7 },
        TypeError,
        /^Invalid auditLog: expected a file path, got number$/,
      ],
      [
        { auditLog: join(dir, "file", "audit.jsonl") },
        Error,
        /^Cannot use the audit log: .*audit\.jsonl cannot be opened for appending \(/,
      ],
      [
        { auditCode: "yes" },
        TypeError,
        /^Invalid auditCode: expected a boolean, got string$/,
      ],
    ];
    for (const [options, type, message] of cases) {
      assert.throws(
        () =>
          new PyodideSandbox({
            denoPath: spy.path,
            skipDenoCheck: true,
            ...options,
          }),
        (e: Error) => e instanceof type && message.test(e.message),
        JSON.stringify(options),
      );
    }
    assert.throws(
      () => new PyodideSandbox(null as unknown as Record<string, never>),
      /^TypeError: Invalid sandbox options: expected an object, got null$/,
    );
    assert.deepEqual(spy.starts(), [], "deno was never started");
    // The spy does see starts: the constructor's own Deno check.
    new PyodideSandbox({ denoPath: spy.path });
    assert.deepEqual(spy.starts(), ["--version"]);
  } finally {
    Deno.removeSync(dir, { recursive: true });
    spy.remove();
  }
});
