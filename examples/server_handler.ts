/**
 * Embedding the sandbox's HTTP API in your own `Deno.serve` app with
 * `createHandler`: the API is mounted under `/sandbox`, next to the app's
 * own routes. (With Hono: `app.all("/sandbox/*", (c) => sandbox(c.req.raw))`.)
 *
 * Run: deno run --allow-read --allow-write --allow-run --allow-env --allow-net examples/server_handler.ts
 *
 * For the demo, the app calls its own API once and shuts down; a real app
 * keeps serving until SIGINT/SIGTERM.
 */
import { createHandler } from "../mod.ts";

const token = Deno.env.get("SANDBOX_TOKEN") ?? crypto.randomUUID();
const sandbox = createHandler({
  token,
  basePath: "/sandbox",
  sandboxOptions: { timeoutSeconds: 30, poolSize: 1 },
  maxConcurrency: 2,
});
// Start the warm child (and build the snapshot on a first run) before
// taking requests, so the first call does not pay for it.
await sandbox.sandbox.warmup();

const server = Deno.serve({
  hostname: "127.0.0.1",
  port: Number(Deno.env.get("PORT") ?? 0),
  onListen: ({ port }) => console.log(`App on http://127.0.0.1:${port}/`),
}, (req) => {
  const { pathname } = new URL(req.url);
  if (pathname === "/sandbox" || pathname.startsWith("/sandbox/")) {
    return sandbox(req);
  }
  if (pathname === "/") return new Response("My app, with a Python sandbox\n");
  return new Response("Not found\n", { status: 404 });
});

async function shutdown(): Promise<void> {
  await server.shutdown(); // stop accepting, finish running requests
  await sandbox.close(); // close sessions and kill every child
}
Deno.addSignalListener("SIGINT", () => shutdown().then(() => Deno.exit(0)));

// Demo: call the API like any client would.
const response = await fetch(
  `http://127.0.0.1:${server.addr.port}/sandbox/v1/execute`,
  {
    method: "POST",
    headers: {
      authorization: `Bearer ${token}`,
      "content-type": "application/json",
    },
    body: JSON.stringify({
      code: "import statistics\nprint('mean:', statistics.mean([1, 2, 3, 4]))",
    }),
  },
);
const result = await response.json();
console.log(response.status, result.status, JSON.stringify(result.stdout));
await shutdown();
