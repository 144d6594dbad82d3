/**
 * The MCP server against oversized and malformed messages: a JSON-RPC error
 * reply, and the server (with its sessions) keeps serving.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { isRunning } from "./_fixtures/procs.ts";
import { eventually, moduleTempDir } from "./_helpers.ts";
import { startMcpHttp } from "./_mcp.ts";

const MCP_TS = fileURLToPath(new URL("../mcp.ts", import.meta.url));
const MIB = 1024 * 1024;

const CACHE_DIR = moduleTempDir("mcp-limits-cache-");

const SERVER_FLAGS = [
  "--pool-size",
  "0",
  "--timeout",
  "60",
  "--cache-dir",
  CACHE_DIR,
];

interface Reply {
  jsonrpc: string;
  id: string | number | null;
  result?: {
    content?: { type: string; text?: string }[];
    structuredContent?: Record<string, unknown>;
    isError?: boolean;
  };
  error?: { code: number; message: string };
}

/** A raw newline-delimited JSON-RPC connection to `mcp.ts` over stdio. */
class RawStdio {
  #process: Deno.ChildProcess;
  #writer: WritableStreamDefaultWriter<Uint8Array>;
  #replies: Reply[] = [];
  #waiters: (() => void)[] = [];
  #stderr: Promise<string>;
  #nextId = 1;

  constructor() {
    this.#process = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", MCP_TS, ...SERVER_FLAGS],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#writer = this.#process.stdin.getWriter();
    this.#stderr = new Response(this.#process.stderr).text();
    void this.#readLoop();
  }

  get pid(): number {
    return this.#process.pid;
  }

  get stderr(): Promise<string> {
    return this.#stderr;
  }

  async #readLoop(): Promise<void> {
    let buffered = "";
    const stream = this.#process.stdout.pipeThrough(new TextDecoderStream());
    for await (const text of stream) {
      buffered += text;
      let newline;
      while ((newline = buffered.indexOf("\n")) !== -1) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        if (line.trim()) this.#replies.push(JSON.parse(line));
        for (const wake of this.#waiters.splice(0)) wake();
      }
    }
    for (const wake of this.#waiters.splice(0)) wake();
  }

  /** Waits for the first reply that `match` accepts (and removes it). */
  async reply(
    match: (reply: Reply) => boolean,
    what: string,
    seconds = 120,
  ): Promise<Reply> {
    const deadline = Date.now() + seconds * 1000;
    for (;;) {
      const index = this.#replies.findIndex(match);
      if (index !== -1) return this.#replies.splice(index, 1)[0];
      if (Date.now() > deadline || !isRunning(this.#process.pid)) {
        assert.fail(
          `No reply ${what}; got ${JSON.stringify(this.#replies)}; stderr: ${
            this.#process.pid && !isRunning(this.#process.pid)
              ? await this.#stderr
              : "(running)"
          }`,
        );
      }
      await new Promise<void>((resolve) => {
        this.#waiters.push(resolve);
        setTimeout(resolve, 500);
      });
    }
  }

  async sendRaw(bytes: Uint8Array | string): Promise<void> {
    await this.#writer.write(
      typeof bytes === "string" ? new TextEncoder().encode(bytes) : bytes,
    );
  }

  /** Sends a request and returns its reply. */
  async request(method: string, params: unknown): Promise<Reply> {
    const id = this.#nextId++;
    await this.sendRaw(
      JSON.stringify({ jsonrpc: "2.0", id, method, params }) + "\n",
    );
    return await this.reply((r) => r.id === id, `to ${method} #${id}`);
  }

  async tool(name: string, args: Record<string, unknown>): Promise<Reply> {
    return await this.request("tools/call", { name, arguments: args });
  }

  async close(): Promise<void> {
    await this.#writer.close().catch(() => {});
    await eventually(
      "the MCP server to exit",
      () => !isRunning(this.#process.pid),
      30,
    ).catch(() => this.#process.kill("SIGKILL"));
    await this.#process.status;
    await this.#stderr;
  }
}

function text(reply: Reply): string {
  return (reply.result?.content ?? []).map((c) => c.text ?? "").join("\n");
}

/** A tools/call line of about `bytes` bytes, with `id` as its last key. */
function bigCall(bytes: number, id: number): Uint8Array {
  const head = new TextEncoder().encode(
    '{"method":"tools/call","params":{"name":"run_python","arguments":{"code":"#',
  );
  const tail = new TextEncoder().encode(`"}},"jsonrpc":"2.0","id":${id}}\n`);
  const out = new Uint8Array(bytes);
  out.fill(0x78); // "x"
  out.set(head, 0);
  out.set(tail, bytes - tail.length);
  return out;
}

Deno.test({
  name:
    "MCP server over stdio answers an 11 MiB message with a JSON-RPC error and keeps its sessions",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  // Attacks (SECURITY.md): "mcpmsg.oversized_stdio", "mcpmsg.malformed_stdio"
  const server = new RawStdio();
  try {
    const init = await server.request("initialize", {
      protocolVersion: "2025-06-18",
      capabilities: {},
      clientInfo: { name: "mcp-limits-test", version: "1.0.0" },
    });
    assert.ok(init.result, JSON.stringify(init));
    await server.sendRaw(
      '{"jsonrpc":"2.0","method":"notifications/initialized"}\n',
    );
    const created = await server.tool("create_session", {});
    const sessionId = created.result?.structuredContent?.session_id ??
      /[0-9a-f-]{8,}/.exec(text(created))?.[0];
    assert.equal(typeof sessionId, "string", JSON.stringify(created));
    const set = await server.tool("run_python", {
      code: "x = 41",
      session_id: sessionId,
    });
    assert.notEqual(set.result?.isError, true, JSON.stringify(set));

    // 11 MiB, id last (as the SDK's client orders its keys): the id is found.
    await server.sendRaw(bigCall(11 * MIB, 900));
    const big = await server.reply((r) => r.id === 900, "to the 11 MiB call");
    assert.equal(big.error?.code, -32600, JSON.stringify(big));
    assert.match(
      big.error!.message,
      /over the limit of 10485760 bytes \(10 MiB\)/,
    );

    // Oversized with the id as the first key: found at the head.
    const middle = new TextEncoder().encode(
      `{"id":901,"params":{"code":"${
        "y".repeat(11 * MIB)
      }"},"method":"x","jsonrpc":"2.0"}\n`,
    );
    await server.sendRaw(middle);
    const second = await server.reply(
      (r) => r.id === 901,
      "to the id-first call",
    );
    assert.equal(second.error?.code, -32600);
    const hidden = new TextEncoder().encode(
      `{"params":{"code":"${
        "z".repeat(11 * MIB)
      }"},"id":902,"method":"x","jsonrpc":"2.0"}\n`,
    );
    // Oversized with the id in the middle: answered with id null.
    await server.sendRaw(hidden);
    const anonymous = await server.reply(
      (r) => r.id === null && r.error?.code === -32600,
      "with id null to the oversized call without a readable id",
    );
    assert.match(anonymous.error!.message, /10 MiB/);

    // Not JSON, and JSON that is not JSON-RPC.
    await server.sendRaw("{ this is not json\n");
    const parse = await server.reply(
      (r) => r.id === null && r.error?.code === -32700,
      "to a line that is not JSON",
    );
    assert.match(parse.error!.message, /^Parse error: /);
    await server.sendRaw('{"id": 903, "hello": "world"}\n');
    const invalid = await server.reply((r) => r.id === 903, "to non-JSON-RPC");
    assert.equal(invalid.error?.code, -32600);

    // The server and the session are still there.
    assert.ok(isRunning(server.pid), "the server is still running");
    const after = await server.tool("run_python", {
      code: "print(x + 1)",
      session_id: sessionId,
    });
    assert.match(text(after), /42/, JSON.stringify(after));
    const list = await server.request("tools/list", {});
    assert.ok(Array.isArray((list.result as { tools?: unknown[] }).tools));
  } finally {
    await server.close();
  }
});

/** A raw streamable-HTTP MCP session: initialize, then calls with its id. */
class RawHttpSession {
  url: URL;
  id = "";
  constructor(url: URL) {
    this.url = url;
  }

  post(body: BodyInit, withId = true): Promise<Response> {
    return fetch(this.url, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        accept: "application/json, text/event-stream",
        ...(withId && this.id
          ? { "mcp-session-id": this.id, "mcp-protocol-version": "2025-06-18" }
          : {}),
      },
      body,
    });
  }

  /** Starts the session; returns the initialize response's status. */
  async initialize(): Promise<number> {
    const response = await this.post(
      JSON.stringify({
        jsonrpc: "2.0",
        id: 0,
        method: "initialize",
        params: {
          protocolVersion: "2025-06-18",
          capabilities: {},
          clientInfo: { name: "mcp-limits-test", version: "1.0.0" },
        },
      }),
      false,
    );
    await response.body?.cancel();
    if (response.status !== 200) return response.status;
    this.id = response.headers.get("mcp-session-id") ?? "";
    assert.match(this.id, /^[0-9a-f-]{36}$/);
    const done = await this.post(
      '{"jsonrpc":"2.0","method":"notifications/initialized"}',
    );
    assert.equal(done.status, 202);
    return 200;
  }
}

function call(id: number, code: string): string {
  return JSON.stringify({
    jsonrpc: "2.0",
    id,
    method: "tools/call",
    params: { name: "run_python", arguments: { code } },
  });
}

Deno.test({
  name:
    "MCP server over streamable HTTP refuses a body over its limit with 413 and keeps serving",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  // Attacks (SECURITY.md): "mcpmsg.oversized_http"
  const server = await startMcpHttp(MCP_TS, SERVER_FLAGS);
  try {
    const session = new RawHttpSession(server.url);
    assert.equal(await session.initialize(), 200);
    for (const withId of [false, true]) {
      const big = await session.post(
        call(1, `#${"x".repeat(11 * MIB)}`),
        withId,
      );
      assert.equal(big.status, 413);
      const error = await big.json();
      assert.equal(error.jsonrpc, "2.0");
      assert.match(error.error.message, /Payload Too Large/);
    }

    // Streamed without a length: cut off at the limit as well.
    const chunk = new TextEncoder().encode("x".repeat(MIB));
    let sent = 0;
    const streamed = await session.post(
      new ReadableStream({
        pull(controller) {
          if (sent++ < 11) controller.enqueue(chunk);
          else controller.close();
        },
      }),
    );
    assert.equal(streamed.status, 413);
    await streamed.body?.cancel();

    const ok = await session.post(call(2, "print(6 * 7)"));
    assert.equal(ok.status, 200);
    assert.match(await ok.text(), /42/);

    // A client that drops its response stream mid-call (with a progress
    // token, so the server is writing to it) does not take the server down.
    const dropped = await session.post(JSON.stringify({
      jsonrpc: "2.0",
      id: 3,
      method: "tools/call",
      params: {
        name: "run_python",
        arguments: {
          code:
            "import time\nfor i in range(20):\n    print(i)\n    time.sleep(0.1)",
        },
        _meta: { progressToken: "p" },
      },
    }));
    assert.equal(dropped.status, 200);
    const reader = dropped.body!.getReader();
    await reader.read();
    await reader.cancel();
    await new Promise((r) => setTimeout(r, 3000));
    assert.ok(isRunning(server.process.pid), "the server is still running");
    const again = await session.post(call(4, "print(6 * 7)"));
    assert.match(await again.text(), /42/);
  } finally {
    server.process.kill("SIGTERM");
    await server.stop();
  }
});

Deno.test({
  name:
    "MCP server over streamable HTTP caps its MCP sessions and expires idle ones",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  // Attacks (SECURITY.md): "mcpmsg.session_flood"
  const server = await startMcpHttp(MCP_TS, [
    ...SERVER_FLAGS,
    "--max-mcp-sessions",
    "2",
    "--session-idle-seconds",
    "1",
  ]);
  try {
    const a = new RawHttpSession(server.url);
    const b = new RawHttpSession(server.url);
    const c = new RawHttpSession(server.url);
    assert.equal(await a.initialize(), 200);
    assert.equal(await b.initialize(), 200);
    // A third client is refused while two sessions are live.
    const refused = await c.post(
      JSON.stringify({
        jsonrpc: "2.0",
        id: 0,
        method: "initialize",
        params: {
          protocolVersion: "2025-06-18",
          capabilities: {},
          clientInfo: { name: "third", version: "1.0.0" },
        },
      }),
      false,
    );
    assert.equal(refused.status, 429);
    assert.match((await refused.json()).error.message, /Too many MCP sessions/);
    // Unused for a second, both expire (asking for the third session does
    // not touch them): a new client gets in, and the old ids are gone.
    await eventually(
      "the idle sessions to expire",
      async () => await c.initialize() === 200,
      30,
    );
    const gone = await a.post('{"jsonrpc":"2.0","id":5,"method":"tools/list"}');
    assert.equal(gone.status, 404);
    await gone.body?.cancel();
  } finally {
    await server.stop();
  }
});
