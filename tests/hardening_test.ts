/**
 * Limits and bad input, output filtering (`redact`, `redactEnv`) and the
 * audit trail (`onAudit`, `auditLog`, `auditCode`), with real children.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { type AuditRecord, PyodideSandbox } from "../mod.ts";
import { Redactor } from "../_redact.ts";

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

const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);

// ---------------------------------------------------------------- limits

Deno.test("PyodideSandbox.execute() keeps maxOutputBytes per stream and flags the rest as truncated", async () => {
  const sandbox = new PyodideSandbox({ poolSize: 0, maxOutputBytes: 1000 });
  try {
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
  } finally {
    await sandbox.close();
  }
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

// ------------------------------------------------------------ redaction

Deno.test("Redactor.stream() never releases a secret split across chunks, for any split", () => {
  const secrets = ["sk-live-1234567890", "hunter2", "ab"];
  const redactor = new Redactor(secrets);
  const text = "start sk-live-1234567890 mid hunter2hunter2 ab-ab end ab\n" +
    "tail hunter2";
  const whole = redactor.text(text);
  assert.equal(
    whole,
    "start [REDACTED] mid [REDACTED][REDACTED] [REDACTED]-[REDACTED] end [REDACTED]\ntail [REDACTED]",
  );
  let seed = 7;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  for (let round = 0; round < 300; round++) {
    const out: string[] = [];
    const stream = redactor.stream((t) => out.push(t));
    let at = 0;
    while (at < text.length) {
      const size = 1 + Math.floor(random() * 8);
      stream.push(text.slice(at, at + size));
      at += size;
    }
    stream.flush();
    assert.equal(out.join(""), whole);
    for (const piece of out) {
      for (const secret of secrets) assert.ok(!piece.includes(secret));
    }
  }
});

Deno.test("Redactor.stream() with a RegExp releases whole lines and catches matches split inside a line", () => {
  const redactor = new Redactor([/tok_[a-z]+/]);
  const out: string[] = [];
  const stream = redactor.stream((t) => out.push(t));
  stream.push("first tok_ab");
  assert.deepEqual(out, []);
  stream.push("cd and more\nsecond ");
  assert.deepEqual(out, ["first [REDACTED] and more\n"]);
  stream.push("tok_zz");
  stream.flush();
  assert.deepEqual(out, ["first [REDACTED] and more\n", "second [REDACTED]"]);

  // Any split of multi-line text gives the same text as redacting it whole.
  const mixed = new Redactor(["hunter2", /tok_[a-z]+/, /\d{4}-\d{4}/]);
  const text =
    "a tok_abc b\nhunter2 1234-5678\n\nc tok_z hunter2\nend 9999-0000";
  const whole = mixed.text(text);
  let seed = 11;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  for (let round = 0; round < 300; round++) {
    const pieces: string[] = [];
    const s = mixed.stream((t) => pieces.push(t));
    for (let at = 0; at < text.length;) {
      const size = 1 + Math.floor(random() * 6);
      s.push(text.slice(at, at + size));
      at += size;
    }
    s.flush();
    assert.equal(pieces.join(""), whole);
  }
});

Deno.test("Redactor merges overlapping matches and never matches inside its own replacement", () => {
  const redactor = new Redactor(["abc", "cde", /[A-Z]{3,}/]);
  assert.equal(redactor.text("xxabcdeyy"), "xx[REDACTED]yy");
  assert.equal(redactor.text("SECRET here"), "[REDACTED] here");
  assert.deepEqual(
    redactor.json({ abc: ["abc", 1, null, { k: "cde!" }] }),
    { "[REDACTED]": ["[REDACTED]", 1, null, { k: "[REDACTED]!" }] },
  );
  assert.equal(new Redactor([/x*/]).text("abc"), "abc");
});

Deno.test("PyodideSandbox redact hides strings and RegExps in stdout, stderr, result, error message and traceback", async () => {
  const sandbox = new PyodideSandbox({
    poolSize: 0,
    redact: ["hunter2", /sk-[A-Za-z0-9]{8,}/],
  });
  try {
    const ok = await sandbox.execute(
      "import sys\nprint('password hunter2')\n" +
        "sys.stderr.write('key sk-ABCDEFGH1234\\n')\n" +
        "{'hunter2': ['sk-abcdefghij', 'fine', 3]}",
    );
    assert.equal(ok.status, "success");
    assert.equal(ok.stdout, "password [REDACTED]\n");
    assert.equal(ok.stderr, "key [REDACTED]\n");
    assert.deepEqual(ok.result, { "[REDACTED]": ["[REDACTED]", "fine", 3] });

    const failed = await sandbox.execute(
      "secret = 'hunter2'\nraise ValueError('bad ' + secret)",
    );
    assert.equal(failed.status, "error");
    assert.equal(failed.error?.kind, "exception");
    assert.equal(failed.error?.message, "bad [REDACTED]");
    assert.ok(failed.error?.traceback?.includes("[REDACTED]"));
    const everything = JSON.stringify(failed);
    assert.ok(!everything.includes("hunter2"), everything);

    const notJson = await sandbox.execute("{'hunter2'}");
    assert.ok(!JSON.stringify(notJson.result).includes("hunter2"));
  } finally {
    await sandbox.close();
  }
});

Deno.test("PyodideSandbox redact hides secrets in streamed chunks, also when a secret spans two chunks", async () => {
  const sandbox = new PyodideSandbox({
    poolSize: 0,
    redact: ["correct-horse-battery", /tok_[a-z]+/],
  });
  try {
    const stdout: string[] = [];
    const stderr: string[] = [];
    const result = await sandbox.execute(
      "import sys, time\n" +
        "def put(stream, text):\n    stream.write(text); stream.flush(); time.sleep(0.05)\n" +
        "put(sys.stdout, 'line one\\nthe secret is correct-ho')\n" +
        "put(sys.stdout, 'rse-battery, ok\\n')\n" +
        "put(sys.stdout, 'token tok_ab')\n" +
        "put(sys.stdout, 'cdef\\n')\n" +
        "put(sys.stderr, 'err correct-horse-')\n" +
        "put(sys.stderr, 'battery\\n')\n",
      {
        onStdout: (t) => stdout.push(t),
        onStderr: (t) => stderr.push(t),
      },
    );
    assert.equal(result.status, "success");
    const expected =
      "line one\nthe secret is [REDACTED], ok\ntoken [REDACTED]\n";
    assert.equal(result.stdout, expected);
    assert.equal(stdout.join(""), expected);
    assert.ok(stdout.length >= 2, "output was streamed in several chunks");
    assert.equal(stdout[0], "line one\n", "text before the secret came early");
    assert.equal(result.stderr, "err [REDACTED]\n");
    assert.equal(stderr.join(""), "err [REDACTED]\n");
    for (const chunk of [...stdout, ...stderr]) {
      assert.ok(!/horse|battery|tok_/.test(chunk), chunk);
    }

    const events: string[] = [];
    for await (
      const event of sandbox.executeStream(
        "import sys\nsys.stdout.write('a correct-'); sys.stdout.flush()\n" +
          "sys.stdout.write('horse-battery b\\n')",
      )
    ) {
      if (event.type === "stdout") events.push(event.data);
      else if (event.type === "result") {
        assert.equal(event.result.stdout, "a [REDACTED] b\n");
      }
    }
    assert.equal(events.join(""), "a [REDACTED] b\n");
  } finally {
    await sandbox.close();
  }
});

Deno.test("PyodideSandbox redact hides secrets in display text and returned text files, leaving images and binary files alone", async () => {
  const sandbox = new PyodideSandbox({ poolSize: 0, redact: ["hunter2"] });
  try {
    const displayed: unknown[] = [];
    const result = await sandbox.execute(
      "class H:\n" +
        "    def _repr_html_(self): return '<b>hunter2</b>'\n" +
        "    def _repr_json_(self): return {'pw': 'hunter2'}\n" +
        "    def _repr_png_(self): return b'hunter2'\n" +
        "    def __repr__(self): return 'H(hunter2)'\n" +
        "display(H())\n" +
        "open('notes.txt', 'w').write('pw: hunter2\\n')\n" +
        "open('blob.bin', 'wb').write(b'\\x00\\xffhunter2')\n",
      { onDisplay: (b) => displayed.push(b) },
    );
    assert.equal(result.status, "success");
    const expected = {
      "image/png": btoa("hunter2"),
      "text/html": "<b>[REDACTED]</b>",
      "application/json": { pw: "[REDACTED]" },
      "text/plain": "H([REDACTED])",
    };
    assert.deepEqual(result.displays, [expected]);
    assert.deepEqual(displayed, [expected]);
    const files = Object.fromEntries(
      (result.files ?? []).map((f) => [f.path.split("/").pop(), f]),
    );
    assert.equal(decode(files["notes.txt"].content), "pw: [REDACTED]\n");
    assert.equal(files["notes.txt"].size, files["notes.txt"].content.length);
    assert.deepEqual(
      [...files["blob.bin"].content],
      [0, 255, ...new TextEncoder().encode("hunter2")],
    );
  } finally {
    await sandbox.close();
  }
});

Deno.test("PyodideSandbox redactEnv hides the values of variables passed through allowEnv", async () => {
  const name = "PYODIDE_SANDBOX_HARDENING_TOKEN";
  const short = "PYODIDE_SANDBOX_HARDENING_SHORT";
  Deno.env.set(name, "tkn-8f3a9c2e71");
  Deno.env.set(short, "abc");
  const code = "import js\n" +
    `v = js.Deno.env.get('${name}')\nprint(v, js.Deno.env.get('${short}'))\nv`;
  const plain = new PyodideSandbox({ poolSize: 0, allowEnv: [name, short] });
  const redacting = new PyodideSandbox({
    poolSize: 0,
    allowEnv: [name, short],
    redactEnv: true,
  });
  try {
    const seen = await plain.execute(code);
    assert.equal(seen.stdout, "tkn-8f3a9c2e71 abc\n", "the code can read it");
    const hidden = await redacting.execute(code);
    assert.equal(hidden.stdout, "[REDACTED] abc\n");
    assert.equal(hidden.result, "[REDACTED]");
  } finally {
    Deno.env.delete(name);
    Deno.env.delete(short);
    await plain.close();
    await redacting.close();
  }
});

Deno.test("PyodideSandbox redact covers live sessions and stateful calls while sessionBytes keep the real value", async () => {
  const sandbox = new PyodideSandbox({
    poolSize: 0,
    stateful: true,
    redact: ["hunter2"],
  });
  try {
    const first = await sandbox.execute("pw = 'hunter' + '2'\nprint(pw)\npw");
    assert.equal(first.stdout, "[REDACTED]\n");
    assert.equal(first.result, "[REDACTED]");
    assert.ok(first.sessionBytes && first.sessionMetadata);
    const second = await sandbox.execute("pw == 'hunter2'", {
      sessionBytes: first.sessionBytes,
      sessionMetadata: first.sessionMetadata,
    });
    assert.equal(second.result, true, "the state itself is not redacted");

    const session = await sandbox.openSession();
    try {
      const chunks: string[] = [];
      const r = await session.execute(
        "import sys\nsys.stdout.write('x hunt'); sys.stdout.flush()\nprint('er2 y')",
        { onStdout: (t) => chunks.push(t) },
      );
      assert.equal(r.stdout, "x [REDACTED] y\n");
      assert.equal(chunks.join(""), "x [REDACTED] y\n");
    } finally {
      await session.close();
    }
  } finally {
    await sandbox.close();
  }
});

// ----------------------------------------------------------------- audit

Deno.test("PyodideSandbox onAudit receives one record per execution with the documented fields", async () => {
  const records: AuditRecord[] = [];
  const sandbox = new PyodideSandbox({
    poolSize: 0,
    allowNet: ["127.0.0.1:9"],
    timeoutSeconds: 30,
    maxOutputBytes: 4096,
    onAudit: (r) => {
      records.push(r);
    },
  });
  try {
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
  } finally {
    await sandbox.close();
  }
});

Deno.test("PyodideSandbox audit records cover exceptions, timeouts, memory errors, crashes and aborts", async () => {
  const records: AuditRecord[] = [];
  const sandbox = new PyodideSandbox({
    poolSize: 0,
    onAudit: (r) => {
      records.push(r);
    },
  });
  try {
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
  } finally {
    await sandbox.close();
  }
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
  const sandbox = new PyodideSandbox({
    poolSize: 0,
    onAudit: (r) => {
      records.push(r);
    },
  });
  try {
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
  } finally {
    await sandbox.close();
  }
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
