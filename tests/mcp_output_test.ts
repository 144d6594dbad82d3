/**
 * `createSandboxMcp()`'s options, an in-process client with output streamed
 * as logging notifications, and `OutputRelay`'s caps on what one call streams.
 */

import assert from "node:assert/strict";
import { moduleTempDir } from "./_helpers.ts";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { InMemoryTransport } from "@modelcontextprotocol/sdk/inMemory.js";
import { LoggingMessageNotificationSchema } from "@modelcontextprotocol/sdk/types.js";
import {
  createSandboxMcp,
  type McpTransport,
  type SandboxMcpOptions,
} from "../mcp.ts";
import { OutputRelay } from "../_mcp_tools.ts";
import type { ToolCallContext } from "../_mcp_sdk.ts";

const MIB = 1024 * 1024;

const CACHE_DIR = moduleTempDir("mcp-limits-cache-");

Deno.test("createSandboxMcp() refuses invalid options with TypeError and RangeError", () => {
  assert.throws(
    () => createSandboxMcp({ maxMcpSessions: 0 }),
    (e) => e instanceof RangeError && /maxMcpSessions/.test(e.message),
  );
  assert.throws(
    () => createSandboxMcp({ implicitSessions: "yes" as unknown as boolean }),
    (e) => e instanceof TypeError && /implicitSessions/.test(e.message),
  );
  assert.throws(
    () => createSandboxMcp({ formatOptions: { maxTextChars: -1 } }),
    RangeError,
  );
  assert.throws(
    () => createSandboxMcp(null as unknown as SandboxMcpOptions),
    TypeError,
  );
  assert.throws(
    () => createSandboxMcp({ sandbox: {} as SandboxMcpOptions["sandbox"] }),
    (e) =>
      e instanceof TypeError && /expected a PyodideSandbox/.test(e.message),
  );
});

// The SDK's transports fit the server's McpTransport (checked by deno check).
type SdkTransports = [
  import("@modelcontextprotocol/sdk/server/stdio").StdioServerTransport,
  import("@modelcontextprotocol/sdk/inMemory").InMemoryTransport,
];
const _fits: McpTransport[] = [] as unknown as SdkTransports;

Deno.test({
  name:
    "createSandboxMcp() serves an in-process client, streams output as logging notifications, and caps what it streams while the host keeps serving",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  await using mcp = createSandboxMcp({
    sandboxOptions: { poolSize: 0, cacheDir: CACHE_DIR, timeoutSeconds: 60 },
  });
  const [clientSide, serverSide] = InMemoryTransport.createLinkedPair();
  await mcp.createServer().connect(serverSide);
  const client = new Client({ name: "embedded", version: "1.0.0" });
  await client.connect(clientSide);
  let notifications = 0;
  let last = "";
  // Attacks: a print loop floods the client with notifications.
  const flood = await client.callTool(
    {
      name: "run_python",
      arguments: { code: "for i in range(3000):\n    print('line', i)\n'end'" },
    },
    undefined,
    {
      timeout: 300_000,
      onprogress: (p: { message?: string }) => {
        notifications++;
        last = p.message ?? "";
      },
    },
  ) as { structuredContent?: Record<string, unknown> };
  assert.equal(flood.structuredContent?.result, "end");
  assert.match(String(flood.structuredContent?.stdout), /line 2999\n$/);
  assert.ok(notifications <= 1001, `${notifications} notifications`);
  assert.ok(notifications >= 1, "some output was streamed");
  if (notifications === 1001) assert.match(last, /output streaming stopped/);
  // After logging/setLevel, lines also come as logging notifications.
  const logged: { level: string; logger?: string; data: unknown }[] = [];
  client.setNotificationHandler(
    LoggingMessageNotificationSchema,
    (n: { params: { level: string; logger?: string; data: unknown } }) => {
      logged.push(n.params);
    },
  );
  await client.setLoggingLevel("info");
  await client.callTool({
    name: "run_python",
    arguments: {
      code: "import sys\nprint('out')\nprint('err', file=sys.stderr)",
    },
  });
  assert.deepEqual(logged, [
    { level: "info", logger: "stdout", data: "out" },
    { level: "warning", logger: "stderr", data: "err" },
  ]);
  // Contained: the host still serves calls.
  const after = await client.callTool(
    {
      name: "run_python",
      arguments: { code: "6 * 7" },
    },
    undefined,
    { timeout: 300_000 },
  ) as { structuredContent?: Record<string, unknown> };
  assert.equal(after.structuredContent?.result, 42);
  await client.close();
});

/** A tool-call context that records what the relay sends. */
function recordingContext(sent: string[]): ToolCallContext {
  return {
    signal: new AbortController().signal,
    progressToken: "token",
    progress: (_n, message) => {
      sent.push(message);
      return Promise.resolve();
    },
    log: () => Promise.resolve(),
    logs: () => false,
  };
}

Deno.test("OutputRelay sends whole lines in order and stops at 1,000 notifications or 1 MiB per call", async () => {
  const lines: string[] = [];
  const relay = new OutputRelay(recordingContext(lines));
  relay.write("stdout", "a\nb");
  relay.write("stdout", "c\n");
  relay.write("stderr", "oops");
  await relay.flush();
  assert.deepEqual(lines, ["stdout: a", "stdout: bc", "stderr: oops"]);

  // Attacks (SECURITY.md): "mcpmsg.output_flood" (lines, then bytes)
  const many: string[] = [];
  const flooded = new OutputRelay(recordingContext(many));
  for (let i = 0; i < 5000; i++) flooded.write("stdout", `line ${i}\n`);
  await flooded.flush();
  assert.equal(many.length, 1001);
  assert.match(many.at(-1)!, /^stdout: \[output streaming stopped/);

  const big: string[] = [];
  const huge = new OutputRelay(recordingContext(big));
  for (let i = 0; i < 3; i++) huge.write("stdout", "x".repeat(MIB) + "\n");
  await huge.flush();
  const streamed = big.slice(0, -1).reduce((n, m) => n + m.length, 0);
  assert.ok(streamed <= MIB + 100, `${streamed} characters streamed`);
  assert.match(big.at(-1)!, /output streaming stopped/);
});
