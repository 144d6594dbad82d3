/**
 * The module's version and the Pyodide version it pins, both read from
 * `deno.json` so that no literal can drift from the published package.
 *
 * @module
 */

import denoJson from "./deno.json" with { type: "json" };

/** The module's version (`version` in `deno.json`). */
export const MODULE_VERSION: string = denoJson.version;

/**
 * The Pyodide version pinned by the `pyodide` import in `deno.json`
 * (`npm:pyodide@<version>`).
 */
export const PINNED_PYODIDE_VERSION: string =
  /@([^@/]+)$/.exec(denoJson.imports.pyodide)?.[1] ?? "unknown";

/**
 * The one-line version text of the entry points' `--version`.
 *
 * @param program The program's name, e.g. `"pyodide-sandbox server"`.
 * @returns E.g. `pyodide-sandbox server 0.1.0 (Pyodide 314.0.7)`.
 * @example
 * ```ts
 * import { versionText } from "./_version.ts";
 * versionText("pyodide-sandbox"); // "pyodide-sandbox 0.1.0 (Pyodide 314.0.7)"
 * ```
 */
export function versionText(program: string): string {
  return `${program} ${MODULE_VERSION} (Pyodide ${PINNED_PYODIDE_VERSION})`;
}
