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

export { BasePyodideSandbox } from "./base_sandbox.ts";
export { PyodideSandbox } from "./sandbox.ts";
export { PYODIDE_VERSION } from "./runner.ts";
export { SessionError } from "./_session_bytes.ts";
export type {
  ExecuteOptions,
  HostFunction,
  SandboxCommand,
  SandboxOptions,
  SavedSession,
  SessionOptions,
  StreamEvent,
} from "./options.ts";
export { PyodideSession } from "./session.ts";
export { DEFAULT_PACKAGE_INDEX_URL, InstallError } from "./_packages.ts";
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
  ExecutionTiming,
  JsonValue,
  MimeBundle,
  NotSerializable,
  ResultFile,
  SessionMetadata,
} from "./result.ts";
export { ERROR_KINDS } from "./result.ts";
export {
  type ContentPart,
  formatResult,
  type FormatResultOptions,
  IMAGE_MIME_TYPES,
  type ImagePart,
  type TextPart,
} from "./format.ts";
export {
  PythonTool,
  pythonTool,
  type PythonToolCallOptions,
  type PythonToolInput,
  type PythonToolOptions,
} from "./tool.ts";
export type { PythonToolInputSchema, PythonToolResult } from "./_tool_types.ts";
export type {
  AnthropicImageBlock,
  AnthropicTextBlock,
  AnthropicTool,
  AnthropicToolResultBlock,
  AnthropicToolUseBlock,
  OpenAIFunctionTool,
  OpenAIImagePart,
  OpenAIToolCall,
  OpenAIToolMessage,
  OpenAIToolOutput,
} from "./_tool_adapters.ts";
export {
  SessionLimitError,
  SessionPool,
  type SessionPoolEntry,
  type SessionPoolExecuteOptions,
  type SessionPoolOptions,
  UnknownSessionError,
} from "./sessions.ts";
export {
  createHandler,
  type HandlerOptions,
  type SandboxHandler,
  type SharedSessionStore,
} from "./handler.ts";
export { openApiDocument } from "./_openapi.ts";
