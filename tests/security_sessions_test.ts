/**
 * The attack battery (issue 4), session bytes and the warm pool: tampered,
 * foreign or forged sessions and stateless calls that try to poison the next. Each attack asserts that it was
 * contained AND that the host and other sandboxes are unaffected (see
 * `_security.ts`); every attack is one named step that SECURITY.md's
 * tables list (checked by `security_test.ts`).
 */

import assert from "node:assert/strict";
import { type PyodideSandbox, SessionError } from "../mod.ts";
import { watchHostRss } from "./_attack_helpers.ts";
import { forgeSession, zeroBomb } from "./_forge_session.ts";
import { attack, BatterySandbox, options, withBattery } from "./_security.ts";

/** The payload inside session bytes (between the header and the checksum). */
function sessionPayload(bytes: Uint8Array): Uint8Array {
  const headLength = new DataView(bytes.buffer, bytes.byteOffset).getUint32(10);
  return bytes.slice(14 + headLength, bytes.length - 32);
}

Deno.test("Tampered, foreign or forged session bytes are rejected or stay inside the sandbox", async (t) => {
  await withBattery({}, async ({ sandbox }) => {
    const session = await sandbox.openSession();
    await session.execute("x = 5");
    const saved = await session.save();
    await session.close();
    const { sessionBytes, sessionMetadata } = saved;

    /** Both entry points refuse the pair with a session error. */
    const refused = async (
      bytes: Uint8Array,
      metadata: typeof sessionMetadata,
      pattern: RegExp,
    ) => {
      const res = await sandbox.execute("x", {
        sessionBytes: bytes,
        sessionMetadata: metadata,
      });
      assert.equal(res.error?.kind, "session", JSON.stringify(res.error));
      assert.match(res.error!.message, pattern);
      await assert.rejects(
        sandbox.openSession({ sessionBytes: bytes, sessionMetadata: metadata }),
        SessionError,
      );
    };
    const flipped = (index: number) => {
      const copy = sessionBytes.slice();
      copy[index] ^= 0x01;
      return copy;
    };

    await attack(t, "control.session_roundtrip", async () => {
      const res = await sandbox.execute("x", { sessionBytes, sessionMetadata });
      assert.equal(res.result, 5, res.stderr);
    });
    await attack(t, "sessions.flipped_payload_byte", async () => {
      await refused(
        flipped(sessionBytes.length >> 1),
        sessionMetadata,
        /checksum/,
      );
    });
    await attack(t, "sessions.flipped_checksum_byte", async () => {
      await refused(
        flipped(sessionBytes.length - 1),
        sessionMetadata,
        /checksum/,
      );
    });
    await attack(t, "sessions.truncated", async () => {
      await refused(
        sessionBytes.slice(0, sessionBytes.length - 100),
        sessionMetadata,
        /checksum|Invalid session/,
      );
    });
    await attack(t, "sessions.empty_bytes", async () => {
      await refused(new Uint8Array(0), sessionMetadata, /not session bytes/);
    });
    await attack(t, "sessions.random_bytes", async () => {
      await refused(
        crypto.getRandomValues(new Uint8Array(4096)),
        sessionMetadata,
        /not session bytes/,
      );
    });
    await attack(t, "sessions.not_bytes", async () => {
      await assert.rejects(
        sandbox.execute("x", {
          sessionBytes: "PYSBSESS" as unknown as Uint8Array,
          sessionMetadata,
        }),
        TypeError,
      );
      await assert.rejects(
        sandbox.execute("x", {
          sessionBytes,
          sessionMetadata: undefined,
        }),
        TypeError,
      );
    });
    await attack(t, "sessions.metadata_other_session", async () => {
      await refused(sessionBytes, {
        ...sessionMetadata,
        createdAt: new Date(0).toISOString(),
      }, /does not belong/);
    });
    await attack(t, "sessions.metadata_other_version", async () => {
      await refused(sessionBytes, {
        ...sessionMetadata,
        pyodideVersion: "0.0.1",
      }, /does not belong/);
    });
    await attack(t, "sessions.header_other_version", async () => {
      const now = new Date().toISOString();
      const forged = await forgeSession(sessionPayload(sessionBytes), {
        pyodideVersion: "0.0.1",
        createdAt: now,
        updatedAt: now,
      });
      await refused(
        forged.sessionBytes,
        forged.sessionMetadata,
        /made by Pyodide 0\.0\.1/,
      );
    });
    await attack(t, "sessions.metadata_proto_pollution", async () => {
      const metadata = JSON.parse(
        `{"__proto__": {"polluted": "yes"}, "pyodideVersion": ${
          JSON.stringify(sessionMetadata.pyodideVersion)
        }, "createdAt": ${
          JSON.stringify(sessionMetadata.createdAt)
        }, "updatedAt": ${JSON.stringify(sessionMetadata.updatedAt)}}`,
      );
      const res = await sandbox.execute("x", {
        sessionBytes,
        sessionMetadata: metadata,
      });
      assert.equal(res.result, 5, res.stderr);
      assert.equal(({} as Record<string, unknown>).polluted, undefined);
    });
    await attack(t, "sessions.forged_garbage_payload", async () => {
      // Without a sessionSecret the checksum is not a signature: anyone can
      // forge one. The payload is only ever unpacked inside a child.
      const forged = await forgeSession(
        crypto.getRandomValues(new Uint8Array(2048)),
      );
      const res = await sandbox.execute("x", forged);
      assert.equal(res.status, "error");
      assert.ok(
        ["crash", "session"].includes(res.error!.kind),
        JSON.stringify(res.error),
      );
    });
    await attack(t, "sessions.decompression_bomb", async () => {
      const forged = await forgeSession(await zeroBomb(1024));
      const { value: res, growth } = await watchHostRss(() =>
        sandbox.execute("x", {
          ...forged,
          memoryLimitMb: 64,
          timeoutSeconds: 30,
        })
      );
      assert.equal(res.status, "error");
      assert.ok(
        ["memory", "crash", "session"].includes(res.error!.kind),
        JSON.stringify(res.error),
      );
      assert.ok(growth < 200 * 1024 * 1024, `host RSS grew ${growth >> 20} MB`);
    });

    const signedB = new BatterySandbox(
      options({ sessionSecret: "b".repeat(16) }),
    );
    const signedC = new BatterySandbox(
      options({ sessionSecret: "c".repeat(16) }),
    );
    try {
      const sessionB = await signedB.openSession();
      await sessionB.execute("y = 7");
      const fromB = await sessionB.save();
      await sessionB.close();
      const bRefuses = async (
        bytes: Uint8Array,
        metadata: typeof sessionMetadata,
        sandboxUnderTest: PyodideSandbox,
        pattern: RegExp,
      ) => {
        const res = await sandboxUnderTest.execute("1", {
          sessionBytes: bytes,
          sessionMetadata: metadata,
        });
        assert.equal(res.error?.kind, "session", JSON.stringify(res.error));
        assert.match(res.error!.message, pattern);
      };
      await attack(t, "sessions.unsigned_to_signed", async () => {
        await bRefuses(sessionBytes, sessionMetadata, signedB, /not signed/);
      });
      await attack(t, "sessions.signed_to_unsigned", async () => {
        await bRefuses(
          fromB.sessionBytes,
          fromB.sessionMetadata,
          sandbox,
          /signed/,
        );
      });
      await attack(t, "sessions.foreign_secret", async () => {
        await bRefuses(
          fromB.sessionBytes,
          fromB.sessionMetadata,
          signedC,
          /signature does not match/,
        );
      });
      await attack(t, "sessions.forged_for_signed_sandbox", async () => {
        const forged = await forgeSession(sessionPayload(fromB.sessionBytes));
        await bRefuses(
          forged.sessionBytes,
          forged.sessionMetadata,
          signedB,
          /not signed/,
        );
        const res = await signedB.execute("y", fromB);
        assert.equal(res.result, 7, res.stderr);
      });
    } finally {
      await signedB.close();
      await signedC.close();
    }

    await attack(t, "sessions.cross_session_state", async () => {
      const one = await sandbox.openSession();
      const two = await sandbox.openSession();
      try {
        await one.execute(
          `secret = "one's"\nimport js\njs.eval("globalThis.leak = 'one'")`,
        );
        const res = await two.execute(
          `import js\n[globals().get("secret"), str(js.eval("typeof globalThis.leak"))]`,
        );
        assert.deepEqual(res.result, [null, "undefined"]);
      } finally {
        await one.close();
        await two.close();
      }
    });

    await attack(t, "sessions.busy_timer", async () => {
      // A timer that never yields blocks the session's event loop: the next
      // call times out, the soft interrupt cannot help, the child is killed
      // and only this session is lost.
      const victim = await sandbox.openSession();
      try {
        const first = await victim.execute(
          `import js\njs.eval("setInterval(() => { for (;;) {} }, 1)")\n1`,
          { timeoutSeconds: 3 },
        );
        const second = await victim.execute("2", { timeoutSeconds: 3 });
        assert.ok(
          first.error?.kind === "timeout" || second.error?.kind === "timeout",
          JSON.stringify([first.error, second.error]),
        );
        assert.equal(victim.alive, false);
        const after = await victim.execute("3");
        assert.equal(after.error?.kind, "session");
      } finally {
        await victim.close();
      }
    });

    await attack(t, "sessions.steal_stdin", async () => {
      // Reading the child's stdin competes with the runner for the parent's
      // frames: at worst this session's next call times out.
      const victim = await sandbox.openSession();
      try {
        await victim.execute(
          `import js\njs.eval("(async () => { const b = new Uint8Array(65536); for (;;) { if (await Deno.stdin.read(b) === null) break; } })()")\n1`,
          { timeoutSeconds: 5 },
        );
        const next = await victim.execute("1 + 1", { timeoutSeconds: 3 });
        if (next.status === "success") assert.equal(next.result, 2);
        else {assert.equal(
            next.error?.kind,
            "timeout",
            JSON.stringify(next.error),
          );}
      } finally {
        await victim.close();
      }
    });
  });
});

Deno.test("A stateless call cannot poison the next one, even through the warm pool", async (t) => {
  await withBattery({ poolSize: 1 }, async ({ sandbox }) => {
    const first = await sandbox.execute(`import builtins, sys, js, os
os.makedirs("/home/pyodide", exist_ok=True)
open("/home/pyodide/poison.txt", "w").write("poison")
js.eval("globalThis.poisoned = 1; Object.prototype.polluted = 1; JSON.parse = () => 'poisoned'")
sys.modules["json"] = None
poisoned_global = True
builtins.print = lambda *a, **k: None
js.Deno.pid`);
    assert.equal(first.status, "success", first.stderr);
    await attack(t, "pool.poison_next_call", async () => {
      const second = await sandbox.execute(`import os, sys, js, json
print("clean")
[os.path.exists("/home/pyodide/poison.txt"), "poisoned_global" in globals(), str(js.eval("typeof globalThis.poisoned + ' ' + typeof ({}).polluted")), json.loads("[1]"), js.Deno.pid]`);
      assert.equal(second.status, "success", second.stderr);
      assert.equal(second.stdout, "clean\n");
      const [file, global, js, json, pid] = second.result as [
        boolean,
        boolean,
        string,
        number[],
        number,
      ];
      assert.deepEqual([file, global, js, json], [
        false,
        false,
        "undefined undefined",
        [1],
      ]);
      assert.notEqual(
        pid,
        first.result,
        "the same process served two stateless calls",
      );
    });
  });
});
