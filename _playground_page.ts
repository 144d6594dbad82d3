/**
 * The playground page's data: plain HTML, CSS and JavaScript (no build step,
 * no CDN). `_playground.ts` inlines the style and the script into the HTML
 * and allows exactly them in its Content-Security-Policy by SHA-256 hash.
 *
 * The script renders every value from the server with `textContent`,
 * `data:` image URLs and a sandboxed `srcdoc` iframe (no `allow-scripts`, no
 * `allow-same-origin`), never with `innerHTML`; the token lives in the
 * password field and in memory only.
 *
 * @module
 */

/** The page's style sheet, inlined in a `<style>` element. */
export const PLAYGROUND_CSS: string = `
:root { color-scheme: light dark; --bg: #f6f7f9; --fg: #1c2024; --muted: #5f6b76;
  --card: #ffffff; --line: #d7dce1; --accent: #2f6fde; --err: #c0392b; --ok: #1e8e3e;
  --code: #f0f2f4; --warn: #a15c00; }
@media (prefers-color-scheme: dark) { :root { --bg: #15181c; --fg: #e4e7ea;
  --muted: #97a3ad; --card: #1d2126; --line: #333a42; --accent: #6ea0ff;
  --err: #ff7b6e; --ok: #5fd083; --code: #252a30; --warn: #f0b35a; } }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; }
header { display: flex; flex-wrap: wrap; gap: 12px; align-items: center;
  padding: 10px 16px; border-bottom: 1px solid var(--line); background: var(--card); }
header h1 { font-size: 16px; margin: 0 12px 0 0; }
header label { display: flex; gap: 6px; align-items: center; color: var(--muted); }
main { display: grid; grid-template-columns: minmax(320px, 1fr) minmax(320px, 1fr);
  gap: 16px; padding: 16px; }
@media (max-width: 900px) { main { grid-template-columns: 1fr; } }
section { min-width: 0; }
textarea#code { width: 100%; min-height: 340px; resize: vertical; padding: 10px;
  font: 13px/1.5 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
  background: var(--card); color: var(--fg); border: 1px solid var(--line);
  border-radius: 6px; tab-size: 4; }
input, select, button { font: inherit; color: var(--fg); background: var(--card);
  border: 1px solid var(--line); border-radius: 5px; padding: 4px 8px; }
button { cursor: pointer; }
input#timeout { width: 6em; }
button.primary { background: var(--accent); border-color: var(--accent); color: #fff; }
button:disabled { opacity: 0.55; cursor: default; }
.bar { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; margin: 8px 0; }
.muted { color: var(--muted); }
#status { min-height: 1.4em; }
#status.bad { color: var(--err); }
.run { background: var(--card); border: 1px solid var(--line); border-radius: 6px;
  margin-bottom: 12px; padding: 8px 10px; }
.run-head { display: flex; gap: 8px; align-items: baseline; flex-wrap: wrap;
  font-size: 12px; color: var(--muted); }
.badge { font-weight: 600; padding: 0 6px; border-radius: 4px; border: 1px solid currentColor; }
.badge.success { color: var(--ok); }
.badge.error { color: var(--err); }
.run h3 { font-size: 11px; text-transform: uppercase; letter-spacing: 0.04em;
  color: var(--muted); margin: 8px 0 2px; }
pre { margin: 0; padding: 6px 8px; background: var(--code); border-radius: 4px;
  white-space: pre-wrap; overflow-wrap: anywhere; max-height: 420px; overflow: auto;
  font: 12.5px/1.45 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
pre.stderr, pre.traceback, .error-message { color: var(--err); }
.error-message { font-weight: 600; margin: 2px 0; }
.note { color: var(--warn); font-size: 12px; }
.display { margin: 4px 0; }
.display img { max-width: 100%; background: #fff; border: 1px solid var(--line);
  image-rendering: auto; }
.frame-box { resize: vertical; overflow: hidden; height: 240px; min-height: 60px;
  border: 1px solid var(--line); border-radius: 4px; background: #fff; }
.frame-box iframe { width: 100%; height: 100%; border: 0; display: block; }
ul.files { margin: 0; padding-left: 18px; font-family: ui-monospace, monospace; font-size: 12px; }
`;

/**
 * The page's script, inlined in a `<script>` element. It talks to the JSON
 * API next to the page (`POST v1/execute`, `POST v1/sessions`,
 * `POST v1/sessions/{id}/execute`, `DELETE v1/sessions/{id}`).
 */
export const PLAYGROUND_JS: string = `
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  // The page is served only at the API's base path ("/", "/base" or
  // "/base/"), so the API lives right under the page's own path.
  const base = location.pathname.replace(/\\/+$/, "");
  const MAX_TEXT = 2000000;
  let sessionId = null;
  let sessionRuns = 0;
  let runCount = 0;
  let busy = false;
  const policy = window.trustedTypes && window.trustedTypes.createPolicy
    ? window.trustedTypes.createPolicy("playground", { createHTML: (s) => s })
    : null;

  const EXAMPLES = {
    hello: 'import sys\\nprint("Hello from", sys.version.split()[0])\\nprint("to stderr", file=sys.stderr)\\n{"answer": 6 * 7, "items": [1, 2, 3]}\\n',
    error: 'def divide(a, b):\\n    return a / b\\n\\ndivide(1, 0)\\n',
    png: 'import struct, zlib\\n\\ndef png(width, height, pixel):\\n    def chunk(tag, data):\\n        return (struct.pack(">I", len(data)) + tag + data\\n                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))\\n    rows = b"".join(b"\\\\x00" + b"".join(bytes(pixel(x, y)) for x in range(width))\\n                   for y in range(height))\\n    return (b"\\\\x89PNG\\\\r\\\\n\\\\x1a\\\\n"\\n            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))\\n            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))\\n\\nclass Gradient:\\n    def _repr_png_(self):\\n        return png(96, 64, lambda x, y: (x * 255 // 95, y * 255 // 63, 160))\\n\\ndisplay(Gradient())\\nprint("a 96 x 64 PNG built with zlib and struct")\\n',
    svg: 'class Circle:\\n    def _repr_svg_(self):\\n        return (\\'<svg xmlns="http://www.w3.org/2000/svg" width="120" height="120">\\'\\n                \\'<circle cx="60" cy="60" r="50" fill="#2f6fde"/></svg>\\')\\n\\ndisplay(Circle())\\n',
    html: 'class Table:\\n    def _repr_html_(self):\\n        rows = "".join(f"<tr><td>{n}</td><td>{n * n}</td></tr>" for n in range(1, 6))\\n        return f"<table border=1><tr><th>n</th><th>n²</th></tr>{rows}</table>"\\n\\ndisplay(Table())\\n',
    session: '# Choose "Session" above: state survives between runs\\ntry:\\n    counter += 1\\nexcept NameError:\\n    counter = 1\\ncounter\\n',
  };

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function clip(text) {
    return text.length > MAX_TEXT
      ? text.slice(0, MAX_TEXT) + "\\n[... cut by the page]"
      : text;
  }

  function setStatus(text, bad) {
    const s = $("status");
    s.textContent = text;
    s.classList.toggle("bad", Boolean(bad));
  }

  function showSession() {
    $("session-info").textContent = sessionId
      ? "session " + sessionId.slice(0, 12) + " (" + sessionRuns +
        (sessionRuns === 1 ? " run)" : " runs)")
      : ($("mode").value === "session" ? "a session opens on the next run" : "");
    $("end-session").disabled = !sessionId || busy;
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function call(method, path, body) {
    const headers = { accept: "application/json" };
    const token = $("token").value.trim();
    if (token) headers.authorization = "Bearer " + token;
    if (body !== undefined) headers["content-type"] = "application/json";
    const res = await fetch(base + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
      redirect: "error",
    });
    const text = await res.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!res.ok) {
      const detail = data && typeof data.error === "string"
        ? data.error
        : text.slice(0, 500) || res.statusText;
      throw new ApiError(res.status, "HTTP " + res.status + ": " + detail);
    }
    return data;
  }

  function section(card, title, node) {
    card.append(el("h3", "", title), node);
  }

  function isBase64(value) {
    return typeof value === "string" && value.length > 0 &&
      /^[A-Za-z0-9+/]+={0,2}$/.test(value.replace(/\\s+/g, ""));
  }

  function renderDisplay(bundle) {
    const box = el("div", "display");
    if (!bundle || typeof bundle !== "object" || Array.isArray(bundle)) {
      box.append(el("pre", "", "[a display that is not a MIME bundle]"));
      return box;
    }
    for (const mime of ["image/png", "image/jpeg"]) {
      if (isBase64(bundle[mime])) {
        const img = el("img");
        img.alt = typeof bundle["text/plain"] === "string"
          ? bundle["text/plain"].slice(0, 200)
          : mime;
        img.dataset.mime = mime;
        img.src = "data:" + mime + ";base64," + bundle[mime].replace(/\\s+/g, "");
        box.append(img);
        return box;
      }
    }
    if (typeof bundle["image/svg+xml"] === "string") {
      const img = el("img");
      img.alt = "SVG display";
      img.dataset.mime = "image/svg+xml";
      img.src = "data:image/svg+xml;charset=utf-8," +
        encodeURIComponent(bundle["image/svg+xml"]);
      box.append(img);
      return box;
    }
    if (typeof bundle["text/html"] === "string") {
      // No allow-scripts and no allow-same-origin: the HTML gets an opaque
      // origin, runs no script and cannot reach this page or its token.
      const frameBox = el("div", "frame-box");
      const frame = el("iframe");
      frame.setAttribute("sandbox", "");
      frame.setAttribute("referrerpolicy", "no-referrer");
      frame.title = "HTML display";
      const html = clip(bundle["text/html"]);
      frame.srcdoc = policy ? policy.createHTML(html) : html;
      frameBox.append(frame);
      box.append(frameBox);
      return box;
    }
    if (bundle["application/json"] !== undefined) {
      box.append(el("pre", "", JSON.stringify(bundle["application/json"], null, 2)));
      return box;
    }
    const text = typeof bundle["text/markdown"] === "string"
      ? bundle["text/markdown"]
      : typeof bundle["text/plain"] === "string"
      ? bundle["text/plain"]
      : JSON.stringify(Object.keys(bundle));
    box.append(el("pre", "", clip(text)));
    return box;
  }

  function seconds(ms) {
    return typeof ms === "number" && Number.isFinite(ms)
      ? (ms / 1000).toFixed(2) + " s"
      : "?";
  }

  function renderResult(card, r) {
    if (!r || typeof r !== "object") {
      section(card, "error", el("pre", "stderr", "The server sent no result"));
      return;
    }
    const status = r.status === "success" ? "success" : "error";
    const head = card.querySelector(".run-head");
    head.append(el("span", "badge " + status, status));
    if (typeof r.executionTime === "number") {
      head.append(el("span", "", r.executionTime.toFixed(3) + " s"));
    }
    const t = r.timing;
    if (t && typeof t === "object") {
      head.append(el("span", "",
        "queued " + seconds(t.queuedMs) + ", start-up " + seconds(t.startMs) +
          ", code " + seconds(t.runMs)));
    }
    if (typeof r.stdout === "string" && r.stdout) {
      section(card, "stdout", el("pre", "stdout", clip(r.stdout)));
      if (r.stdoutTruncated) card.append(el("div", "note", "stdout was truncated"));
    }
    const e = r.error;
    let stderr = typeof r.stderr === "string" ? r.stderr : "";
    if (e && typeof e === "object" && typeof e.traceback === "string" && e.traceback) {
      // The traceback is shown under "error": leave it out of stderr.
      const at = stderr.lastIndexOf(e.traceback);
      if (at >= 0) stderr = stderr.slice(0, at) + stderr.slice(at + e.traceback.length);
      if (!stderr.trim()) stderr = "";
    }
    if (stderr) {
      section(card, "stderr", el("pre", "stderr", clip(stderr)));
      if (r.stderrTruncated) card.append(el("div", "note", "stderr was truncated"));
    }
    if (e && typeof e === "object") {
      const box = el("div", "error");
      const kind = el("span", "badge error error-kind", String(e.kind));
      const msg = el("div", "error-message");
      msg.append(kind, " ",
        (typeof e.type === "string" ? e.type + ": " : "") + String(e.message));
      box.append(msg);
      if (typeof e.traceback === "string" && e.traceback) {
        box.append(el("pre", "traceback", clip(e.traceback)));
      }
      section(card, "error", box);
    }
    if (r.result !== undefined && r.result !== null) {
      const flat = JSON.stringify(r.result);
      const shown = flat.length <= 80 ? flat : JSON.stringify(r.result, null, 2);
      section(card, "result", el("pre", "result", clip(shown)));
    }
    if (Array.isArray(r.displays) && r.displays.length) {
      const box = el("div", "displays");
      for (const d of r.displays) box.append(renderDisplay(d));
      section(card, "displays", box);
    }
    if (Array.isArray(r.files) && r.files.length) {
      const list = el("ul", "files");
      for (const f of r.files) {
        if (!f || typeof f !== "object") continue;
        list.append(el("li", "", String(f.path) + " (" + Number(f.size) + " bytes" +
          (f.truncated ? ", truncated" : "") + ")"));
      }
      section(card, "files", list);
    }
  }

  function newCard(label) {
    runCount++;
    const card = el("article", "run");
    card.dataset.run = String(runCount);
    const head = el("div", "run-head");
    head.append(el("strong", "", "#" + runCount), el("span", "", label));
    card.append(head);
    const out = $("output");
    out.prepend(card);
    return card;
  }

  async function run() {
    if (busy) return;
    const code = $("code").value;
    const stateful = $("mode").value === "session";
    busy = true;
    $("run").disabled = true;
    showSession();
    const card = newCard(stateful ? "session" : "stateless");
    setStatus("Running...");
    const body = { code };
    const timeout = Number($("timeout").value);
    if (Number.isFinite(timeout) && timeout > 0) body.timeoutSeconds = timeout;
    try {
      let result;
      if (stateful) {
        if (!sessionId) {
          setStatus("Opening a session...");
          const created = await call("POST", "/v1/sessions");
          if (!created || typeof created.id !== "string") {
            throw new Error("The server sent no session id");
          }
          sessionId = created.id;
          sessionRuns = 0;
          showSession();
          setStatus("Running...");
        }
        try {
          result = await call("POST", "/v1/sessions/" + encodeURIComponent(sessionId) + "/execute", body);
          sessionRuns++;
        } catch (error) {
          if (error instanceof ApiError && error.status === 404) {
            sessionId = null;
            throw new Error(error.message + " (the session expired: run again to open a new one)");
          }
          throw error;
        }
      } else {
        result = await call("POST", "/v1/execute", body);
      }
      renderResult(card, result);
      setStatus(result && result.status === "success" ? "Done" : "Finished with an error");
    } catch (error) {
      card.classList.add("failed");
      section(card, "request failed", el("pre", "stderr request-error",
        error instanceof Error ? error.message : String(error)));
      setStatus(error instanceof Error ? error.message : String(error), true);
    } finally {
      busy = false;
      $("run").disabled = false;
      showSession();
    }
  }

  async function endSession() {
    if (!sessionId || busy) return;
    const id = sessionId;
    sessionId = null;
    showSession();
    try {
      await call("DELETE", "/v1/sessions/" + encodeURIComponent(id));
      setStatus("Session closed");
    } catch (error) {
      setStatus(error instanceof Error ? error.message : String(error), true);
    }
  }

  $("run").addEventListener("click", run);
  $("end-session").addEventListener("click", endSession);
  $("clear").addEventListener("click", () => $("output").replaceChildren());
  $("mode").addEventListener("change", showSession);
  $("example").addEventListener("change", () => {
    const code = EXAMPLES[$("example").value];
    if (code) $("code").value = code;
    $("example").value = "";
  });
  $("code").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      run();
    } else if (event.key === "Tab" && !event.shiftKey) {
      event.preventDefault();
      const area = event.target;
      area.setRangeText("    ", area.selectionStart, area.selectionEnd, "end");
    }
  });
  $("code").value = EXAMPLES.hello;
  showSession();
  setStatus("Ready: type the token (if the server has one), then Run or Ctrl+Enter");
})();
`;

/**
 * The page's body, between the inlined style and script.
 */
export const PLAYGROUND_BODY: string = `
<header>
  <h1>pyodide-sandbox playground</h1>
  <label>Token <input id="token" type="password" autocomplete="off" spellcheck="false"
    placeholder="bearer token" size="22"></label>
  <label>Mode <select id="mode">
    <option value="stateless">Stateless</option>
    <option value="session">Session</option>
  </select></label>
  <span id="session-info" class="muted"></span>
  <button id="end-session" type="button" disabled>End session</button>
</header>
<main>
  <section>
    <textarea id="code" spellcheck="false" autocapitalize="off" aria-label="Python code"></textarea>
    <div class="bar">
      <button id="run" class="primary" type="button">Run</button>
      <label class="muted">Timeout (s) <input id="timeout" type="number" min="0.1" step="any"
        placeholder="max"></label>
      <label class="muted">Example <select id="example">
        <option value="">choose...</option>
        <option value="hello">print and result</option>
        <option value="error">traceback</option>
        <option value="png">PNG display</option>
        <option value="svg">SVG display</option>
        <option value="html">HTML display</option>
        <option value="session">session counter</option>
      </select></label>
      <button id="clear" type="button">Clear output</button>
    </div>
    <div id="status" class="muted" role="status"></div>
  </section>
  <section id="output" aria-live="polite"></section>
</main>
`;
