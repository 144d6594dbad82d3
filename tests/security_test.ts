/**
 * The attack battery (issue 4): untrusted Python tries every path to the
 * host it can think of. Each attack asserts that it was contained AND that
 * the host and other sandboxes are unaffected: the host's canary file and
 * secret are intact, a witness session of the same sandbox still runs with
 * its state, and the attacked sandbox still runs `print(1)`.
 *
 * Attacks are batched: one execution tries many things and returns a JSON
 * report (see `_attack_helpers.ts`); every attack is one named step, and
 * SECURITY.md's table lists exactly these steps (checked by the last test).
 */

import assert from "node:assert/strict";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { ChildSpec } from "../_child.ts";
import {
  BasePyodideSandbox,
  type CodeExecutionResult,
  PYODIDE_VERSION,
  PyodideSandbox,
  type SandboxOptions,
  SessionError,
} from "../mod.ts";
import {
  assertDenied,
  assertHostIntact,
  assertNoChildren,
  assertNoLeak,
  assertRefused,
  assertStillWorks,
  assertWitnessAlive,
  ATTACK_DENO,
  createHostFixture,
  folderBytes,
  forgeSession,
  type HostFixture,
  openWitness,
  type Outcome,
  type Report,
  runBattery,
  sha256File,
  startRecorder,
  watchHostRss,
  witnessPid,
  zeroBomb,
} from "./_attack_helpers.ts";

const HERE = dirname(fileURLToPath(import.meta.url));

/** One cache folder for the whole battery, so attacks on it hurt no one. */
const CACHE_DIR = await Deno.makeTempDir({ prefix: "pysb-security-cache-" });
globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(CACHE_DIR, { recursive: true });
  } catch {
    // Already gone.
  }
});

/** Sandbox options every test starts from: fast and isolated. */
function options(extra: SandboxOptions = {}): SandboxOptions {
  return {
    poolSize: 0,
    timeoutSeconds: 30,
    cacheDir: CACHE_DIR,
    denoPath: ATTACK_DENO,
    ...extra,
  };
}

/** Runs one attack check as a named step (the id SECURITY.md lists). */
async function attack(
  t: Deno.TestContext,
  id: string,
  fn: () => void | Promise<void>,
): Promise<void> {
  const ok = await t.step(id, fn);
  assert.ok(ok, `attack step ${id} failed`);
}

/** How an attack of a battery must have ended. */
type Expectation =
  | "read"
  | "write"
  | "env"
  | "net"
  | "run"
  | "ffi"
  | "sys"
  | RegExp
  | ((outcome: Outcome) => void | Promise<void>);

/**
 * Checks a battery's report, one step per attack: a permission name means
 * "refused for lack of that Deno permission", a RegExp "refused with this
 * message", a function a custom check.
 */
async function expect(
  t: Deno.TestContext,
  r: Report,
  table: Record<string, Expectation>,
): Promise<void> {
  assert.deepEqual(
    Object.keys(r).sort(),
    Object.keys(table).sort(),
    "the battery ran other attacks than the ones checked",
  );
  for (const [id, expectation] of Object.entries(table)) {
    await attack(t, id, async () => {
      if (typeof expectation === "string") {
        assertDenied(r, id, expectation);
      } else if (expectation instanceof RegExp) {
        assertRefused(r, id, expectation);
      } else {
        await expectation(r[id]);
      }
    });
  }
}

/** Asserts that an execution ended with the child's death, not a result. */
function assertCrash(result: CodeExecutionResult): void {
  assert.equal(result.status, "error");
  assert.equal(result.error?.kind, "crash", JSON.stringify(result.error));
  assert.equal(result.result, null);
}

/**
 * The battery's sandbox: its children run without
 * `--disallow-code-generation-from-strings`, so that the JavaScript attacks
 * (written with `js.eval`) still probe the permission layer beneath that
 * flag. The flag itself, and what it blocks, is tested in
 * `child_isolation_test.ts`.
 */
class BatterySandbox extends PyodideSandbox {
  protected override childSpec(memoryLimitMb: number): ChildSpec {
    const spec = super.childSpec(memoryLimitMb);
    return {
      ...spec,
      args: spec.args.map((arg) =>
        arg.replace(",--disallow-code-generation-from-strings", "")
      ),
    };
  }
}

/**
 * Runs `body` with a sandbox, a witness session and the host fixture, then
 * checks that the host, the witness and the sandbox are all fine.
 */
async function withSandbox(
  extra: SandboxOptions,
  body: (ctx: {
    sandbox: PyodideSandbox;
    fixture: HostFixture;
    witnessPid: number;
  }) => Promise<void>,
): Promise<void> {
  const fixture = await createHostFixture();
  const sandbox = new BatterySandbox(options(extra));
  try {
    const witness = await openWitness(sandbox);
    const pid = await witnessPid(witness);
    await body({ sandbox, fixture, witnessPid: pid });
    await assertHostIntact(fixture);
    await assertWitnessAlive(witness);
    await assertStillWorks(sandbox);
  } finally {
    await sandbox.close();
    await fixture.cleanup();
  }
  await assertNoChildren();
}

const NOT_CAPABLE = /NotCapable|Requires \w+ access/;

Deno.test("PyodideSandbox.buildCommand() keeps remote imports, npm downloads and prompts off and grants nothing by default", async (t) => {
  const base = new BasePyodideSandbox(options());
  const { args } = base.buildCommand();
  await attack(t, "flags.no_remote", () => {
    // Blocks computed imports from deno.land, esm.sh, jsr.io and the other
    // default import hosts, which this machine cannot watch.
    assert.ok(args.includes("--no-remote"));
  });
  await attack(t, "flags.cached_only", () => {
    assert.ok(args.includes("--cached-only"));
  });
  await attack(t, "flags.no_prompt", () => {
    assert.ok(args.includes("--no-prompt"));
    assert.ok(args.includes("--no-config"));
    assert.ok(args.includes("--node-modules-dir=none"));
  });
  await attack(t, "flags.no_grants", () => {
    for (const arg of args) {
      assert.doesNotMatch(
        arg,
        /^--(allow-(net|env|write|run|ffi|sys|import|all|hrtime|scripts)|unstable)|^-A$/,
        `unexpected flag ${arg}`,
      );
    }
    const reads = args.filter((a) => a.startsWith("--allow-read"));
    assert.equal(reads.length, 1);
    const paths = reads[0].slice("--allow-read=".length).split(",");
    for (const path of paths) {
      assert.match(
        path,
        /(pyodide\.asm\.wasm|python_stdlib\.zip|pyodide-lock\.json|snapshot-[^/]+\.bin)$/,
        `unexpected read grant ${path}`,
      );
    }
  });
  await attack(t, "flags.grants_keep_remote_off", () => {
    const granted = new BasePyodideSandbox(
      options({ allowNet: ["example.com"], allowRead: ["/srv/data"] }),
    ).buildCommand().args;
    assert.ok(granted.includes("--no-remote"));
    assert.ok(granted.includes("--cached-only"));
    assert.ok(granted.includes("--allow-net=example.com"));
  });
});

Deno.test("Untrusted code cannot read, write, remove, stat or list host files outside its grants", async (t) => {
  await withSandbox({}, async ({ sandbox, fixture }) => {
    const { result, report: r } = await runBattery(
      sandbox,
      `
      await attempt("files.deno_read", "return await Deno.readTextFile(CTX.canary)")
      await attempt("files.deno_write_new", "await Deno.writeTextFile(CTX.dir + '/planted.txt', 'x'); return 'written'")
      await attempt("files.deno_overwrite", "await Deno.writeTextFile(CTX.canary, 'PWNED'); return 'written'")
      await attempt("files.deno_remove", "await Deno.remove(CTX.canary); return 'removed'")
      await attempt("files.deno_rename", "await Deno.rename(CTX.canary, CTX.dir + '/moved'); return 'renamed'")
      await attempt("files.deno_truncate", "await Deno.truncate(CTX.canary, 0); return 'truncated'")
      await attempt("files.deno_stat", "return JSON.stringify(await Deno.stat(CTX.canary))")
      await attempt("files.deno_read_dir", "const n = []; for await (const e of Deno.readDir(CTX.dir)) n.push(e.name); return n.join()")
      await attempt("files.deno_read_dir_root", "const n = []; for await (const e of Deno.readDir('/')) n.push(e.name); return n.join()")
      await attempt("files.deno_open_create", "const f = await Deno.open(CTX.dir + '/opened', {write: true, create: true}); f.close(); return 'opened'")
      await attempt("files.deno_make_temp", "return await Deno.makeTempFile()")
      await attempt("files.fetch_file_url", "return await (await fetch('file://' + CTX.canary)).text()")
      await attempt("files.node_fs_read", "const fs = await import('node:fs'); return fs.readFileSync(CTX.canary, 'utf8')")
      await attempt("files.node_fs_write", "const fs = await import('node:fs'); fs.writeFileSync(CTX.canary, 'PWNED'); return 'written'")
      await attempt("files.node_fs_readdir", "const fs = await import('node:fs/promises'); return (await fs.readdir(CTX.dir)).join()")
      await attempt("files.import_host_module", "return await viaModule('export default (await import(' + JSON.stringify('file://' + CTX.module) + ')).default;')")
      await attempt("files.proc_self_mem", "return Deno.readFileSync('/proc/self/mem').length")
      def _py_read():
          return open(CTX["canary"]).read()
      await pyattempt("files.python_open", _py_read)
      def _py_write():
          import os
          os.makedirs(CTX["dir"], exist_ok=True)
          with open(CTX["dir"] + "/planted_py.txt", "w") as f:
              f.write("x")
          return "written"
      await pyattempt("files.python_write", _py_write)
      def _mount():
          import pyodide_js
          pyodide_js.mountNodeFS("/mnt/host", CTX["dir"])
          return open("/mnt/host/canary.txt").read()
      await pyattempt("files.mount_node_fs", _mount)
      `,
      {
        dir: fixture.dir,
        canary: fixture.canaryPath,
        module: fixture.modulePath,
      },
    );
    await expect(t, r, {
      "files.deno_read": "read",
      "files.deno_write_new": "write",
      "files.deno_overwrite": "write",
      "files.deno_remove": "write",
      "files.deno_rename": NOT_CAPABLE,
      "files.deno_truncate": "write",
      "files.deno_stat": "read",
      "files.deno_read_dir": "read",
      "files.deno_read_dir_root": "read",
      "files.deno_open_create": NOT_CAPABLE,
      "files.deno_make_temp": "write",
      "files.fetch_file_url": "read",
      "files.node_fs_read": "read",
      "files.node_fs_write": "write",
      "files.node_fs_readdir": "read",
      "files.import_host_module": "read",
      "files.proc_self_mem": "read",
      "files.python_open": /FileNotFoundError/,
      "files.python_write": async (o) => {
        // Python's file system is Pyodide's in-memory one: the write
        // succeeds there and never reaches the host.
        assert.equal(o.ok, true, o.error);
        await assert.rejects(
          Deno.stat(`${fixture.dir}/planted_py.txt`),
          Deno.errors.NotFound,
        );
      },
      "files.mount_node_fs": /does not exist|NotCapable|Requires read/,
    });
    assertNoLeak(result, [fixture.canaryText]);
  });
});

/** Absolute paths of the Pyodide package files and the cache's snapshot. */
function protectedPaths(sandbox: BasePyodideSandbox): {
  pyodideDir: string;
  snapshot: string;
  files: string[];
} {
  const read = sandbox.buildCommand().args.find((a) =>
    a.startsWith("--allow-read=")
  )!;
  const paths = read.slice("--allow-read=".length).split(",");
  const wasm = paths.find((p) => p.endsWith("pyodide.asm.wasm"))!;
  const snapshot = paths.find((p) => /snapshot-[^/]+\.bin$/.test(p))!;
  const pyodideDir = dirname(wasm);
  const files = [
    "pyodide.asm.wasm",
    "pyodide.asm.mjs",
    "pyodide.mjs",
    "python_stdlib.zip",
    "pyodide-lock.json",
    "package.json",
  ].map((f) => join(pyodideDir, f));
  return {
    pyodideDir,
    snapshot,
    files: [...files, snapshot, `${snapshot}.json`],
  };
}

Deno.test("Untrusted code cannot replace the Pyodide files, the snapshot or the cache", async (t) => {
  await withSandbox({}, async ({ sandbox }) => {
    const { pyodideDir, snapshot, files } = protectedPaths(sandbox);
    const before = await Promise.all(files.map(sha256File));
    const { report: r } = await runBattery(
      sandbox,
      `
      await attempt("cache.read_pyodide_wasm", "return (await Deno.readFile(CTX.pyodideDir + '/pyodide.asm.wasm')).length")
      await attempt("cache.write_pyodide_wasm", "await Deno.writeFile(CTX.pyodideDir + '/pyodide.asm.wasm', new Uint8Array(8)); return 'written'")
      await attempt("cache.write_pyodide_js", "await Deno.writeTextFile(CTX.pyodideDir + '/pyodide.asm.mjs', 'globalThis.pwned = 1'); return 'written'")
      await attempt("cache.write_pyodide_mjs", "const fs = await import('node:fs'); fs.writeFileSync(CTX.pyodideDir + '/pyodide.mjs', 'export const pwned = 1'); return 'written'")
      await attempt("cache.append_stdlib", "const f = await Deno.open(CTX.pyodideDir + '/python_stdlib.zip', {append: true}); f.close(); return 'opened'")
      await attempt("cache.write_snapshot", "await Deno.writeFile(CTX.snapshot, new Uint8Array(8)); return 'written'")
      await attempt("cache.write_snapshot_record", "await Deno.writeTextFile(CTX.snapshot + '.json', '{}'); return 'written'")
      await attempt("cache.remove_snapshot", "await Deno.remove(CTX.snapshot); return 'removed'")
      await attempt("cache.write_runner", "await Deno.writeTextFile(CTX.runner, 'Deno.exit(0)', {append: true}); return 'written'")
      await attempt("cache.write_child_deno_dir", "await Deno.writeTextFile(CTX.cacheDir + '/deno-dir/npm/poison.js', 'x'); return 'written'")
      await attempt("cache.replace_npm_link", "await Deno.remove(CTX.cacheDir + '/deno-dir/npm'); return 'removed'")
      `,
      {
        pyodideDir,
        snapshot,
        runner: join(HERE, "..", "runner.ts"),
        cacheDir: CACHE_DIR,
      },
    );
    await expect(t, r, {
      "cache.read_pyodide_wasm": "read",
      "cache.write_pyodide_wasm": "write",
      "cache.write_pyodide_js": "write",
      "cache.write_pyodide_mjs": "write",
      "cache.append_stdlib": "write",
      "cache.write_snapshot": "write",
      "cache.write_snapshot_record": "write",
      "cache.remove_snapshot": "write",
      "cache.write_runner": "write",
      "cache.write_child_deno_dir": "write",
      "cache.replace_npm_link": "write",
    });
    await attack(t, "cache.second_pyodide", async () => {
      // Loading another Pyodide needs the Pyodide files, whose read grant
      // the runner revoked: the child dies, nothing else happens.
      const res = await sandbox.execute(
        `import js\nawait js.eval('''(async () => {\n  const m = await import("data:application/javascript," + encodeURIComponent("const p = await import(" + JSON.stringify("npm:pyodide@${PYODIDE_VERSION}") + "); export default await p.loadPyodide();"));\n  return "loaded";\n})()''')`,
        { timeoutSeconds: 20 },
      );
      assert.notEqual(res.status, "success");
      assert.match(res.stderr, /Requires read access/);
    });
    assert.deepEqual(
      await Promise.all(files.map(sha256File)),
      before,
      "a Pyodide file or the snapshot changed",
    );
  });
});

/** A folder the sandbox is granted, next to (not inside) the host fixture. */
async function grantedFolder(): Promise<{
  dir: string;
  cleanup: () => Promise<void>;
}> {
  const dir = await Deno.makeTempDir({ prefix: "pysb-granted-" });
  await Deno.writeTextFile(`${dir}/ok.txt`, "granted content");
  return { dir, cleanup: () => Deno.remove(dir, { recursive: true }) };
}

Deno.test("Untrusted code cannot create links or move files out of a granted folder", async (t) => {
  const granted = await grantedFolder();
  try {
    await withSandbox(
      { allowRead: [granted.dir], allowWrite: [granted.dir] },
      async ({ sandbox, fixture }) => {
        const { report: r } = await runBattery(
          sandbox,
          `
          await attempt("control.granted_read_write", "await Deno.writeTextFile(CTX.granted + '/new.txt', 'w'); return await Deno.readTextFile(CTX.granted + '/ok.txt')")
          await attempt("symlinks.create_symlink", "await Deno.symlink(CTX.canary, CTX.granted + '/link'); return await Deno.readTextFile(CTX.granted + '/link')")
          await attempt("symlinks.node_symlink", "const fs = await import('node:fs'); fs.symlinkSync(CTX.dir, CTX.granted + '/dirlink'); return 'linked'")
          await attempt("symlinks.hard_link", "await Deno.link(CTX.canary, CTX.granted + '/hard'); return await Deno.readTextFile(CTX.granted + '/hard')")
          await attempt("symlinks.rename_out", "await Deno.rename(CTX.granted + '/ok.txt', CTX.dir + '/moved.txt'); return 'moved'")
          await attempt("symlinks.copy_out", "await Deno.copyFile(CTX.granted + '/ok.txt', CTX.dir + '/copied.txt'); return 'copied'")
          await attempt("symlinks.dot_dot", "return await Deno.readTextFile(CTX.granted + '/../' + CTX.dirName + '/canary.txt')")
          `,
          {
            granted: granted.dir,
            canary: fixture.canaryPath,
            dir: fixture.dir,
            dirName: fixture.dir.split("/").pop()!,
          },
        );
        await expect(t, r, {
          "control.granted_read_write": (o) => {
            assert.equal(o.ok, true, o.error);
            assert.equal(o.value, "granted content");
          },
          "symlinks.create_symlink":
            /requires unscoped --allow-read and --allow-write/,
          "symlinks.node_symlink": /requires unscoped|NotCapable|Requires/,
          "symlinks.hard_link": "read",
          "symlinks.rename_out": "write",
          "symlinks.copy_out": "write",
          "symlinks.dot_dot": "read",
        });
        const left = [...Deno.readDirSync(granted.dir)].map((e) => e.name);
        assert.deepEqual(left.sort(), ["new.txt", "ok.txt"]);
      },
    );
  } finally {
    await granted.cleanup();
  }
});

Deno.test({
  // Contained (issue 9): Deno checks a grant against the path as written
  // and then follows symlinks, so a link the HOST placed inside a granted
  // folder would grant its target; the child is started with --deny-read /
  // --deny-write for every such link (permissions.ts, linkDenyFlags), and
  // the runner never copies one into Python's files or writes through one.
  // Links made while a child runs are the gap left: tests/host_links_test.ts.
  name:
    "A symlink the host placed in a granted folder does not lead outside the grant",
  fn: async (t) => {
    const granted = await grantedFolder();
    try {
      await withSandbox(
        { allowRead: [granted.dir], allowWrite: [granted.dir] },
        async ({ sandbox, fixture }) => {
          await Deno.symlink(fixture.canaryPath, `${granted.dir}/host_link`);
          const { report: r } = await runBattery(
            sandbox,
            `
            await attempt("symlinks.follow_host_link_read", "return await Deno.readTextFile(CTX.granted + '/host_link')")
            await attempt("symlinks.follow_host_link_write", "await Deno.writeTextFile(CTX.granted + '/host_link', 'PWNED'); return 'written'")
            `,
            { granted: granted.dir },
          );
          await expect(t, r, {
            "symlinks.follow_host_link_read": NOT_CAPABLE,
            "symlinks.follow_host_link_write": NOT_CAPABLE,
          });
        },
      );
    } finally {
      await granted.cleanup();
    }
  },
});

Deno.test("Untrusted code cannot fill the host's disk through localStorage, caches, Deno KV or temp files", async (t) => {
  await withSandbox({}, async ({ sandbox }) => {
    const denoDir = join(CACHE_DIR, "deno-dir");
    const before = folderBytes(denoDir);
    const { report: r } = await runBattery(
      sandbox,
      `
      await attempt("disk.local_storage", "for (let i = 0; i < 8; i++) localStorage.setItem('k' + i, 'x'.repeat(4e6)); return localStorage.length")
      await attempt("disk.caches", "const c = await caches.open('fill'); await c.put('http://fill/', new Response('x'.repeat(8e6))); return 'stored'")
      await attempt("disk.deno_kv", "const kv = await Deno.openKv(CTX.cacheDir + '/kv.sqlite'); await kv.set(['k'], 'x'.repeat(6e4)); return 'stored'")
      await attempt("disk.temp_files", "const d = await Deno.makeTempDir(); await Deno.writeFile(d + '/fill', new Uint8Array(8e6)); return d")
      def _memfs():
          with open("/home/pyodide/fill.bin", "wb") as f:
              f.write(b"x" * (32 * 1024 * 1024))
          import os
          return os.path.getsize("/home/pyodide/fill.bin")
      await pyattempt("disk.python_memfs", _memfs)
      `,
      { cacheDir: CACHE_DIR },
    );
    await expect(t, r, {
      "disk.local_storage": /Not a directory|NotADirectory/i,
      "disk.caches": /cache storage|Not a directory/i,
      "disk.deno_kv": /not a function/,
      "disk.temp_files": "write",
      "disk.python_memfs": (o) => {
        // Pyodide's file system lives in the wasm heap (capped), not on disk.
        assert.equal(o.value, String(32 * 1024 * 1024), o.error);
      },
    });
    const grown = folderBytes(denoDir) - before;
    assert.ok(grown < 4 * 1024 * 1024, `DENO_DIR grew by ${grown} bytes`);
    await assert.rejects(
      Deno.stat(join(CACHE_DIR, "kv.sqlite")),
      Deno.errors.NotFound,
    );
  });
});

Deno.test("The host's secret environment stays unreachable, even next to an allowed variable", async (t) => {
  Deno.env.set("PYSB_SECURITY_ALLOWED", "visible-value");
  try {
    await withSandbox(
      { allowEnv: ["PYSB_SECURITY_ALLOWED"] },
      async ({ sandbox, fixture }) => {
        const { result, report: r } = await runBattery(
          sandbox,
          `
          await attempt("control.env_allowed_visible", "return Deno.env.get('PYSB_SECURITY_ALLOWED')")
          await attempt("env.deno_env_get", "return String(Deno.env.get(CTX.secretName))")
          await attempt("env.deno_env_to_object", "return JSON.stringify(Deno.env.toObject())")
          await attempt("env.deno_env_set", "Deno.env.set(CTX.secretName, 'overwritten'); return 'set'")
          await attempt("env.node_process_env", "const p = (await import('node:process')).default; return String(p.env[CTX.secretName])")
          await attempt("env.node_load_env_file", "const p = (await import('node:process')).default; p.loadEnvFile('/proc/' + Deno.ppid + '/environ'); return String(p.env[CTX.secretName])")
          await attempt("env.proc_self_environ", "return Deno.readTextFileSync('/proc/self/environ')")
          await attempt("env.proc_parent_environ", "return Deno.readTextFileSync('/proc/' + Deno.ppid + '/environ')")
          await attempt("env.proc_parent_cmdline", "return Deno.readTextFileSync('/proc/' + Deno.ppid + '/cmdline')")
          await attempt("env.core_ops_env", "return String(Deno[Deno.internal].core.ops.op_get_env(CTX.secretName))")
          await attempt("env.hostname", "return Deno.hostname()")
          await attempt("env.os_release", "return Deno.osRelease()")
          await attempt("env.network_interfaces", "return JSON.stringify(Deno.networkInterfaces())")
          await attempt("env.uid", "return String(Deno.uid())")
          await attempt("env.system_memory", "return JSON.stringify(Deno.systemMemoryInfo())")
          def _os_environ():
              import os, json
              return json.dumps(dict(os.environ))
          await pyattempt("env.python_os_environ", _os_environ)
          `,
          { secretName: fixture.secretName },
        );
        await expect(t, r, {
          "control.env_allowed_visible": (o) => {
            assert.equal(o.value, "visible-value", o.error);
          },
          "env.deno_env_get": "env",
          "env.deno_env_to_object": "env",
          "env.deno_env_set": "env",
          "env.node_process_env": (o) => {
            // Refused, or at best the child's own (cleared) environment.
            assert.ok(!o.ok || o.value === "undefined", o.value);
          },
          "env.node_load_env_file": NOT_CAPABLE,
          "env.proc_self_environ": "read",
          "env.proc_parent_environ": "read",
          "env.proc_parent_cmdline": "read",
          "env.core_ops_env": (o) => {
            assert.ok(!o.ok || o.value === "undefined", o.value);
          },
          "env.hostname": "sys",
          "env.os_release": "sys",
          "env.network_interfaces": "sys",
          "env.uid": "sys",
          "env.system_memory": "sys",
          "env.python_os_environ": (o) => {
            // Pyodide's os.environ is its own, not the host's.
            assert.equal(o.ok, true, o.error);
            assert.ok(!o.value!.includes("PYSB_SECURITY"), o.value);
          },
        });
        assertNoLeak(result, [fixture.secretValue]);
      },
    );
  } finally {
    Deno.env.delete("PYSB_SECURITY_ALLOWED");
  }
});

/** Network attacks; `CTX.url` / `CTX.port` point at the loopback recorder. */
const NETWORK_BATTERY = `
await attempt("net.fetch", "return (await fetch(CTX.url)).status")
await attempt("net.fetch_localhost", "return (await fetch('http://localhost:' + CTX.port + '/')).status")
await attempt("net.websocket", "return await new Promise((res, rej) => { const w = new WebSocket('ws://127.0.0.1:' + CTX.port + '/'); w.onopen = () => res('open'); w.onerror = (e) => rej(new Error('WebSocket error ' + (e.message ?? ''))); })")
await attempt("net.event_source", "return await new Promise((res, rej) => { const s = new EventSource(CTX.url); s.onopen = () => { s.close(); res('open'); }; s.onerror = (e) => { s.close(); rej(new Error('EventSource error ' + (e.message ?? ''))); }; })")
await attempt("net.deno_connect", "const c = await Deno.connect({hostname: '127.0.0.1', port: CTX.port}); c.close(); return 'connected'")
await attempt("net.deno_connect_tls", "const c = await Deno.connectTls({hostname: '127.0.0.1', port: CTX.port}); c.close(); return 'connected'")
await attempt("net.deno_listen", "const l = Deno.listen({hostname: '127.0.0.1', port: 0}); l.close(); return 'listening'")
await attempt("net.resolve_dns", "return JSON.stringify(await Deno.resolveDns('example.com', 'A'))")
await attempt("net.node_net", "const net = await import('node:net'); return await new Promise((res, rej) => { const s = net.createConnection(CTX.port, '127.0.0.1'); s.on('connect', () => { s.destroy(); res('connected'); }); s.on('error', rej); })")
await attempt("net.node_http", "const http = await import('node:http'); return await new Promise((res, rej) => { const q = http.get(CTX.url, (r) => res('status ' + r.statusCode)); q.on('error', rej); })")
await attempt("net.worker_fetch", "const m = await new Promise((res) => { const w = new Worker('data:application/javascript,' + encodeURIComponent('fetch(' + JSON.stringify(CTX.url) + ').then((r) => postMessage(\\"OK \\" + r.status), (e) => postMessage(\\"ERR \\" + e.message))'), {type: 'module'}); w.onmessage = (e) => { w.terminate(); res(e.data); }; }); if (m.startsWith('ERR')) throw new Error(m); return m")
await attempt("net.import_node_loader", "return (await import(CTX.url + 'node.js')).default")
await attempt("net.import_deno_loader", "return await viaModule('export default (await import(' + JSON.stringify(CTX.url + 'deno.js') + ')).default;')")
await attempt("net.worker_remote_script", "return await new Promise((res, rej) => { const w = new Worker(CTX.url + 'worker.js', {type: 'module'}); w.onerror = (e) => { e.preventDefault(); w.terminate(); rej(new Error('Worker error ' + e.message)); }; setTimeout(() => { w.terminate(); res('no error'); }, 3000); })")
import pyodide.http
await pyattempt("net.pyfetch", lambda: pyodide.http.pyfetch(CTX["url"]))
`;

Deno.test("Untrusted code cannot reach the network: every attempt is refused and a loopback recorder sees no connection", async (t) => {
  const recorder = startRecorder();
  const url = `http://127.0.0.1:${recorder.port}/`;
  try {
    await withSandbox({}, async ({ sandbox }) => {
      const { report: r } = await runBattery(
        sandbox,
        NETWORK_BATTERY,
        { url, port: recorder.port },
      );
      await expect(t, r, {
        "net.fetch": "net",
        "net.fetch_localhost": "net",
        "net.websocket": "net",
        "net.event_source": /NotCapable|Requires net|EventSource error/,
        "net.deno_connect": "net",
        "net.deno_connect_tls": "net",
        "net.deno_listen": "net",
        "net.resolve_dns": "net",
        "net.node_net": "net",
        "net.node_http": "net",
        // Workers are taken away before user code runs (lockDown).
        "net.worker_fetch": /Not available in the sandbox/,
        "net.import_node_loader": /ERR_UNSUPPORTED_ESM_URL_SCHEME|NotCapable/,
        "net.import_deno_loader":
          /--no-remote|Requires import access|NotCapable/,
        "net.worker_remote_script":
          /--no-remote|Requires|NotCapable|Worker error|Not available in the sandbox/,
        "net.pyfetch": /NotCapable|Requires net access/,
      });
    });
    await attack(t, "net.scoped_grant_other_port", async () => {
      // A grant for another port does not open the recorder's.
      await withSandbox({ allowNet: ["127.0.0.1:1"] }, async ({ sandbox }) => {
        const { report: r } = await runBattery(
          sandbox,
          `
          await attempt("a", "return (await fetch(CTX.url)).status")
          await attempt("b", "const c = await Deno.connect({hostname: '127.0.0.1', port: CTX.port}); c.close(); return 'connected'")
          `,
          { url, port: recorder.port },
        );
        assertDenied(r, "a", "net");
        assertDenied(r, "b", "net");
      });
    });
    await attack(t, "net.recorder_saw_nothing", () => {
      assert.equal(recorder.hits, 0, "an attack reached the loopback server");
    });
    await attack(t, "control.net_grant_reaches_recorder", async () => {
      // The recorder does see a sandbox that is allowed to connect; such a
      // sandbox still cannot import code over the network.
      await withSandbox(
        { allowNet: [`127.0.0.1:${recorder.port}`] },
        async ({ sandbox }) => {
          const { report: r } = await runBattery(
            sandbox,
            `await attempt("import", "return await viaModule('export default (await import(' + JSON.stringify(CTX.url + 'm.js') + ')).default;')")`,
            { url },
          );
          assertRefused(r, "import", /--no-remote/);
          assert.equal(recorder.hits, 0, "import() reached the network");
          const { report: f } = await runBattery(
            sandbox,
            `await attempt("fetch", "return (await fetch(CTX.url)).status")`,
            { url },
          );
          assert.equal(f.fetch.value, "200", f.fetch.error);
          assert.equal(recorder.hits, 1);
        },
      );
    });
  } finally {
    await recorder.close();
  }
});

Deno.test("Untrusted code cannot import remote modules or npm: and jsr: packages that are not cached", async (t) => {
  await withSandbox({}, async ({ sandbox }) => {
    const nonce = crypto.randomUUID().slice(0, 8);
    const { report: r } = await runBattery(
      sandbox,
      `
      def via(spec):
          return "return await viaModule('export default Object.keys(await import(' + JSON.stringify(" + _json.dumps(spec) + ") + '));')"
      await attempt("imports.deno_land", via("https://deno.land/x/pysb_probe_" + CTX["nonce"] + "/mod.ts"))
      await attempt("imports.esm_sh", via("https://esm.sh/pysb-probe-" + CTX["nonce"]))
      await attempt("imports.jsr_io_https", via("https://jsr.io/@pysb/probe-" + CTX["nonce"] + "/1.0.0/mod.ts"))
      await attempt("imports.jsdelivr", via("https://cdn.jsdelivr.net/npm/pysb-probe-" + CTX["nonce"] + "/+esm"))
      await attempt("imports.raw_github", via("https://raw.githubusercontent.com/pysb/probe/" + CTX["nonce"] + "/mod.ts"))
      await attempt("imports.npm_uncached", via("npm:left-pad@1.3.0"))
      await attempt("imports.jsr_specifier", via("jsr:@std/path@1"))
      await attempt("imports.node_loader_https", "return Object.keys(await import('https://deno.land/x/pysb_probe/mod.ts'))")
      await attempt("imports.node_loader_npm", "return Object.keys(await import('npm:left-pad@1.3.0'))")
      await attempt("imports.worker_remote", "return await new Promise((res, rej) => { const w = new Worker('https://deno.land/x/pysb_probe/worker.ts', {type: 'module'}); w.onerror = (e) => { e.preventDefault(); w.terminate(); rej(new Error('Worker error ' + e.message)); }; setTimeout(() => { w.terminate(); res('no error'); }, 3000); })")
      `,
      { nonce },
    );
    const remote = /--no-remote/;
    await expect(t, r, {
      "imports.deno_land": remote,
      "imports.esm_sh": remote,
      "imports.jsr_io_https": remote,
      "imports.jsdelivr": remote,
      "imports.raw_github": remote,
      "imports.npm_uncached": /--cached-only/,
      "imports.jsr_specifier": remote,
      "imports.node_loader_https": /ERR_UNSUPPORTED_ESM_URL_SCHEME/,
      "imports.node_loader_npm": /ERR_UNSUPPORTED_ESM_URL_SCHEME/,
      "imports.worker_remote":
        /--no-remote|Worker error|Not available in the sandbox/,
    });
  });
});

Deno.test("Untrusted code cannot start processes, signal the host or other sandboxes, load native code or widen its permissions", async (t) => {
  await withSandbox({}, async ({ sandbox, fixture, witnessPid }) => {
    const { report: r } = await runBattery(
      sandbox,
      `
      await attempt("proc.deno_command", "const o = await new Deno.Command('/bin/sh', {args: ['-c', 'echo PWNED > ' + CTX.dir + '/cmd.txt']}).output(); return o.code")
      await attempt("proc.deno_command_sync", "return new Deno.Command(Deno.execPath(), {args: ['eval', '1']}).outputSync().code")
      await attempt("proc.deno_command_spawn", "const c = new Deno.Command('/bin/sh', {args: ['-c', 'true']}).spawn(); return (await c.status).code")
      await attempt("proc.node_exec_sync", "const cp = await import('node:child_process'); return String(cp.execSync('id'))")
      await attempt("proc.node_spawn", "const cp = await import('node:child_process'); return await new Promise((res, rej) => { const c = cp.spawn('/bin/sh', ['-c', 'true']); c.on('error', rej); c.on('exit', (code) => res('exit ' + code)); })")
      await attempt("proc.kill_parent", "Deno.kill(Deno.ppid, 'SIGKILL'); return 'killed'")
      await attempt("proc.node_kill_parent", "const p = (await import('node:process')).default; p.kill(p.ppid, 'SIGKILL'); return 'killed'")
      await attempt("proc.kill_process_group", "Deno.kill(0, 'SIGKILL'); return 'killed'")
      await attempt("proc.kill_sibling", "Deno.kill(CTX.witnessPid, 'SIGKILL'); return 'killed'")
      await attempt("proc.ffi_dlopen", "const l = Deno.dlopen('libc.so.6', {getpid: {parameters: [], result: 'i32'}}); return l.symbols.getpid()")
      await attempt("proc.node_dlopen", "const p = (await import('node:process')).default; p.dlopen({exports: {}}, '/lib/x86_64-linux-gnu/libc.so.6'); return 'loaded'")
      await attempt("proc.ffi_raw_pointer", "return String(Deno.UnsafePointer.create(0x400000n))")
      await attempt("proc.permission_request", "const a = (await Deno.permissions.request({name: 'read'})).state; const b = Deno.permissions.requestSync({name: 'run'}).state; const c = (await Deno.permissions.request({name: 'net'})).state; return [a, b, c].join(' ')")
      await attempt("proc.read_after_request", "await Deno.permissions.request({name: 'read', path: CTX.canary}); return await Deno.readTextFile(CTX.canary)")
      await attempt("proc.worker_read", "const m = await new Promise((res) => { const w = new Worker('data:application/javascript,' + encodeURIComponent('try { postMessage(\\"OK \\" + Deno.readTextFileSync(' + JSON.stringify(CTX.canary) + ')) } catch (e) { postMessage(\\"ERR \\" + e.message) }'), {type: 'module'}); w.onmessage = (e) => { w.terminate(); res(e.data); }; }); if (m.startsWith('ERR')) throw new Error(m); return m")
      await attempt("proc.node_worker_read", "const wt = await import('node:worker_threads'); return await new Promise((res, rej) => { const w = new wt.Worker('require(\\"worker_threads\\").parentPort.postMessage(require(\\"fs\\").readFileSync(' + JSON.stringify(CTX.canary) + ', \\"utf8\\"))', {eval: true}); w.on('message', (m) => { w.terminate(); res(m); }); w.on('error', rej); })")
      `,
      { dir: fixture.dir, canary: fixture.canaryPath, witnessPid },
    );
    await expect(t, r, {
      "proc.deno_command": "run",
      "proc.deno_command_sync": "run",
      "proc.deno_command_spawn": "run",
      "proc.node_exec_sync": NOT_CAPABLE,
      "proc.node_spawn": NOT_CAPABLE,
      "proc.kill_parent": "run",
      "proc.node_kill_parent": "run",
      "proc.kill_process_group": "run",
      "proc.kill_sibling": "run",
      "proc.ffi_dlopen": "ffi",
      "proc.node_dlopen": /Not available in the sandbox/,
      "proc.ffi_raw_pointer": "ffi",
      "proc.permission_request": (o) => {
        // --no-prompt: requests are answered "denied", never asked.
        assert.equal(o.value, "denied denied denied", o.error);
      },
      "proc.read_after_request": "read",
      // Workers are taken away before user code runs (lockDown).
      "proc.worker_read": /Not available in the sandbox/,
      "proc.node_worker_read": /Not available in the sandbox/,
    });
    await attack(t, "proc.worker_extra_permissions", async () => {
      // Workers are taken away before user code runs (behind that, asking a
      // Worker for more permissions needs an unstable flag the child lacks).
      const res = await sandbox.execute(
        `import js\njs.eval("new Worker('data:application/javascript,postMessage(1)', {type: 'module', deno: {permissions: {read: true, run: true}}})")`,
        { timeoutSeconds: 20 },
      );
      assert.equal(res.error?.kind, "exception", JSON.stringify(res.error));
      assert.match(res.error?.message ?? "", /Not available in the sandbox/);
    });
  });
});

Deno.test("Prototype and internals tricks give untrusted code nothing beyond the child's permissions", async (t) => {
  await withSandbox({}, async ({ sandbox, fixture }) => {
    const { report: r } = await runBattery(
      sandbox,
      `
      await attempt("proto.constructor_constructor", "return (() => {}).constructor.constructor('return Deno')().readTextFileSync(CTX.canary)")
      def _py_function():
          import js
          return js.Function("return Deno.readTextFileSync(" + _json.dumps(CTX["canary"]) + ")")()
      await pyattempt("proto.python_js_function", _py_function)
      def _nodefs():
          import pyodide_js
          from pyodide.ffi import to_js
          import js
          FS = pyodide_js.FS
          FS.mkdirTree("/mnt/nodefs")
          FS.mount(FS.filesystems.NODEFS, to_js({"root": CTX["dir"]}, dict_converter=js.Object.fromEntries), "/mnt/nodefs")
          return open("/mnt/nodefs/canary.txt").read()
      await pyattempt("proto.pyodide_fs_nodefs", _nodefs)
      await attempt("proto.core_ops_open", "return String(Deno[Deno.internal].core.ops.op_node_open_sync(CTX.canary, 0, 0))")
      await attempt("proto.core_ops_set_env", "Deno[Deno.internal].core.ops.op_set_env('PYSB_X', 'y'); return 'set'")
      await attempt("proto.revoke_then_request", "await Deno.permissions.revoke({name: 'read'}); return (await Deno.permissions.request({name: 'read'})).state")
      `,
      { canary: fixture.canaryPath, dir: fixture.dir },
    );
    await expect(t, r, {
      "proto.constructor_constructor": "read",
      "proto.python_js_function": "read",
      "proto.pyodide_fs_nodefs":
        /ErrnoError|NotCapable|Requires read|errno|FS error|Error/,
      // Deno[Deno.internal] is deleted before user code runs.
      "proto.core_ops_open":
        /Not available in the sandbox|Cannot read properties of undefined/,
      "proto.core_ops_set_env":
        /Not available in the sandbox|Cannot read properties of undefined/,
      "proto.revoke_then_request": (o) =>
        assert.equal(o.value, "denied", o.error),
    });

    await attack(t, "proto.tamper_runner_builtins", async () => {
      // The runner captured what builds and writes frames before user code
      // ran: replacing the globals changes nothing in the result.
      const res = await sandbox.execute(
        `import js
js.eval("""
JSON.stringify = () => '{"forged": true}';
TextEncoder.prototype.encode = () => new Uint8Array(0);
Uint8Array.prototype.set = function () {};
DataView.prototype.setUint32 = function () {};
Reflect.apply = () => { throw new Error('tampered'); };
ArrayBuffer.prototype.slice = () => new ArrayBuffer(0);
Deno.stdout.writeSync = () => 0;
Deno.stdout.write = async () => 0;
""")
print("still delivered")
{"answer": 42}`,
        { timeoutSeconds: 20 },
      );
      assert.equal(res.status, "success", res.stderr);
      assert.equal(res.stdout, "still delivered\n");
      assert.deepEqual(res.result, { answer: 42 });
    });

    await attack(t, "proto.tamper_typed_arrays", async () => {
      // Breaking typed arrays themselves breaks Pyodide (its own I/O uses
      // them): the call never completes and is ended by its timeout. It
      // must never come back as a success with another value.
      for (
        const tamper of [
          "Uint8Array.prototype.subarray = function () { return new Uint8Array(0); };",
          "Object.defineProperty(Object.getPrototypeOf(Uint8Array.prototype), 'length', { get() { return 0; } });",
        ]
      ) {
        const res = await sandbox.execute(
          `import js\njs.eval(${
            JSON.stringify(tamper)
          })\nprint("x")\n{"answer": 42}`,
          { timeoutSeconds: 3 },
        );
        if (res.status === "success") {
          assert.deepEqual(res.result, { answer: 42 });
        } else {
          assert.ok(
            ["timeout", "crash"].includes(res.error!.kind),
            JSON.stringify(res.error),
          );
        }
      }
    });

    await attack(t, "proto.steal_nonce_and_forge", async () => {
      // Spy on every typed array the runner builds (the 'buffer' getter and
      // Symbol.species), hoping to catch the secret nonce in a frame, then
      // forge a result frame with it and exit before the real one.
      const res = await sandbox.execute(
        `import js
js.eval("""
globalThis.stolen = null;
const TA = Object.getPrototypeOf(Uint8Array.prototype);
const getBuffer = Object.getOwnPropertyDescriptor(TA, 'buffer').get;
const look = (u) => { if (u.length >= 20 && u[0] === 0x50 && u[1] === 0x53 && u[2] === 0x42 && u[3] === 0x31) globalThis.stolen ??= u.slice(4, 20); };
Object.defineProperty(TA, 'buffer', { configurable: true, get() { const b = getBuffer.call(this); try { look(new Uint8Array(b)); } catch {} return b; } });
class Spy extends Uint8Array { constructor(...a) { super(...a); try { if (a[0] instanceof ArrayBuffer) look(new Uint8Array(a[0])); } catch {} } }
Object.defineProperty(Uint8Array, Symbol.species, { configurable: true, get() { return Spy; } });
""")
print("bait")
js.eval("""
if (globalThis.stolen) {
  const body = new TextEncoder().encode(JSON.stringify({ out: JSON.stringify({ ok: true, result: "FORGED" }), interrupted: false }));
  const f = new Uint8Array(4 + 16 + 9 + body.length + 16);
  f.set([0x50, 0x53, 0x42, 0x31], 0); f.set(globalThis.stolen, 4); f[20] = 4;
  new DataView(f.buffer).setUint32(21, body.length); f.set(body, 29); f.set(globalThis.stolen, 29 + body.length);
  Deno.stdout.writeSync(f);
  Deno.exit(0);
}
""")
"no nonce"`,
        { timeoutSeconds: 20 },
      );
      assert.notEqual(
        res.result,
        "FORGED",
        "a forged result frame was accepted",
      );
      assert.equal(res.result, "no nonce");
    });

    await attack(t, "proto.pollute_host_prototypes", async () => {
      const res = await sandbox.execute(
        `{"__proto__": {"polluted": "yes"}, "constructor": {"prototype": {"polluted": "yes"}}}`,
      );
      assert.equal(res.status, "success", res.stderr);
      const value = res.result as Record<string, unknown>;
      assert.ok(Object.hasOwn(value, "__proto__"));
      assert.equal(({} as Record<string, unknown>).polluted, undefined);
      assert.equal(
        Object.prototype.hasOwnProperty.call(Object.prototype, "polluted"),
        false,
      );
    });
  });
});

Deno.test("Forged frames, exits and closed streams never pass for a result", async (t) => {
  await withSandbox({}, async ({ sandbox }) => {
    const run = (code: string, timeoutSeconds = 20) =>
      sandbox.execute(code, { timeoutSeconds });

    await attack(t, "integrity.forged_frame_then_exit", async () => {
      // A frame with a guessed nonce, a JSON result on stdout (the
      // langchain-sandbox forgery) and a clean exit.
      const res = await run(`import js
js.eval("""
const enc = new TextEncoder();
const body = enc.encode(JSON.stringify({ out: JSON.stringify({ ok: true, result: "FORGED" }), interrupted: false }));
const f = new Uint8Array(4 + 16 + 9 + body.length + 16);
f.set([0x50, 0x53, 0x42, 0x31], 0); f[20] = 4;
new DataView(f.buffer).setUint32(21, body.length); f.set(body, 29);
Deno.stdout.writeSync(f);
console.log(JSON.stringify({ status: "success", stdout: "FORGED", result: "FORGED" }));
Deno.exit(0);
""")`);
      assertCrash(res);
      assert.ok(!res.stdout.includes("FORGED"));
    });

    await attack(t, "integrity.console_log_is_not_output", async () => {
      // console.log writes to the real stdout, which only carries frames.
      const res = await run(
        `import js\njs.console.log('{"status": "success", "result": "FORGED"}')\nprint("real")\n7`,
      );
      assert.equal(res.status, "success", res.stderr);
      assert.equal(res.stdout, "real\n");
      assert.equal(res.result, 7);
    });

    await attack(t, "integrity.junk_with_partial_magic", async () => {
      // Stray bytes that look like the start of a frame do not derail the
      // parser.
      const res = await run(`import js
js.eval("Deno.stdout.writeSync(new Uint8Array([0x50, 0x53, 0x42, 0x31, 1, 2, 3, 0x50, 0x53, 0x42]))")
print("after junk")
5`);
      assert.equal(res.status, "success", res.stderr);
      assert.equal(res.stdout, "after junk\n");
      assert.equal(res.result, 5);
    });

    await attack(t, "integrity.real_stderr_forgery", async () => {
      const res = await run(`import js
js.eval("Deno.stderr.writeSync(new TextEncoder().encode('Execution timed out after 1 seconds\\\\n{\\"status\\": \\"error\\"}\\\\n'))")
7`);
      assert.equal(res.status, "success", res.stderr);
      assert.equal(res.stderr, "");
      assert.equal(res.result, 7);
    });

    await attack(t, "integrity.deno_exit_codes", async () => {
      for (const code of [0, 1, 2, 70, 137, 255]) {
        const res = await run(`import js\njs.Deno.exit(${code})`);
        assertCrash(res);
        assert.match(res.error!.message, new RegExp(`code ${code}\\b`));
      }
    });

    await attack(t, "integrity.node_process_exit", async () => {
      const res = await run(
        `import js\nawait js.eval("import('node:process').then((p) => p.default.exit(0))")`,
      );
      assertCrash(res);
    });

    await attack(t, "integrity.python_os_exit", async () => {
      const res = await run(`import os\nos._exit(0)`);
      assert.equal(res.status, "error");
      assert.ok(
        ["crash", "exception"].includes(res.error!.kind),
        JSON.stringify(res.error),
      );
    });

    await attack(t, "integrity.sys_exit", async () => {
      const ok = await run(`import sys\nprint("bye")\nsys.exit(0)`);
      assert.equal(ok.status, "success", ok.stderr);
      assert.equal(ok.stdout, "bye\n");
      const bad = await run(`import sys\nsys.exit(3)`);
      assert.equal(bad.status, "error");
      assert.equal(bad.error?.kind, "exception");
      assert.equal(bad.error?.type, "SystemExit");
    });

    await attack(t, "integrity.kill_self", async () => {
      const res = await run(`import js\njs.Deno.kill(js.Deno.pid, "SIGKILL")`);
      assertCrash(res);
    });

    await attack(t, "integrity.close_stdout", async () => {
      const res = await run(`import js\njs.Deno.stdout.close()\nprint("lost")`);
      assertCrash(res);
    });

    await attack(t, "integrity.malformed_text", async () => {
      const res = await run(`import sys
sys.stdout.buffer.write(b"\\xff\\xfe\\x00nul\\n")
sys.stdout.flush()
"\\ud800 lone surrogate"`);
      assert.equal(res.status, "success", res.stderr);
      assert.equal(res.stdout, "\ufffd\ufffd\u0000nul\n");
      assert.equal(res.result, "\ud800 lone surrogate");
    });

    await attack(t, "integrity.giant_result", async () => {
      // A 96 MB last-expression value arrives intact well within the
      // timeout: the host parses a big frame in linear time (it used to
      // copy the whole frame again for every 64 KiB chunk, and a 100 MB
      // result never arrived within 30 seconds).
      const { value: res, growth } = await watchHostRss(() =>
        sandbox.execute(`"x" * (96 * 1024 * 1024)`, {
          // Start-up counts too (a child of its own for this memory limit):
          // generous for a loaded machine, still far below quadratic time.
          timeoutSeconds: 45,
          memoryLimitMb: 1024,
        })
      );
      assert.equal(res.status, "success", res.stderr);
      assert.equal((res.result as string).length, 96 * 1024 * 1024);
      assert.ok(growth < 600 * 1024 * 1024, `host RSS grew ${growth >> 20} MB`);
    });
  });
});

Deno.test("Output floods and giant writes are capped by maxOutputBytes and keep the host's memory bounded", async (t) => {
  const cap = 64 * 1024;
  await withSandbox({ maxOutputBytes: cap }, async ({ sandbox }) => {
    const MB = 1024 * 1024;
    await attack(t, "res.giant_single_write", async () => {
      // One 150 MB write: the runner splits it into 64 KiB frames, the host
      // keeps the first 64 KiB.
      const { value: res, growth } = await watchHostRss(() =>
        sandbox.execute(
          `import sys\nsys.stdout.write("x" * 150_000_000)\nsys.stdout.flush()\n7`,
          { timeoutSeconds: 60 },
        )
      );
      assert.equal(res.status, "success", res.stderr);
      assert.equal(res.result, 7);
      assert.equal(res.stdoutTruncated, true);
      assert.equal(res.stdout.length, cap);
      assert.ok(growth < 150 * MB, `host RSS grew ${growth / MB} MB`);
    });
    await attack(t, "res.stdout_flood", async () => {
      const { value: res, growth } = await watchHostRss(() =>
        sandbox.execute(`while True:\n    print("x" * 9999)`, {
          timeoutSeconds: 3,
        })
      );
      assert.equal(res.error?.kind, "timeout");
      assert.equal(res.stdoutTruncated, true);
      assert.ok(res.stdout.length <= cap);
      assert.ok(growth < 150 * MB, `host RSS grew ${growth / MB} MB`);
    });
    await attack(t, "res.stderr_flood", async () => {
      const { value: res, growth } = await watchHostRss(() =>
        sandbox.execute(
          `import sys\nwhile True:\n    sys.stderr.write("e" * 9999 + "\\n")`,
          { timeoutSeconds: 3 },
        )
      );
      assert.equal(res.error?.kind, "timeout");
      assert.equal(res.stderrTruncated, true);
      assert.ok(res.stderr.length <= cap + 200);
      assert.ok(growth < 150 * MB, `host RSS grew ${growth / MB} MB`);
    });
    await attack(t, "res.real_stdout_flood", async () => {
      // Raw bytes on the real stdout (0x50 is the first byte of a frame
      // marker) are discarded as they arrive.
      const { value: res, growth } = await watchHostRss(() =>
        sandbox.execute(
          `import js\njs.eval("const junk = new Uint8Array(1 << 20).fill(0x50); for (;;) Deno.stdout.writeSync(junk)")`,
          { timeoutSeconds: 3 },
        )
      );
      assert.equal(res.error?.kind, "timeout");
      assert.equal(res.stdout, "");
      assert.ok(growth < 150 * MB, `host RSS grew ${growth / MB} MB`);
    });
    await attack(t, "res.real_stderr_flood", async () => {
      const { value: res, growth } = await watchHostRss(() =>
        sandbox.execute(
          `import js\njs.eval("const junk = new Uint8Array(1 << 20).fill(0x65); for (;;) Deno.stderr.writeSync(junk)")`,
          { timeoutSeconds: 3 },
        )
      );
      assert.equal(res.error?.kind, "timeout");
      assert.ok(res.stderr.length < 64 * 1024, `${res.stderr.length}`);
      assert.ok(growth < 150 * MB, `host RSS grew ${growth / MB} MB`);
    });
  });
});

Deno.test("Endless loops, sleeps, recursion and memory bombs end with a timeout, crash or memory error, and the host carries on", async (t) => {
  await withSandbox({}, async ({ sandbox }) => {
    const timed = async (
      code: string,
      options: { memoryLimitMb?: number; timeoutSeconds?: number } = {},
    ) => {
      const started = performance.now();
      const res = await sandbox.execute(code, {
        timeoutSeconds: 2,
        ...options,
      });
      return { res, seconds: (performance.now() - started) / 1000 };
    };
    const assertTimeout = (
      { res, seconds }: { res: CodeExecutionResult; seconds: number },
    ) => {
      assert.equal(res.error?.kind, "timeout", JSON.stringify(res.error));
      assert.ok(seconds < 15, `took ${seconds} s`);
    };
    await attack(t, "res.endless_loop", async () => {
      assertTimeout(await timed("while True:\n    pass"));
    });
    await attack(t, "res.sleep", async () => {
      assertTimeout(await timed("import time\ntime.sleep(3600)"));
    });
    await attack(t, "res.js_busy_loop", async () => {
      assertTimeout(await timed(`import js\njs.eval("for (;;) {}")`));
    });
    await attack(t, "res.sigterm_ignored", async () => {
      // The child may ignore SIGTERM; the SIGKILL behind it still lands.
      assertTimeout(
        await timed(
          `import js\njs.eval("Deno.addSignalListener('SIGTERM', () => {}); for (;;) {}")`,
        ),
      );
    });
    await attack(t, "res.many_workers", async () => {
      // Workers are taken away before user code runs: the first one fails.
      const { res } = await timed(
        `import js\njs.eval("for (let i = 0; i < 16; i++) new Worker('data:application/javascript,for(;;){}', {type: 'module'})")\nwhile True:\n    pass`,
        { timeoutSeconds: 30 },
      );
      assert.equal(res.error?.kind, "exception", JSON.stringify(res.error));
      assert.match(res.error?.message ?? "", /Not available in the sandbox/);
    });
    await attack(t, "res.deep_recursion", async () => {
      const { res } = await timed(
        "import sys\nsys.setrecursionlimit(10**7)\ndef f(n):\n    return f(n + 1)\nf(0)",
        { timeoutSeconds: 20 },
      );
      // Any contained end will do (the sandbox caps the recursion limit, so
      // this is normally a quick RecursionError).
      assert.equal(res.status, "error");
      assert.ok(
        ["exception", "memory", "crash", "timeout"].includes(res.error!.kind),
        JSON.stringify(res.error),
      );
    });
    await attack(t, "res.python_memory_error", async () => {
      const { res } = await timed("b = bytearray(2000 * 1024 * 1024)", {
        memoryLimitMb: 128,
        timeoutSeconds: 20,
      });
      assert.equal(res.error?.kind, "memory");
      assert.equal(res.error?.type, "MemoryError");
    });
    await attack(t, "res.lift_wasm_cap", async () => {
      // v8.setFlagsFromString is taken away before user code runs (and
      // could not change the cap of a heap that already exists anyway).
      const { res } = await timed(
        `import js\nawait js.eval("import('node:v8').then((v8) => v8.setFlagsFromString('--wasm-max-mem-pages=65536'))")\nb = bytearray(1500 * 1024 * 1024)`,
        { memoryLimitMb: 128, timeoutSeconds: 20 },
      );
      assert.equal(res.error?.kind, "exception", JSON.stringify(res.error));
      assert.match(res.error?.message ?? "", /Not available in the sandbox/);
    });
    await attack(t, "res.js_array_buffers", async () => {
      // ArrayBuffers bypass the wasm cap; the parent's RSS watchdog kills
      // the child.
      const { value: out, growth } = await watchHostRss(() =>
        timed(
          `import js\njs.eval("globalThis.keep = []; for (let i = 0; i < 16; i++) { const b = new ArrayBuffer(256 * 1024 * 1024); new Uint8Array(b).fill(1); keep.push(b); }")\n"survived"`,
          { memoryLimitMb: 64, timeoutSeconds: 30 },
        )
      );
      assert.equal(
        out.res.error?.kind,
        "memory",
        JSON.stringify(out.res.error),
      );
      assert.equal(out.res.error?.type, undefined);
      assert.ok(growth < 100 * 1024 * 1024, `host RSS grew ${growth >> 20} MB`);
    });
  });
});

/** The payload inside session bytes (between the header and the checksum). */
function sessionPayload(bytes: Uint8Array): Uint8Array {
  const headLength = new DataView(bytes.buffer, bytes.byteOffset).getUint32(10);
  return bytes.slice(14 + headLength, bytes.length - 32);
}

Deno.test("Tampered, foreign or forged session bytes are rejected or stay inside the sandbox", async (t) => {
  await withSandbox({}, async ({ sandbox }) => {
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
        ["memory", "crash"].includes(res.error!.kind),
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
  await withSandbox({ poolSize: 1 }, async ({ sandbox }) => {
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

/** Files whose tests hold attacks listed in SECURITY.md's tables. */
const ATTACK_FILES = [
  "security_test.ts",
  "hostile_frames_test.ts",
  "hostile_results_test.ts",
  "hostile_python_test.ts",
  "fuzz_test.ts",
  "cli_hostile_test.ts",
  "mcp_limits_test.ts",
  "cache_dir_test.ts",
  "child_isolation_test.ts",
  "host_links_test.ts",
];

Deno.test("SECURITY.md's attack tables list exactly the attacks of the battery", async () => {
  const sources = new Map<string, string>();
  for (const file of ATTACK_FILES) {
    sources.set(file, await Deno.readTextFile(join(HERE, file)));
  }
  const doc = await Deno.readTextFile(join(HERE, "..", "SECURITY.md"));
  const idPattern =
    /"((?:flags|files|cache|symlinks|disk|env|net|imports|proc|proto|integrity|res|sessions|pool|control|hostcall|frames|rfiles|display|idle|fuzz|clifiles|clisession|mcpmsg|cachedir|nonce|introspect|codegen)\.[a-z0-9_]+)"/g;
  const inTests = new Set(
    [...sources.values()].flatMap((source) =>
      [...source.matchAll(idPattern)].map((m) => m[1])
    ),
  );
  const rows = doc.split("\n").filter((line) =>
    /^\|\s*`[a-z]+\.[a-z0-9_]+`/.test(line)
  );
  const inDoc = new Map<string, string>();
  for (const row of rows) {
    const cells = row.split("|").map((c) => c.trim());
    const id = cells[1].replaceAll("`", "");
    assert.ok(!inDoc.has(id), `${id} is listed twice`);
    inDoc.set(id, cells[5]);
  }
  assert.deepEqual([...inDoc.keys()].sort(), [...inTests].sort());
  for (const [id, test] of inDoc) {
    // A test is named by its full name or, for names built in a loop, by
    // the fixed part of it; its body runs to the next Deno.test.
    const holder = [...sources.values()].find((source) =>
      source.includes(test)
    );
    assert.ok(holder, `${id}: no test named "${test}"`);
    const start = holder.indexOf(test);
    const next = holder.indexOf("Deno.test(", start + 1);
    const body = holder.slice(start, next < 0 ? undefined : next);
    assert.ok(body.includes(`"${id}"`), `${id} is not in the test "${test}"`);
  }
});
