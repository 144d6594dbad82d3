/**
 * Run untrusted Python (typically written by an LLM agent) in Pyodide inside
 * a child `deno run` process whose Deno permissions are the security
 * boundary.
 *
 * ```ts ignore
 * import { PyodideSandbox } from "jsr:@pyodide-sandbox/pyodide-sandbox";
 *
 * await using sandbox = new PyodideSandbox({ allowNet: ["api.example.com"] });
 * const result = await sandbox.execute("print('hello'); 6 * 7");
 * console.log(result.status, result.stdout, result.result); // success hello\n 42
 * ```
 *
 * @module
 */

export {
  BasePyodideSandbox,
  type ExecuteOptions,
  type ExtraResultFields,
  type HostFunction,
  PYODIDE_VERSION,
  PyodideSandbox,
  PyodideSession,
  type SandboxCommand,
  type SandboxOptions,
  type SavedSession,
  SessionError,
  type SessionOptions,
  type StreamEvent,
} from "./sandbox.ts";
export { InstallError } from "./_packages.ts";
export type { AuditCallback, AuditLimits, AuditRecord } from "./_audit.ts";
export {
  SyncPyodideSandbox,
  SyncPyodideSession,
  type SyncResult,
} from "./sync_sandbox.ts";
export {
  buildPermissionFlag,
  type PermissionName,
  type PermissionOptions,
} from "./permissions.ts";
export type {
  CodeExecutionResult,
  ErrorKind,
  ExecutionError,
  JsonValue,
  MimeBundle,
  NotSerializable,
  ResultFile,
  SessionMetadata,
} from "./result.ts";
export { ERROR_KINDS } from "./result.ts";
export {
  createHandler,
  type HandlerOptions,
  openApiDocument,
  type SandboxHandler,
} from "./handler.ts";
