/**
 * The HTTP API served by `createHandler()` on loopback, step by step on one
 * handler (the metrics step counts what the steps before it did).
 */

import assert from "node:assert/strict";
import { eventually } from "./_helpers.ts";
import { createHandler } from "../handler.ts";
import { call, jsonOf, serve, TOKEN } from "./_http_helpers.ts";

Deno.test({
  name: "HTTP API served by createHandler on loopback",
  sanitizeOps: false,
  sanitizeResources: false,
}, async (t) => {
  const main = serve(createHandler({
    token: TOKEN,
    sandboxOptions: { poolSize: 0 },
    maxConcurrency: 2,
    maxQueue: 1,
    maxSessions: 2,
    // Generous: a queued call waits for two slow ones and then starts a
    // child, which takes tens of seconds on a heavily loaded machine.
    maxTimeoutSeconds: 90,
  }));
  // A second handler on the same sandbox, with tight limits and a base path.
  const tight = serve(createHandler({
    sandbox: main.handler.sandbox,
    basePath: "/sandbox",
    maxTimeoutSeconds: 1,
    maxBodyBytes: 2048,
    sessionIdleSeconds: 1,
  }));
  const base = main.url;
  try {
    // Builds the snapshot if needed, so no step's timeout includes it.
    await main.handler.sandbox.warmup();
    await t.step(
      "POST /v1/execute returns the CodeExecutionResult as JSON",
      async () => {
        const r = await jsonOf(
          await call(base, "POST", "/v1/execute", {
            code:
              "import sys\nprint('out')\nprint('err', file=sys.stderr)\n{'a': [1, 2]}",
          }),
          200,
        );
        assert.equal(r.status, "success", JSON.stringify(r));
        assert.equal(r.stdout, "out\n");
        assert.equal(r.stderr, "err\n");
        assert.deepEqual(r.result, { a: [1, 2] });
        assert.equal(typeof r.executionTime, "number");
        assert.equal(r.error, undefined);
      },
    );

    await t.step(
      "POST /v1/execute returns a Python exception as an error result with its traceback",
      async () => {
        const r = await jsonOf(
          await call(base, "POST", "/v1/execute", { code: "x = 1\n1 / 0" }),
          200,
        );
        assert.equal(r.status, "error");
        const error = r.error as Record<string, string>;
        assert.equal(error.kind, "exception");
        assert.equal(error.type, "ZeroDivisionError");
        assert.match(error.traceback, /File "<sandbox>", line 2/);
      },
    );

    await t.step(
      "POST /v1/execute passes stdin and files in and returns written files as base64",
      async () => {
        const r = await jsonOf(
          await call(base, "POST", "/v1/execute", {
            code: [
              "n = int(input())",
              "text = open('in.txt').read()",
              "raw = open('b.bin', 'rb').read()",
              "open('out.bin', 'wb').write(bytes([n]) + raw)",
              "[n, text, list(raw)]",
            ].join("\n"),
            stdin: "42\n",
            files: { "in.txt": "hello", "b.bin": { base64: "AAEC" } },
          }),
          200,
        );
        assert.equal(r.status, "success", String(r.stderr));
        assert.deepEqual(r.result, [42, "hello", [0, 1, 2]]);
        const files = r.files as { path: string; content: string }[];
        const out = files.find((f) => f.path.endsWith("/out.bin"));
        assert.ok(out, JSON.stringify(files));
        assert.equal(out.content, "KgABAg==");
      },
    );

    await t.step(
      "requests without a valid bearer token get 401, /healthz needs none",
      async () => {
        for (
          const authorization of [
            undefined,
            "Bearer wrong-token",
            `Bearer ${TOKEN}x`,
            `Basic ${btoa(`user:${TOKEN}`)}`,
            TOKEN,
          ]
        ) {
          const headers: Record<string, string> = {
            "content-type": "application/json",
          };
          if (authorization) headers.authorization = authorization;
          const response = await fetch(`${base}/v1/execute`, {
            method: "POST",
            headers,
            body: JSON.stringify({ code: "print('ran')" }),
          });
          const body = await jsonOf(response, 401);
          assert.match(String(body.error), /Unauthorized/);
          assert.match(
            response.headers.get("www-authenticate") ?? "",
            /^Bearer/,
          );
        }
        for (const path of ["/metrics", "/openapi.json", "/v1/sessions"]) {
          await jsonOf(await fetch(base + path), 401);
        }
        const health = await jsonOf(await fetch(`${base}/healthz`), 200);
        assert.equal(health.status, "ok");
      },
    );

    await t.step("bad JSON or fields get 400, other types 415", async () => {
      const bad: [unknown, RegExp][] = [
        ["{not json", /Invalid JSON/],
        ["[1, 2]", /expected a JSON object, got array/],
        [{}, /Invalid code/],
        [{ code: 5 }, /Invalid code: expected a string, got number/],
        [{ code: "1", extra: true }, /Unknown field: "extra"/],
        [{ code: "1", timeoutSeconds: -1 }, /Invalid timeoutSeconds/],
        [{ code: "1", timeoutSeconds: "5" }, /Invalid timeoutSeconds/],
        [{ code: "1", stdin: 5 }, /Invalid stdin/],
        [{ code: "1", files: ["a"] }, /Invalid files/],
        [{ code: "1", files: { a: { base64: "%%%" } } }, /not valid base64/],
        [{ code: "1", files: { a: 5 } }, /Invalid files\["a"\]/],
      ];
      for (const [body, message] of bad) {
        const r = await jsonOf(
          await call(base, "POST", "/v1/execute", body),
          400,
        );
        assert.match(String(r.error), message, JSON.stringify(body));
      }
      await jsonOf(await call(base, "POST", "/v1/execute"), 400);
      const r = await jsonOf(
        await call(base, "POST", "/v1/execute", '{"code": "1"}', {
          "content-type": "text/plain",
        }),
        415,
      );
      assert.match(String(r.error), /application\/json/);
      await jsonOf(
        await call(base, "POST", "/v1/sessions", { sessionBytes: "AAAA" }),
        400,
      );
    });

    await t.step(
      "a full queue gets 429 while the admitted calls all finish",
      async () => {
        const slow = "import time\ntime.sleep(1)\nprint('slow done')";
        const admitted = [
          call(base, "POST", "/v1/execute", { code: slow }),
          call(base, "POST", "/v1/execute", { code: slow }),
          call(base, "POST", "/v1/execute", { code: "print('queued done')" }),
        ];
        await eventually("3 admitted calls", async () => {
          const h = await jsonOf(await fetch(`${base}/healthz`), 200);
          return (h.running as number) + (h.queued as number) === 3;
        }, 20);
        const refused = await call(base, "POST", "/v1/execute", {
          code: "print('never')",
        });
        const body = await jsonOf(refused, 429);
        assert.match(String(body.error), /Too many requests/);
        assert.equal(refused.headers.get("retry-after"), "1");
        const results = await Promise.all(
          admitted.map(async (p) => await jsonOf(await p, 200)),
        );
        assert.deepEqual(results.map((r) => r.stdout), [
          "slow done\n",
          "slow done\n",
          "queued done\n",
        ]);
      },
    );

    await t.step(
      "a live session keeps state, exports, imports elsewhere, rejects tampered bytes and is deleted",
      async () => {
        const { id } = await jsonOf(
          await call(base, "POST", "/v1/sessions"),
          201,
        ) as { id: string };
        const run = async (sid: string, code: string) =>
          await jsonOf(
            await call(base, "POST", `/v1/sessions/${sid}/execute`, { code }),
            200,
          );
        await run(id, "x = 41\nimport math");
        assert.equal((await run(id, "x += 1\nx")).result, 42);
        const saved = await jsonOf(
          await call(base, "GET", `/v1/sessions/${id}/export`),
          200,
        );
        assert.equal(typeof saved.sessionBytes, "string");
        const meta = saved.sessionMetadata as Record<string, unknown>;
        assert.equal(typeof meta.pyodideVersion, "string");
        const size = Uint8Array.from(
          atob(saved.sessionBytes as string),
          (c) => c.charCodeAt(0),
        ).length;
        const listed = (await jsonOf(
          await call(base, "GET", "/v1/sessions"),
          200,
        )).sessions as Record<string, unknown>[];
        assert.equal(listed.length, 1);
        assert.equal(listed[0].id, id);
        assert.equal(listed[0].sizeBytes, size);
        assert.equal(listed[0].executions, 2);
        assert.equal(typeof listed[0].ageSeconds, "number");

        // Tampered bytes are refused.
        const raw = atob(saved.sessionBytes as string);
        const middle = raw.length >> 1;
        const tampered = raw.slice(0, middle) +
          String.fromCharCode(raw.charCodeAt(middle) ^ 1) +
          raw.slice(middle + 1);
        const refused = await jsonOf(
          await call(base, "POST", "/v1/sessions", {
            sessionBytes: btoa(tampered),
            sessionMetadata: meta,
          }),
          400,
        );
        assert.match(String(refused.error), /session/i);

        const copy = (await jsonOf(
          await call(base, "POST", "/v1/sessions", saved),
          201,
        )).id as string;
        assert.notEqual(copy, id);
        assert.equal((await run(copy, "x += 100\nmath.floor(x)")).result, 142);
        assert.equal((await run(id, "x")).result, 42);

        for (const sid of [id, copy]) {
          const response = await call(base, "DELETE", `/v1/sessions/${sid}`);
          assert.equal(response.status, 204);
          await response.body?.cancel();
        }
        await jsonOf(
          await call(base, "POST", `/v1/sessions/${id}/execute`, {
            code: "x",
          }),
          404,
        );
        await jsonOf(await call(base, "DELETE", `/v1/sessions/${id}`), 404);
        await jsonOf(await call(base, "GET", `/v1/sessions/${id}/export`), 404);
        assert.deepEqual(
          (await jsonOf(await call(base, "GET", "/v1/sessions"), 200))
            .sessions,
          [],
        );
      },
    );

    await t.step("the session limit gets 429", async () => {
      const ids = [];
      for (let i = 0; i < 2; i++) {
        ids.push(
          (await jsonOf(await call(base, "POST", "/v1/sessions"), 201)).id,
        );
      }
      const body = await jsonOf(await call(base, "POST", "/v1/sessions"), 429);
      assert.match(String(body.error), /Too many sessions: the limit is 2/);
      for (const id of ids) {
        await (await call(base, "DELETE", `/v1/sessions/${id}`)).body
          ?.cancel();
      }
    });

    await t.step(
      "GET /metrics reports executions by status and kind, latency, queue, pool and sessions",
      async () => {
        const response = await call(base, "GET", "/metrics");
        assert.equal(response.status, 200);
        assert.match(response.headers.get("content-type")!, /^text\/plain/);
        const text = await response.text();
        const value = (series: string): number => {
          const line = text.split("\n").find((l) =>
            l.startsWith(`pyodide_sandbox_${series} `)
          );
          assert.ok(line, `missing ${series} in\n${text}`);
          return Number(line.split(" ")[1]);
        };
        const success = value('executions_total{status="success",kind="none"}');
        const exception = value(
          'executions_total{status="error",kind="exception"}',
        );
        assert.ok(success >= 8, String(success));
        assert.equal(exception, 1);
        assert.equal(
          value('executions_total{status="error",kind="timeout"}'),
          0,
        );
        const count = value("execution_duration_seconds_count");
        assert.equal(count, success + exception);
        assert.equal(
          value('execution_duration_seconds_bucket{le="+Inf"}'),
          count,
        );
        assert.ok(value("execution_duration_seconds_sum") > 0);
        assert.equal(value("queue_length"), 0);
        assert.equal(value("pool_size"), 0);
        assert.equal(value("sessions"), 0);
        assert.equal(value('rejected_requests_total{reason="queue_full"}'), 1);
        assert.equal(
          value('rejected_requests_total{reason="session_limit"}'),
          1,
        );
        assert.ok(value('http_requests_total{code="401"}') >= 8);
        assert.match(
          text,
          /# TYPE pyodide_sandbox_execution_duration_seconds histogram/,
        );
      },
    );

    await t.step(
      "GET /openapi.json is OpenAPI 3.1 and documents exactly the routes served",
      async () => {
        const doc = await jsonOf(await call(base, "GET", "/openapi.json"), 200);
        assert.match(String(doc.openapi), /^3\.1\./);
        // Every $ref resolves.
        const refs = JSON.stringify(doc).match(/"\$ref":"[^"]+"/g) ?? [];
        for (const ref of refs) {
          const path = ref.slice(8, -1).replace(/^#\//, "").split("/");
          let node: unknown = doc;
          for (const key of path) node = (node as Record<string, unknown>)[key];
          assert.ok(node, `unresolved ${ref}`);
        }
        const paths = doc.paths as Record<
          string,
          Record<string, { responses: Record<string, unknown> }>
        >;
        const { id } = await jsonOf(
          await call(base, "POST", "/v1/sessions"),
          201,
        ) as { id: string };
        const bodies: Record<string, unknown> = {
          "/v1/execute": { code: "1" },
          "/v1/sessions/{id}/execute": { code: "1" },
        };
        const methods = ["get", "post", "put", "patch", "delete"];
        // DELETE last, so the session exists for the other calls.
        const order = Object.entries(paths).sort(([a], [b]) =>
          (paths[a].delete ? 1 : 0) - (paths[b].delete ? 1 : 0)
        );
        let operations = 0;
        for (const [template, item] of order) {
          const path = template.replace("{id}", id);
          const documented = methods.filter((m) => m in item);
          for (const method of documented) {
            operations++;
            const response = await call(
              base,
              method.toUpperCase(),
              path,
              method === "post" ? bodies[template] : undefined,
            );
            await response.body?.cancel();
            assert.ok(
              String(response.status) in item[method].responses &&
                response.status < 300,
              `${method} ${template} answered ${response.status}`,
            );
            // Without a token: 401 exactly where documented.
            const anonymous = await fetch(base + path, {
              method: method.toUpperCase(),
            });
            await anonymous.body?.cancel();
            if (anonymous.status === 401) {
              assert.ok("401" in item[method].responses, `${template}`);
            } else {
              assert.equal(template, "/healthz");
            }
          }
          for (const method of methods.filter((m) => !(m in item))) {
            const response = await call(base, method.toUpperCase(), path);
            await response.body?.cancel();
            assert.equal(response.status, 405, `${method} ${template}`);
            assert.deepEqual(
              response.headers.get("allow")!.split(", ").sort(),
              documented.map((m) => m.toUpperCase()).sort(),
            );
          }
        }
        assert.equal(operations, 9);
        for (
          const path of [
            "/",
            "/v1",
            "/v1/execute/extra",
            "/v1/sessions/x/y",
            "/v2/execute",
          ]
        ) {
          await jsonOf(await call(base, "GET", path), 404);
        }
      },
    );

    await t.step(
      "a request's timeoutSeconds is capped at the server's maximum",
      async () => {
        const r = await jsonOf(
          await fetch(`${tight.url}/sandbox/v1/execute`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({
              code: "import time\ntime.sleep(100)",
              timeoutSeconds: 1000,
            }),
          }),
          200,
        );
        assert.equal(r.status, "error");
        const error = r.error as Record<string, string>;
        assert.equal(error.kind, "timeout");
        assert.match(error.message, /after 1 seconds/);
        assert.ok((r.executionTime as number) < 30);
        await jsonOf(
          await fetch(`${tight.url}/v1/execute`, { method: "POST" }),
          404,
        );
      },
    );

    await t.step(
      "bodies over the limit get 413, declared or streamed",
      async () => {
        const big = JSON.stringify({ code: `x = '${"a".repeat(4000)}'` });
        const declared = await jsonOf(
          await fetch(`${tight.url}/sandbox/v1/execute`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: big,
          }),
          413,
        );
        assert.match(String(declared.error), /too large/);
        const bytes = new TextEncoder().encode(big);
        const streamed = await fetch(`${tight.url}/sandbox/v1/execute`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: new ReadableStream({
            start(controller) {
              for (let i = 0; i < bytes.length; i += 512) {
                controller.enqueue(bytes.slice(i, i + 512));
              }
              controller.close();
            },
          }),
        });
        await jsonOf(streamed, 413);
      },
    );

    await t.step("idle sessions expire", async () => {
      const { id } = await jsonOf(
        await fetch(`${tight.url}/sandbox/v1/sessions`, { method: "POST" }),
        201,
      ) as { id: string };
      const list = async () =>
        (await jsonOf(await fetch(`${tight.url}/sandbox/v1/sessions`), 200))
          .sessions as { id: string }[];
      assert.deepEqual((await list()).map((s) => s.id), [id]);
      await eventually(
        "the idle session to expire",
        async () => (await list()).length === 0,
        20,
      );
      await jsonOf(
        await fetch(`${tight.url}/sandbox/v1/sessions/${id}/execute`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ code: "1" }),
        }),
        404,
      );
    });
  } finally {
    await tight.server.shutdown();
    await main.server.shutdown();
    await tight.handler.close();
    await main.handler.close();
  }
});
