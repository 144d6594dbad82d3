/**
 * The MCP server with the SDK's own client, over stdio (launched as in
 * examples/mcp.json) and over streamable HTTP: the tools, their schemas,
 * structured results, streamed output, MCP sessions.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { childrenOf, isRunning } from "./_fixtures/procs.ts";
import { eventually, moduleTempDir } from "./_helpers.ts";
import {
  CALL_TIMEOUT_MS,
  startMcpHttp,
  stdioEnv,
  tool,
  type ToolResult,
} from "./_mcp.ts";
import { liveRedisServers, startRedis } from "./_redis.ts";

const MCP_TS = fileURLToPath(new URL("../mcp.ts", import.meta.url));
const TOKEN = "mcp-test-token-0123456789";
const CACHE_DIR = moduleTempDir("mcp-test-cache-");
const SERVER_FLAGS = ["--pool-size", "0", "--cache-dir", CACHE_DIR];

function texts(result: ToolResult): string[] {
  return result.content.map((c) => c.text ?? `<${c.type}>`);
}

interface ListedTool {
  name: string;
  description?: string;
  inputSchema: Record<string, unknown>;
  outputSchema?: Record<string, unknown>;
}

async function listTools(client: Client): Promise<Record<string, ListedTool>> {
  const { tools } = await client.listTools();
  return Object.fromEntries(tools.map((x: ListedTool) => [x.name, x]));
}

/** Schemas and descriptions, over any transport. */
async function checkListing(t: Deno.TestContext, client: Client) {
  await t.step(
    "lists three tools with strict input schemas and run_python's output schema",
    async () => {
      const byName = await listTools(client);
      assert.deepEqual(Object.keys(byName).sort(), [
        "close_session",
        "create_session",
        "run_python",
      ]);
      for (const spec of Object.values(byName)) {
        assert.equal(spec.inputSchema.additionalProperties, false, spec.name);
      }
      const input = byName.run_python.inputSchema as {
        properties: Record<string, unknown>;
        required?: string[];
      };
      assert.deepEqual(Object.keys(input.properties).sort(), [
        "code",
        "session_id",
      ]);
      assert.deepEqual(input.required, ["code"]);
      assert.deepEqual(byName.close_session.inputSchema.required, [
        "session_id",
      ]);
      const output = byName.run_python.outputSchema as {
        properties: Record<string, unknown>;
        required: string[];
      };
      assert.ok(output, "run_python has an outputSchema");
      for (const field of ["status", "stdout", "stderr", "result", "error"]) {
        assert.ok(output.required.includes(field), field);
      }
    },
  );

  await t.step(
    "run_python's description names the interpreter's Python version and the limits",
    async () => {
      const { run_python } = await listTools(client);
      const text = run_python.description ?? "";
      const version = /Python (3\.\d+)/.exec(text)?.[1];
      assert.ok(version, text);
      assert.match(text, /30 seconds/);
      assert.match(text, /512 MB/);
      assert.match(text, /Packages: the standard library/);
      const r = await tool(client, "run_python", {
        code: "import sys\nf'{sys.version_info[0]}.{sys.version_info[1]}'",
      });
      assert.equal(r.structuredContent?.result, version);
    },
  );
}

/** The tools' behaviour, over any transport. */
async function exerciseTools(t: Deno.TestContext, client: Client) {
  await checkListing(t, client);

  await t.step(
    "run_python returns text content and structuredContent",
    async () => {
      const r = await tool(client, "run_python", {
        code:
          "import sys\nprint('hello')\nprint('careful', file=sys.stderr)\n6 * 7",
      });
      assert.equal(r.isError, undefined);
      assert.deepEqual(texts(r), [
        "stdout:\nhello\n",
        "stderr:\ncareful\n",
        "result:\n42",
      ]);
      const s = r.structuredContent!;
      assert.equal(s.status, "success");
      assert.equal(s.stdout, "hello\n");
      assert.equal(s.stderr, "careful\n");
      assert.equal(s.result, 42);
      assert.equal(s.error, null);
    },
  );

  await t.step(
    "run_python marks an exception isError, with its kind, type and traceback",
    async () => {
      const r = await tool(client, "run_python", {
        code:
          "print('before')\ndef f():\n    raise ValueError('bad value')\nf()",
      });
      assert.equal(r.isError, true);
      assert.equal(texts(r)[0], "stdout:\nbefore\n");
      const error = texts(r)[1];
      assert.match(error, /^error \(exception: ValueError\):\nTraceback/);
      assert.match(error, /File "<sandbox>", line 4/);
      assert.match(error, /ValueError: bad value$/);
      const s = r.structuredContent!;
      assert.equal(s.status, "error");
      const e = s.error as Record<string, string>;
      assert.equal(e.kind, "exception");
      assert.equal(e.type, "ValueError");
      assert.equal(e.message, "bad value");
      assert.match(e.traceback, /line 3, in f/);
    },
  );

  await t.step("a PNG display comes back as image content", async () => {
    const r = await tool(client, "run_python", {
      code: [
        "class Chart:",
        "    def _repr_png_(self):",
        "        return b'\\x89PNG\\r\\n\\x1a\\n'",
        "print('drawn')",
        "Chart()",
      ].join("\n"),
    });
    assert.equal(r.isError, undefined);
    assert.deepEqual(r.content, [
      { type: "text", text: "stdout:\ndrawn\n" },
      { type: "image", data: "iVBORw0KGgo=", mimeType: "image/png" },
    ]);
  });

  await t.step(
    "calls of one MCP session share Python state without create_session",
    async () => {
      await tool(client, "run_python", { code: "x = 1" });
      const r = await tool(client, "run_python", { code: "x + 1" });
      assert.equal(r.structuredContent?.result, 2, JSON.stringify(r));
    },
  );

  await t.step("an explicit session keeps its own state", async () => {
    const created = await tool(client, "create_session");
    assert.equal(created.isError, undefined);
    const id = created.structuredContent?.session_id as string;
    assert.match(id, /^[0-9a-f-]{36}$/);
    assert.deepEqual(texts(created), [`session_id: ${id}`]);
    await tool(client, "run_python", { code: "total = 40", session_id: id });
    const r = await tool(client, "run_python", {
      code: "total += 2\ntotal",
      session_id: id,
    });
    assert.deepEqual(texts(r), ["result:\n42"]);
    // The MCP session's own interpreter does not see it.
    const other = await tool(client, "run_python", { code: "total" });
    assert.equal(other.isError, true);
    assert.match(texts(other).join("\n"), /NameError: name 'total'/);
    const closed = await tool(client, "close_session", { session_id: id });
    assert.deepEqual(texts(closed), [`Closed session ${id}`]);
    const after = await tool(client, "run_python", {
      code: "total",
      session_id: id,
    });
    assert.equal(after.isError, true);
    assert.match(texts(after)[0], /Unknown session/);
    const again = await tool(client, "close_session", { session_id: id });
    assert.equal(again.isError, true);
  });

  await t.step(
    "with a progress token, output lines arrive as progress notifications while the code runs",
    async () => {
      const seen: { message?: string; progress: number; at: number }[] = [];
      const r = await client.callTool(
        {
          name: "run_python",
          arguments: {
            code: [
              "import sys, time",
              "for i in range(3):",
              "    print('tick', i)",
              "print('warn', file=sys.stderr)",
              "time.sleep(1.5)",
              "'done'",
            ].join("\n"),
          },
        },
        undefined,
        {
          timeout: CALL_TIMEOUT_MS,
          onprogress: (p: { progress: number; message?: string }) =>
            seen.push({ ...p, at: Date.now() }),
        },
      ) as ToolResult;
      const finished = Date.now();
      assert.equal(r.structuredContent?.result, "done");
      const messages = seen.map((p) => p.message).join("\n");
      for (const line of ["stdout: tick 0", "tick 2", "stderr: warn"]) {
        assert.ok(messages.includes(line), `${line} in ${messages}`);
      }
      const progress = seen.map((p) => p.progress);
      assert.deepEqual(progress, [...progress].sort((a, b) => a - b));
      // Sent before the 1.5 s sleep ended, not with the result.
      assert.ok(seen[0].at < finished - 500, `${finished - seen[0].at} ms`);
    },
  );

  await t.step("arguments outside the schema are refused", async () => {
    const r = await tool(client, "run_python", { code: "1", timeout: 5 });
    assert.equal(r.isError, true);
    assert.match(texts(r)[0], /unknown argument "timeout"/);
  });

  await t.step("two concurrent calls never mix their outputs", async () => {
    const code = (tag: string) =>
      `import time\nfor i in range(6):\n    print('${tag}', i)\n    time.sleep(0.05)\n'${tag}'`;
    const [a, b] = await Promise.all([
      tool(client, "run_python", { code: code("alpha") }),
      tool(client, "run_python", { code: code("beta") }),
    ]);
    for (const [r, tag] of [[a, "alpha"], [b, "beta"]] as const) {
      const lines = Array.from({ length: 6 }, (_, i) => `${tag} ${i}\n`);
      assert.deepEqual(texts(r), [
        `stdout:\n${lines.join("")}`,
        `result:\n"${tag}"`,
      ]);
    }
  });
}

Deno.test({
  name:
    "MCP server over stdio (launched as in examples/mcp.json), with the SDK's client",
  sanitizeOps: false,
  sanitizeResources: false,
}, async (t) => {
  const config = JSON.parse(
    await Deno.readTextFile(new URL("../examples/mcp.json", import.meta.url)),
  ).mcpServers["python-sandbox"] as { command: string; args: string[] };
  assert.equal(config.command, "deno");
  const args = config.args.map((a) =>
    a === "/absolute/path/to/pyodide-sandbox/mcp.ts" ? MCP_TS : a
  );
  assert.ok(args.includes(MCP_TS));
  const transport = new StdioClientTransport({
    command: Deno.execPath(),
    args: [...args, ...SERVER_FLAGS],
    env: stdioEnv(),
    stderr: "pipe",
  });
  const client = new Client({ name: "mcp-test", version: "1.0.0" });
  await client.connect(transport);
  const pid = transport.pid!;
  try {
    await exerciseTools(t, client);
    await t.step(
      "ends with its children when the client closes stdin",
      async () => {
        // An open session keeps a child alive until the server stops.
        await tool(client, "create_session");
        const children = childrenOf(pid);
        assert.ok(children.length >= 1);
        await client.close();
        await eventually("the server to exit", () => !isRunning(pid), 20);
        await eventually(
          "its children to end",
          () => children.every((pid) => !isRunning(pid)),
          20,
        );
      },
    );
  } finally {
    await client.close();
  }
});

Deno.test({
  name: "MCP server over streamable HTTP, with the SDK's client",
  sanitizeOps: false,
  sanitizeResources: false,
}, async (t) => {
  const server = await startMcpHttp(
    MCP_TS,
    [...SERVER_FLAGS, "--timeout", "30"],
    { SANDBOX_TOKEN: TOKEN },
  );
  const url = server.url;
  const auth = { headers: { authorization: `Bearer ${TOKEN}` } };
  const client = new Client({ name: "mcp-test", version: "1.0.0" });
  try {
    await t.step("requests without the bearer token get 401", async () => {
      const response = await fetch(url, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          accept: "application/json, text/event-stream",
        },
        body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "tools/list" }),
      });
      assert.equal(response.status, 401);
      assert.match(await response.text(), /Unauthorized/);
      const wrong = new Client({ name: "mcp-test", version: "1.0.0" });
      await assert.rejects(
        wrong.connect(
          new StreamableHTTPClientTransport(url, {
            requestInit: { headers: { authorization: "Bearer nope" } },
          }),
        ),
      );
    });
    const transport = new StreamableHTTPClientTransport(url, {
      requestInit: auth,
    });
    await client.connect(transport);
    await t.step("the server gives the client an MCP session id", () => {
      assert.match(transport.sessionId ?? "", /^[0-9a-f-]{36}$/);
    });
    await exerciseTools(t, client);
    await t.step(
      "another MCP session has its own interpreter, and DELETE ends a session",
      async () => {
        const other = new Client({ name: "mcp-test-2", version: "1.0.0" });
        const otherTransport = new StreamableHTTPClientTransport(url, {
          requestInit: auth,
        });
        await other.connect(otherTransport);
        assert.notEqual(otherTransport.sessionId, transport.sessionId);
        const r = await tool(other, "run_python", { code: "x" });
        assert.equal(r.isError, true);
        assert.match(texts(r).join("\n"), /NameError: name 'x'/);
        const id = otherTransport.sessionId!;
        await otherTransport.terminateSession();
        const gone = await fetch(url, {
          method: "POST",
          headers: {
            ...auth.headers,
            "content-type": "application/json",
            accept: "application/json, text/event-stream",
            "mcp-session-id": id,
            "mcp-protocol-version": "2025-06-18",
          },
          body: JSON.stringify({ jsonrpc: "2.0", id: 9, method: "tools/list" }),
        });
        assert.equal(gone.status, 404);
        assert.match(await gone.text(), /Session not found/);
        await other.close();
      },
    );
    await t.step("exits 0 on SIGTERM and kills every child", async () => {
      // An open session keeps a child alive until the server stops.
      await tool(client, "create_session");
      await client.close();
      const children = childrenOf(server.process.pid);
      assert.ok(children.length >= 1);
      server.process.kill("SIGTERM");
      const status = await server.process.status;
      assert.equal(status.code, 0, await server.stderr);
      await eventually(
        "its children to end",
        () => children.every((pid) => !isRunning(pid)),
        20,
      );
    });
  } finally {
    await server.stop();
  }
});

Deno.test("mcp.ts --http refuses a non-loopback hostname without a token", async () => {
  const env = Deno.env.toObject();
  delete env.SANDBOX_TOKEN;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MCP_TS, "--http", "--hostname", "0.0.0.0"],
    env,
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 1);
  assert.match(
    new TextDecoder().decode(out.stderr),
    /Refusing to listen on 0\.0\.0\.0 without a token/,
  );
});

Deno.test("mcp.ts --http --session-store refuses to start without --session-secret and hides the password", async () => {
  const run = async (extra: string[]) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", MCP_TS, "--http", "--port", "0", ...extra],
      env: stdioEnv(),
      clearEnv: true,
      stdout: "piped",
      stderr: "piped",
    }).output();
    return { code: out.code, text: new TextDecoder().decode(out.stderr) };
  };
  const refused = await run(["--session-store", "redis://:pw-hidden-77@h:1"]);
  assert.equal(refused.code, 2);
  assert.match(refused.text, /without --session-secret.*--insecure-store/);
  assert.doesNotMatch(refused.text, /pw-hidden-77/);
  const stray = await run(["--session-checkpoint-seconds", "5"]);
  assert.equal(stray.code, 2);
  assert.match(stray.text, /only applies with --session-store/);
});

Deno.test("two mcp.ts --http replicas share one create_session session through Redis", async () => {
  const redis = await startRedis({ password: "mcp-redis-pw-42" });
  const secret = { SANDBOX_SESSION_SECRET: "mcp-replica-secret-0123456789" };
  const dirs = await Promise.all(
    [0, 1].map(() => Deno.makeTempDir({ prefix: "mcp-replica-" })),
  );
  const servers = await Promise.all(dirs.map((dir) =>
    startMcpHttp(MCP_TS, [
      ...["--pool-size", "0", "--cache-dir", dir, "--timeout", "120"],
      ...["--session-store", redis.url],
    ], secret)
  ));
  const clients = servers.map(() =>
    new Client({ name: "mcp-replica-test", version: "1.0.0" })
  );
  try {
    await Promise.all(
      clients.map((c, i) =>
        c.connect(new StreamableHTTPClientTransport(servers[i].url))
      ),
    );
    const [a, b] = clients;
    const created = await tool(a, "create_session");
    const id = created.structuredContent?.session_id as string;
    assert.match(id, /^[0-9a-f-]{36}$/);
    const step = async (c: Client, code: string) => {
      const r = await tool(c, "run_python", { code, session_id: id });
      assert.notEqual(r.isError, true, JSON.stringify(r));
      return r.structuredContent?.result;
    };
    assert.equal(await step(a, "x = 20\ndef f(y):\n    return y + 1\nx"), 20);
    assert.equal(await step(b, "x = f(x)\nx"), 21);
    assert.equal(await step(a, "x += 1\nx"), 22);
    assert.equal(await step(b, "f(x)"), 23);
    const closed = await tool(b, "close_session", { session_id: id });
    assert.notEqual(closed.isError, true, JSON.stringify(closed));
    const gone = await tool(a, "run_python", { code: "x", session_id: id });
    assert.equal(gone.isError, true);
    assert.match(texts(gone).join("\n"), /Unknown session/);
    for (const server of servers) {
      server.process.kill("SIGTERM");
      assert.equal((await server.process.status).code, 0);
      const stderr = await server.stderr;
      assert.match(stderr, /Session store: redis:\/\/:\*\*\*@127\.0\.0\.1/);
      assert.doesNotMatch(stderr, /mcp-redis-pw-42|mcp-replica-secret/);
    }
  } finally {
    await Promise.all(clients.map((c) => c.close().catch(() => {})));
    await Promise.all(servers.map((s) => s.stop()));
    await Promise.all(dirs.map((d) => Deno.remove(d, { recursive: true })));
    await redis.close();
  }
  assert.deepEqual(liveRedisServers(), []);
});
