/**
 * The child's HTTP helper for Python's `urllib.request` (see
 * `_runner_setup.py`): a fetch made by the child itself, with the child's
 * own `--allow-net` grants, so a host that is not granted fails inside the
 * child with Deno's permission error. Python waits for it synchronously
 * (`pyodide.ffi.run_sync`, JSPI); an interrupt (the call's timeout) aborts
 * it instead of cancelling the suspended Python task.
 *
 * @module
 */

// Captured before user code runs (user code may replace the globals).
const capturedFetch = globalThis.fetch;
const Controller = AbortController;
const timeoutSignal = AbortSignal.timeout;
const anySignal = AbortSignal.any;
const parseJson = JSON.parse;
const toJson = JSON.stringify;

/** Fetches in progress, so that an interrupt can abort them. */
const active = new Set<AbortController>();

/** The message of an aborted fetch, recognised by the Python side. */
const INTERRUPTED = "KeyboardInterrupt: the call was interrupted";

/**
 * Aborts the fetches Python is waiting for.
 *
 * @returns Whether there was one (then Python is suspended in it, and the
 *   abort is how the interrupt reaches it).
 */
export function abortSuspendedFetches(): boolean {
  if (active.size === 0) return false;
  for (const controller of active) controller.abort(new Error(INTERRUPTED));
  active.clear();
  return true;
}

async function request(
  url: string,
  method: string,
  headersJson: string,
  body: Uint8Array | undefined | null,
  timeoutMs: number,
): Promise<[string, Uint8Array]> {
  const controller = new Controller();
  active.add(controller);
  const signals = [controller.signal];
  if (timeoutMs > 0) signals.push(timeoutSignal(timeoutMs));
  const signal = anySignal(signals);
  try {
    const pairs = parseJson(headersJson) as [string, string][];
    const response = await capturedFetch(url, {
      method,
      headers: pairs,
      body: (body ?? undefined) as Uint8Array<ArrayBuffer> | undefined,
      redirect: "follow",
      signal,
    });
    const data = new Uint8Array(await response.arrayBuffer());
    const headers: [string, string][] = [];
    response.headers.forEach((value, key) => headers.push([key, value]));
    return [
      toJson({
        status: response.status,
        reason: response.statusText,
        url: response.url || url,
        headers,
      }),
      data,
    ];
  } catch (error) {
    if (controller.signal.aborted) throw new Error(INTERRUPTED);
    if (signal.aborted) {
      throw new Error(`TimeoutError: no answer within ${timeoutMs} ms`);
    }
    // Always an Error: Pyodide never settles a wait on a non-Error value.
    throw error instanceof Error ? error : new Error(String(error));
  } finally {
    active.delete(controller);
  }
}

/** Defines `globalThis.__pyodideSandboxFetch` for the Python helpers. */
export function installHttp(): void {
  Object.defineProperty(globalThis, "__pyodideSandboxFetch", {
    value: request,
  });
}
