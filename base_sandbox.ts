/**
 * {@linkcode BasePyodideSandbox}: what the async and sync sandboxes share
 * (options, checks, the child command, base snapshots and session bytes).
 *
 * @module
 */

import { buildPermissionFlags } from "./permissions.ts";
import type { SessionMetadata } from "./result.ts";
import type {
  ExecuteOptions,
  SandboxCommand,
  SandboxOptions,
} from "./options.ts";
import type { CallOutcome, ChildSpec, SandboxChild } from "./_child.ts";
import {
  checkDeno,
  childArgs,
  childEnv,
  type Environment,
  pyodideReadPaths,
  resolveEnvironment,
  snapshotPath,
} from "./_setup.ts";
import { exportBase, importBase, openSessionBytes } from "./_session_bytes.ts";
import type { RestoredState } from "./_pool.ts";
import {
  type CallSettings,
  callSettingsFrom,
  checkMemory,
  passedEnv,
  type Settings,
  settingsFrom,
} from "./_settings.ts";
import { runExec, type RunHow } from "./_host_calls.ts";

/** Memory the child needs beyond `memoryLimitMb` (V8, Deno, Pyodide's JS). */
const RSS_OVERHEAD_MB = 384;

/**
 * What the async and sync sandboxes share: option validation, the Deno
 * check, and the command that starts a child.
 *
 * @example
 * ```ts
 * import { BasePyodideSandbox } from "./base_sandbox.ts";
 * const sandbox = new BasePyodideSandbox({ allowNet: ["example.com"] });
 * const { command, args } = sandbox.buildCommand();
 * console.log(command, args.includes("--allow-net=example.com"));
 * ```
 */
export class BasePyodideSandbox {
  #settings: Settings;

  /**
   * Validates the options and checks that Deno can be run.
   *
   * @param options Permissions, limits and behaviour.
   * @throws {TypeError} When an option has the wrong type or a permission
   *   entry cannot be expressed.
   * @throws {RangeError} When a number is out of range.
   * @throws {Error} When `deno` cannot be run (message starts with
   *   `Deno is not installed or not in PATH`), unless `skipDenoCheck`.
   */
  constructor(options: SandboxOptions = {}) {
    this.#settings = settingsFrom(options);
    if (!this.#settings.skipDenoCheck) checkDeno(this.#settings.denoPath);
  }

  /**
   * The validated settings (for subclasses).
   *
   * @ignore
   */
  protected get settings(): Settings {
    return this.#settings;
  }

  /**
   * Validates a call's code and options against the sandbox's settings.
   *
   * @param code Python source.
   * @param options Per-call options.
   * @returns The effective settings of the call.
   * @throws {TypeError} When the code is not a string or an option is
   *   invalid.
   * @throws {RangeError} When the code is too large or a limit is out of
   *   range.
   * @ignore
   */
  protected checkCall(code: unknown, options: ExecuteOptions): CallSettings {
    return callSettingsFrom(this.#settings, code, options);
  }

  /**
   * Sends one execution to a child and collects what it produces, answering
   * host-function calls on the way.
   *
   * @param child The child.
   * @param call The call's settings.
   * @param how Deadline, soft interrupts and whether to return state.
   * @returns What the child produced.
   * @ignore
   */
  protected runCall(
    child: SandboxChild,
    call: CallSettings,
    how: RunHow,
  ): Promise<CallOutcome> {
    return runExec(child, this.#settings, call, how);
  }

  /**
   * Resolves the environment (Pyodide's folder in Deno's cache, the cache
   * folder, the runner file). May run `deno info` on first use.
   *
   * @returns The environment.
   * @ignore
   */
  protected environment(): Environment {
    return resolveEnvironment(
      this.#settings.denoPath,
      this.#settings.cacheDir,
    );
  }

  /**
   * Builds the complete child specification for a memory limit.
   *
   * @param memoryLimitMb The limit.
   * @param extraReads More files the runner reads (an imported base
   *   snapshot).
   * @returns Binary, arguments, environment and RSS cap.
   * @ignore
   */
  protected childSpec(
    memoryLimitMb: number,
    extraReads: string[] = [],
  ): ChildSpec {
    const env = this.environment();
    const flags = buildPermissionFlags(
      this.#settings.permissions,
      [...this.runnerReads(), ...extraReads],
    );
    const command = env.denoPath;
    const args = childArgs(env, checkMemory(memoryLimitMb), flags);
    const settings = this.#settings;
    const rssLimitBytes = (memoryLimitMb + RSS_OVERHEAD_MB) * 1024 * 1024;
    return {
      denoPath: command,
      args,
      env: childEnv(
        this.environment(),
        passedEnv(settings.permissions.allowEnv),
      ),
      rssLimitBytes,
      limits: {
        stateBytes: rssLimitBytes,
        maxDisplayBytes: settings.maxDisplayBytes,
        maxTotalFileBytes: settings.maxTotalFileBytes,
      },
      idleOutputBytes: settings.maxOutputBytes,
    };
  }

  /**
   * Values of the environment variables passed to children (`redactEnv`).
   *
   * @returns The values.
   */
  protected passedEnvValues(): string[] {
    return Object.values(passedEnv(this.#settings.permissions.allowEnv));
  }

  /**
   * Paths the runner itself reads: the Pyodide files and the snapshot.
   * Merged into the user's read grant, never replacing it.
   *
   * @returns Absolute paths.
   * @ignore
   */
  protected runnerReads(): string[] {
    const env = this.environment();
    return [...pyodideReadPaths(env), snapshotPath(env)];
  }

  /**
   * Builds the `deno run` command of a child without running it.
   *
   * @param memoryLimitMb Memory limit to build for.
   * @returns The binary and its arguments.
   * @throws {Error} When the cache folder is unusable or Pyodide cannot be
   *   located in Deno's cache.
   * @example
   * ```ts
   * import { BasePyodideSandbox } from "./base_sandbox.ts";
   * const { args } = new BasePyodideSandbox().buildCommand();
   * console.log(args.includes("--no-remote")); // true
   * ```
   */
  buildCommand(
    memoryLimitMb: number = this.#settings.memoryLimitMb,
  ): SandboxCommand {
    const env = this.environment();
    const flags = buildPermissionFlags(
      this.#settings.permissions,
      this.runnerReads(),
    );
    return {
      command: env.denoPath,
      args: childArgs(env, checkMemory(memoryLimitMb), flags),
    };
  }

  /**
   * The base snapshot this sandbox's session bytes are made against (built
   * first if needed). Session bytes hold only what differs from it, so a
   * host that restores them needs the same base: give these bytes to
   * {@linkcode importBaseSnapshot} there.
   *
   * @returns The snapshot's sha256 (hex) and its bytes (about 31 MB).
   * @throws {Error} When Pyodide cannot be located or the snapshot cannot
   *   be built.
   * @example
   * ```ts ignore
   * import { PyodideSandbox } from "./sandbox.ts";
   * await using a = new PyodideSandbox({ cacheDir: "/tmp/a" });
   * await using b = new PyodideSandbox({ cacheDir: "/tmp/b" });
   * const { sha256, bytes } = await a.exportBaseSnapshot();
   * console.log((await b.importBaseSnapshot(bytes)) === sha256); // true
   * ```
   */
  async exportBaseSnapshot(): Promise<{ sha256: string; bytes: Uint8Array }> {
    return await exportBase(this.environment());
  }

  /**
   * Stores a base snapshot exported by another host (see
   * {@linkcode exportBaseSnapshot}) in this sandbox's cache folder, by its
   * sha256, so that session bytes made against it restore here.
   *
   * @param bytes The exported snapshot.
   * @returns Its sha256 (hex).
   * @throws {TypeError} When `bytes` is not a Uint8Array.
   * @throws {RangeError} When the bytes are not a memory snapshot of this
   *   Pyodide build.
   * @example
   * ```ts ignore
   * import { PyodideSandbox } from "./sandbox.ts";
   * await using sandbox = new PyodideSandbox();
   * const bytes = await Deno.readFile("base.snap");
   * console.log(await sandbox.importBaseSnapshot(bytes));
   * ```
   */
  async importBaseSnapshot(bytes: Uint8Array): Promise<string> {
    if (!(bytes instanceof Uint8Array)) {
      throw new TypeError(
        `Invalid bytes: expected a Uint8Array, got ${
          bytes === null ? "null" : typeof bytes
        }`,
      );
    }
    return await importBase(this.environment(), bytes);
  }

  /**
   * Checks session bytes and finds the base snapshot they need.
   *
   * @param bytes Session bytes.
   * @param metadata Their metadata.
   * @returns The payload for the child and its base.
   * @throws {SessionError} When the bytes are rejected or their base is not
   *   on this host.
   * @ignore
   */
  protected openBytes(
    bytes: Uint8Array,
    metadata: SessionMetadata,
  ): Promise<RestoredState> {
    return openSessionBytes(
      this.environment(),
      bytes,
      metadata,
      this.#settings.sessionSecret,
    );
  }
}
