/**
 * Spawned by tests/queue_test.ts: creates a sandbox with the default warm
 * pool, runs one call, prints what it saw, and never closes the sandbox.
 * The process must still exit promptly on its own.
 *
 * @module
 */

import { PyodideSandbox } from "../../sandbox.ts";
import { childrenOf } from "./procs.ts";

const sandbox = new PyodideSandbox();
const result = await sandbox.execute("print(6 * 7)");
// The pool fills after the call: wait until its first child is started.
for (let i = 0; i < 200 && sandbox.poolSize === 0; i++) {
  await new Promise((r) => setTimeout(r, 50));
}
const stat = Deno.readTextFileSync("/proc/self/stat");
const sid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[3]);
console.log(JSON.stringify({
  stdout: result.stdout,
  sid,
  children: childrenOf(Deno.pid),
  poolSize: sandbox.poolSize,
}));
// No sandbox.close(): idle pooled children must not keep this process alive.
