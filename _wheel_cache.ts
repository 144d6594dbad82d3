/**
 * The host's wheel cache: verified wheels kept in `<cacheDir>/wheels/`,
 * named by their sha256 (content-addressed), private (folder 0700, files
 * 0600), written through a temporary file and a rename (so hosts sharing a
 * cache folder never see half a file), checked against their hash on every
 * read, and kept under a size cap by evicting the least recently used.
 *
 * @module
 */

import { join } from "node:path";

/** The default size cap of the wheel cache, in MiB. */
export const DEFAULT_PACKAGE_CACHE_MB = 1024;

const SHA256 = /^[0-9a-f]{64}$/;

/**
 * Hashes bytes with node:crypto (several times faster than crypto.subtle
 * for large wheels).
 *
 * @param data The bytes.
 * @returns The lowercase hex sha256.
 */
export async function sha256Bytes(data: Uint8Array): Promise<string> {
  const { createHash } = await import("node:crypto");
  return createHash("sha256").update(data).digest("hex");
}

/** A size-capped, content-addressed cache of verified wheels. */
export class WheelCache {
  #dir: string;
  #capBytes: number;
  #ready?: Promise<boolean>;

  /**
   * Creates the cache; the folder is made on first use.
   *
   * @param cacheDir The sandbox's cache folder (already checked private).
   * @param capMb The size cap in MiB (0 disables the cache).
   */
  constructor(cacheDir: string, capMb: number) {
    this.#dir = join(cacheDir, "wheels");
    this.#capBytes = Math.floor(capMb * 1024 * 1024);
  }

  /** The cache folder. */
  get dir(): string {
    return this.#dir;
  }

  /** Creates the folder (0700); false when it cannot be used. */
  #prepare(): Promise<boolean> {
    this.#ready ??= (async () => {
      if (this.#capBytes <= 0) return false;
      try {
        await Deno.mkdir(this.#dir, { recursive: true, mode: 0o700 });
        const stat = await Deno.lstat(this.#dir);
        // A link or a file in its place is not followed: no cache then.
        if (!stat.isDirectory) return false;
        if (stat.mode !== null && (stat.mode & 0o077) !== 0) {
          await Deno.chmod(this.#dir, 0o700);
        }
        return true;
      } catch {
        return false;
      }
    })();
    return this.#ready;
  }

  /**
   * A cached wheel whose bytes still match its hash. A file that does not
   * match (corrupted, truncated, replaced) is removed and `undefined` is
   * returned, so the caller fetches it again.
   *
   * @param sha256 The expected hash (lowercase hex).
   * @returns The bytes, or `undefined` when not cached (or corrupted).
   */
  async get(sha256: string): Promise<Uint8Array | undefined> {
    if (!SHA256.test(sha256) || !(await this.#prepare())) return undefined;
    const path = join(this.#dir, `${sha256}.whl`);
    let data: Uint8Array;
    try {
      const stat = await Deno.lstat(path);
      if (!stat.isFile || stat.size > this.#capBytes) {
        await Deno.remove(path).catch(() => {});
        return undefined;
      }
      data = await Deno.readFile(path);
    } catch {
      return undefined;
    }
    if ((await sha256Bytes(data)) !== sha256) {
      await Deno.remove(path).catch(() => {});
      return undefined;
    }
    // Recently used: eviction goes by modification time.
    const now = new Date();
    await Deno.utime(path, now, now).catch(() => {});
    return data;
  }

  /**
   * Stores verified bytes under their hash (temporary file, then rename),
   * then evicts the least recently used wheels above the cap. Never throws:
   * a cache that cannot be written only costs a later download.
   *
   * @param sha256 The bytes' hash (already checked by the caller).
   * @param data The bytes.
   */
  async put(sha256: string, data: Uint8Array): Promise<void> {
    if (!SHA256.test(sha256) || data.length > this.#capBytes) return;
    if (!(await this.#prepare())) return;
    const path = join(this.#dir, `${sha256}.whl`);
    const temp = join(this.#dir, `.${sha256}.${crypto.randomUUID()}.tmp`);
    try {
      await Deno.writeFile(temp, data, { mode: 0o600, createNew: true });
      await Deno.rename(temp, path);
    } catch {
      await Deno.remove(temp).catch(() => {});
      return;
    }
    await this.#evict(path);
  }

  /** Removes the oldest wheels until the total is under the cap. */
  async #evict(keep: string): Promise<void> {
    const files: { path: string; size: number; used: number }[] = [];
    let total = 0;
    try {
      for await (const entry of Deno.readDir(this.#dir)) {
        const path = join(this.#dir, entry.name);
        let stat: Deno.FileInfo;
        try {
          stat = await Deno.lstat(path);
        } catch {
          continue;
        }
        const used = stat.mtime?.getTime() ?? 0;
        if (entry.name.endsWith(".tmp")) {
          // Left by a host that died mid-write: gone after an hour.
          if (Date.now() - used > 3_600_000) {
            await Deno.remove(path).catch(() => {});
          }
          continue;
        }
        if (!/^[0-9a-f]{64}\.whl$/.test(entry.name)) continue;
        files.push({ path, size: stat.size, used });
        total += stat.size;
      }
    } catch {
      return;
    }
    files.sort((a, b) => a.used - b.used);
    for (const file of files) {
      if (total <= this.#capBytes) break;
      if (file.path === keep) continue;
      await Deno.remove(file.path).catch(() => {});
      total -= file.size;
    }
  }
}
