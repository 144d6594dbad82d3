/**
 * The playground page served at `/` by `createHandler({ playground: true })`
 * (`deno task serve --playground`): one self-contained HTML page (no build
 * step, no CDN) whose inline style and script are allowed by SHA-256 hashes
 * in a strict Content-Security-Policy. Everything else is refused: no other
 * script, no inline event handlers, no `eval`, images only from `data:` and
 * `blob:`, requests only to the page's own origin, no framing of the page.
 *
 * @module
 */

import { createHash } from "node:crypto";
import {
  PLAYGROUND_BODY,
  PLAYGROUND_CSS,
  PLAYGROUND_JS,
} from "./_playground_page.ts";

function sha256Source(text: string): string {
  return `'sha256-${createHash("sha256").update(text).digest("base64")}'`;
}

/** The page's HTML, built once. */
const HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>pyodide-sandbox playground</title>
<style>${PLAYGROUND_CSS}</style>
</head>
<body>${PLAYGROUND_BODY}<script>${PLAYGROUND_JS}</script>
</body>
</html>
`;

/**
 * The page's Content-Security-Policy. HTML displays render in a
 * `srcdoc` iframe with an empty `sandbox` attribute: it inherits this policy
 * (no script, no inline style, no network) and gets an opaque origin.
 */
export const PLAYGROUND_CSP: string = [
  "default-src 'none'",
  `script-src ${sha256Source(PLAYGROUND_JS)}`,
  `style-src ${sha256Source(PLAYGROUND_CSS)}`,
  "img-src data: blob:",
  "connect-src 'self'",
  "frame-src 'none'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
  "require-trusted-types-for 'script'",
  "trusted-types playground",
].join("; ");

/**
 * Returns the playground page: HTML with a strict Content-Security-Policy
 * and headers that keep it out of caches, frames and referrers.
 *
 * @returns A `200` HTML response.
 * @example
 * ```ts
 * import { playgroundPage } from "./_playground.ts";
 * const res = playgroundPage();
 * console.log(res.headers.get("content-security-policy")?.includes("default-src 'none'")); // true
 * ```
 */
export function playgroundPage(): Response {
  return new Response(HTML, {
    headers: {
      "content-type": "text/html; charset=utf-8",
      "content-security-policy": PLAYGROUND_CSP,
      "x-content-type-options": "nosniff",
      "x-frame-options": "DENY",
      "referrer-policy": "no-referrer",
      "cross-origin-opener-policy": "same-origin",
      "cache-control": "no-store",
    },
  });
}
