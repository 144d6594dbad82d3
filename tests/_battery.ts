/**
 * The attack battery's shared pieces (issue 4): the battery's cache folder
 * and options, the `BatterySandbox`, `withBattery` (a sandbox with a
 * witness session and the host fixture, all checked afterwards), and the
 * `attack` / `expect` step helpers. The attacks themselves live in
 * `security_*_test.ts`, one file per attack surface; see
 * `_attack_helpers.ts` for the in-sandbox battery runner.
 *
 * @module
 */

import assert from "node:assert/strict";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import type { ChildSpec } from "../_child.ts";
import {
  type CodeExecutionResult,
  PyodideSandbox,
  type SandboxOptions,
} from "../mod.ts";
import {
  assertDenied,
  assertHostIntact,
  assertNoChildren,
  assertRefused,
  assertStillWorks,
  assertWitnessAlive,
  ATTACK_DENO,
  createHostFixture,
  type HostFixture,
  openWitness,
  type Outcome,
  type Report,
  witnessPid,
} from "./_attack_helpers.ts";

/** The tests folder. */
export const HERE = dirname(fileURLToPath(import.meta.url));

/** One cache folder for the whole battery, so attacks on it hurt no one. */
export const CACHE_DIR = await Deno.makeTempDir({
  prefix: "pysb-security-cache-",
});
globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(CACHE_DIR, { recursive: true });
  } catch {
    // Already gone.
  }
});

/** Sandbox options every test starts from: fast and isolated. */
export function options(extra: SandboxOptions = {}): SandboxOptions {
  return {
    poolSize: 0,
    timeoutSeconds: 30,
    cacheDir: CACHE_DIR,
    denoPath: ATTACK_DENO,
    ...extra,
  };
}

/** Runs one attack check as a named step (the id SECURITY.md lists). */
export async function attack(
  t: Deno.TestContext,
  id: string,
  fn: () => void | Promise<void>,
): Promise<void> {
  const ok = await t.step(id, fn);
  assert.ok(ok, `attack step ${id} failed`);
}

/** How an attack of a battery must have ended. */
export type Expectation =
  | "read"
  | "write"
  | "env"
  | "net"
  | "run"
  | "ffi"
  | "sys"
  | RegExp
  | ((outcome: Outcome) => void | Promise<void>);

/**
 * Checks a battery's report, one step per attack: a permission name means
 * "refused for lack of that Deno permission", a RegExp "refused with this
 * message", a function a custom check.
 */
export async function expect(
  t: Deno.TestContext,
  r: Report,
  table: Record<string, Expectation>,
): Promise<void> {
  assert.deepEqual(
    Object.keys(r).sort(),
    Object.keys(table).sort(),
    "the battery ran other attacks than the ones checked",
  );
  for (const [id, expectation] of Object.entries(table)) {
    await attack(t, id, async () => {
      if (typeof expectation === "string") {
        assertDenied(r, id, expectation);
      } else if (expectation instanceof RegExp) {
        assertRefused(r, id, expectation);
      } else {
        await expectation(r[id]);
      }
    });
  }
}

/** Asserts that an execution ended with the child's death, not a result. */
export function assertCrash(result: CodeExecutionResult): void {
  assert.equal(result.status, "error");
  assert.equal(result.error?.kind, "crash", JSON.stringify(result.error));
  assert.equal(result.result, null);
}

/**
 * The battery's sandbox: its children run without
 * `--disallow-code-generation-from-strings`, so that the JavaScript attacks
 * (written with `js.eval`) still probe the permission layer beneath that
 * flag. The flag itself, and what it blocks, is tested in
 * `child_isolation_test.ts`.
 */
export class BatterySandbox extends PyodideSandbox {
  protected override childSpec(memoryLimitMb: number): ChildSpec {
    const spec = super.childSpec(memoryLimitMb);
    return {
      ...spec,
      args: spec.args.map((arg) =>
        arg.replace(",--disallow-code-generation-from-strings", "")
      ),
    };
  }
}

/**
 * Runs `body` with a sandbox, a witness session and the host fixture, then
 * checks that the host, the witness and the sandbox are all fine.
 */
export async function withBattery(
  extra: SandboxOptions,
  body: (ctx: {
    sandbox: PyodideSandbox;
    fixture: HostFixture;
    witnessPid: number;
  }) => Promise<void>,
): Promise<void> {
  const fixture = await createHostFixture();
  const sandbox = new BatterySandbox(options(extra));
  try {
    const witness = await openWitness(sandbox);
    const pid = await witnessPid(witness);
    await body({ sandbox, fixture, witnessPid: pid });
    await assertHostIntact(fixture);
    await assertWitnessAlive(witness);
    await assertStillWorks(sandbox);
  } finally {
    await sandbox.close();
    await fixture.cleanup();
  }
  await assertNoChildren();
}

/** How a refusal for lack of a Deno permission reads. */
export const NOT_CAPABLE = /NotCapable|Requires \w+ access/;
