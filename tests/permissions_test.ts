import assert from "node:assert/strict";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import {
  BasePyodideSandbox,
  buildPermissionFlag,
  type PermissionName,
  PyodideSandbox,
} from "../mod.ts";
import {
  assertAllowed,
  assertDenied,
  PROBE_PY,
  startRecordingServer,
  withTempDir,
} from "./_helpers.ts";

const NAMES: PermissionName[] = ["env", "read", "write", "net", "run", "ffi"];
const MOD_TS = fileURLToPath(new URL("../mod.ts", import.meta.url));

/** The value of one `--allow-<name>` flag, split into entries. */
function flagEntries(args: string[], name: PermissionName): string[] | true {
  const flags = args.filter((a) =>
    a === `--allow-${name}` || a.startsWith(`--allow-${name}=`)
  );
  assert.equal(flags.length, 1, `one --allow-${name} flag in ${args}`);
  if (flags[0] === `--allow-${name}`) return true;
  return flags[0].slice(`--allow-${name}=`.length).split(",");
}

function hasFlag(args: string[], name: PermissionName): boolean {
  return args.some((a) =>
    a === `--allow-${name}` || a.startsWith(`--allow-${name}=`)
  );
}

Deno.test("buildPermissionFlag() gives the bare flag for true, for every permission", () => {
  for (const name of NAMES) {
    assert.equal(buildPermissionFlag(name, true), `--allow-${name}`);
  }
});

Deno.test("buildPermissionFlag() gives a comma-separated flag for a list, for every permission", () => {
  const lists: Record<PermissionName, string[]> = {
    env: ["HOME", "MY_APP_*"],
    read: ["/data", "/etc/hosts"],
    write: ["/tmp/out"],
    net: ["127.0.0.1:9", "example.com", "[::1]:8000"],
    run: ["/usr/bin/git", "python3"],
    ffi: ["/usr/lib/libsqlite3.so"],
  };
  for (const name of NAMES) {
    assert.equal(
      buildPermissionFlag(name, lists[name]),
      `--allow-${name}=${lists[name].join(",")}`,
    );
    assert.equal(
      buildPermissionFlag(name, [lists[name][0]]),
      `--allow-${name}=${lists[name][0]}`,
    );
  }
});

Deno.test("buildPermissionFlag() gives undefined for false and for an empty list", () => {
  for (const name of NAMES) {
    assert.equal(buildPermissionFlag(name, false), undefined);
    assert.equal(buildPermissionFlag(name, []), undefined);
  }
});

Deno.test("buildPermissionFlag() rejects empty, comma and NUL entries with a TypeError naming the entry", () => {
  for (const name of NAMES) {
    assert.throws(
      () => buildPermissionFlag(name, ["/ok", ""]),
      (e: unknown) =>
        e instanceof TypeError && /empty/i.test(e.message) &&
        e.message.includes(`--allow-${name}`),
    );
    assert.throws(
      () => buildPermissionFlag(name, ["/ok", "a,b"]),
      (e: unknown) => e instanceof TypeError && e.message.includes('"a,b"'),
    );
    assert.throws(
      () => buildPermissionFlag(name, ["a\0b"]),
      (e: unknown) =>
        e instanceof TypeError &&
        e.message.includes(JSON.stringify("a\0b")) && /NUL/.test(e.message),
    );
  }
});

Deno.test("buildPermissionFlag() rejects non-string entries, non-list values and unknown names", () => {
  assert.throws(
    () => buildPermissionFlag("read", [42 as unknown as string]),
    TypeError,
  );
  assert.throws(
    () => buildPermissionFlag("read", "/etc" as unknown as string[]),
    TypeError,
  );
  assert.throws(
    () => buildPermissionFlag("sys" as PermissionName, true),
    (e: unknown) => e instanceof TypeError && e.message.includes('"sys"'),
  );
});

Deno.test("BasePyodideSandbox rejects inexpressible permission entries in the constructor", () => {
  for (const name of NAMES) {
    const key = `allow${name[0].toUpperCase()}${name.slice(1)}`;
    for (const bad of ["", "x,y", "x\0y"]) {
      assert.throws(
        () => new BasePyodideSandbox({ [key]: [bad], skipDenoCheck: true }),
        TypeError,
        `${key}: ${JSON.stringify(bad)}`,
      );
    }
  }
});

Deno.test("buildCommand() always disables prompts, remote imports, npm downloads and config files", () => {
  const { command, args } = new BasePyodideSandbox().buildCommand();
  assert.equal(command, Deno.execPath());
  assert.equal(args[0], "run");
  for (
    const flag of [
      "--no-prompt",
      "--no-remote",
      "--cached-only",
      "--no-config",
      "--no-lock",
      "--node-modules-dir=none",
    ]
  ) {
    assert.ok(args.includes(flag), `${flag} in ${args}`);
  }
  // By default the child may read the runner's files and nothing else.
  for (const name of ["env", "write", "net", "run", "ffi"] as const) {
    assert.ok(!hasFlag(args, name), `no --allow-${name} in ${args}`);
  }
  assert.ok(!args.some((a) => a === "-A" || a === "--allow-all"));
  assert.ok(!args.some((a) => a.startsWith("--allow-sys")));
  const reads = flagEntries(args, "read");
  assert.ok(Array.isArray(reads) && reads.length > 0);
  assert.ok(
    reads.some((p) => p.endsWith("pyodide.asm.wasm")),
    `the runner reads Pyodide's wasm: ${reads}`,
  );
  // The runner file is the last argument and is a local file.
  const runner = args.at(-1)!;
  assert.ok(runner.startsWith("/"), runner);
  assert.ok(!args.slice(0, -1).some((a) => a === runner));
});

Deno.test("buildCommand() caps the V8 heap and the WebAssembly memory from memoryLimitMb and refuses code from strings", () => {
  const v8 = (args: string[]) => {
    const flags = args.filter((a) => a.startsWith("--v8-flags="));
    assert.equal(flags.length, 1);
    return flags[0].slice("--v8-flags=".length).split(",");
  };
  const base = new BasePyodideSandbox();
  assert.deepEqual(v8(base.buildCommand().args).sort(), [
    "--disallow-code-generation-from-strings",
    "--max-old-space-size=512",
    `--wasm-max-mem-pages=${512 * 16}`,
  ]);
  assert.deepEqual(v8(base.buildCommand(128).args).sort(), [
    "--disallow-code-generation-from-strings",
    "--max-old-space-size=128",
    `--wasm-max-mem-pages=${128 * 16}`,
  ]);
  const small = new BasePyodideSandbox({ memoryLimitMb: 256 });
  assert.ok(
    v8(small.buildCommand().args).includes(`--wasm-max-mem-pages=${256 * 16}`),
  );
  assert.throws(() => base.buildCommand(1), RangeError);
  assert.throws(() => new BasePyodideSandbox({ memoryLimitMb: 0 }), RangeError);
});

Deno.test("buildCommand() passes every permission option through as its flag", () => {
  const lists = new BasePyodideSandbox({
    allowEnv: ["SANDBOX_A", "SANDBOX_B_*"],
    allowWrite: ["/tmp/sandbox-out"],
    allowNet: ["127.0.0.1:9"],
    allowRun: ["/bin/true"],
    allowFfi: ["/usr/lib/libz.so"],
  }).buildCommand().args;
  assert.deepEqual(flagEntries(lists, "env"), ["SANDBOX_A", "SANDBOX_B_*"]);
  assert.deepEqual(flagEntries(lists, "write"), ["/tmp/sandbox-out"]);
  assert.deepEqual(flagEntries(lists, "net"), ["127.0.0.1:9"]);
  assert.deepEqual(flagEntries(lists, "run"), ["/bin/true"]);
  assert.deepEqual(flagEntries(lists, "ffi"), ["/usr/lib/libz.so"]);

  const all = new BasePyodideSandbox({
    allowEnv: true,
    allowRead: true,
    allowWrite: true,
    allowNet: true,
    allowRun: true,
    allowFfi: true,
  }).buildCommand().args;
  for (const name of NAMES) assert.equal(flagEntries(all, name), true);

  const none = new BasePyodideSandbox({
    allowEnv: [],
    allowRead: [],
    allowWrite: false,
    allowNet: [],
    allowRun: false,
    allowFfi: [],
  }).buildCommand().args;
  for (const name of ["env", "write", "net", "run", "ffi"] as const) {
    assert.ok(!hasFlag(none, name), `no --allow-${name} in ${none}`);
  }
});

Deno.test("buildCommand() merges the user's read list with the runner's own reads and never widens them to write", () => {
  const runnerReads = flagEntries(
    new BasePyodideSandbox().buildCommand().args,
    "read",
  ) as string[];
  const args = new BasePyodideSandbox({
    allowRead: ["/srv/data", "/etc/hostname"],
    allowWrite: ["/srv/out"],
  }).buildCommand().args;
  const reads = flagEntries(args, "read") as string[];
  for (const path of ["/srv/data", "/etc/hostname", ...runnerReads]) {
    assert.ok(reads.includes(path), `${path} in ${reads}`);
  }
  assert.deepEqual(flagEntries(args, "write"), ["/srv/out"]);
  for (const path of runnerReads) {
    assert.ok(
      !args.some((a) => a.startsWith("--allow-write") && a.includes(path)),
    );
  }
  // A write list alone adds no read entries of its own.
  const writeOnly = new BasePyodideSandbox({ allowWrite: ["/srv/out"] })
    .buildCommand().args;
  assert.deepEqual(
    [...(flagEntries(writeOnly, "read") as string[])].sort(),
    [...runnerReads].sort(),
  );
});

Deno.test("BasePyodideSandbox resolves relative read and write paths against the cwd at construction", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(join(dir, "first"));
    await Deno.mkdir(join(dir, "second"));
    // chdir is process-wide, so it runs in a child process of its own.
    const script = `
      import { BasePyodideSandbox } from ${JSON.stringify(MOD_TS)};
      Deno.chdir(${JSON.stringify(join(dir, "first"))});
      const sandbox = new BasePyodideSandbox({
        allowRead: ["data", "./nested/../file.txt", "/abs/path"],
        allowWrite: ["out"],
      });
      Deno.chdir(${JSON.stringify(join(dir, "second"))});
      console.log(JSON.stringify(sandbox.buildCommand().args));
    `;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--no-config", script],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.ok(out.success, stderr);
    const args = JSON.parse(new TextDecoder().decode(out.stdout)) as string[];
    const reads = flagEntries(args, "read") as string[];
    assert.ok(reads.includes(join(dir, "first", "data")), `${reads}`);
    assert.ok(reads.includes(join(dir, "first", "file.txt")), `${reads}`);
    assert.ok(reads.includes("/abs/path"), `${reads}`);
    assert.ok(!reads.some((p) => p.includes("second")), `${reads}`);
    assert.deepEqual(flagEntries(args, "write"), [join(dir, "first", "out")]);
  });
});

Deno.test("Python is denied read, write, env, net, run and ffi by default, and the host is untouched", async () => {
  const server = startRecordingServer();
  const runnerReads = flagEntries(
    new BasePyodideSandbox().buildCommand().args,
    "read",
  ) as string[];
  const pyodideLock = runnerReads.find((p) => p.endsWith("pyodide-lock.json"));
  assert.ok(pyodideLock, `${runnerReads}`);
  const sandbox = new PyodideSandbox({ poolSize: 0 });
  try {
    await withTempDir(async (dir) => {
      const secret = join(dir, "secret.txt");
      await Deno.writeTextFile(secret, "top secret");
      const written = join(dir, "written.txt");
      Deno.env.set("SANDBOX_TEST_SECRET_VAR", "hidden");
      let result;
      try {
        result = await sandbox.execute(
          `${PROBE_PY}
from pyodide.ffi import to_js
out = {}
out["read"] = probe(lambda: js.Deno.readTextFileSync(${JSON.stringify(secret)}))
out["read_dir"] = probe(lambda: js.Deno.statSync(${
            JSON.stringify(dir)
          }).isDirectory)
out["read_runner_file"] = probe(lambda: js.Deno.readTextFileSync(${
            JSON.stringify(pyodideLock)
          })[:20])
out["write"] = probe(lambda: js.Deno.writeTextFileSync(${
            JSON.stringify(written)
          }, "pwned"))
out["env"] = probe(lambda: js.Deno.env.get("SANDBOX_TEST_SECRET_VAR"))
out["env_all"] = probe(lambda: len(js.Deno.env.toObject().object_keys()))
out["net"] = await aprobe(lambda: js.fetch(${
            JSON.stringify(server.url + "/fetch")
          }))
out["net_connect"] = await aprobe(lambda: js.Deno.connect(to_js({"hostname": "127.0.0.1", "port": ${
            server.url.split(":").at(-1)
          }}, dict_converter=js.Object.fromEntries)))
out["run"] = probe(lambda: js.Deno.Command.new("/bin/true").outputSync().success)
out["ffi"] = probe(lambda: js.Deno.dlopen("libc.so.6", js.Object.new()))
out`,
          { timeoutSeconds: 60 },
        );
      } finally {
        Deno.env.delete("SANDBOX_TEST_SECRET_VAR");
      }
      assert.equal(result.status, "success", result.stderr);
      const out = result.result as Record<string, string>;
      for (const key of Object.keys(out)) {
        assertDenied(out[key], key, key.split("_")[0]);
      }
      assert.equal(Object.keys(out).length, 10);
      // Contained: the host is untouched.
      assert.equal(await Deno.readTextFile(secret), "top secret");
      await assert.rejects(Deno.stat(written), Deno.errors.NotFound);
      assert.deepEqual(server.hits, []);
      // And the sandbox still works afterwards.
      const after = await sandbox.execute("6 * 7");
      assert.equal(after.status, "success", after.stderr);
      assert.equal(after.result, 42);
    });
  } finally {
    await sandbox.close();
    await server.close();
  }
});

Deno.test("granted read, write, env and net lists allow exactly their entries and do not break loading", async () => {
  const granted = startRecordingServer();
  const other = startRecordingServer();
  await withTempDir(async (dir) => {
    const grantedDir = join(dir, "granted");
    await Deno.mkdir(join(grantedDir, "sub"), { recursive: true });
    await Deno.writeTextFile(join(grantedDir, "inner.txt"), "inner");
    await Deno.writeTextFile(join(grantedDir, "sub", "deep.txt"), "deep");
    await Deno.writeTextFile(join(dir, "file.txt"), "single file");
    await Deno.writeTextFile(join(dir, "other.txt"), "not granted");
    await Deno.writeTextFile(join(dir, "granted-sibling.txt"), "sibling");
    const outDir = join(dir, "out");
    await Deno.mkdir(outDir);
    Deno.env.set("SANDBOX_TEST_VISIBLE", "visible value");
    Deno.env.set("SANDBOX_TEST_HIDDEN", "hidden value");
    const sandbox = new PyodideSandbox({
      poolSize: 0,
      // One absolute folder and one file given relative to the cwd.
      allowRead: [grantedDir, relative(Deno.cwd(), join(dir, "file.txt"))],
      allowWrite: [outDir],
      allowEnv: ["SANDBOX_TEST_VISIBLE"],
      allowNet: [granted.host],
    });
    try {
      const p = (name: string) => JSON.stringify(join(dir, name));
      const result = await sandbox.execute(
        `${PROBE_PY}
out = {}
out["inner"] = probe(lambda: js.Deno.readTextFileSync(${
          p("granted/inner.txt")
        }))
out["deep"] = probe(lambda: js.Deno.readTextFileSync(${
          p("granted/sub/deep.txt")
        }))
out["file"] = probe(lambda: js.Deno.readTextFileSync(${p("file.txt")}))
out["other"] = probe(lambda: js.Deno.readTextFileSync(${p("other.txt")}))
out["sibling"] = probe(lambda: js.Deno.readTextFileSync(${
          p("granted-sibling.txt")
        }))
out["parent"] = probe(lambda: js.Deno.statSync(${
          JSON.stringify(dir)
        }).isDirectory)
out["write_granted_read_dir"] = probe(lambda: js.Deno.writeTextFileSync(${
          p("granted/new.txt")
        }, "x"))
out["write_out"] = probe(lambda: js.Deno.writeTextFileSync(${
          p("out/made.txt")
        }, "made in python"))
out["write_elsewhere"] = probe(lambda: js.Deno.writeTextFileSync(${
          p("elsewhere.txt")
        }, "x"))
out["env_visible"] = probe(lambda: js.Deno.env.get("SANDBOX_TEST_VISIBLE"))
out["env_hidden"] = probe(lambda: js.Deno.env.get("SANDBOX_TEST_HIDDEN"))
async def fetch_text(url):
    response = await js.fetch(url)
    return await response.text()
out["net_granted"] = await aprobe(lambda: fetch_text(${
          JSON.stringify(granted.url + "/granted")
        }))
out["net_other"] = await aprobe(lambda: fetch_text(${
          JSON.stringify(other.url + "/other")
        }))
out`,
        { timeoutSeconds: 60 },
      );
      assert.equal(result.status, "success", result.stderr);
      const out = result.result as Record<string, string>;
      assert.equal(assertAllowed(out.inner, "inner"), "inner");
      assert.equal(assertAllowed(out.deep, "deep"), "deep");
      assert.equal(assertAllowed(out.file, "file"), "single file");
      assertDenied(out.other, "other", "read");
      assertDenied(out.sibling, "sibling", "read");
      assertDenied(out.parent, "parent", "read");
      assertDenied(
        out.write_granted_read_dir,
        "write into a read-only grant",
        "write",
      );
      assertAllowed(out.write_out, "write_out");
      assertDenied(out.write_elsewhere, "write_elsewhere", "write");
      assert.equal(
        assertAllowed(out.env_visible, "env_visible"),
        "visible value",
      );
      assertDenied(out.env_hidden, "env_hidden", "env");
      assert.equal(assertAllowed(out.net_granted, "net_granted"), "ok");
      assertDenied(out.net_other, "net_other", "net");
      assert.deepEqual(granted.hits, ["/granted"]);
      assert.deepEqual(other.hits, []);
      assert.equal(
        await Deno.readTextFile(join(outDir, "made.txt")),
        "made in python",
      );
      await assert.rejects(
        Deno.stat(join(grantedDir, "new.txt")),
        Deno.errors.NotFound,
      );
      await assert.rejects(
        Deno.stat(join(dir, "elsewhere.txt")),
        Deno.errors.NotFound,
      );
    } finally {
      await sandbox.close();
      Deno.env.delete("SANDBOX_TEST_VISIBLE");
      Deno.env.delete("SANDBOX_TEST_HIDDEN");
      await granted.close();
      await other.close();
    }
  });
});

Deno.test("allowRead: true and an empty list both still load Pyodide", async () => {
  for (const allowRead of [true, [] as string[]]) {
    const sandbox = new PyodideSandbox({ poolSize: 0, allowRead });
    try {
      const result = await sandbox.execute("print('loaded'); 1 + 1");
      assert.equal(result.status, "success", result.stderr);
      assert.equal(result.stdout, "loaded\n");
      assert.equal(result.result, 2);
    } finally {
      await sandbox.close();
    }
  }
});
