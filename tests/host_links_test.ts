/**
 * Symbolic links that the HOST placed inside a granted folder (untrusted
 * code cannot make links: that needs unscoped read and write). Deno follows
 * a link under a granted path, so such a link would grant its target; the
 * sandbox denies links that lead outside every grant when it starts a child,
 * never copies them into Python's file system, and never writes through one.
 *
 * @module
 */

import assert from "node:assert/strict";
import { PyodideSandbox } from "../mod.ts";
import { linkDenyFlags, normalizePermissions } from "../permissions.ts";
import { assertSuccess, TEST_DENO_PATH } from "./_helpers.ts";

interface LinkFixture {
  dir: string;
  granted: string;
  secret: string;
  secretDir: string;
  cleanup(): Promise<void>;
}

async function linkFixture(): Promise<LinkFixture> {
  const dir = await Deno.realPath(
    await Deno.makeTempDir({ prefix: "pysb-links-" }),
  );
  const granted = `${dir}/granted`;
  const secret = `${dir}/secret.txt`;
  const secretDir = `${dir}/secret_dir`;
  await Deno.mkdir(granted);
  await Deno.mkdir(secretDir);
  await Deno.writeTextFile(secret, "SECRET");
  await Deno.writeTextFile(`${secretDir}/f.txt`, "SECRET IN A FOLDER");
  await Deno.writeTextFile(`${granted}/ok.txt`, "ok");
  await Deno.symlink(secret, `${granted}/link_f`);
  await Deno.symlink(secretDir, `${granted}/link_d`);
  await Deno.symlink(`${granted}/ok.txt`, `${granted}/inner`);
  return {
    dir,
    granted,
    secret,
    secretDir,
    cleanup: () => Deno.remove(dir, { recursive: true }),
  };
}

const CACHE_DIR = await Deno.makeTempDir({ prefix: "pysb-links-cache-" });
globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(CACHE_DIR, { recursive: true });
  } catch {
    // Already gone.
  }
});

function sandboxFor(granted: string): PyodideSandbox {
  return new PyodideSandbox({
    poolSize: 0,
    cacheDir: CACHE_DIR,
    denoPath: TEST_DENO_PATH,
    timeoutSeconds: 60,
    allowRead: [granted],
    allowWrite: [granted],
  });
}

const ATTEMPTS = String.raw`
import js, os, json
G = __GRANTED__
def t(fn):
    try:
        return "OPEN: " + str(fn())[:60]
    except BaseException as e:
        return type(e).__name__ + ": " + str(e)[:160]
def py_write_through_dir():
    os.makedirs(G + "/link_d", exist_ok=True)
    open(G + "/link_d/planted.txt", "w").write("PWNED")
    return "written in memory"
def py_write_link():
    open(G + "/link_f", "w").write("PWNED")
    return "written in memory"
{
    "py_read_link_file": t(lambda: open(G + "/link_f").read()),
    "py_read_link_dir": t(lambda: open(G + "/link_d/f.txt").read()),
    "py_read_inner_link": t(lambda: open(G + "/inner").read()),
    "deno_read_link_file": t(lambda: js.Deno.readTextFileSync(G + "/link_f")),
    "deno_read_link_dir": t(lambda: js.Deno.readTextFileSync(G + "/link_d/f.txt")),
    "deno_read_dotted": t(lambda: js.Deno.readTextFileSync(G + "/./link_d/../link_f")),
    "deno_list_link_dir": t(lambda: len(list(js.Deno.readDirSync(G + "/link_d")))),
    "deno_write_link_file": t(lambda: js.Deno.writeTextFileSync(G + "/link_f", "PWNED")),
    "deno_write_link_dir": t(lambda: js.Deno.writeTextFileSync(G + "/link_d/new.txt", "PWNED")),
    "deno_read_inner_link": t(lambda: js.Deno.readTextFileSync(G + "/inner")),
    "py_write_through_dir": t(py_write_through_dir),
    "py_write_link": t(py_write_link),
}
`;

Deno.test("A symbolic link the host placed in a granted folder leads nowhere outside the grant", async () => {
  const fx = await linkFixture();
  const sandbox = sandboxFor(fx.granted);
  try {
    const result = await sandbox.execute(
      ATTEMPTS.replace("__GRANTED__", JSON.stringify(fx.granted)),
    );
    assertSuccess(result);
    const r = result.result as Record<string, string>;
    const copyIn = "symlinks.host_link_copy_in";
    assert.match(r.py_read_link_file, /FileNotFoundError/, copyIn);
    assert.match(r.py_read_link_dir, /FileNotFoundError/, copyIn);
    assert.equal(r.py_read_inner_link, "OPEN: ok");
    for (
      const id of [
        "deno_read_link_file",
        "deno_read_link_dir",
        "deno_read_dotted",
        "deno_list_link_dir",
        "deno_write_link_file",
        "deno_write_link_dir",
      ]
    ) {
      const raw = "symlinks.host_link_raw_deno";
      assert.match(r[id], /NotCapable/, `${raw}: ${id}: ${r[id]}`);
    }
    assert.equal(r.deno_read_inner_link, "OPEN: ok");
    // Python's in-memory writes are not written back through the links.
    const copyBack = "symlinks.host_link_copy_back";
    assert.match(result.stderr, /link_d\/planted\.txt was not written back/);
    assert.match(result.stderr, /link_f was not written back/, copyBack);
    assert.equal(await Deno.readTextFile(fx.secret), "SECRET");
    assert.deepEqual(
      [...Deno.readDirSync(fx.secretDir)].map((e) => e.name),
      ["f.txt"],
    );
    assert.ok(Deno.lstatSync(`${fx.granted}/link_f`).isSymlink);
    // The host and the sandbox are fine.
    const after = await sandbox.execute("print(1)");
    assertSuccess(after);
  } finally {
    await sandbox.close();
    await fx.cleanup();
  }
});

Deno.test("The child's deny flags cover exactly the links that leave every grant", async () => {
  const fx = await linkFixture();
  try {
    const perms = normalizePermissions(
      { allowRead: [fx.granted], allowWrite: [fx.granted] },
      "/",
    );
    assert.deepEqual(linkDenyFlags(perms, []).sort(), [
      `--deny-read=${fx.granted}/link_d,${fx.granted}/link_f`,
      `--deny-write=${fx.granted}/link_d,${fx.granted}/link_f`,
    ]);
    // A link to a place that is granted too is no escape.
    const wider = normalizePermissions(
      { allowRead: [fx.granted, fx.secretDir, fx.secret] },
      "/",
    );
    assert.deepEqual(linkDenyFlags(wider, []), []);
    // A granted path that is itself a link is granted by its real path too.
    const viaLink = normalizePermissions(
      { allowRead: [`${fx.granted}/link_d`] },
      "/",
    );
    assert.deepEqual(viaLink.allowRead, [`${fx.granted}/link_d`, fx.secretDir]);
  } finally {
    await fx.cleanup();
  }
});

// What remains (SECURITY.md, "Known gaps"): the links are found when a
// child starts. A link the host creates while a live session's child runs
// is followed by Deno's own file access until the next child starts.
Deno.test("A link the host creates after a live session started is still followed by js.Deno (documented gap)", async () => {
  const fx = await linkFixture();
  const sandbox = sandboxFor(fx.granted);
  try {
    const session = await sandbox.openSession();
    try {
      assertSuccess(await session.execute("1"));
      await Deno.symlink(fx.secret, `${fx.granted}/late_link`);
      const result = await session.execute(
        `import js\njs.Deno.readTextFileSync(${
          JSON.stringify(`${fx.granted}/late_link`)
        })`,
      );
      assertSuccess(result);
      // "symlinks.late_host_link" (documented): Deno follows it.
      assert.equal(result.result, "SECRET", "symlinks.late_host_link");
      // Python's open() never sees it: it is not copied in.
      const viaOpen = await session.execute(
        `try:\n    open(${
          JSON.stringify(`${fx.granted}/late_link`)
        }).read()\nexcept FileNotFoundError:\n    r = "not found"\nr`,
      );
      assert.equal(viaOpen.result, "not found");
      // And a write from Python is never copied back through it.
      const write = await session.execute(
        `open(${
          JSON.stringify(`${fx.granted}/late_link`)
        }, "w").write("PWNED")`,
      );
      assertSuccess(write);
      assert.match(write.stderr, /late_link is a symbolic link/);
      assert.equal(await Deno.readTextFile(fx.secret), "SECRET");
    } finally {
      await session.close();
    }
    // A new child is started with the link denied.
    const fresh = await sandbox.execute(
      `import js\ntry:\n    js.Deno.readTextFileSync(${
        JSON.stringify(`${fx.granted}/late_link`)
      })\nexcept Exception as e:\n    r = str(e)\nr`,
    );
    assert.match(String(fresh.result), /NotCapable/);
  } finally {
    await sandbox.close();
    await fx.cleanup();
  }
});
