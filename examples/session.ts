/**
 * A live session keeps one interpreter across calls; save() makes portable
 * bytes that a later session (or another process) resumes from.
 *
 * Run: deno run -A examples/session.ts
 *
 * @module
 */

import { PyodideSandbox } from "../mod.ts";

await using sandbox = new PyodideSandbox({ poolSize: 0 });
const session = await sandbox.openSession();
await session.execute(
  "counter = 0\ndef bump():\n    global counter\n    counter += 1\n    return counter",
);
await session.execute("bump()");
console.log((await session.execute("bump()")).result); // 2
const saved = await session.save();
await session.close();

const resumed = await sandbox.openSession(saved);
console.log((await resumed.execute("bump()")).result); // 3
await resumed.close();
