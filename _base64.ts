/**
 * Base64 for bytes in JSON (CLI output, HTTP API).
 *
 * @module
 */

/**
 * Encodes bytes as standard base64.
 *
 * @param bytes Input.
 * @returns Base64 text.
 */
export function encodeBase64(bytes: Uint8Array): string {
  let binary = "";
  const chunk = 0x8000;
  for (let i = 0; i < bytes.length; i += chunk) {
    binary += String.fromCharCode(...bytes.subarray(i, i + chunk));
  }
  return btoa(binary);
}

/**
 * Decodes standard base64.
 *
 * @param text Base64 text.
 * @returns The bytes.
 * @throws {TypeError} When the text is not valid base64.
 */
export function decodeBase64(text: string): Uint8Array {
  let binary: string;
  try {
    binary = atob(text);
  } catch {
    throw new TypeError("Invalid base64: the text is not valid base64");
  }
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}
