/**
 * The playground page (`deno task serve --playground`) in a real headless
 * browser: Debian's chromium driven by puppeteer-core, against the real
 * server on a loopback port with a token and a temporary cache folder.
 *
 * Without chromium the test fails (install it with
 * `apt-get install -y chromium`; `.ci/run` does). Set
 * `UPDATE_PLAYGROUND_SCREENSHOT=1` to rewrite `docs/playground.png`.
 *
 * @module
 */

/// <reference lib="dom" />

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { fileURLToPath } from "node:url";
import { createHandler } from "../handler.ts";
import { withTempDir } from "./_helpers.ts";
import {
  findChromium,
  imageSize,
  launch,
  runCode,
  startServer,
  stopServer,
  text,
  TOKEN,
} from "./_browser.ts";
import type { Browser } from "puppeteer-core";

const SCREENSHOT = fileURLToPath(
  new URL("../docs/playground.png", import.meta.url),
);
/** Python that builds a real width x height RGB PNG with zlib and struct. */
const PNG_PY = `
import struct, zlib

def png(width, height):
    def chunk(tag, data):
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))
    rows = b"".join(
        b"\\x00" + b"".join(bytes([x * 20 % 256, y * 40 % 256, 200]) for x in range(width))
        for y in range(height))
    return (b"\\x89PNG\\r\\n\\x1a\\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))

class Picture:
    def _repr_png_(self):
        return png(12, 5)

display(Picture())
print("png shown")
`;

const SVG_PY = `
class Circle:
    def _repr_svg_(self):
        return ('<svg xmlns="http://www.w3.org/2000/svg" width="30" height="20">'
                '<script>parent.document.title = "pwned by svg"</script>'
                '<circle cx="10" cy="10" r="8" fill="red" onload="parent.document.title = 1"/></svg>')

class Fake:
    def _repr_png_(self):
        return '"><script>parent.document.title = "pwned by png"</script>'

display(Fake())
display(Circle())
`;

/** HTML that tries to reach the page, its token and the network. */
const HOSTILE_HTML_PY = `
class Evil:
    def _repr_html_(self):
        return ('<p id="inside">rendered html</p>'
                '<script>parent.document.title = "pwned by script"</script>'
                '<img src="x" onerror="parent.document.title = \\'pwned by handler\\'">'
                '<img src="http://127.0.0.1:9/leak">')

display(Evil())
`;

Deno.test({
  name: "the playground page runs Python in a real browser",
  sanitizeOps: false,
  sanitizeResources: false,
}, async (t) => {
  // Before anything else, so that a missing browser fails fast and clearly.
  const chromium = findChromium();
  await withTempDir(async (cacheDir) => {
    const server = await startServer(cacheDir);
    let browser: Browser | undefined;
    try {
      await t.step(
        "GET / sends a strict Content-Security-Policy that allows exactly the inline script and style",
        async () => {
          const res = await fetch(server.url);
          assert.equal(res.status, 200);
          assert.match(res.headers.get("content-type") ?? "", /^text\/html/);
          const csp = res.headers.get("content-security-policy") ?? "";
          const html = await res.text();
          for (
            const directive of [
              "default-src 'none'",
              "img-src data: blob:",
              "connect-src 'self'",
              "frame-ancestors 'none'",
              "base-uri 'none'",
            ]
          ) {
            assert.ok(csp.includes(directive), `${directive} in ${csp}`);
          }
          assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|\*|https?:/);
          const scripts = [...html.matchAll(/<script>([\s\S]*?)<\/script>/g)];
          assert.equal(scripts.length, 1);
          const hash = createHash("sha256").update(scripts[0][1]).digest(
            "base64",
          );
          assert.ok(csp.includes(`script-src 'sha256-${hash}'`), csp);
          assert.doesNotMatch(
            html,
            /<script[^>]*\ssrc=|https?:\/\/(?!www\.w3)/,
          );
          assert.equal(res.headers.get("cache-control"), "no-store");
          assert.equal(res.headers.get("x-frame-options"), "DENY");
        },
      );

      browser = await launch(chromium);
      const page = await browser.newPage();
      await page.setViewport({ width: 1280, height: 900 });
      // CSP violations of the page itself (not of the display iframe).
      await page.evaluateOnNewDocument(() => {
        // deno-lint-ignore no-window
        if (window !== window.top) return;
        const seen: string[] = [];
        Object.defineProperty(window, "__violations", { value: seen });
        document.addEventListener("securitypolicyviolation", (event) => {
          seen.push(`${event.violatedDirective} ${event.blockedURI}`);
        });
      });
      const pageErrors: string[] = [];
      page.on("pageerror", (error) => pageErrors.push(String(error)));
      await page.goto(server.url, { waitUntil: "load" });
      await page.waitForFunction(
        () =>
          /Ready/.test(document.getElementById("status")?.textContent ?? ""),
        { timeout: 30_000 },
      );

      await t.step(
        "without the token a run shows the 401 from the server",
        async () => {
          const card = await runCode(page, "print(1)");
          assert.match(await text(page, `${card} .request-error`), /HTTP 401/);
        },
      );

      await page.type("#token", TOKEN);

      await t.step(
        "code that prints shows its stdout, stderr and result",
        async () => {
          const card = await runCode(
            page,
            "import sys\nprint('hello from the playground')\nprint('warn', file=sys.stderr)\n6 * 7",
          );
          assert.equal(await text(page, `${card} .badge`), "success");
          assert.equal(
            await text(page, `${card} pre.stdout`),
            "hello from the playground\n",
          );
          assert.equal(await text(page, `${card} pre.stderr`), "warn\n");
          assert.equal(await text(page, `${card} pre.result`), "42");
        },
      );

      await t.step(
        "code that raises shows the error kind and the traceback",
        async () => {
          const card = await runCode(
            page,
            "def f():\n    raise ValueError('boom here')\n\nf()",
          );
          assert.equal(await text(page, `${card} .badge`), "error");
          assert.equal(await text(page, `${card} .error-kind`), "exception");
          assert.match(
            await text(page, `${card} .error-message`),
            /ValueError: boom here/,
          );
          const traceback = await text(page, `${card} pre.traceback`);
          assert.match(traceback, /File "<sandbox>", line 2/);
          assert.match(traceback, /ValueError: boom here/);
        },
      );

      await t.step("a PNG display really decodes in the page", async () => {
        const card = await runCode(page, PNG_PY);
        const img = `${card} .display img[data-mime="image/png"]`;
        assert.deepEqual(await imageSize(page, img), [12, 5]);
        assert.equal(await text(page, `${card} pre.stdout`), "png shown\n");
      });

      await t.step("an SVG display decodes as an image", async () => {
        const card = await runCode(page, SVG_PY);
        const img = `${card} .display img[data-mime="image/svg+xml"]`;
        assert.deepEqual(await imageSize(page, img), [30, 20]);
        // A PNG that is not base64 is shown as its text, not as an image.
        assert.equal(
          await page.$$eval(`${card} .display img`, (imgs) => imgs.length),
          1,
        );
        assert.match(
          await page.$eval(
            `${card} .display pre`,
            (p) => p.textContent ?? "",
          ),
          /<__main__\.Fake object/,
        );
        assert.doesNotMatch(await page.title(), /pwned/);
      });

      await t.step(
        "an HTML display renders in a sandboxed iframe that cannot reach the page",
        async () => {
          const title = await page.title();
          const card = await runCode(page, HOSTILE_HTML_PY);
          const frame = `${card} .display iframe`;
          const sandbox = await page.$eval(
            frame,
            (f) => f.getAttribute("sandbox"),
          );
          assert.equal(
            sandbox,
            "",
            "an empty sandbox: no allow-scripts, no allow-same-origin",
          );
          const reach = await page.$eval(frame, (f) => {
            const iframe = f as HTMLIFrameElement;
            return {
              doc: iframe.contentDocument === null,
              srcdoc: iframe.srcdoc.length > 0,
            };
          });
          assert.deepEqual(
            reach,
            { doc: true, srcdoc: true },
            "opaque origin: the page cannot read it, so it cannot read the page",
          );
          const child = page.frames().find((f) => f !== page.mainFrame());
          assert.ok(child, "the iframe has a frame");
          await child.waitForSelector("#inside", { timeout: 30_000 });
          assert.equal(
            await child.$eval("#inside", (p) => p.textContent),
            "rendered html",
          );
          assert.equal(
            await child.evaluate(() => {
              try {
                // deno-lint-ignore no-window
                return String(window.parent.document.title);
              } catch (error) {
                return `blocked: ${(error as Error).name}`;
              }
            }),
            "blocked: SecurityError",
          );
          await new Promise((r) => setTimeout(r, 500));
          assert.equal(
            await page.title(),
            title,
            "no script of the display ran",
          );
        },
      );

      await t.step(
        "a session keeps state between runs (x = 1, then x + 1)",
        async () => {
          await page.select("#mode", "session");
          const first = await runCode(page, "x = 1");
          assert.equal(await text(page, `${first} .badge`), "success");
          assert.match(
            await text(page, "#session-info"),
            /session \S+ \(1 run\)/,
          );
          const second = await runCode(page, "x + 1");
          assert.equal(await text(page, `${second} pre.result`), "2");
          await page.click("#end-session");
          await page.waitForFunction(
            () =>
              /Session closed/.test(
                document.getElementById("status")?.textContent ?? "",
              ),
            { timeout: 30_000 },
          );
          const third = await runCode(page, "x");
          assert.equal(await text(page, `${third} .error-kind`), "exception");
          assert.match(
            await text(page, `${third} .error-message`),
            /NameError/,
          );
          await page.click("#end-session");
          await page.select("#mode", "stateless");
        },
      );

      await t.step("a stateless run does not see session state", async () => {
        const card = await runCode(page, "x");
        assert.match(await text(page, `${card} .error-message`), /NameError/);
      });

      await t.step(
        "under a base path (/box and /box/) the page calls the API below it",
        async () => {
          await using handler = createHandler({
            token: TOKEN,
            playground: true,
            basePath: "/box",
            sandboxOptions: { cacheDir, poolSize: 1 },
          });
          const boxed = Deno.serve(
            { hostname: "127.0.0.1", port: 0, onListen() {} },
            handler,
          );
          try {
            for (const path of ["/box", "/box/"]) {
              const tab = await browser!.newPage();
              try {
                await tab.goto(`http://127.0.0.1:${boxed.addr.port}${path}`);
                await tab.type("#token", TOKEN);
                const card = await runCode(tab, `print("under ${path}")`);
                assert.equal(
                  await text(tab, `${card} pre.stdout`),
                  `under ${path}\n`,
                );
              } finally {
                await tab.close();
              }
            }
          } finally {
            await boxed.shutdown();
          }
        },
      );

      await t.step(
        "the token stays in memory: no storage, no cookies",
        async () => {
          const stored = await page.evaluate(() => ({
            local: localStorage.length,
            session: sessionStorage.length,
            cookie: document.cookie,
          }));
          assert.deepEqual(stored, { local: 0, session: 0, cookie: "" });
        },
      );

      await t.step(
        "the page itself runs without errors or CSP violations",
        async () => {
          assert.deepEqual(pageErrors, []);
          assert.deepEqual(
            await page.evaluate(() =>
              (window as unknown as { __violations: string[] }).__violations
            ),
            [],
          );
        },
      );

      await t.step(
        "every example of the page runs (a screenshot of them is a PNG)",
        async () => {
          await page.$eval("#output", (out) => out.replaceChildren());
          for (const name of ["html", "svg", "error", "png", "hello"]) {
            await page.select("#example", name);
            const code = await page.$eval(
              "#code",
              (area) => (area as HTMLTextAreaElement).value,
            );
            const card = await runCode(page, code);
            assert.equal(
              await text(page, `${card} .badge`),
              name === "error" ? "error" : "success",
              `example ${name}`,
            );
          }
          assert.equal(
            await text(page, "article.run pre.result").then((r) =>
              JSON.parse(r).answer
            ),
            42,
          );
          assert.deepEqual(
            await imageSize(page, '.display img[data-mime="image/png"]'),
            [96, 64],
          );
          const shot = await page.screenshot({ type: "png" });
          assert.deepEqual(
            [...shot.subarray(0, 8)],
            [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a],
          );
          if (Deno.env.get("UPDATE_PLAYGROUND_SCREENSHOT") === "1") {
            await Deno.mkdir(new URL("../docs/", import.meta.url), {
              recursive: true,
            });
            await Deno.writeFile(SCREENSHOT, shot);
          }
        },
      );
    } finally {
      await browser?.close();
      await stopServer(server);
    }
  });
});

Deno.test("the playground test fails with a clear message when chromium is missing", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "test",
      "-A",
      "--filter",
      "runs Python in a real browser",
      fileURLToPath(import.meta.url),
    ],
    env: { CHROMIUM_PATH: "/nonexistent/chromium", NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const output = new TextDecoder().decode(out.stdout) +
    new TextDecoder().decode(out.stderr);
  assert.notEqual(out.code, 0, output);
  assert.match(
    output,
    /Chromium not found at \/nonexistent\/chromium: .*apt-get install -y chromium/,
  );
  assert.match(output, /0 passed.*1 failed/);
});
