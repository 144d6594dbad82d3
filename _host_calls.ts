/**
 * One exec call into a child and the host's answers to the calls Python
 * makes back: host functions (`functions` option) and package installs.
 * One dispatcher for the async sandbox and the blocking caller thread of
 * `SyncPyodideSandbox`.
 *
 * @module
 */

import type { HostFunction } from "./options.ts";
import type { JsonValue } from "./result.ts";
import {
  type ExecRequest,
  type HostCallReply,
  INSTALL_CALL,
  MAX_REPLY_BYTES,
  ToChild,
  ToParent,
} from "./_protocol.ts";
import type { HostCallRequest } from "./_protocol.ts";
import { checkInstallArgs } from "./_protocol_checks.ts";
import type { CallOutcome, SandboxChild } from "./_child.ts";
import type { CallSettings, Settings } from "./_settings.ts";
import { InstallError, type PackageResolver } from "./_packages.ts";
import { encodeBase64 } from "./_bytes.ts";

/** The largest reply of a host function, in characters of JSON. */
const MAX_VALUE_CHARS = MAX_REPLY_BYTES / 2;

function failure(error: unknown): HostCallReply {
  return {
    ok: false,
    message: error instanceof Error ? error.message : String(error),
  };
}

/**
 * Calls a host function by name. A function that returns at once answers at
 * once; one that returns a promise (or thenable) gives `pending`.
 *
 * @param functions The sandbox's functions.
 * @param name The name Python called.
 * @param args The arguments.
 * @returns The reply, or the pending value. Never throws.
 */
export function startHostCall(
  functions: Record<string, HostFunction>,
  name: string,
  args: unknown[],
): HostCallReply | { pending: PromiseLike<unknown> } {
  const fn = Object.hasOwn(functions, name) ? functions[name] : undefined;
  if (typeof fn !== "function") {
    return { ok: false, message: `No host function named ${name}` };
  }
  try {
    const value: unknown = fn(...(args as JsonValue[]));
    if (
      value !== null && typeof value === "object" &&
      typeof (value as { then?: unknown }).then === "function"
    ) {
      return { pending: value as PromiseLike<unknown> };
    }
    return { ok: true, value: value ?? null };
  } catch (error) {
    return failure(error);
  }
}

/**
 * Runs a host function for the async sandbox and encodes the reply.
 *
 * @param functions The sandbox's functions.
 * @param request The call from Python (checked).
 * @returns The reply as JSON text, at most half of `MAX_REPLY_BYTES`.
 */
export async function callHostFunction(
  functions: Record<string, HostFunction>,
  request: HostCallRequest,
): Promise<string> {
  const started = startHostCall(functions, request.name, request.args);
  let reply: HostCallReply;
  if ("pending" in started) {
    try {
      reply = { ok: true, value: (await started.pending) ?? null };
    } catch (error) {
      reply = failure(error);
    }
  } else reply = started;
  try {
    const text = JSON.stringify(reply);
    if (reply.ok && text.length > MAX_VALUE_CHARS) {
      return JSON.stringify({
        ok: false,
        message:
          `Host function ${request.name} returned more than ${MAX_VALUE_CHARS} characters`,
      });
    }
    return text;
  } catch (error) {
    return JSON.stringify(failure(error));
  }
}

/**
 * Runs a host function of `SyncPyodideSandbox` on the caller's thread,
 * which cannot wait for a promise.
 *
 * @param functions The sandbox's functions.
 * @param name The name Python called.
 * @param args The arguments.
 * @returns The reply; an error reply for a function that returned a
 *   promise.
 */
export function callHostFunctionSync(
  functions: Record<string, HostFunction>,
  name: string,
  args: unknown[],
): HostCallReply {
  const started = startHostCall(functions, name, args);
  if (!("pending" in started)) return started;
  Promise.resolve(started.pending).catch(() => {});
  return {
    ok: false,
    message:
      `Host function ${name} returned a Promise: host functions of SyncPyodideSandbox must return plain values`,
  };
}

/**
 * Resolves the packages a child asks for and encodes the wheels.
 *
 * @param resolver The sandbox's resolver.
 * @param args `[imports, required, installed]` from the child.
 * @returns The reply as JSON text.
 */
async function installPackages(
  resolver: PackageResolver,
  args: unknown[],
): Promise<string> {
  const checked = checkInstallArgs(args);
  if (!checked.ok) {
    return JSON.stringify({
      ok: false,
      message: `Invalid install request: ${checked.error}`,
    });
  }
  const [imports, required, installed] = checked.value;
  try {
    if (!resolver.enabled && required.length > 0) {
      throw new InstallError(
        `Package "${
          required[0]
        }" was not found: no packageDir or packageIndexUrls is configured`,
      );
    }
    const wheels = resolver.enabled
      ? await resolver.resolve(imports, required, installed)
      : [];
    return JSON.stringify({
      ok: true,
      value: wheels.map((w) => ({
        name: w.name,
        version: w.version,
        fileName: w.fileName,
        installDir: w.installDir,
        data: encodeBase64(w.data),
      })),
    });
  } catch (error) {
    return JSON.stringify(failure(error));
  }
}

/**
 * The dispatcher of one sandbox's calls from Python: installs go to the
 * package resolver, everything else to the host functions.
 *
 * @param settings The sandbox's functions and package resolver.
 * @returns Answers a checked call with the reply's JSON text; never
 *   rejects.
 */
export function hostCallHandler(settings: {
  functions: Record<string, HostFunction>;
  packageResolver: PackageResolver;
}): (request: HostCallRequest) => Promise<string> {
  return (request) =>
    request.name === INSTALL_CALL
      ? installPackages(settings.packageResolver, request.args)
      : callHostFunction(settings.functions, request);
}

/**
 * Wraps an output callback so that an exception it throws is ignored: it
 * runs inside the child's frame reader, which must keep reading.
 */
function guardCallback<T>(
  callback: ((value: T) => void) | undefined,
): ((value: T) => void) | undefined {
  if (!callback) return undefined;
  return (value) => {
    try {
      callback(value);
    } catch {
      // A failing callback must not break the call.
    }
  };
}

function isDirectory(path: string): boolean {
  try {
    return Deno.statSync(path).isDirectory;
  } catch {
    return false;
  }
}

/** How the sandbox runs one exec on a child. */
export interface RunHow {
  /** `performance.now()` value at which the call times out. */
  deadline: number;
  /** Interrupt Python first and kill only if it does not stop. */
  soft: boolean;
  /** Return the session state with the result. */
  wantState: boolean;
}

/** The exec request of one call. */
function execRequest(
  settings: Settings,
  call: CallSettings,
  wantState: boolean,
): ExecRequest {
  const write = settings.permissions.allowWrite;
  const read = settings.permissions.allowRead;
  const hostWrite = Array.isArray(write) ? write : [];
  return {
    code: call.code,
    stdin: call.stdin,
    wantState,
    files: call.files?.index,
    functions: Object.keys(settings.functions),
    hostRead: Array.isArray(read) ? read : [],
    hostWrite,
    hostWriteDirs: hostWrite.filter(isDirectory),
    maxFileBytes: settings.maxFileBytes,
    maxTotalFileBytes: settings.maxTotalFileBytes,
    install: settings.packageResolver.enabled || settings.packages.length
      ? { packages: settings.packages }
      : undefined,
  };
}

/**
 * Sends one exec to a child and collects what it produces, answering the
 * calls Python makes to the host on the way.
 *
 * @param child The child.
 * @param settings The sandbox's settings.
 * @param call The call's settings.
 * @param how Deadline, soft interrupts and whether to return state.
 * @returns What the child produced.
 */
export function runExec(
  child: SandboxChild,
  settings: Settings,
  call: CallSettings,
  how: RunHow,
): Promise<CallOutcome> {
  const request = execRequest(settings, call, how.wantState);
  return child.call(ToChild.exec, request, call.files?.bin, ToParent.result, {
    deadline: how.deadline,
    soft: how.soft,
    signal: call.signal,
    maxOutputBytes: settings.maxOutputBytes,
    maxDisplayBytes: settings.maxDisplayBytes,
    onStdout: guardCallback(call.onStdout),
    onStderr: guardCallback(call.onStderr),
    onDisplay: guardCallback(call.onDisplay),
    onCall: hostCallHandler(settings),
  }).then((outcome) => {
    call.onOutcome?.(outcome);
    return outcome;
  });
}
