/**
 * Faults from outside the sandbox: children killed with SIGKILL, a damaged
 * cache folder, a corrupted snapshot, an unusable cache folder.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { PyodideSandbox } from "../mod.ts";
import { commandLine, isAlive, processes, withSandbox } from "./_helpers.ts";

/** Python that reports its process id, then waits. */
const REPORT_PID_AND_WAIT =
  "import js, time\nprint('pid', js.Deno.pid, flush=True)\ntime.sleep(60)";

/** Kills the child as soon as it has printed its pid. */
function killOnPid(): { onStdout: (text: string) => void; pid: () => number } {
  let pid = 0;
  return {
    onStdout: (text) => {
      const match = /pid (\d+)/.exec(text);
      if (match && pid === 0) {
        pid = Number(match[1]);
        Deno.kill(pid, "SIGKILL");
      }
    },
    pid: () => pid,
  };
}

/** Pids of this process's children whose command line contains `mark`. */
function childrenMarked(mark: string): number[] {
  return processes()
    .filter((p) =>
      p.ppid === Deno.pid && (commandLine(p.pid) ?? "").includes(mark)
    )
    .map((p) => p.pid);
}

async function sha256(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest(
    "SHA-256",
    bytes as Uint8Array<ArrayBuffer>,
  );
  return Array.from(
    new Uint8Array(digest),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
}

Deno.test("PyodideSandbox.execute() returns a crash error when its child is killed with SIGKILL mid-call", async () => {
  await withSandbox({ poolSize: 0 }, async (sandbox) => {
    const killer = killOnPid();
    const started = performance.now();
    const result = await sandbox.execute(REPORT_PID_AND_WAIT, {
      onStdout: killer.onStdout,
    });
    const seconds = (performance.now() - started) / 1000;
    assert.ok(killer.pid() > 0, "the child reported its pid");
    assert.equal(result.status, "error");
    assert.equal(result.error?.kind, "crash");
    assert.match(
      result.error!.message,
      /^The sandbox process crashed: the process exited with code 137/,
    );
    assert.equal(result.stdout, `pid ${killer.pid()}\n`, "output so far kept");
    assert.ok(seconds < 30, `the call ended ${seconds.toFixed(1)} s later`);
    assert.equal(isAlive(killer.pid()), false);

    // The host and the sandbox are fine.
    const next = await sandbox.execute("6 * 7");
    assert.equal(next.status, "success");
    assert.equal(next.result, 42);
  });
});

Deno.test("PyodideSession.execute() returns a crash error when the session's child is killed with SIGKILL, and the session is lost", async () => {
  await withSandbox({ poolSize: 0 }, async (sandbox) => {
    const session = await sandbox.openSession();
    try {
      assert.equal((await session.execute("x = 5\nx")).result, 5);
      const killer = killOnPid();
      const result = await session.execute(REPORT_PID_AND_WAIT, {
        onStdout: killer.onStdout,
      });
      assert.equal(result.error?.kind, "crash");
      assert.equal(session.alive, false);
      const after = await session.execute("x");
      assert.equal(after.error?.kind, "session");
      assert.match(after.error!.message, /^The session was lost: /);
    } finally {
      await session.close();
    }
    const fresh = await sandbox.openSession();
    try {
      assert.equal((await fresh.execute("1 + 1")).result, 2);
    } finally {
      await fresh.close();
    }
  });
});

Deno.test("PyodideSandbox skips a pooled child that was killed with SIGKILL while idle", async () => {
  // A unique permission entry marks this sandbox's children on their
  // command line (other test files may run children in this process).
  const mark = `FAULTS_MARK_${crypto.randomUUID().replaceAll("-", "")}`;
  await withSandbox({ poolSize: 1, allowEnv: [mark] }, async (sandbox) => {
    await sandbox.warmup();
    assert.equal(sandbox.poolSize, 1);
    const pids = childrenMarked(mark);
    assert.equal(pids.length, 1);
    Deno.kill(pids[0], "SIGKILL");
    for (let i = 0; i < 100 && sandbox.poolSize > 0; i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(sandbox.poolSize, 0, "the sandbox noticed the death");
    const result = await sandbox.execute("'still fine'");
    assert.equal(result.status, "success");
    assert.equal(result.result, "still fine");
  });
});

Deno.test("PyodideSandbox repairs a damaged cache folder and rebuilds a corrupted snapshot (rebuilds cost seconds)", async () => {
  const cacheDir = await Deno.makeTempDir({ prefix: "faults-cache-" });
  // Damage: a file where the children's DENO_DIR folder belongs, and an
  // unreadable record of where Pyodide lives.
  await Deno.writeTextFile(join(cacheDir, "deno-dir"), "not a folder");
  await Deno.writeTextFile(
    join(cacheDir, "locations-314.0.7.json"),
    "{ garbage",
  );
  const sandbox = new PyodideSandbox({ poolSize: 0, cacheDir });
  try {
    const first = await sandbox.execute("1 + 1", { timeoutSeconds: 300 });
    assert.equal(first.result, 2, JSON.stringify(first.error));
    assert.ok((await Deno.stat(join(cacheDir, "deno-dir"))).isDirectory);

    const name = [...Deno.readDirSync(cacheDir)]
      .map((e) => e.name)
      .find((n) => /^snapshot-.*\.bin$/.test(n));
    assert.ok(name, "the snapshot was built");
    const path = join(cacheDir, name);
    const record = async () =>
      JSON.parse(await Deno.readTextFile(`${path}.json`)) as {
        sha256: string;
        createdAt: string;
      };
    const corrupt = async (keepMtime: boolean) => {
      const stat = await Deno.stat(path);
      const file = await Deno.open(path, { write: true });
      for (const offset of [0, Math.floor(stat.size / 2)]) {
        await file.seek(offset, Deno.SeekMode.Start);
        await file.write(crypto.getRandomValues(new Uint8Array(4096)));
      }
      file.close();
      if (keepMtime) await Deno.utime(path, stat.atime!, stat.mtime!);
      const now = await Deno.stat(path);
      assert.equal(now.size, stat.size);
      assert.notEqual(
        await sha256(await Deno.readFile(path)),
        (await record()).sha256,
      );
    };

    // An ordinary overwrite changes the file's fingerprint: detected before
    // the next start and rebuilt at once.
    const built = (await record()).createdAt;
    await corrupt(false);
    const second = await sandbox.execute("2 + 2", { timeoutSeconds: 300 });
    assert.equal(second.result, 4, JSON.stringify(second.error));
    const rebuilt = await record();
    assert.notEqual(rebuilt.createdAt, built);
    assert.equal(await sha256(await Deno.readFile(path)), rebuilt.sha256);

    // Bit rot keeps size and mtime: the child that meets it fails fast
    // (crash, no hang), and the next call hashes the file and rebuilds it.
    await corrupt(true);
    const started = performance.now();
    const third = await sandbox.execute("3 + 3", { timeoutSeconds: 300 });
    const seconds = (performance.now() - started) / 1000;
    assert.equal(third.error?.kind, "crash", JSON.stringify(third));
    assert.ok(seconds < 60, `the crash took ${seconds.toFixed(1)} s`);
    const fourth = await sandbox.execute("4 + 4", { timeoutSeconds: 300 });
    assert.equal(fourth.result, 8, JSON.stringify(fourth.error));
    const again = await record();
    assert.notEqual(again.createdAt, rebuilt.createdAt);
    assert.equal(await sha256(await Deno.readFile(path)), again.sha256);
  } finally {
    await sandbox.close();
    await Deno.remove(cacheDir, { recursive: true });
  }
});

Deno.test("PyodideSandbox gives a clear error, never a hang, for a cacheDir under a regular file", async () => {
  const dir = await Deno.makeTempDir();
  const file = join(dir, "plain-file");
  await Deno.writeTextFile(file, "");
  try {
    for (const cacheDir of [join(file, "cache"), file]) {
      const expected = new RegExp(
        `^Cannot use the cache folder: ${cacheDir} is not a writable directory \\(.+\\); pass another \`cacheDir\`$`,
      );
      await withSandbox({ cacheDir, poolSize: 1 }, async (sandbox) => {
        const started = performance.now();
        await assert.rejects(
          sandbox.execute("1"),
          (e: Error) => expected.test(e.message),
        );
        await assert.rejects(
          sandbox.warmup(),
          (e: Error) => expected.test(e.message),
        );
        await assert.rejects(
          sandbox.openSession(),
          (e: Error) => expected.test(e.message),
        );
        assert.throws(
          () => sandbox.buildCommand(),
          (e: Error) => expected.test(e.message),
        );
        const seconds = (performance.now() - started) / 1000;
        assert.ok(seconds < 30, `failing took ${seconds.toFixed(1)} s`);
        assert.equal(sandbox.poolSize, 0);
      });
    }
    assert.equal(await Deno.readTextFile(file), "", "the file is untouched");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
