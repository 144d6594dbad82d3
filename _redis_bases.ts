/**
 * Base snapshots shared through the Redis store's blobs (issue 12). Session
 * bytes may be a diff against the host's base snapshot, named by its
 * sha256 in the bytes' header; replicas with separate cache folders have
 * different bases. So before a replica writes bytes whose base is X, blob
 * X is put in Redis (SET NX, once per sha per process: the blob is there
 * whenever a record naming it is), and before a replica restores bytes
 * whose base it has neither built nor imported in this process, it reads
 * blob X and imports it into its sandbox. A blob that is missing gives a
 * {@linkcode SessionError} naming the base (kind `"session"`).
 *
 * Bytes of the full format (no base named) are passed through untouched.
 *
 * @module
 */

import { sessionBaseOf, SessionError } from "./_session_bytes.ts";
import type { PyodideSandbox } from "./sandbox.ts";
import type { RedisSessionStore } from "./_redis_store.ts";

/** Publishes and fetches the base snapshots session bytes depend on. */
export class RedisBases {
  readonly #store: RedisSessionStore;
  readonly #sandbox: PyodideSandbox;
  /** Bases this process has: its own and those it imported. */
  readonly #known = new Map<string, Promise<void>>();
  /** Bases this process made sure are in Redis. */
  readonly #published = new Map<string, Promise<void>>();
  #ownSha: Promise<string> | undefined;

  /**
   * @param store The shared store.
   * @param sandbox The sandbox sessions run in.
   */
  constructor(store: RedisSessionStore, sandbox: PyodideSandbox) {
    this.#store = store;
    this.#sandbox = sandbox;
  }

  /** This sandbox's own base, exported (its bytes are not kept). */
  async #exportOwn(): Promise<{ sha256: string; bytes: Uint8Array }> {
    const own = await this.#sandbox.exportBaseSnapshot();
    this.#ownSha ??= Promise.resolve(own.sha256);
    return own;
  }

  /** The sha256 of this sandbox's own base. */
  #own(): Promise<string> {
    if (!this.#ownSha) {
      const sha = this.#exportOwn().then((own) => own.sha256);
      sha.catch(() => (this.#ownSha = undefined));
      this.#ownSha = sha;
    }
    return this.#ownSha;
  }

  /**
   * Makes sure the base `bytes` name is in Redis; call it before writing
   * `bytes` to the store.
   *
   * @param bytes Session bytes about to be written.
   * @returns Settles when the blob is stored (or nothing is needed).
   * @throws {SessionStoreUnavailableError} When Redis fails.
   */
  async publish(bytes: Uint8Array): Promise<void> {
    const base = sessionBaseOf(bytes);
    if (base === undefined) return;
    let done = this.#published.get(base);
    if (!done) {
      done = this.#putOwn(base);
      this.#published.set(base, done);
      done.catch(() => this.#published.delete(base));
    }
    await done;
  }

  async #putOwn(base: string): Promise<void> {
    const own = await this.#exportOwn();
    // A base that is not ours was imported from Redis, so it is there.
    if (own.sha256 !== base) return;
    await this.#store.putBlob(base, own.bytes);
    this.#known.set(base, Promise.resolve());
  }

  /**
   * Makes sure this sandbox has the base `bytes` name, importing it from
   * Redis when this process has not seen it; call it before restoring.
   *
   * @param bytes Session bytes about to be restored.
   * @returns Settles when the base is available (or nothing is needed).
   * @throws {SessionError} When the blob is missing or altered.
   * @throws {SessionStoreUnavailableError} When Redis fails.
   */
  async prepare(bytes: Uint8Array): Promise<void> {
    const base = sessionBaseOf(bytes);
    if (base === undefined) return;
    let done = this.#known.get(base);
    if (!done) {
      done = this.#fetch(base);
      this.#known.set(base, done);
      done.catch(() => this.#known.delete(base));
    }
    await done;
  }

  async #fetch(base: string): Promise<void> {
    if ((await this.#own()) === base) return;
    const blob = await this.#store.getBlob(base);
    if (blob === null) {
      throw new SessionError(
        `Session base snapshot missing: the store has no blob ${base} (the base these bytes were saved against); it was removed from Redis or never written`,
      );
    }
    const imported = await this.#sandbox.importBaseSnapshot(blob);
    if (imported !== base) {
      throw new SessionError(
        `Session base snapshot mismatch: blob ${base} imported as ${imported}`,
      );
    }
    this.#published.set(base, Promise.resolve());
  }
}
