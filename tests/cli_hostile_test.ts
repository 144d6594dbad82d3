/**
 * The command line against hostile input: result files whose paths try to
 * leave `--files-out`, and session files that are not sessions.
 */

import assert from "node:assert/strict";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { writeResultFiles } from "../_files_out.ts";
import type { ResultFile } from "../result.ts";
import { moduleTempDir, TEST_DENO_PATH } from "./_helpers.ts";

const CLI_TS = fileURLToPath(new URL("../cli.ts", import.meta.url));

/** One cache folder for this module's CLI runs (one snapshot build). */
const CACHE_DIR = moduleTempDir("cli-hostile-cache-");

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function runCli(args: string[]): Promise<Run> {
  const out = await new Deno.Command(TEST_DENO_PATH, {
    args: ["run", "-A", "--no-lock", CLI_TS, "--cache-dir", CACHE_DIR, ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

function file(path: string, text = "pwned"): ResultFile {
  const content = new TextEncoder().encode(text);
  return { path, size: content.length, content, truncated: false };
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

/** Hostile entries and the host path each would reach by a naive join. */
function hostileFiles(outside: string): ResultFile[] {
  const rel = outside.replace(/^\//, "");
  return [
    file(`/home/pyodide/${"../".repeat(12)}${rel}/climb.txt`),
    file(`/home/pyodide/a/../../../../../../${rel}/deep.txt`),
    file(`${outside}/absolute.txt`),
    file(`/home/pyodide/nul\0.txt`),
    file(`/home/pyodide/link/through.txt`),
    file(`/home/pyodide/linkfile`),
    file(`/home/pyodide/./dot.txt`),
    { path: 42, size: 1, content: new Uint8Array(1) } as unknown as ResultFile,
    { path: "/home/pyodide/x", content: "text" } as unknown as ResultFile,
  ];
}

/** The old CLI's loop: join the path below the folder, no checks. */
async function naiveWrite(dir: string, files: ResultFile[]): Promise<void> {
  for (const f of files) {
    if (typeof f.path !== "string" || f.path.includes("\0")) continue;
    const target = join(dir, f.path.replace(/^\/home\/pyodide\//, ""));
    try {
      await Deno.mkdir(dirname(target), { recursive: true });
      await Deno.writeFile(target, f.content as Uint8Array);
    } catch {
      // Keep going, as an attacker would try every entry.
    }
  }
}

/** Lists every file below `root`, as relative paths. */
async function listFiles(root: string, prefix = ""): Promise<string[]> {
  const found: string[] = [];
  for await (const entry of Deno.readDir(join(root, prefix))) {
    const rel = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isDirectory) found.push(...await listFiles(root, rel));
    else found.push(rel);
  }
  return found.sort();
}

async function setUpVictim(): Promise<
  { base: string; out: string; outside: string }
> {
  const base = await Deno.makeTempDir({ prefix: "cli-files-out-" });
  const out = join(base, "out");
  const outside = join(base, "victim");
  await Deno.mkdir(out);
  await Deno.mkdir(outside);
  // Links a previous run (or a co-tenant) left in the output folder.
  await Deno.symlink(outside, join(out, "link"));
  await Deno.writeTextFile(join(outside, "target.txt"), "victim data");
  await Deno.symlink(join(outside, "target.txt"), join(out, "linkfile"));
  return { base, out, outside };
}

Deno.test("writeResultFiles() writes nothing outside the folder for hostile paths that a naive join lets escape", async () => {
  // Attacks (SECURITY.md): "clifiles.escape", "clifiles.symlink"
  // Control: the old code path writes outside the folder for the same list.
  const control = await setUpVictim();
  try {
    await naiveWrite(control.out, hostileFiles(control.outside));
    const escaped = await listFiles(control.outside);
    assert.ok(
      escaped.includes("climb.txt") && escaped.includes("deep.txt"),
      `the naive join should escape (control), victim has ${escaped}`,
    );
    assert.equal(
      await Deno.readTextFile(join(control.outside, "target.txt")),
      "pwned",
      "the naive join writes through a symbolic link (control)",
    );
  } finally {
    await Deno.remove(control.base, { recursive: true });
  }

  const { base, out, outside } = await setUpVictim();
  try {
    const outcomes = await writeResultFiles(out, [
      ...hostileFiles(outside),
      file("/home/pyodide/ok/nested/fine.txt", "fine"),
    ]);
    assert.deepEqual(await listFiles(outside), ["target.txt"]);
    assert.equal(
      await Deno.readTextFile(join(outside, "target.txt")),
      "victim data",
    );
    assert.equal(await exists(join(base, "climb.txt")), false);
    assert.deepEqual(
      outcomes.map((o) => o.status),
      [
        "refused",
        "refused",
        "skipped",
        "refused",
        "refused",
        "refused",
        "refused",
        "refused",
        "refused",
        "written",
      ],
      JSON.stringify(outcomes),
    );
    assert.equal(
      await Deno.readTextFile(join(out, "ok", "nested", "fine.txt")),
      "fine",
    );
    // The links were left alone, not written through or replaced.
    assert.ok((await Deno.lstat(join(out, "linkfile"))).isSymlink);
    assert.ok((await Deno.lstat(join(out, "link"))).isSymlink);
  } finally {
    await Deno.remove(base, { recursive: true });
  }
});

Deno.test("writeResultFiles() resolves a folder given through a symbolic link and writes inside it", async () => {
  const base = await Deno.makeTempDir({ prefix: "cli-files-out-" });
  try {
    await Deno.mkdir(join(base, "real"));
    await Deno.symlink(join(base, "real"), join(base, "alias"));
    const [outcome] = await writeResultFiles(join(base, "alias", "new"), [
      file("/home/pyodide/a.txt", "a"),
    ]);
    assert.equal(outcome.status, "written");
    assert.equal(
      outcome.target,
      join(await Deno.realPath(join(base, "real")), "new", "a.txt"),
    );
    assert.equal(
      await Deno.readTextFile(join(base, "real", "new", "a.txt")),
      "a",
    );
  } finally {
    await Deno.remove(base, { recursive: true });
  }
});

Deno.test("deno task run --files-out writes the files the code created, folders included", async () => {
  const base = await Deno.makeTempDir({ prefix: "cli-files-out-" });
  try {
    const out = join(base, "out");
    const run = await runCli([
      "--files-out",
      out,
      "-c",
      [
        "import os",
        "os.makedirs('sub/deeper', exist_ok=True)",
        "open('top.txt', 'w').write('top')",
        "open('sub/deeper/data.bin', 'wb').write(bytes(range(256)))",
        "print('done')",
      ].join("\n"),
    ]);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.stdout, "done\n");
    assert.equal(await Deno.readTextFile(join(out, "top.txt")), "top");
    assert.deepEqual(
      await Deno.readFile(join(out, "sub", "deeper", "data.bin")),
      new Uint8Array(Array.from({ length: 256 }, (_, i) => i)),
    );
    assert.deepEqual(await listFiles(out), ["sub/deeper/data.bin", "top.txt"]);
  } finally {
    await Deno.remove(base, { recursive: true });
  }
});

const BAD_SESSIONS: [string, Uint8Array][] = [
  ["null", new TextEncoder().encode("null")],
  ["an array", new TextEncoder().encode("[]")],
  ["an empty object", new TextEncoder().encode("{}")],
  ["a number as sessionBytes", new TextEncoder().encode('{"sessionBytes": 5}')],
  [
    "bytes without metadata",
    new TextEncoder().encode('{"sessionBytes": "AAAA"}'),
  ],
  [
    "metadata of the wrong shape",
    new TextEncoder().encode(
      '{"sessionBytes": "AAAA", "sessionMetadata": {"pyodideVersion": 1}}',
    ),
  ],
  [
    "bytes that are not base64",
    new TextEncoder().encode(
      '{"sessionBytes": "%%%", "sessionMetadata": {"pyodideVersion": "x", "createdAt": "x", "updatedAt": "x"}}',
    ),
  ],
  ["truncated JSON", new TextEncoder().encode('{"sessionBytes": "AAA')],
  [
    "binary garbage",
    Uint8Array.from({ length: 300 }, (_, i) => (i * 97 + 13) % 256),
  ],
];

Deno.test("deno task run --session refuses a file that is not a session with exit 2 and leaves it unchanged", async (t) => {
  // Attacks (SECURITY.md): "clisession.bad_file"
  const base = await Deno.makeTempDir({ prefix: "cli-session-" });
  try {
    for (const [name, bytes] of BAD_SESSIONS) {
      await t.step(name, async () => {
        const path = join(base, `${name.replaceAll(" ", "_")}.json`);
        await Deno.writeFile(path, bytes);
        const before = await Deno.stat(path);
        const run = await runCli(["--session", path, "-c", "x = 1\nprint(x)"]);
        assert.equal(run.code, 2, `exit code, stderr: ${run.stderr}`);
        assert.match(run.stderr, /^Invalid session file: /);
        assert.ok(run.stderr.includes(path), run.stderr);
        assert.doesNotMatch(run.stderr, /\n\s+at /, "no stack trace");
        assert.equal(run.stdout, "", "the code did not run");
        assert.deepEqual(await Deno.readFile(path), bytes, "file unchanged");
        assert.equal(
          (await Deno.stat(path)).mtime?.getTime(),
          before.mtime?.getTime(),
        );
      });
    }
    await t.step(
      "a missing file still starts a session and saves it",
      async () => {
        const path = join(base, "new.json");
        const first = await runCli(["--session", path, "-c", "x = 41"]);
        assert.equal(first.code, 0, first.stderr);
        const second = await runCli(["--session", path, "-c", "print(x + 1)"]);
        assert.equal(second.code, 0, second.stderr);
        assert.equal(second.stdout, "42\n");
      },
    );
  } finally {
    await Deno.remove(base, { recursive: true });
  }
});

Deno.test("deno task run turns a hostile SystemExit into exit 1 with its text, never a crash or an odd exit code", async () => {
  // The exit code comes from str() of the exception the child reports:
  // only an exact integer picks the code, anything else is text (exit 1).
  const cases: [string, number, RegExp][] = [
    ['raise SystemExit("9" * 100000)', 1, /^9{100000}\n$/],
    ["raise SystemExit(10 ** 1000)", 1, /^10{1000}\n$/],
    ['raise SystemExit("3\\n")', 1, /^3\n\n?$/],
    ['raise SystemExit(" 7")', 1, /^ 7\n$/],
    ["raise SystemExit(True)", 1, /^$/],
    ["raise SystemExit(256 + 4)", 4, /^$/],
  ];
  // A first run in the cache folder adds its notes on stderr.
  assert.equal((await runCli(["-c", "pass"])).code, 0);
  for (const [code, exit, stderr] of cases) {
    const run = await runCli(["-c", code]);
    assert.equal(run.code, exit, `${code}: ${run.stderr.slice(0, 300)}`);
    assert.match(run.stderr, stderr, code);
    assert.doesNotMatch(run.stderr, /\n\s+at |Traceback/, "no stack trace");
  }
});
