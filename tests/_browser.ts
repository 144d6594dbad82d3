/**
 * Helpers of the playground test: a real Chromium driven by puppeteer-core,
 * the real server started as a process, and actions on the page.
 *
 * @module
 */

/// <reference lib="dom" />

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import puppeteer, { type Browser, type Page } from "puppeteer-core";

const SERVER_TS = fileURLToPath(new URL("../server.ts", import.meta.url));
/** The server's bearer token. */
export const TOKEN = "playground-test-token-3f9c";
/** The timeout of slow page actions (a run on a loaded machine), in ms. */
export const SLOW = 240_000;

/**
 * The Chromium to drive: `CHROMIUM_PATH` or `/usr/bin/chromium`.
 *
 * @returns Its path.
 * @throws {Error} Naming the path and how to install it, when it is missing.
 */
export function findChromium(): string {
  const chosen = Deno.env.get("CHROMIUM_PATH");
  for (const path of chosen ? [chosen] : ["/usr/bin/chromium"]) {
    try {
      if (Deno.statSync(path).isFile) return path;
    } catch {
      // Not there.
    }
  }
  throw new Error(
    `Chromium not found at ${
      chosen ?? "/usr/bin/chromium"
    }: the playground test needs a real browser (set CHROMIUM_PATH to use another one); install it with: apt-get install -y chromium`,
  );
}

/**
 * Launches a headless Chromium.
 *
 * @param executablePath The browser.
 * @returns The browser.
 */
export async function launch(executablePath: string): Promise<Browser> {
  try {
    return await puppeteer.launch({
      executablePath,
      headless: true,
      args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
      timeout: 120_000,
      protocolTimeout: SLOW + 60_000,
    });
  } catch (error) {
    throw new Error(
      `Chromium could not be launched from ${executablePath}: ${
        (error as Error).message
      }`,
    );
  }
}

/** A `server.ts --playground` process. */
export interface Server {
  /** Its base URL. */
  url: string;
  /** The process. */
  child: Deno.ChildProcess;
  /** Its whole stderr, once it ends. */
  stderr: Promise<string>;
}

/**
 * Starts `server.ts --playground` on a free loopback port with a pool of one.
 *
 * @param cacheDir The server's cache folder.
 * @returns The server, once it listens.
 */
export async function startServer(cacheDir: string): Promise<Server> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", SERVER_TS, "--playground", "--cache-dir", cacheDir]
      .concat("--port 0 --pool-size 1".split(" ")),
    env: { SANDBOX_TOKEN: TOKEN },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (true) {
    const { done, value } = await reader.read();
    if (done) {
      assert.fail(`The server ended before listening: ${text}${await stderr}`);
    }
    text += value;
    const m = /listening on http:\/\/[^\s]*:(\d+)\//.exec(text);
    if (m) {
      (async () => {
        while (!(await reader.read()).done) { /* drain */ }
      })();
      return { url: `http://127.0.0.1:${m[1]}/`, child, stderr };
    }
  }
}

/** SIGTERM: the server finishes, stops every child and exits. */
export async function stopServer(server: Server): Promise<void> {
  try {
    server.child.kill("SIGTERM");
  } catch {
    // Already ended.
  }
  await server.child.status;
  await server.stderr;
}

/** Puts code in the editor, clicks Run and waits for the run's card. */
export async function runCode(page: Page, code: string): Promise<string> {
  const newest = () =>
    document.querySelector("#output > article.run")?.getAttribute(
      "data-run",
    ) ?? "";
  const before = await page.evaluate(newest);
  await page.$eval("#code", (area, value) => {
    (area as HTMLTextAreaElement).value = value as string;
  }, code);
  await page.click("#run");
  const started = await page.waitForFunction(
    (previous) => {
      const id = document.querySelector("#output > article.run")
        ?.getAttribute("data-run");
      return id && id !== previous ? id : false;
    },
    { timeout: 30_000 },
    before,
  );
  const card = `article.run[data-run="${await started.jsonValue()}"]`;
  await page.waitForFunction(
    (selector) => {
      const node = document.querySelector(selector as string);
      return node !== null &&
        (node.querySelector(".badge") !== null ||
          node.querySelector(".request-error") !== null);
    },
    { timeout: SLOW },
    card,
  );
  await page.waitForFunction(
    () => !(document.getElementById("run") as HTMLButtonElement).disabled,
    { timeout: SLOW },
  );
  return card;
}

/** The text content of the first node matching `selector`. */
export function text(page: Page, selector: string): Promise<string> {
  return page.$eval(selector, (node) => node.textContent ?? "");
}

/** Waits for an image to load; returns its natural width and height. */
export async function imageSize(
  page: Page,
  selector: string,
): Promise<number[]> {
  await page.waitForFunction(
    (s) => (document.querySelector(s as string) as HTMLImageElement)?.complete,
    { timeout: 30_000 },
    selector,
  );
  return await page.$eval(selector, (i) => {
    const image = i as HTMLImageElement;
    return [image.naturalWidth, image.naturalHeight];
  });
}
