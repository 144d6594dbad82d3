/**
 * A host process for the risky hostile-child tests: an unhandled rejection
 * or an exit caused by a child kills THIS process, not the test runner.
 *
 * Usage: `deno run -A evil_host.ts '<JSON HostPlan>'`. Prints one line per
 * event: `RESULT <summary>`, `THROWN <name>: <message>`, `MEM <json>`,
 * `CHILDREN <json>` and finally `DONE`. The test asserts the exit code 0 and
 * `DONE` (the host survived), and reads the rest.
 *
 * @module
 */

import {
  type ExecuteOptions,
  type HostFunction,
  PyodideSandbox,
  type SandboxOptions,
  SyncPyodideSandbox,
} from "../../mod.ts";
import {
  EVIL_CACHE_DIR,
  evilDenoPath,
  evilSandbox,
  RESULT,
  script,
  selfMemory,
  summarize,
} from "../_evil.ts";
import { descendants, TEST_DENO_PATH } from "../_helpers.ts";

/** What the host does. */
export interface HostPlan {
  /** Which sandbox: a compromised or a real child, async or sync. */
  kind: "evil" | "real" | "sync-evil" | "sync-real";
  options?: SandboxOptions;
  /** Run the calls in one live session instead of `execute()`. */
  session?: boolean;
  calls: { code: string; options?: ExecuteOptions; pauseMs?: number }[];
  /** Host functions that echo their arguments. */
  functions?: string[];
  /** Run a "naive" host-call handler on this request (the control). */
  naive?: unknown;
}

function echoFunctions(names: string[] = []): Record<string, HostFunction> {
  return Object.fromEntries(
    names.map((n) => [n, (...args: unknown[]) => args as never]),
  );
}

/** The pre-hardening pattern: no guard around the request's shape. */
function naiveOnCall(
  functions: Record<string, unknown>,
  request: { name: string; args: unknown[] },
): Promise<string> {
  const reply = (async () => {
    await null;
    if (request.name === "\u0000install") {
      const [, required] = request.args as string[][];
      return JSON.stringify({ ok: true, value: required.length });
    }
    const found = Object.hasOwn(functions, request.name);
    return JSON.stringify({ ok: found });
  })();
  reply.then((text) => console.log(`NAIVE ${text}`));
  return reply;
}

function print(tag: string, value: unknown): void {
  console.log(
    `${tag} ${typeof value === "string" ? value : JSON.stringify(value)}`,
  );
}

function describe(error: unknown): string {
  return error instanceof Error
    ? `${error.name}: ${error.message}`
    : String(error);
}

async function runAsync(plan: HostPlan, check: string): Promise<void> {
  const options = {
    ...plan.options,
    functions: echoFunctions(plan.functions),
  };
  const sandbox = plan.kind === "evil"
    ? evilSandbox(options)
    : new PyodideSandbox({
      poolSize: 0,
      denoPath: TEST_DENO_PATH,
      cacheDir: EVIL_CACHE_DIR,
      ...options,
    });
  try {
    const session = plan.session ? await sandbox.openSession() : undefined;
    const exec = (code: string, o?: ExecuteOptions) =>
      session ? session.execute(code, o) : sandbox.execute(code, o);
    await exec(check); // Warm: the baseline below includes a loaded host.
    const before = selfMemory("VmHWM");
    for (const call of plan.calls) {
      try {
        print("RESULT", summarize(await exec(call.code, call.options)));
      } catch (error) {
        print("THROWN", describe(error));
      }
      if (call.pauseMs) await new Promise((r) => setTimeout(r, call.pauseMs));
    }
    print("MEM", { growth: selfMemory("VmHWM") - before });
    await session?.close();
    // The same sandbox still works after the attack.
    print("RESULT", summarize(await sandbox.execute(check)));
  } finally {
    await sandbox.close();
  }
}

function runSync(plan: HostPlan, check: string): void {
  const dir = Deno.makeTempDirSync({ prefix: "evil-host-" });
  const evil = plan.kind === "sync-evil";
  if (evil) Deno.env.set("PSB_EVIL", "1");
  const sandbox = new SyncPyodideSandbox({
    poolSize: 0,
    cacheDir: EVIL_CACHE_DIR,
    denoPath: evil ? evilDenoPath(dir) : TEST_DENO_PATH,
    ...(evil ? { allowEnv: ["PSB_EVIL"] } : {}),
    ...plan.options,
    functions: echoFunctions(plan.functions),
  });
  try {
    sandbox.execute(check);
    const before = selfMemory("VmHWM");
    for (const call of plan.calls) {
      try {
        print("RESULT", summarize(sandbox.execute(call.code, call.options)));
      } catch (error) {
        print("THROWN", describe(error));
      }
    }
    print("MEM", { growth: selfMemory("VmHWM") - before });
    print("RESULT", summarize(sandbox.execute(check)));
  } finally {
    sandbox.close();
    Deno.removeSync(dir, { recursive: true });
  }
}

async function main(): Promise<void> {
  const plan = JSON.parse(Deno.args[0]) as HostPlan;
  if (plan.naive !== undefined) {
    // The control: the old pattern, fed the same request, rejects with
    // nobody listening, and the process dies of it.
    naiveOnCall({}, plan.naive as { name: string; args: unknown[] });
    await new Promise((r) => setTimeout(r, 200));
    print("DONE", "");
    return;
  }
  const evil = plan.kind === "evil" || plan.kind === "sync-evil";
  const check = evil ? script(RESULT) : "print(1)";
  if (plan.kind.startsWith("sync")) runSync(plan, check);
  else await runAsync(plan, check);
  await new Promise((r) => setTimeout(r, 300));
  print("CHILDREN", descendants().map((p) => p.pid));
  print("DONE", "");
}

await main();
