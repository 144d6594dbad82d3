/**
 * Basic use: run untrusted Python and read the result.
 *
 * Run: deno run -A examples/basic.ts
 *
 * @module
 */

import { PyodideSandbox } from "../mod.ts";

await using sandbox = new PyodideSandbox({ poolSize: 0 });
const result = await sandbox.execute(`
import math
print("the answer is", 6 * 7)
math.factorial(10)
`);
console.log(result.status); // "success"
console.log(result.stdout.trim()); // "the answer is 42"
console.log(result.result); // 3628800

const failed = await sandbox.execute("1 / 0");
console.log(failed.error?.kind, failed.error?.type); // "exception" "ZeroDivisionError"
