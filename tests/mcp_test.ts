import assert from "node:assert/strict";
import { childrenOf, isRunning } from "./_fixtures/procs.ts";
import { eventually } from "./_helpers.ts";
import { fileURLToPath } from "node:url";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { resultToContent } from "../mcp.ts";

const MCP_TS = fileURLToPath(new URL("../mcp.ts", import.meta.url));
const TOKEN = "mcp-test-token-0123456789";
const SERVER_FLAGS = ["--pool-size", "0", "--timeout", "30"];

type ToolResult = {
  content: { type: string; text?: string; data?: string; mimeType?: string }[];
  isError?: boolean;
  structuredContent?: Record<string, unknown>;
};

async function tool(
  client: Client,
  name: string,
  args: Record<string, unknown> = {},
): Promise<ToolResult> {
  return await client.callTool({ name, arguments: args }) as ToolResult;
}

function texts(result: ToolResult): string[] {
  return result.content.map((c) => c.text ?? `<${c.type}>`);
}

/** The same checks over any transport. */
async function exerciseTools(
  t: Deno.TestContext,
  client: Client,
): Promise<void> {
  await t.step(
    "lists run_python, create_session and close_session",
    async () => {
      const { tools } = await client.listTools();
      const byName: Record<string, { inputSchema: unknown }> = Object
        .fromEntries(
          tools.map((x: { name: string; inputSchema: unknown }) => [x.name, x]),
        );
      assert.deepEqual(Object.keys(byName).sort(), [
        "close_session",
        "create_session",
        "run_python",
      ]);
      const input = byName.run_python.inputSchema as {
        properties: Record<string, unknown>;
        required?: string[];
      };
      assert.deepEqual(Object.keys(input.properties).sort(), [
        "code",
        "session_id",
      ]);
      assert.deepEqual(input.required, ["code"]);
      assert.deepEqual(
        (byName.close_session.inputSchema as { required?: string[] }).required,
        ["session_id"],
      );
    },
  );

  await t.step(
    "run_python returns stdout, stderr and the result as text",
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
    },
  );

  await t.step(
    "run_python marks an exception isError with its traceback",
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
      assert.match(error, /line 3, in f/);
      assert.match(error, /ValueError: bad value$/);
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

  await t.step("a session keeps state until close_session", async () => {
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
    // A stateless call does not see the session's globals.
    const fresh = await tool(client, "run_python", { code: "total" });
    assert.equal(fresh.isError, true);
    assert.match(texts(fresh).join("\n"), /NameError: name 'total'/);
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
  const env: Record<string, string> = {};
  for (const name of ["HOME", "PATH", "DENO_DIR", "XDG_CACHE_HOME"]) {
    const value = Deno.env.get(name);
    if (value) env[name] = value;
  }
  // Launched as examples/mcp.json tells MCP clients to launch it.
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
    args: [...args, "--pool-size", "0"],
    env,
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
  const server = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MCP_TS, "--http", "--port", "0", ...SERVER_FLAGS],
    env: { SANDBOX_TOKEN: TOKEN },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(server.stderr).text();
  const reader = server.stdout.pipeThrough(new TextDecoderStream())
    .getReader();
  let out = "";
  let match: RegExpExecArray | null = null;
  while (!match) {
    const { done, value } = await reader.read();
    if (done) assert.fail(`The server ended: ${out}${await stderr}`);
    out += value;
    match = /listening on (http:\/\/\S+\/mcp)/.exec(out);
  }
  (async () => {
    while (!(await reader.read()).done) { /* drain */ }
  })();
  const url = new URL(match[1]);
  const client = new Client({ name: "mcp-test", version: "1.0.0" });
  try {
    await t.step("requests without the bearer token get 401", async () => {
      const response = await fetch(url, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          accept: "application/json, text/event-stream",
        },
        body: JSON.stringify({
          jsonrpc: "2.0",
          id: 1,
          method: "tools/list",
        }),
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
    await client.connect(
      new StreamableHTTPClientTransport(url, {
        requestInit: { headers: { authorization: `Bearer ${TOKEN}` } },
      }),
    );
    await exerciseTools(t, client);
    await t.step("exits 0 on SIGTERM and kills every child", async () => {
      // An open session keeps a child alive until the server stops.
      await tool(client, "create_session");
      await client.close();
      const children = childrenOf(server.pid);
      assert.ok(children.length >= 1);
      server.kill("SIGTERM");
      assert.equal((await server.status).code, 0, await stderr);
      await eventually(
        "its children to end",
        () => children.every((pid) => !isRunning(pid)),
        20,
      );
    });
  } finally {
    try {
      server.kill("SIGKILL");
    } catch {
      // Already ended.
    }
    await server.status;
    await stderr;
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
  assert.notEqual(out.code, 0);
  assert.match(
    new TextDecoder().decode(out.stderr),
    /Refusing to listen on 0\.0\.0\.0 without a token/,
  );
});

Deno.test("resultToContent reports a timeout as isError with its message", () => {
  const timeout = resultToContent({
    status: "error",
    stdout: "partial\n",
    stderr: "Execution timed out after 1 seconds\n",
    result: null,
    executionTime: 1,
    error: { kind: "timeout", message: "Execution timed out after 1 seconds" },
  });
  assert.equal(timeout.isError, true);
  assert.deepEqual(timeout.content, [
    { type: "text", text: "stdout:\npartial\n" },
    {
      type: "text",
      text: "error (timeout):\nExecution timed out after 1 seconds",
    },
  ]);
});
