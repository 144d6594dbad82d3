/**
 * The MCP SDK behind a small typed surface. The SDK is loaded with a
 * top-level dynamic `import()` of exact `npm:` specifiers: its own types
 * defeat `deno doc` (its `exports` map points at `.d.ts` files that do not
 * exist), and a bare specifier only resolves through this repository's
 * `deno.json`, so it would fail for a module imported from a URL. Nothing
 * of the SDK's types leaks out of this file: `mcp.ts` documents cleanly.
 *
 * The version here must equal the `@modelcontextprotocol/sdk` entry of
 * `deno.json` (a test checks it).
 *
 * @module
 */

// deno-lint-ignore-file no-import-prefix

// The types come from the extensionless subpaths (the only ones whose
// `.d.ts` the SDK's `exports` map finds); the code from the `.js` ones.
type ServerModule =
  typeof import("npm:@modelcontextprotocol/sdk@1.32.2/server/index");
type HttpModule =
  typeof import("npm:@modelcontextprotocol/sdk@1.32.2/server/webStandardStreamableHttp");
type TypesModule = typeof import("npm:@modelcontextprotocol/sdk@1.32.2/types");

const [serverModule, httpModule, typesModule] = await Promise.all([
  import("npm:@modelcontextprotocol/sdk@1.32.2/server/index.js"),
  import(
    "npm:@modelcontextprotocol/sdk@1.32.2/server/webStandardStreamableHttp.js"
  ),
  import("npm:@modelcontextprotocol/sdk@1.32.2/types.js"),
]) as [ServerModule, HttpModule, TypesModule];

/** The MCP SDK version this module loads. */
export const MCP_SDK_VERSION = "1.32.2";

/**
 * A JSON-RPC 2.0 message (request, notification or response), as MCP
 * transports carry it.
 */
export interface JsonRpcMessage {
  /** Always `"2.0"`. */
  jsonrpc: "2.0";
  /** The other members (`id`, `method`, `params`, `result`, `error`). */
  [key: string]: unknown;
}

/**
 * An MCP transport: the shape of the SDK's `Transport` (its
 * `StdioServerTransport`, `InMemoryTransport` and the others fit).
 */
export interface McpTransport {
  /** Starts receiving messages. */
  start(): Promise<void>;
  /**
   * Sends one message.
   *
   * @param message The message.
   * @param options Transport-specific options (the related request id).
   */
  send(message: JsonRpcMessage, options?: unknown): Promise<void>;
  /** Closes the transport. */
  close(): Promise<void>;
  /** Set by the server: called when the transport closes. */
  onclose?(): void;
  /** Set by the server: called on a transport error. */
  onerror?(error: Error): void;
  /** Set by the server: called for each message received. */
  onmessage?(message: JsonRpcMessage, extra?: unknown): void;
  /** The session id, for transports that have one. */
  sessionId?: string;
}

/** An MCP server connected to at most one transport. */
export interface McpServerHandle {
  /**
   * Connects the server to a transport and starts serving.
   *
   * @param transport The transport.
   * @returns Settles once the transport has started.
   */
  connect(transport: McpTransport): Promise<void>;
  /**
   * Closes the server and its transport.
   *
   * @returns Settles when closed.
   */
  close(): Promise<void>;
}

/** One tool as `tools/list` shows it. */
export interface ToolSpec {
  /** The tool's name. */
  name: string;
  /** A human-readable title. */
  title: string;
  /** What the tool does, for the model. */
  description: string;
  /** JSON Schema of the arguments. */
  inputSchema: Record<string, unknown>;
  /** JSON Schema of `structuredContent`, when the tool returns it. */
  outputSchema?: Record<string, unknown>;
  /** MCP tool annotations (`readOnlyHint`, ...). */
  annotations?: Record<string, unknown>;
}

/** A text or image content block. */
export type ToolContent =
  | { type: "text"; text: string }
  | { type: "image"; data: string; mimeType: string };

/** What a tool call returns. */
export interface ToolOutput {
  /** Content blocks for the model. */
  content: ToolContent[];
  /** Data matching the tool's `outputSchema`. */
  structuredContent?: Record<string, unknown>;
  /** Whether the call failed. */
  isError?: boolean;
}

/** MCP logging levels, least severe first. */
const LOG_LEVELS = [
  "debug",
  "info",
  "notice",
  "warning",
  "error",
  "critical",
  "alert",
  "emergency",
] as const;

/** An MCP logging level. */
export type LogLevel = typeof LOG_LEVELS[number];

/** What a tool handler gets besides its arguments. */
export interface ToolCallContext {
  /** Aborts when the client cancels the request or the server closes. */
  signal: AbortSignal;
  /** The client's progress token, when it asked for progress. */
  progressToken?: string | number;
  /**
   * Sends a progress notification for this request (no-op without a
   * progress token).
   */
  progress(progress: number, message: string): Promise<void>;
  /**
   * Sends a logging notification for this request, when the client set a
   * logging level that lets it through (`logging/setLevel`); otherwise
   * nothing is sent.
   */
  log(level: LogLevel, logger: string, data: unknown): Promise<void>;
  /** Whether {@linkcode log} would send a message at `level`. */
  logs(level: LogLevel): boolean;
}

/** Options of {@linkcode createProtocolServer}. */
export interface ProtocolServerOptions {
  /** The server's name. */
  name: string;
  /** The server's version. */
  version: string;
  /** Instructions for the model. */
  instructions: string;
  /** The tools, as listed. */
  tools: () => ToolSpec[];
  /** Runs a tool; must not throw (errors are `isError` results). */
  callTool: (
    name: string,
    args: Record<string, unknown>,
    context: ToolCallContext,
  ) => Promise<ToolOutput>;
  /** Called once when the server closes. */
  onClose?: () => void;
}

/**
 * Creates a low-level MCP server with `tools` and `logging` capabilities,
 * whose tools are plain JSON Schemas.
 *
 * @param options Identity, tools and the call handler.
 * @returns The server, ready to connect.
 */
export function createProtocolServer(
  options: ProtocolServerOptions,
): McpServerHandle {
  const server = new serverModule.Server(
    { name: options.name, version: options.version },
    {
      capabilities: { tools: {}, logging: {} },
      instructions: options.instructions,
    },
  );
  // The client's chosen level; nothing is logged until it sets one.
  let level: LogLevel | undefined;
  server.setRequestHandler(typesModule.SetLevelRequestSchema, (request) => {
    level = request.params.level;
    return {};
  });
  server.setRequestHandler(
    typesModule.ListToolsRequestSchema,
    () => ({ tools: options.tools() }),
  );
  server.setRequestHandler(
    typesModule.CallToolRequestSchema,
    async (request, extra) => {
      const token = request.params._meta?.progressToken;
      const logs = (at: LogLevel) =>
        level !== undefined &&
        LOG_LEVELS.indexOf(at) >= LOG_LEVELS.indexOf(level);
      const context: ToolCallContext = {
        signal: extra.signal,
        progressToken: token,
        progress: async (progress, message) => {
          if (token === undefined) return;
          await extra.sendNotification({
            method: "notifications/progress",
            params: { progressToken: token, progress, message },
          });
        },
        logs,
        log: async (at, logger, data) => {
          if (!logs(at)) return;
          await extra.sendNotification({
            method: "notifications/message",
            params: { level: at, logger, data },
          });
        },
      };
      const args = request.params.arguments ?? {};
      const out = await options.callTool(request.params.name, args, context);
      return {
        content: out.content,
        ...(out.structuredContent
          ? { structuredContent: out.structuredContent }
          : {}),
        ...(out.isError ? { isError: true } : {}),
      };
    },
  );
  let closed = false;
  server.onclose = () => {
    if (closed) return;
    closed = true;
    options.onClose?.();
  };
  return {
    connect: (transport) =>
      server.connect(
        transport as unknown as Parameters<typeof server.connect>[0],
      ),
    close: () => server.close(),
  };
}

/** A streamable-HTTP server transport of one MCP session. */
export interface HttpTransport extends McpTransport {
  /**
   * Serves one HTTP request of this session (or the `initialize` that
   * starts it).
   *
   * @param req The request.
   * @returns The response (an SSE stream for requests).
   */
  handleRequest(req: Request): Promise<Response>;
}

/** Options of {@linkcode createHttpTransport}. */
export interface HttpTransportOptions {
  /** Called with the new session's id once `initialize` is accepted. */
  onSessionInitialized: (sessionId: string) => void;
  /** Called when the client ends the session (`DELETE`). */
  onSessionClosed: (sessionId: string) => void;
}

/**
 * Creates a stateful streamable-HTTP transport (MCP session ids, SSE
 * responses so notifications stream while a call runs).
 *
 * @param options Session callbacks.
 * @returns The transport; connect it to a fresh server.
 */
export function createHttpTransport(
  options: HttpTransportOptions,
): HttpTransport {
  return new httpModule.WebStandardStreamableHTTPServerTransport({
    sessionIdGenerator: () => crypto.randomUUID(),
    onsessioninitialized: options.onSessionInitialized,
    onsessionclosed: options.onSessionClosed,
  }) as unknown as HttpTransport;
}

/** JSON-RPC error codes used by the transports. */
export const JSON_RPC_ERRORS: {
  readonly parseError: number;
  readonly invalidRequest: number;
} = {
  parseError: typesModule.ErrorCode.ParseError,
  invalidRequest: typesModule.ErrorCode.InvalidRequest,
};

/**
 * Validates a parsed JSON value as a JSON-RPC 2.0 message.
 *
 * @param value The value.
 * @returns The message, or undefined when it is not one.
 */
export function toJsonRpcMessage(value: unknown): JsonRpcMessage | undefined {
  const parsed = typesModule.JSONRPCMessageSchema.safeParse(value);
  return parsed.success ? parsed.data as JsonRpcMessage : undefined;
}
