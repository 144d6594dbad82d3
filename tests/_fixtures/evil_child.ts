/**
 * A FULLY COMPROMISED sandbox child: it speaks the runner protocol (it knows
 * the nonce, as code that stole it would) and sends whatever the test asks.
 * It is started by `EvilSandbox` (tests/_evil.ts) in place of `runner.ts`,
 * with no permission beyond reading its own folder.
 *
 * Protocol: it reads the init frame (nonce = the first 16 bytes of its
 * attachment), answers `ready`, then runs each exec frame's `code`:
 *
 * - `scenario:<name>`: a named scenario (see {@linkcode SCENARIOS});
 * - `script:<JSON list of ops>`: the ops in order (see {@linkcode Op});
 * - anything else: an honest result `{ok: true, result: 1}`.
 *
 * A save frame gets an honest-looking `saved` frame. Interrupts are ignored.
 *
 * @module
 */

const MAGIC = new Uint8Array([0x50, 0x53, 0x42, 0x31]);
const NONCE_BYTES = 16;
const CHUNK = 1 << 20;

/** Bytes given inline, as base64, or as `fill` bytes of value `byte`. */
export interface Bin {
  text?: string;
  base64?: string;
  fill?: number;
  byte?: number;
}

/** One step of a script. */
export type Op =
  | {
    /** A child-to-parent frame, correct unless told otherwise. */
    op: "frame";
    type: number;
    /** The header as a value (JSON-encoded by the child). */
    json?: unknown;
    /** The header as raw text (may be invalid JSON). */
    jsonText?: string;
    bin?: Bin;
    /** Declared lengths (default: the actual ones). */
    jsonLength?: number;
    binLength?: number;
    /** "bad": a wrong nonce in the trailer. */
    nonce?: "good" | "bad";
    /** false: stop after the body (no trailer). */
    trailer?: boolean;
  }
  | { op: "raw"; bin: Bin }
  /** A display `{[mime]: "x" * fill}` (built here: it may be huge). */
  | { op: "display"; mime: string; fill: number }
  | {
    /** A result frame: `out` is JSON-encoded unless `header.out` is set. */
    op: "result";
    out?: unknown;
    header?: Record<string, unknown>;
    bin?: Bin;
  }
  | { op: "reply"; timeoutMs?: number }
  | { op: "sleep"; ms: number }
  | { op: "exit"; code?: number }
  | { op: "hang" }
  | { op: "background"; ops: Op[] };

/** Ready-made scenarios, by name. */
export const SCENARIOS: Record<string, Op[]> = {
  honest: [{ op: "result" }],
  huge_stdout_frame: [
    { op: "frame", type: 2, bin: { fill: 100_000_000, byte: 0x41 } },
    { op: "result" },
  ],
  unknown_type: [{ op: "frame", type: 77, json: null }, { op: "result" }],
  bad_json: [{ op: "frame", type: 2, jsonText: "{not json" }, {
    op: "result",
  }],
  after_result: [
    { op: "result" },
    { op: "frame", type: 2, bin: { text: "late\n" } },
    { op: "result", out: { ok: true, result: 2 } },
  ],
};

let nonce = new Uint8Array(NONCE_BYTES);
const encoder = new TextEncoder();

function bytesOf(bin: Bin | undefined): Uint8Array | number {
  if (!bin) return new Uint8Array(0);
  if (bin.text !== undefined) return encoder.encode(bin.text);
  if (bin.base64 !== undefined) {
    return Uint8Array.from(atob(bin.base64), (c) => c.charCodeAt(0));
  }
  return bin.fill ?? 0;
}

async function write(bytes: Uint8Array): Promise<void> {
  let offset = 0;
  while (offset < bytes.length) {
    offset += await Deno.stdout.write(bytes.subarray(offset));
  }
}

async function writeBody(body: Uint8Array | number, byte = 0): Promise<void> {
  if (typeof body !== "number") return await write(body);
  const chunk = new Uint8Array(Math.min(CHUNK, body)).fill(byte);
  for (let left = body; left > 0; left -= chunk.length) {
    await write(left >= chunk.length ? chunk : chunk.subarray(0, left));
  }
}

async function sendFrame(op: Extract<Op, { op: "frame" }>): Promise<void> {
  const head = op.jsonText !== undefined
    ? encoder.encode(op.jsonText)
    : encoder.encode(JSON.stringify(op.json ?? null));
  const body = bytesOf(op.bin);
  const bodyLength = typeof body === "number" ? body : body.length;
  const prefix = new Uint8Array(4 + NONCE_BYTES + 9);
  prefix.set(MAGIC, 0);
  prefix.set(nonce, 4);
  const view = new DataView(prefix.buffer);
  view.setUint8(4 + NONCE_BYTES, op.type & 0xff);
  view.setUint32(4 + NONCE_BYTES + 1, (op.jsonLength ?? head.length) >>> 0);
  view.setUint32(4 + NONCE_BYTES + 5, (op.binLength ?? bodyLength) >>> 0);
  await write(prefix);
  await write(head);
  await writeBody(body, op.bin?.byte ?? 0);
  if (op.trailer === false) return;
  await write(
    op.nonce === "bad" ? nonce.map((b) => b ^ 0xff) : nonce,
  );
}

/** Frames from the parent, as they arrive. */
interface InFrame {
  type: number;
  json: string;
  bin: Uint8Array;
}

const inbox: InFrame[] = [];
const replies: string[] = [];
let wake: (() => void) | undefined;

async function readStdin(): Promise<void> {
  let buf = new Uint8Array(0);
  const chunk = new Uint8Array(1 << 16);
  for (;;) {
    const n = await Deno.stdin.read(chunk).catch(() => null);
    if (n === null) Deno.exit(0); // The parent is gone.
    const next = new Uint8Array(buf.length + n);
    next.set(buf, 0);
    next.set(chunk.subarray(0, n), buf.length);
    buf = next;
    while (buf.length >= 9) {
      const view = new DataView(buf.buffer, buf.byteOffset, buf.length);
      const total = 9 + view.getUint32(1) + view.getUint32(5);
      if (buf.length < total) break;
      const jsonLength = view.getUint32(1);
      const json = new TextDecoder().decode(buf.subarray(9, 9 + jsonLength));
      const frame = {
        type: buf[0],
        json,
        bin: buf.slice(9 + jsonLength, total),
      };
      if (frame.type === 5) replies.push(json);
      else if (frame.type !== 3) inbox.push(frame);
      buf = buf.slice(total);
      wake?.();
    }
  }
}

async function until(check: () => boolean, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check() && Date.now() < end) {
    await new Promise<void>((resolve) => {
      wake = resolve;
      setTimeout(resolve, 20);
    });
    wake = undefined;
  }
}

function resultHeader(op: Extract<Op, { op: "result" }>) {
  return {
    out: JSON.stringify(op.out ?? { ok: true, result: 1 }),
    interrupted: false,
    packages: [],
    ...op.header,
  };
}

async function run(ops: Op[]): Promise<void> {
  for (const op of ops) {
    switch (op.op) {
      case "frame":
        await sendFrame(op);
        break;
      case "raw": {
        await writeBody(bytesOf(op.bin), op.bin.byte ?? 0);
        break;
      }
      case "display":
        await sendFrame({
          op: "frame",
          type: 7,
          jsonText: JSON.stringify({ [op.mime]: "x".repeat(op.fill) }),
        });
        break;
      case "result":
        await sendFrame({
          op: "frame",
          type: 4,
          json: resultHeader(op),
          bin: op.bin,
        });
        break;
      case "reply": {
        await until(() => replies.length > 0, op.timeoutMs ?? 10_000);
        const text = replies.shift() ?? "no reply";
        await sendFrame({ op: "frame", type: 2, bin: { text: `${text}\n` } });
        break;
      }
      case "sleep":
        await new Promise((r) => setTimeout(r, op.ms));
        break;
      case "exit":
        Deno.exit(op.code ?? 0);
        break;
      case "hang":
        await new Promise(() => {});
        break;
      case "background":
        run(op.ops).catch(() => Deno.exit(0));
        break;
    }
  }
}

function opsFor(code: string): Op[] {
  if (code.startsWith("scenario:")) {
    return SCENARIOS[code.slice(9)] ?? SCENARIOS.honest;
  }
  if (code.startsWith("script:")) return JSON.parse(code.slice(7)) as Op[];
  return SCENARIOS.honest;
}

async function main(): Promise<void> {
  readStdin().catch(() => Deno.exit(0));
  await until(() => inbox.length > 0, 60_000);
  const init = inbox.shift();
  if (!init || init.type !== 1) Deno.exit(3);
  nonce = init.bin.slice(0, NONCE_BYTES);
  await sendFrame({ op: "frame", type: 1, json: { loadMs: 0 } });
  for (;;) {
    await until(() => inbox.length > 0, 3_600_000);
    const frame = inbox.shift();
    if (!frame) continue;
    if (frame.type === 2) {
      const request = JSON.parse(frame.json) as { code: string };
      await run(opsFor(request.code));
    } else if (frame.type === 4) {
      await sendFrame({
        op: "frame",
        type: 5,
        json: { droppedGlobals: "", packages: [] },
        bin: { text: "not a real state" },
      });
    }
  }
}

if (import.meta.main) {
  main().catch(() => Deno.exit(0));
}
