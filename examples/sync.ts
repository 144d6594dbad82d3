/**
 * The blocking API, for code that cannot await (with real timeouts).
 *
 * Run: deno run -A examples/sync.ts
 *
 * @module
 */

import { SyncPyodideSandbox } from "../mod.ts";

using sandbox = new SyncPyodideSandbox({ poolSize: 0, timeoutSeconds: 5 });
const result = sandbox.execute("sum(i * i for i in range(100))");
console.log(result.result); // 328350

const slow = sandbox.execute("while True: pass", { timeoutSeconds: 1 });
console.log(slow.error?.kind); // "timeout"
