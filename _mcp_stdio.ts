/**
 * The MCP server's stdio transport: newline-delimited JSON-RPC like the
 * SDK's `StdioServerTransport`, but a message over the size limit, a line
 * that is not JSON or not JSON-RPC gets a JSON-RPC error reply and the
 * server keeps serving (the SDK's transport closes on an oversized message,
 * which ends the server and every session, and answers nothing to a parse
 * error).
 *
 * @module
 */

import { concatBytes } from "./_bytes.ts";
import process from "node:process";
import {
  JSON_RPC_ERRORS,
  type JsonRpcMessage,
  type McpTransport,
  toJsonRpcMessage,
} from "./_mcp_sdk.ts";

/** Largest MCP message (one line, newline excluded) read over stdio. */
export const MAX_STDIO_MESSAGE_BYTES = 10 * 1024 * 1024;

/** Bytes kept from each end of an oversized line to find its id. */
const KEEP = 1024;

type Id = string | number | null;

const ID = String.raw`(-?\d{1,16}|"(?:[^"\\]|\\.){0,256}")`;
/** `{"jsonrpc": "2.0", "id": X, ...`: the first keys of the top object. */
const HEAD_ID = new RegExp(
  String
    .raw`^\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*${ID}\s*[,}]`,
);
/** `..., "id": X}` closing the line: the last key of the top object. */
const TAIL_ID = new RegExp(String.raw`[,{]\s*"id"\s*:\s*${ID}\s*\}\s*$`);

/**
 * Finds the id of a message too large to parse from its first and last
 * bytes, when it is one of the top object's first or last keys.
 */
function guessId(head: string, tail: string): Id {
  const match = HEAD_ID.exec(head) ?? TAIL_ID.exec(tail);
  if (!match) return null;
  try {
    const id = JSON.parse(match[1]);
    return typeof id === "number" && !Number.isSafeInteger(id) ? null : id;
  } catch {
    return null;
  }
}

/** A stdio server transport that survives oversized and malformed input. */
export class LimitedStdioServerTransport implements McpTransport {
  /** Called when the transport closes. */
  onclose?: () => void;
  /** Called on a transport error (also for each refused message). */
  onerror?: (error: Error) => void;
  /** Called for each valid message. */
  onmessage?: (message: JsonRpcMessage) => void;

  #max: number;
  #chunks: Uint8Array[] = [];
  #size = 0;
  /** Set while an oversized line is skipped up to its newline. */
  #skip: { head: string; tail: Uint8Array; size: number } | undefined;
  #decoder = new TextDecoder();
  #started = false;
  #onData = (chunk: Uint8Array | string) => {
    try {
      this.#read(
        typeof chunk === "string" ? new TextEncoder().encode(chunk) : chunk,
      );
    } catch (error) {
      this.onerror?.(error instanceof Error ? error : new Error(String(error)));
    }
  };
  #onError = (error: Error) => this.onerror?.(error);

  /**
   * @param maxMessageBytes The largest message accepted.
   */
  constructor(maxMessageBytes: number = MAX_STDIO_MESSAGE_BYTES) {
    this.#max = maxMessageBytes;
  }

  /** Starts reading stdin. */
  start(): Promise<void> {
    if (this.#started) {
      return Promise.reject(new Error("The transport is already started"));
    }
    this.#started = true;
    process.stdin.on("data", this.#onData);
    process.stdin.on("error", this.#onError);
    return Promise.resolve();
  }

  /**
   * Writes one message to stdout.
   *
   * @param message The message.
   */
  send(message: JsonRpcMessage): Promise<void> {
    return new Promise((resolve) => {
      if (process.stdout.write(`${JSON.stringify(message)}\n`)) resolve();
      else process.stdout.once("drain", () => resolve());
    });
  }

  /** Stops reading stdin. */
  close(): Promise<void> {
    process.stdin.off("data", this.#onData);
    process.stdin.off("error", this.#onError);
    if (process.stdin.listenerCount("data") === 0) process.stdin.pause();
    this.#chunks = [];
    this.#size = 0;
    this.#skip = undefined;
    this.onclose?.();
    return Promise.resolve();
  }

  #read(chunk: Uint8Array): void {
    let at = 0;
    while (at < chunk.length) {
      const newline = chunk.indexOf(0x0a, at);
      const end = newline === -1 ? chunk.length : newline;
      this.#take(chunk.subarray(at, end));
      if (newline === -1) return;
      this.#endLine();
      at = newline + 1;
    }
  }

  /** Adds part of the current line, switching to skipping past the cap. */
  #take(part: Uint8Array): void {
    if (this.#skip) {
      const tail = concatBytes([this.#skip.tail, part]);
      this.#skip.tail = tail.subarray(Math.max(0, tail.length - KEEP));
      this.#skip.size += part.length;
      return;
    }
    if (this.#size + part.length <= this.#max) {
      if (part.length > 0) this.#chunks.push(part.slice());
      this.#size += part.length;
      return;
    }
    const line = concatBytes([...this.#chunks, part]);
    this.#skip = {
      head: this.#decoder.decode(line.subarray(0, KEEP)),
      tail: line.slice(Math.max(0, line.length - KEEP)),
      size: line.length,
    };
    this.#chunks = [];
    this.#size = 0;
  }

  #endLine(): void {
    const skipped = this.#skip;
    if (skipped) {
      this.#skip = undefined;
      const id = guessId(skipped.head, this.#decoder.decode(skipped.tail));
      this.#reject(
        id,
        JSON_RPC_ERRORS.invalidRequest,
        `Invalid Request: the message is ${skipped.size} bytes, over the limit of ${this.#max} bytes (${
          this.#max / 1024 / 1024
        } MiB) per MCP message over stdio`,
      );
      return;
    }
    const line = concatBytes(this.#chunks);
    this.#chunks = [];
    this.#size = 0;
    const text = this.#decoder.decode(line).replace(/\r$/, "");
    if (text.trim() === "") return;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (error) {
      this.#reject(
        null,
        JSON_RPC_ERRORS.parseError,
        `Parse error: the message is not valid JSON (${
          (error as Error).message
        })`,
      );
      return;
    }
    const message = toJsonRpcMessage(value);
    if (!message) {
      const raw = (value as { id?: unknown } | null)?.id;
      this.#reject(
        typeof raw === "string" || typeof raw === "number" ? raw : null,
        JSON_RPC_ERRORS.invalidRequest,
        "Invalid Request: the message is not a JSON-RPC 2.0 request, notification or response",
      );
      return;
    }
    this.onmessage?.(message);
  }

  #reject(id: Id, code: number, message: string): void {
    this.onerror?.(new Error(message));
    // An error object with a null id is what JSON-RPC 2.0 prescribes when
    // the id cannot be read.
    void this.send({ jsonrpc: "2.0", id, error: { code, message } });
  }
}
