/**
 * Small file-system helpers shared by the host's modules.
 *
 * @module
 */

/**
 * Writes a file through a temporary sibling and a rename, so concurrent
 * writers and readers never see a half-written file.
 *
 * @param path Destination.
 * @param data Contents.
 */
export function writeFileAtomicSync(path: string, data: Uint8Array): void {
  const tmp = `${path}.${crypto.randomUUID()}.tmp`;
  Deno.writeFileSync(tmp, data, { mode: 0o600 });
  Deno.renameSync(tmp, path);
}
