/**
 * `deno task mcp` as a program: `--help` and `--version` on stdout with
 * the exit codes, the package flags, a run from a URL with no
 * `deno.json`, and the SDK version it pins.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { moduleTempDir, withTempDir } from "./_helpers.ts";
import { buildWheel } from "./_wheel.ts";
import { stdioEnv, tool } from "./_mcp.ts";

const MCP_TS = fileURLToPath(new URL("../mcp.ts", import.meta.url));
const CACHE_DIR = moduleTempDir("mcp-cli-test-cache-");
const SERVER_FLAGS = ["--pool-size", "0", "--cache-dir", CACHE_DIR];

Deno.test("mcp.ts --help prints the usage and the exit codes on stdout and exits 0, as --version does; a bad flag exits 2", async () => {
  const help = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MCP_TS, "--help"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(help.code, 0);
  const out = new TextDecoder().decode(help.stdout);
  assert.match(out, /^Usage: deno task mcp/);
  assert.match(out, /Exit codes:\n {2}0 [\s\S]*\n {2}1 [\s\S]*\n {2}2 /);
  for (
    const flag of ["--package NAME", "--package-dir DIR", "--package-index"]
  ) {
    assert.ok(out.includes(flag), flag);
  }
  assert.equal(new TextDecoder().decode(help.stderr), "");
  const version = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MCP_TS, "--version"],
    stdout: "piped",
  }).output();
  assert.equal(version.code, 0);
  assert.match(
    new TextDecoder().decode(version.stdout),
    /^pyodide-sandbox MCP server \d+\.\d+\.\d+ \(Pyodide \d+\.\d+\.\d+\)\n$/,
  );
  const bad = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MCP_TS, "--no-such-flag"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(bad.code, 2);
  assert.match(new TextDecoder().decode(bad.stderr), /no-such-flag/);
});

Deno.test({
  name:
    "mcp.ts takes --package-dir and --package: the wheel imports, and the description lists it",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  await withTempDir(async (dir) => {
    const wheel = buildWheel("mcp-demo", "1.0.0", {
      "mcpdemo/__init__.py": "VALUE = 41\n",
    });
    await Deno.writeFile(`${dir}/${wheel.fileName}`, wheel.data);
    const client = new Client({ name: "mcp-test", version: "1.0.0" });
    await client.connect(
      new StdioClientTransport({
        command: Deno.execPath(),
        args: [
          "run",
          "-A",
          MCP_TS,
          ...SERVER_FLAGS,
          "--package-dir",
          dir,
          "--package",
          "mcp-demo",
        ],
        env: stdioEnv(),
        stderr: "pipe",
      }),
    );
    try {
      const { tools } = await client.listTools();
      const run = tools.find((t: { name: string }) => t.name === "run_python");
      assert.match(run?.description ?? "", /installed: mcp-demo/);
      const r = await tool(client, "run_python", {
        code: "import mcpdemo\nmcpdemo.VALUE + 1",
      });
      assert.equal(r.structuredContent?.result, 42, JSON.stringify(r));
    } finally {
      await client.close();
    }
  });
});

/** Serves this repository's files over loopback HTTP, as a remote host. */
function serveRepository(): { origin: string; close: () => Promise<void> } {
  const root = fileURLToPath(new URL("../", import.meta.url));
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    async (req) => {
      const path = decodeURIComponent(new URL(req.url).pathname);
      if (path.split("/").includes("..")) {
        return new Response("Bad path", { status: 400 });
      }
      try {
        return new Response(await Deno.readFile(`${root}${path.slice(1)}`), {
          headers: {
            "content-type": path.endsWith(".json")
              ? "application/json"
              : "application/typescript",
          },
        });
      } catch {
        return new Response("Not found", { status: 404 });
      }
    },
  );
  return {
    origin: `http://127.0.0.1:${server.addr.port}`,
    close: () => server.shutdown(),
  };
}

Deno.test({
  name:
    "mcp.ts runs when imported from a URL, with no deno.json (as a JSR or http user runs it)",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const repo = serveRepository();
  try {
    await withTempDir(async (cwd) => {
      const host = new URL(repo.origin).host;
      const client = new Client({ name: "mcp-test", version: "1.0.0" });
      await client.connect(
        new StdioClientTransport({
          command: Deno.execPath(),
          args: [
            "run",
            "--no-config",
            `--allow-import=${host}`,
            "--allow-read",
            "--allow-write",
            "--allow-run",
            "--allow-env",
            "--allow-net",
            `${repo.origin}/mcp.ts`,
            ...SERVER_FLAGS,
          ],
          cwd,
          env: stdioEnv(),
          stderr: "pipe",
        }),
      );
      try {
        const r = await tool(client, "run_python", { code: "6 * 7" });
        assert.equal(r.structuredContent?.result, 42, JSON.stringify(r));
      } finally {
        await client.close();
      }
    });
  } finally {
    await repo.close();
  }
});

Deno.test("_mcp_sdk.ts loads the MCP SDK version that deno.json pins", async () => {
  const { MCP_SDK_VERSION } = await import("../_mcp_sdk.ts");
  const config = JSON.parse(
    await Deno.readTextFile(new URL("../deno.json", import.meta.url)),
  );
  assert.equal(
    config.imports["@modelcontextprotocol/sdk"],
    `npm:@modelcontextprotocol/sdk@${MCP_SDK_VERSION}`,
  );
  const source = await Deno.readTextFile(
    new URL("../_mcp_sdk.ts", import.meta.url),
  );
  const pinned = new Set(
    [...source.matchAll(/npm:@modelcontextprotocol\/sdk@([^/"]+)/g)].map((m) =>
      m[1]
    ),
  );
  assert.deepEqual([...pinned], [MCP_SDK_VERSION]);
});
