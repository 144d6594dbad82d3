/**
 * The command line behaves like `python`: `sys.argv`, exit codes,
 * `--version`, `--help`, notes on stderr. Real `deno run cli.ts` processes.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { splitPythonArgs } from "../_cli_flags.ts";
import { MODULE_VERSION, PINNED_PYODIDE_VERSION } from "../_version.ts";
import { PYODIDE_VERSION } from "../runner.ts";
import denoJson from "../deno.json" with { type: "json" };
import { moduleTempDir, TEST_DENO_PATH, withTempDir } from "./_helpers.ts";

const CLI_TS = fileURLToPath(new URL("../cli.ts", import.meta.url));

/** One cache folder for this module's runs: one snapshot build. */
const CACHE_DIR = moduleTempDir("cli-test-cache-");

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function cli(
  args: string[],
  options: { cwd?: string; stdin?: string; cache?: boolean } = {},
): Promise<Run> {
  const child = new Deno.Command(TEST_DENO_PATH, {
    args: [
      "run",
      "-A",
      "--no-lock",
      CLI_TS,
      ...(options.cache === false ? [] : ["--cache-dir", CACHE_DIR]),
      ...args,
    ],
    cwd: options.cwd,
    stdin: options.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  if (options.stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(options.stdin));
    await writer.close();
  }
  const out = await child.output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

const PRINT_ARGV = "import sys, json; print(json.dumps(sys.argv))";

Deno.test("the first run in a cache folder says what it prepares on stderr; the next run prints nothing extra", async () => {
  const first = await cli(["-c", "print(1)"]);
  assert.equal(first.code, 0, first.stderr);
  assert.equal(first.stdout, "1\n");
  assert.match(first.stderr, /first run in .*Pyodide 314\.0\.7/);
  assert.match(first.stderr, /building the Pyodide snapshot/);
  assert.match(first.stderr, /snapshot ready in \d/);
  assert.ok(!first.stderr.includes("\r"), "no progress off a terminal");
  const second = await cli(["-c", "print(2)"]);
  assert.equal(second.code, 0, second.stderr);
  assert.equal(second.stdout, "2\n");
  assert.equal(second.stderr, "", "nothing extra on a later run");
});

Deno.test("deno task run script.py a b gives sys.argv == ['script.py', 'a', 'b'], flags after the script included", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "script.py"), PRINT_ARGV);
    const run = await cli(["script.py", "a", "b"], { cwd: dir });
    assert.equal(run.code, 0, run.stderr);
    assert.deepEqual(JSON.parse(run.stdout), ["script.py", "a", "b"]);
    const flags = await cli(["script.py", "--json", "-c", "x"], { cwd: dir });
    assert.equal(flags.code, 0, flags.stderr);
    assert.deepEqual(JSON.parse(flags.stdout), [
      "script.py",
      "--json",
      "-c",
      "x",
    ]);
  });
});

Deno.test("-c CODE a b gives sys.argv == ['-c', 'a', 'b']; stdin code gives [''] or ['-', ...]", async () => {
  const run = await cli(["-c", PRINT_ARGV, "a", "b"]);
  assert.equal(run.code, 0, run.stderr);
  assert.deepEqual(JSON.parse(run.stdout), ["-c", "a", "b"]);
  const piped = await cli([], { stdin: PRINT_ARGV });
  assert.equal(piped.code, 0, piped.stderr);
  assert.deepEqual(JSON.parse(piped.stdout), [""]);
  const dash = await cli(["-", "x"], { stdin: PRINT_ARGV });
  assert.equal(dash.code, 0, dash.stderr);
  assert.deepEqual(JSON.parse(dash.stdout), ["-", "x"]);
});

Deno.test("arguments reach sys.argv verbatim, quotes and code-like text never run", async () => {
  const hostile = [
    '"]; print("INJECTED") #',
    "'; print('INJECTED'); '",
    "back\\slash\\",
    "new\nline",
    "\u2028 é 🐍",
    "${x}",
  ];
  const run = await cli(["-c", PRINT_ARGV, ...hostile]);
  assert.equal(run.code, 0, run.stderr);
  assert.ok(!run.stdout.includes("INJECTED\n"), run.stdout);
  assert.deepEqual(JSON.parse(run.stdout), ["-c", ...hostile]);
});

Deno.test("sys.exit(3) exits 3 with no traceback; sys.exit('bye') prints bye and exits 1; sys.exit() exits 0", async () => {
  const three = await cli(["-c", "import sys\nprint('before')\nsys.exit(3)"]);
  assert.equal(three.code, 3, three.stderr);
  assert.equal(three.stdout, "before\n");
  assert.doesNotMatch(three.stderr, /Traceback|SystemExit/);
  const negative = await cli(["-c", "raise SystemExit(-1)"]);
  assert.equal(negative.code, 255, "modulo 256, like CPython");
  const text = await cli(["-c", "import sys; sys.exit('bye')"]);
  assert.equal(text.code, 1);
  assert.equal(text.stderr, "bye\n");
  const zero = await cli(["-c", "import sys; sys.exit()"]);
  assert.equal(zero.code, 0, zero.stderr);
  assert.equal(zero.stderr, "");
});

Deno.test("an exception exits 1 with its traceback on stderr", async () => {
  const run = await cli([
    "-c",
    "print('ok')\ndef f():\n    raise ValueError('boom')\nf()",
  ]);
  assert.equal(run.code, 1);
  assert.equal(run.stdout, "ok\n");
  assert.match(run.stderr, /^Traceback \(most recent call last\):\n/);
  assert.match(run.stderr, /line 3, in f\n/, "the user's line numbers");
  assert.match(run.stderr, /ValueError: boom\n$/);
});

Deno.test("--version prints the module version from deno.json and the Pyodide version, without starting Pyodide", async () => {
  assert.equal(MODULE_VERSION, denoJson.version);
  assert.equal(PINNED_PYODIDE_VERSION, PYODIDE_VERSION);
  await withTempDir(async (dir) => {
    const unused = join(dir, "never-made");
    const run = await cli(["--cache-dir", unused, "--version"], {
      cache: false,
    });
    assert.equal(run.code, 0, run.stderr);
    assert.ok(run.stdout.includes(MODULE_VERSION), run.stdout);
    assert.ok(run.stdout.includes(PYODIDE_VERSION), run.stdout);
    assert.equal(run.stderr, "");
    await assert.rejects(Deno.stat(unused), Deno.errors.NotFound);
  });
});

Deno.test("--help prints to stdout and lists the exit codes", async () => {
  const run = await cli(["--help"], { cache: false });
  assert.equal(run.code, 0);
  assert.equal(run.stderr, "");
  assert.match(run.stdout, /Exit codes:/);
  assert.match(run.stdout, /sys\.exit\(N\)/);
  assert.match(run.stdout, /^\s+2\s+invalid flags/m);
});

Deno.test("invalid command lines exit 2 with a message", async () => {
  const noCode = await cli(["-c"]);
  assert.equal(noCode.code, 2);
  assert.match(noCode.stderr, /Invalid -c: expected the code after it/);
  const missing = await cli(["/nonexistent/script.py"]);
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /Cannot read the program: \/nonexistent/);
  const unknown = await cli(["--no-such-flag", "-c", "1"]);
  assert.equal(unknown.code, 2);
});

Deno.test("truncated output says so on stderr", async () => {
  const run = await cli([
    "--max-output-bytes",
    "10",
    "-c",
    "print('x' * 100)",
  ]);
  assert.equal(run.code, 0, run.stderr);
  assert.equal(run.stdout, "x".repeat(10));
  assert.match(run.stderr, /output truncated: stdout went past/);
  const untouched = await cli(["-c", "print('x' * 100)"]);
  assert.doesNotMatch(untouched.stderr, /truncated/);
});

Deno.test("--json --session FILE leaves the session bytes in the file only and the next run resumes", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "s.json");
    const first = await cli(["--json", "--session", path, "-c", "x = 41"]);
    assert.equal(first.code, 0, first.stderr);
    const saved = JSON.parse(await Deno.readTextFile(path));
    assert.ok(saved.sessionBytes.length > 1000);
    const printed = JSON.parse(first.stdout);
    assert.equal(printed.status, "success");
    assert.equal(printed.sessionBytes, undefined);
    assert.equal(printed.sessionFile, path);
    assert.deepEqual(printed.sessionMetadata, saved.sessionMetadata);
    assert.ok(!first.stdout.includes(saved.sessionBytes.slice(0, 200)));
    assert.ok(first.stdout.length < 10_000, `${first.stdout.length} bytes`);
    const second = await cli(["--session", path, "-c", "print(x + 1)"]);
    assert.equal(second.code, 0, second.stderr);
    assert.equal(second.stdout, "42\n");
  });
});

Deno.test("splitPythonArgs() keeps the runner's flags and their values before the program", () => {
  const options = {
    timeout: { type: "string" },
    json: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  } as const;
  assert.deepEqual(
    splitPythonArgs(["--timeout", "5", "--json", "-c", "code", "-h"], options),
    {
      flags: ["--timeout", "5", "--json"],
      source: { kind: "code", code: "code" },
      argv: ["-c", "-h"],
    },
  );
  assert.deepEqual(
    splitPythonArgs(
      ["--allow-read", "--timeout=5", "--", "-x.py", "a"],
      options,
    ),
    {
      flags: ["--allow-read", "--timeout=5"],
      source: { kind: "file", path: "-x.py" },
      argv: ["-x.py", "a"],
    },
  );
  // A flag value that looks like a file is the flag's value.
  assert.deepEqual(
    splitPythonArgs(["--timeout", "x.py"], options).source,
    { kind: "stdin" },
  );
  assert.deepEqual(splitPythonArgs(["-cprint(1)", "z"], options).argv, [
    "-c",
    "z",
  ]);
  assert.throws(() => splitPythonArgs(["-c"], options), TypeError);
});
