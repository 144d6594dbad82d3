/**
 * Output filtering (`redact`, `redactEnv`): the `Redactor` itself and what
 * it hides in results, streams, files and sessions, with real children.
 */

import assert from "node:assert/strict";
import { PyodideSandbox } from "../mod.ts";
import { Redactor } from "../_redact.ts";
import { withSandbox } from "./_helpers.ts";

const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);

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
  await withSandbox({
    poolSize: 0,
    redact: ["hunter2", /sk-[A-Za-z0-9]{8,}/],
  }, async (sandbox) => {
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
  });
});

Deno.test("PyodideSandbox redact hides secrets in streamed chunks, also when a secret spans two chunks", async () => {
  await withSandbox({
    poolSize: 0,
    redact: ["correct-horse-battery", /tok_[a-z]+/],
  }, async (sandbox) => {
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
  });
});

Deno.test("PyodideSandbox redact hides secrets in display text and returned text files, leaving images and binary files alone", async () => {
  await withSandbox({ poolSize: 0, redact: ["hunter2"] }, async (sandbox) => {
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
  });
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
  await withSandbox({
    poolSize: 0,
    stateful: true,
    redact: ["hunter2"],
  }, async (sandbox) => {
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
  });
});
