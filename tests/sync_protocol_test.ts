/**
 * The caller/worker messages of SyncPyodideSandbox (_sync_protocol.ts):
 * errors and session bytes cross threads and come back as they left.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  errorFrom,
  errorInfo,
  shareBytes,
  STREAM_CALLBACKS,
  unshareBytes,
} from "../_sync_protocol.ts";
import { SessionError } from "../_session_bytes.ts";

Deno.test("errorFrom(errorInfo()) keeps TypeError, RangeError and SessionError and their messages; other errors become Error", () => {
  for (
    const error of [
      new TypeError("Invalid code: expected a string"),
      new RangeError("Invalid timeoutSeconds: expected a number > 0"),
      new SessionError("Invalid session bytes: bad checksum"),
    ]
  ) {
    const back = errorFrom(structuredClone(errorInfo(error)));
    assert.equal(back.constructor, error.constructor);
    assert.equal(back.message, error.message);
  }
  const other = errorFrom(errorInfo(new SyntaxError("nope")));
  assert.equal(other.constructor, Error);
  assert.equal(other.message, "nope");
  assert.deepEqual(errorInfo("plain"), { name: "Error", message: "plain" });
});

Deno.test("shareBytes() then unshareBytes() gives equal session bytes in a copy, other fields untouched", () => {
  const bytes = new Uint8Array([1, 2, 3, 250]);
  const original = { sessionBytes: bytes, stdout: "hi", result: 42 };
  const shared = shareBytes(original);
  assert.ok(shared.sessionBytes instanceof SharedArrayBuffer);
  assert.equal(original.sessionBytes, bytes, "the input is not changed");
  const posted = structuredClone(shared);
  const back = unshareBytes(posted);
  assert.ok(back.sessionBytes instanceof Uint8Array);
  assert.deepEqual([...(back.sessionBytes as Uint8Array)], [1, 2, 3, 250]);
  assert.equal(back.stdout, "hi");
  assert.equal(back.result, 42);
  // Values that are not bytes pass through as they are.
  assert.deepEqual(shareBytes({ sessionBytes: "x" }), { sessionBytes: "x" });
  assert.deepEqual(unshareBytes({ sessionBytes: 7 }), { sessionBytes: 7 });
});

Deno.test("STREAM_CALLBACKS names the three output callbacks of ExecuteOptions", () => {
  assert.deepEqual(STREAM_CALLBACKS.map(([flag]) => flag), [
    "onStdout",
    "onStderr",
    "onDisplay",
  ]);
});
