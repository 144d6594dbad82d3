import assert from "node:assert/strict";
import SwaggerParser from "@apidevtools/swagger-parser";
import { Ajv2020 } from "ajv/dist/2020.js";
import { createHandler, openApiDocument } from "../handler.ts";
import { API_ROUTES, PLAYGROUND_ROUTE, routesDocument } from "../_openapi.ts";
import { withTempDir } from "./_helpers.ts";
import { withTempHandler } from "./_http_helpers.ts";

type Json = Record<string, unknown>;

const DENO_JSON = JSON.parse(
  await Deno.readTextFile(new URL("../deno.json", import.meta.url)),
) as { version: string; imports: Record<string, string> };

/** Validates a copy (the parser dereferences in place). */
async function validate(doc: Json): Promise<Json> {
  return await SwaggerParser.validate(structuredClone(doc) as never) as Json;
}

function schemas(doc: Json): Record<string, Json> {
  return (doc.components as { schemas: Record<string, Json> }).schemas;
}

Deno.test("openApiDocument() passes @apidevtools/swagger-parser validation, with and without a base path", async () => {
  for (const basePath of ["", "/sandbox"]) {
    const api = await validate(openApiDocument(basePath));
    assert.match(String(api.openapi), /^3\.1\./);
    assert.deepEqual(
      Object.keys(api.paths as Json).sort(),
      [...new Set(API_ROUTES.map((r) => r.path))].sort(),
    );
  }
  const withPage = await validate(
    routesDocument("", [PLAYGROUND_ROUTE, ...API_ROUTES]),
  );
  const page = (withPage.paths as Record<string, Record<string, Json>>)["/"];
  assert.deepEqual(Object.keys(page), ["get"]);
  assert.deepEqual(page.get.security, []);
});

Deno.test("swagger-parser refuses a document with a dangling $ref or a malformed operation, so the validation can fail", async () => {
  const dangling = openApiDocument();
  (schemas(dangling).CodeExecutionResult.properties as Json).error = {
    $ref: "#/components/schemas/Missing",
  };
  await assert.rejects(() => validate(dangling), /Missing/);
  const malformed = openApiDocument() as {
    paths: Record<string, Record<string, Json>>;
  };
  malformed.paths["/v1/execute"].post.responses = "none";
  await assert.rejects(
    () => validate(malformed as unknown as Json),
    /must be object/,
  );
});

Deno.test("openApiDocument() returns a document of its own: changing one changes no later one", async () => {
  const first = openApiDocument();
  schemas(first).Error.properties = {};
  (first.paths as Json)["/healthz"] = {};
  const second = openApiDocument();
  assert.ok((schemas(second).Error.properties as Json).error);
  assert.ok("get" in ((second.paths as Json)["/healthz"] as Json));
  await validate(second);
});

Deno.test("the OpenAPI document has a servers entry naming the base path, and its version is deno.json's", () => {
  const plain = openApiDocument();
  assert.deepEqual((plain.servers as Json[]).map((s) => s.url), ["/"]);
  const based = openApiDocument("/sandbox");
  assert.deepEqual((based.servers as Json[]).map((s) => s.url), ["/sandbox"]);
  // Paths stay relative to the server URL.
  assert.ok("/v1/execute" in (based.paths as Json));
  assert.ok(!("/sandbox/v1/execute" in (based.paths as Json)));
  assert.equal((plain.info as Json).version, DENO_JSON.version);
});

Deno.test("the OpenAPI document types displays as MIME bundles and SessionMetadata with packages", async () => {
  const api = await validate(openApiDocument());
  const s = schemas(api);
  const result = s.CodeExecutionResult.properties as Record<string, Json>;
  const bundle = result.displays.items as Json;
  const props = bundle.properties as Record<string, Json>;
  assert.equal(bundle.type, "object");
  assert.deepEqual(bundle.required, ["text/plain"]);
  assert.equal(props["text/plain"].type, "string");
  assert.equal(props["image/png"].contentEncoding, "base64");
  assert.equal(props["image/svg+xml"].type, "string");
  assert.ok(props["application/json"].type, "application/json is a JSON value");
  const meta = s.SessionMetadata.properties as Record<string, Json>;
  assert.equal(meta.packages.type, "array");
  assert.deepEqual(meta.packages.items, { type: "string" });
  assert.deepEqual(s.SessionMetadata.required, [
    "pyodideVersion",
    "createdAt",
    "updatedAt",
  ]);
});

Deno.test("GET /openapi.json of a real handler validates and documents the playground only when it is on", async () => {
  await withTempDir(async (cacheDir) => {
    for (const playground of [false, true]) {
      const handler = createHandler({
        sandboxOptions: { poolSize: 0, cacheDir },
        basePath: "/api",
        playground,
      });
      try {
        const response = await handler(
          new Request("http://127.0.0.1/api/openapi.json"),
        );
        assert.equal(response.status, 200);
        const api = await validate(await response.json());
        assert.deepEqual((api.servers as Json[])[0].url, "/api");
        assert.equal("/" in (api.paths as Json), playground);
      } finally {
        await handler.close();
      }
    }
  });
});

/** Compiles the document's schemas (refs resolved) with a JSON Schema validator. */
async function validators(
  doc: Json,
): Promise<(name: string, value: unknown) => string | undefined> {
  const api = await SwaggerParser.dereference(structuredClone(doc) as never);
  const all = schemas(api as unknown as Json);
  const ajv = new Ajv2020({ strict: false, validateFormats: false });
  return (name, value) => {
    const check = ajv.compile(all[name]);
    return check(value) ? undefined : ajv.errorsText(check.errors);
  };
}

const DISPLAYS_PY = `
class Multi:
    def _repr_svg_(self):
        return "<svg/>"
    def _repr_markdown_(self):
        return "# hi"
    def _repr_json_(self):
        return {"a": [1, 2]}
    def _repr_png_(self):
        return bytes([137, 80, 78, 71, 0, 255])
    def __repr__(self):
        return "Multi()"
display(Multi(), 42)
print("out")
{"n": 1}
`;

Deno.test({
  name:
    "real results, session exports and listings validate against their OpenAPI schemas, and a wrong display does not",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  await withTempHandler({ maxTimeoutSeconds: 120 }, async (handler) => {
    const post = async (path: string, body?: unknown) => {
      const response = await handler(
        new Request(`http://127.0.0.1${path}`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: body === undefined ? undefined : JSON.stringify(body),
        }),
      );
      return { status: response.status, body: await response.json() };
    };
    const doc = await (await handler(
      new Request("http://127.0.0.1/openapi.json"),
    )).json();
    const problem = await validators(doc);
    const run = await post("/v1/execute", { code: DISPLAYS_PY });
    assert.equal(run.status, 200);
    assert.equal(run.body.status, "success", run.body.stderr);
    assert.equal(run.body.displays.length, 2);
    assert.equal(problem("CodeExecutionResult", run.body), undefined);
    const failed = await post("/v1/execute", { code: "1 / 0" });
    assert.equal(problem("CodeExecutionResult", failed.body), undefined);

    const { body: { id } } = await post("/v1/sessions");
    await post(`/v1/sessions/${id}/execute`, { code: "x = 1" });
    const exported = await (await handler(
      new Request(`http://127.0.0.1/v1/sessions/${id}/export`),
    )).json();
    assert.ok(Array.isArray(exported.sessionMetadata.packages));
    assert.equal(problem("SessionExport", exported), undefined);
    const listed = await (await handler(
      new Request("http://127.0.0.1/v1/sessions"),
    )).json();
    assert.equal(problem("SessionList", listed), undefined);

    // The schemas are not vacuous.
    const wrong = structuredClone(run.body);
    wrong.displays[0]["text/plain"] = 5;
    assert.match(problem("CodeExecutionResult", wrong)!, /text~1plain/);
    delete wrong.displays[0]["text/plain"];
    assert.match(problem("CodeExecutionResult", wrong)!, /text\/plain/);
    const noPackages = structuredClone(exported);
    noPackages.sessionMetadata.packages = "numpy";
    assert.match(problem("SessionExport", noPackages)!, /packages/);
  });
});
