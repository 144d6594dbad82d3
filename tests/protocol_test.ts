/**
 * The wire protocol (`_protocol.ts`): every message round-trips through its
 * encoder and decoder, and hostile bytes (truncated frames, huge declared
 * lengths, wrong types, a wrong nonce, bad JSON, a bad index) come back as
 * errors, never as exceptions.
 */

import assert from "node:assert/strict";
import {
  concatWithIndex,
  decodeToChild,
  encodeToChild,
  encodeToParent,
  type ExecRequest,
  FRAME_HEAD_BYTES,
  FRAME_MAGIC,
  type InitRequest,
  NONCE_BYTES,
  packState,
  splitIndex,
  ToChild,
  toJson,
  ToParent,
  unpackState,
} from "../_protocol.ts";
import {
  checkDisplay,
  checkHostCall,
  checkInstallArgs,
  checkResultHeader,
  checkSavedHeader,
  decodeFiles,
  fatalMessage,
  MAX_FATAL_CHARS,
} from "../_protocol_checks.ts";
import { FrameParser } from "../_frame_parser.ts";
import { runnerFileNames } from "../_runner_copy.ts";

const NONCE = new Uint8Array(NONCE_BYTES).map((_, i) => i * 7 + 1);
const LIMITS = {
  stateBytes: 1 << 20,
  maxDisplayBytes: 1024,
  maxTotalFileBytes: 4096,
};
const FILE_LIMITS = {
  roots: ["/home/pyodide"],
  exact: [],
  maxFileBytes: 100,
  maxTotalFileBytes: 150,
};

function bytes(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

Deno.test("encodeToChild() and decodeToChild() round-trip every parent-to-child message", () => {
  const init: InitRequest = { mode: "serve", oneShot: true, warm: true };
  const exec: ExecRequest = {
    code: "print(1)",
    stdin: "in",
    wantState: false,
    files: [{ path: "/home/pyodide/a", size: 2 }],
    functions: ["f"],
    maxFileBytes: 10,
    maxTotalFileBytes: 20,
    install: { packages: ["six"] },
  };
  const messages: [number, unknown, Uint8Array?][] = [
    [ToChild.init, init, NONCE],
    [ToChild.exec, exec, new Uint8Array([1, 2])],
    [ToChild.interrupt, null],
    [ToChild.save, null],
    [ToChild.callReply, { ok: true, value: [1, "two"] }],
    [ToChild.callReply, { ok: false, message: "no", type: "E" }],
  ];
  for (const [type, json, bin] of messages) {
    const frame = encodeToChild(type, json, bin);
    assert.equal(decodeToChild(frame.subarray(0, frame.length - 1)), undefined);
    const decoded = decodeToChild(frame)!;
    assert.equal(decoded.type, type);
    assert.deepEqual(JSON.parse(decoded.json), json);
    assert.deepEqual(decoded.bin, bin ?? new Uint8Array(0));
    assert.equal(decoded.total, frame.length);
  }
  assert.equal(decodeToChild(new Uint8Array(FRAME_HEAD_BYTES - 1)), undefined);
});

Deno.test("encodeToParent() frames every child-to-parent message for FrameParser", () => {
  const messages: [number, unknown, Uint8Array?][] = [
    [ToParent.ready, { loadMs: 12.5 }],
    [ToParent.stdout, null, bytes("out")],
    [ToParent.stderr, null, bytes("err")],
    [ToParent.result, { out: { ok: true, result: 3 }, packages: [] }],
    [ToParent.saved, { droppedGlobals: "" }, new Uint8Array([9])],
    [ToParent.call, { name: "f", args: [1] }],
    [ToParent.display, { "text/plain": "x" }],
    [ToParent.snapshot, { loadMs: 1 }, new Uint8Array(10)],
    [ToParent.fatal, { message: "boom" }],
    [ToParent.files, null, concatWithIndex([], [])],
  ];
  const parser = new FrameParser(NONCE, LIMITS);
  for (const [type, json, bin] of messages) {
    const frame = encodeToParent(NONCE, type, json, bin);
    // Split in two chunks, with stray bytes in front.
    const half = frame.length >> 1;
    assert.deepEqual(
      parser.push(concatStray(frame.subarray(0, half))),
      [],
    );
    const [got, ...more] = parser.push(frame.subarray(half));
    assert.equal(more.length, 0);
    assert.equal(got.type, type);
    assert.deepEqual(got.json, json);
    assert.deepEqual(got.bin, bin ?? new Uint8Array(0));
  }
  assert.equal(parser.violation, undefined);
  assert.equal(parser.strayBytes, 3 * messages.length);
});

function concatStray(part: Uint8Array): Uint8Array {
  const out = new Uint8Array(part.length + 3);
  out.set([0x50, 0x53, 0x42], 0);
  out.set(part, 3);
  return out;
}

Deno.test("FrameParser ignores a frame with a wrong nonce and stops at hostile ones", () => {
  const other = NONCE.map((b) => b ^ 0xff);
  const stray = new FrameParser(NONCE, LIMITS);
  assert.deepEqual(
    stray.push(encodeToParent(other, ToParent.ready, { loadMs: 1 })),
    [],
  );
  assert.equal(stray.violation, undefined);

  const frame = (type: number, json: number, bin: number) => {
    const out = new Uint8Array(4 + NONCE_BYTES + FRAME_HEAD_BYTES);
    out.set(FRAME_MAGIC, 0);
    out.set(NONCE, 4);
    out[4 + NONCE_BYTES] = type;
    const view = new DataView(out.buffer);
    view.setUint32(4 + NONCE_BYTES + 1, json);
    view.setUint32(4 + NONCE_BYTES + 5, bin);
    return out;
  };
  const hostile: [string, Uint8Array][] = [
    ["an unknown type", frame(77, 0, 0)],
    ["a huge declared header", frame(ToParent.call, 0xffffffff, 0)],
    ["a huge declared attachment", frame(ToParent.result, 2, 0xffffffff)],
    ["a stdout frame over 64 KiB", frame(ToParent.stdout, 4, 64 * 1024 + 1)],
  ];
  for (const [what, bytes] of hostile) {
    const parser = new FrameParser(NONCE, LIMITS);
    assert.deepEqual(parser.push(bytes), [], what);
    assert.ok(parser.violation, what);
  }

  const badJson = encodeToParent(NONCE, ToParent.ready, null);
  const at = 4 + NONCE_BYTES + FRAME_HEAD_BYTES;
  badJson.set(bytes("{nop"), at);
  const parser = new FrameParser(NONCE, LIMITS);
  parser.push(badJson);
  assert.ok(parser.violation, "bad JSON");

  const badTrailer = encodeToParent(NONCE, ToParent.ready, { loadMs: 1 });
  badTrailer[badTrailer.length - 1] ^= 0xff;
  const trailer = new FrameParser(NONCE, LIMITS);
  trailer.push(badTrailer);
  assert.ok(trailer.violation, "wrong trailer");

  // A truncated frame waits for more bytes.
  const whole = encodeToParent(NONCE, ToParent.fatal, { message: "m" });
  const waiting = new FrameParser(NONCE, LIMITS);
  assert.deepEqual(waiting.push(whole.subarray(0, whole.length - 2)), []);
  assert.equal(waiting.violation, undefined);
});

Deno.test("concatWithIndex() and splitIndex() round-trip; a bad index is undefined", () => {
  const packed = concatWithIndex({ n: 2 }, [bytes("ab"), bytes("cde")]);
  const split = splitIndex(packed)!;
  assert.deepEqual(split.index, { n: 2 });
  assert.deepEqual(split.data, bytes("abcde"));
  assert.equal(splitIndex(new Uint8Array(3)), undefined);
  const huge = new Uint8Array(8);
  new DataView(huge.buffer).setUint32(0, 0xffffffff);
  assert.equal(splitIndex(huge), undefined);
  const notJson = new Uint8Array(8);
  new DataView(notJson.buffer).setUint32(0, 4);
  notJson.set(bytes("{no!"), 4);
  assert.equal(splitIndex(notJson), undefined);
});

Deno.test("packState() and unpackState() round-trip; damaged state is undefined", () => {
  const snapshot = new Uint8Array([1, 2, 3]);
  const files = concatWithIndex([{ path: "/home/pyodide/x", size: 1 }], [
    new Uint8Array([7]),
  ]);
  const state = unpackState(packState(snapshot, files))!;
  assert.deepEqual(state.snapshot, snapshot);
  assert.deepEqual(state.files, files);
  assert.equal(
    unpackState(concatWithIndex({ snapshot: 10, files: 0 }, [snapshot])),
    undefined,
  );
  assert.equal(
    unpackState(concatWithIndex({ snapshot: "3", files: 0 }, [snapshot])),
    undefined,
  );
  assert.equal(unpackState(concatWithIndex([1], [])), undefined);
  assert.equal(unpackState(new Uint8Array(2)), undefined);
});

Deno.test("toJson() writes plain data like JSON.stringify, ignoring toJSON", () => {
  const value = { a: [1, "x", null, true], b: { c: undefined, d: 1.5 } };
  assert.equal(toJson(value), JSON.stringify(value));
  assert.equal(toJson({ toJSON: () => "stolen", x: 1 }), '{"x":1}');
  assert.equal(toJson(undefined), "null");
});

Deno.test("checkResultHeader() takes the report as an object or as JSON text", () => {
  const out = { ok: false, error: { type: "E", message: "m" } };
  for (const wire of [out, JSON.stringify(out)]) {
    const checked = checkResultHeader({ out: wire, packages: ["a==1"] });
    assert.deepEqual(checked, {
      ok: true,
      value: {
        out: { ok: false, result: undefined, error: out.error },
        packages: ["a==1"],
        stateError: undefined,
        droppedGlobals: undefined,
        installError: false,
        notRun: false,
      },
    });
  }
  const hostile: unknown[] = [
    null,
    [],
    { out: 5 },
    { out: "not json" },
    { out: [] },
    { out: { ok: "yes" } },
    { out: { ok: false } },
    { out: { ok: false, error: { type: "E", message: "m", traceback: 1 } } },
    { out: { ok: true }, packages: [1] },
    { out: { ok: true }, notRun: "yes" },
    { out: { ok: true }, stateError: 3 },
  ];
  for (const json of hostile) {
    const checked = checkResultHeader(json);
    assert.equal(checked.ok, false, JSON.stringify(json));
  }
});

Deno.test("the other header checks refuse wrong types without throwing", () => {
  assert.equal(checkSavedHeader({ packages: "a" }).ok, false);
  assert.equal(checkSavedHeader({ droppedGlobals: "" }).ok, true);
  assert.deepEqual(checkHostCall({ name: "f", args: [1] }), {
    ok: true,
    value: { name: "f", args: [1] },
  });
  for (const json of [null, { name: 1, args: [] }, { name: "", args: [] }]) {
    assert.equal(checkHostCall(json).ok, false);
  }
  assert.equal(checkHostCall({ name: "x".repeat(257), args: [] }).ok, false);
  assert.equal(checkHostCall({ name: "f", args: {} }).ok, false);
  assert.equal(checkInstallArgs([[], [], []]).ok, true);
  assert.equal(checkInstallArgs([[], [1], []]).ok, false);
  assert.equal(checkInstallArgs([[]]).ok, false);
  assert.equal(checkDisplay({ "text/plain": "x" }).ok, true);
  assert.equal(checkDisplay({}).ok, false);
  assert.equal(checkDisplay({ "not a mime": "x" }).ok, false);
  assert.equal(checkDisplay({ "text/html": 1 }).ok, false);
  assert.equal(checkDisplay({ "application/json": { a: 1 } }).ok, true);
  assert.equal(fatalMessage({ message: "m" }), "m");
  assert.equal(fatalMessage(5), "no message");
  assert.equal(
    fatalMessage({ message: "x".repeat(MAX_FATAL_CHARS + 10) }).length,
    MAX_FATAL_CHARS + 3,
  );
});

Deno.test("decodeFiles() keeps good entries and drops hostile ones", () => {
  const entry = (path: string, size: number, length = size) => ({
    path,
    size,
    length,
    truncated: length < size,
  });
  const good = concatWithIndex(
    [entry("/home/pyodide/a", 2), entry("/home/pyodide/b", 200, 3)],
    [bytes("ab"), bytes("cde")],
  );
  const files = decodeFiles(good, FILE_LIMITS);
  assert.equal(files.dropped, 0);
  assert.deepEqual(files.files.map((f) => [f.path, f.size, f.truncated]), [
    ["/home/pyodide/a", 2, false],
    ["/home/pyodide/b", 200, true],
  ]);

  const hostile: [string, Uint8Array][] = [
    ["no index", new Uint8Array(2)],
    ["a huge index length", new Uint8Array([0xff, 0xff, 0xff, 0xff, 0])],
    ["an index that is not a list", concatWithIndex({ a: 1 }, [])],
    [
      "a path outside",
      concatWithIndex([entry("/etc/passwd", 1)], [bytes("x")]),
    ],
    [
      "a path with ..",
      concatWithIndex([entry("/home/pyodide/../x", 1)], [bytes("x")]),
    ],
    [
      "a length past the end",
      concatWithIndex([entry("/home/pyodide/a", 10)], [bytes("x")]),
    ],
    [
      "a listed twice path",
      concatWithIndex([
        entry("/home/pyodide/a", 1),
        entry("/home/pyodide/a", 1),
      ], [
        bytes("x"),
        bytes("y"),
      ]),
    ],
    ["a wrong entry type", concatWithIndex([5], [])],
  ];
  for (const [what, bin] of hostile) {
    const out = decodeFiles(bin, FILE_LIMITS);
    assert.ok(out.dropped > 0, what);
    assert.ok(out.reason, what);
  }
  // Caps are the host's: a 120-byte file is cut at maxFileBytes.
  const big = decodeFiles(
    concatWithIndex([entry("/home/pyodide/big", 120)], [new Uint8Array(120)]),
    FILE_LIMITS,
  );
  assert.equal(big.files[0].content.length, 100);
  assert.equal(big.files[0].truncated, true);
});

Deno.test("runnerFileNames() lists exactly the local files runner.ts imports", async () => {
  const seen = new Set<string>();
  const queue = ["runner.ts"];
  while (queue.length > 0) {
    const name = queue.shift()!;
    if (seen.has(name)) continue;
    seen.add(name);
    const text = await Deno.readTextFile(
      new URL(`../${name}`, import.meta.url),
    );
    for (const [, local] of text.matchAll(/from "\.\/([^"]+)"/g)) {
      queue.push(local);
    }
  }
  assert.deepEqual([...seen].sort(), runnerFileNames().sort());
  assert.equal(runnerFileNames()[0], "runner.ts");
});
