/**
 * The host's streaming decoder of a child's stdout: {@linkcode FrameParser}
 * splits it into frames, drops what does not carry the child's nonce and
 * stops for good on the first frame that breaks the protocol.
 *
 * @module
 */

import { concatBytes } from "./_bytes.ts";
import { FRAME_MAGIC, NONCE_BYTES } from "./_protocol.ts";
import { frameCaps, type FrameLimits } from "./_protocol_checks.ts";

/** One frame received from the child. */
export interface Frame {
  type: number;
  json: unknown;
  bin: Uint8Array;
  /** Length of the JSON header in bytes. */
  jsonBytes: number;
}

/** Caps a child's frames are held to when no sandbox settings apply. */
const DEFAULT_LIMITS: FrameLimits = {
  stateBytes: 8 * 1024 ** 3,
  maxDisplayBytes: 16 * 1024 * 1024,
  maxTotalFileBytes: 256 * 1024 * 1024,
};

/**
 * Splits the child's stdout into frames. Bytes that are not a frame carrying
 * this child's nonce (anything untrusted code wrote to the real stdout) are
 * dropped. A frame carrying the nonce that breaks the protocol (an unknown
 * type, lengths over the caps of its type, a wrong trailer, bad JSON) is a
 * violation: parsing stops for good and {@linkcode violation} says why. The
 * caps are checked on the 9-byte header, so an oversized frame is refused
 * before its body is buffered.
 */
export class FrameParser {
  #marker: Uint8Array;
  #nonce: Uint8Array;
  #limits: FrameLimits;
  /** Bytes received and not yet parsed, and their total length. */
  #chunks: Uint8Array[] = [];
  #size = 0;
  /** Bytes needed (from the first kept byte) before parsing again. */
  #need = 0;
  strayBytes = 0;
  /** Why the child broke the protocol, once it did. */
  violation?: string;

  constructor(nonce: Uint8Array, limits: FrameLimits = DEFAULT_LIMITS) {
    this.#nonce = nonce;
    this.#limits = limits;
    this.#marker = new Uint8Array(FRAME_MAGIC.length + NONCE_BYTES);
    this.#marker.set(FRAME_MAGIC, 0);
    this.#marker.set(nonce, FRAME_MAGIC.length);
  }

  push(chunk: Uint8Array): Frame[] {
    if (this.violation !== undefined) return [];
    // Chunks are only joined once enough bytes for the pending frame have
    // arrived, and frames are cut by offset: a big frame arriving in many
    // chunks costs linear, not quadratic, time and memory.
    this.#chunks.push(chunk);
    this.#size += chunk.length;
    if (this.#size < this.#need) return [];
    const buf = this.#chunks.length === 1
      ? this.#chunks[0]
      : concatBytes(this.#chunks);
    const frames: Frame[] = [];
    const marker = this.#marker;
    let pos = 0;
    let need = 0;
    for (;;) {
      const at = indexOf(buf, marker, pos);
      if (at < 0) {
        // Keep a possible partial marker at the end; drop the rest.
        const keep = Math.min(buf.length - pos, marker.length - 1);
        this.strayBytes += buf.length - pos - keep;
        pos = buf.length - keep;
        break;
      }
      this.strayBytes += at - pos;
      pos = at;
      const start = at + marker.length;
      if (buf.length < start + 9) {
        need = start + 9 - at;
        break;
      }
      const view = new DataView(buf.buffer, buf.byteOffset + start, 9);
      const type = view.getUint8(0);
      const jsonLength = view.getUint32(1);
      const binLength = view.getUint32(5);
      const wrong = this.#checkHeader(type, jsonLength, binLength);
      if (wrong) return this.#stop(wrong, frames);
      const end = start + 9 + jsonLength + binLength + NONCE_BYTES;
      if (buf.length < end) {
        need = end - at;
        break;
      }
      const trailer = buf.subarray(end - NONCE_BYTES, end);
      if (!equalBytes(trailer, this.#nonce)) {
        return this.#stop(
          `a frame of type ${type} has a wrong trailer`,
          frames,
        );
      }
      let json: unknown;
      try {
        json = JSON.parse(
          new TextDecoder("utf-8", { fatal: true }).decode(
            buf.subarray(start + 9, start + 9 + jsonLength),
          ),
        );
      } catch {
        return this.#stop(`a frame of type ${type} has no valid JSON`, frames);
      }
      const bin = buf.slice(start + 9 + jsonLength, end - NONCE_BYTES);
      frames.push({ type, json, bin, jsonBytes: jsonLength });
      pos = end;
    }
    const rest = buf.slice(pos);
    this.#chunks = rest.length > 0 ? [rest] : [];
    this.#size = rest.length;
    this.#need = need;
    return frames;
  }

  #checkHeader(type: number, json: number, bin: number): string | undefined {
    const caps = frameCaps(type, this.#limits);
    if (!caps) return `unknown frame type ${type}`;
    if (json > caps.json) {
      return `a frame of type ${type} declares ${json} header bytes (at most ${caps.json})`;
    }
    if (bin > caps.bin) {
      return `a frame of type ${type} declares ${bin} attached bytes (at most ${caps.bin})`;
    }
    return undefined;
  }

  /** Records a violation; frames before it still count. */
  #stop(reason: string, frames: Frame[]): Frame[] {
    this.violation = reason;
    this.#chunks = [];
    this.#size = 0;
    return frames;
  }
}

function indexOf(
  haystack: Uint8Array,
  needle: Uint8Array,
  from = 0,
): number {
  const first = needle[0];
  const last = haystack.length - needle.length;
  for (let i = haystack.indexOf(first, from); i >= 0 && i <= last;) {
    let j = 1;
    while (j < needle.length && haystack[i + j] === needle[j]) j++;
    if (j === needle.length) return i;
    i = haystack.indexOf(first, i + 1);
  }
  return -1;
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}
