/**
 * The naive peer-style runner the benchmark compares against: a fresh
 * `deno run` per execution that calls `loadPyodide()` cold (no snapshot),
 * runs the code given on the command line and prints one JSON result line,
 * as langchain-sandbox and mcp-run-python do.
 *
 * Usage: `deno run --allow-read bench/_naive_runner.ts <python code>`
 *
 * @module
 */

// deno-lint-ignore no-import-prefix
import { loadPyodide } from "npm:pyodide@314.0.7";

const code = Deno.args[0] ?? "";
let stdout = "";
let stderr = "";
const decoder = new TextDecoder();
const pyodide = await loadPyodide();
pyodide.setStdout({
  write(buf: Uint8Array): number {
    stdout += decoder.decode(buf);
    return buf.length;
  },
});
pyodide.setStderr({
  write(buf: Uint8Array): number {
    stderr += decoder.decode(buf);
    return buf.length;
  },
});
let status = "success";
let result: unknown = null;
try {
  const value = await pyodide.runPythonAsync(code);
  result = value?.toJs?.() ?? value ?? null;
} catch (error) {
  status = "error";
  stderr += String(error);
}
console.log(JSON.stringify({ status, stdout, stderr, result }));
