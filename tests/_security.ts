/**
 * The attack battery's shared setup (issue 4), used by the
 * `security_*_test.ts` files: untrusted Python tries every path to the host
 * it can think of. Each attack asserts that it was contained AND that the
 * host and other sandboxes are unaffected: the host's canary file and
 * secret are intact, a witness session of the same sandbox still runs with
 * its state, and the attacked sandbox still runs `print(1)`.
 *
 * Attacks are batched: one execution tries many things and returns a JSON
 * report (see `_attack_helpers.ts`); every attack is one named step, and
 * SECURITY.md's table lists exactly these steps (checked by
 * `security_test.ts`).
 *
 * @module
 */

import assert from "node:assert/strict";
import { basename, join } from "node:path";
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
import { moduleTempDir } from "./_helpers.ts";

/**
 * One cache folder for the whole battery of a test module, so attacks on it
 * hurt no one.
 */
export const CACHE_DIR: string = moduleTempDir("pysb-security-cache-");

/**
 * Copies the base snapshot of the default cache folder (built there first
 * when missing) into {@linkcode CACHE_DIR}, where the battery's sandboxes
 * verify it (size and sha256) before use: without it, each of the battery's
 * modules would build a snapshot of its own. Any failure leaves the folder
 * empty, and the first sandbox builds one there as before.
 */
async function seedSnapshot(): Promise<void> {
  try {
    const shared = new PyodideSandbox({ poolSize: 0, denoPath: ATTACK_DENO });
    try {
      await shared.warmup();
    } finally {
      await shared.close();
    }
    const read = shared.buildCommand().args.find((a) =>
      a.startsWith("--allow-read=")
    );
    const snapshot = read?.split(",").find((p) =>
      /snapshot-[^/]+\.bin$/.test(p)
    );
    if (!snapshot) return;
    const target = join(CACHE_DIR, basename(snapshot));
    await Deno.copyFile(snapshot, target);
    await Deno.copyFile(`${snapshot}.json`, `${target}.json`);
  } catch {
    // Built in CACHE_DIR on first use instead.
  }
}

await seedSnapshot();

/**
 * Sandbox options every test starts from: fast and isolated.
 *
 * @param extra Options that override the defaults.
 * @returns The options.
 */
export function options(extra: SandboxOptions = {}): SandboxOptions {
  return {
    poolSize: 0,
    timeoutSeconds: 30,
    cacheDir: CACHE_DIR,
    denoPath: ATTACK_DENO,
    ...extra,
  };
}

/**
 * Runs one attack check as a named step (the id SECURITY.md lists).
 *
 * @param t The test's context.
 * @param id The attack's id.
 * @param fn The check.
 */
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
 *
 * @param t The test's context.
 * @param r The battery's report.
 * @param table The expectation of each attack.
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

/**
 * Asserts that an execution ended with the child's death, not a result.
 *
 * @param result The execution's result.
 */
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

/** What {@linkcode withBattery} hands its body. */
export interface BatteryContext {
  /** The attacked sandbox. */
  sandbox: PyodideSandbox;
  /** The host's files and secret. */
  fixture: HostFixture;
  /** The pid of the witness session's child. */
  witnessPid: number;
}

/**
 * Runs `body` with a sandbox, a witness session and the host fixture, then
 * checks that the host, the witness and the sandbox are all fine.
 *
 * @param extra Sandbox options over {@linkcode options}.
 * @param body The attacks.
 */
export async function withBattery(
  extra: SandboxOptions,
  body: (ctx: BatteryContext) => Promise<void>,
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

/** A refusal for lack of any Deno permission. */
export const NOT_CAPABLE: RegExp = /NotCapable|Requires \w+ access/;
