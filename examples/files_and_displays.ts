/**
 * Files in and out, live output and rich displays: hand Python a CSV file,
 * watch its progress as it runs, and collect the report file and the HTML
 * table it shows.
 *
 * Run: deno run -A examples/files_and_displays.ts
 *
 * @module
 */

import { PyodideSandbox } from "../mod.ts";

await using sandbox = new PyodideSandbox({ poolSize: 0 });

const csv = "city,temp\nOslo,4\nLisbon,19\nCairo,31\n";

// executeStream() yields output while the code runs, then the result.
for await (
  const event of sandbox.executeStream(
    `
import csv, json, os

class Table:
    """Anything with _repr_html_ (a pandas DataFrame, say) is a display."""
    def __init__(self, rows):
        self.rows = rows
    def _repr_html_(self):
        cells = "".join(f"<tr><td>{r['city']}</td><td>{r['temp']}</td></tr>" for r in self.rows)
        return f"<table>{cells}</table>"

rows = list(csv.DictReader(open("weather.csv")))  # written in by the host
for row in rows:
    print("read", row["city"])
display(Table(rows))
os.makedirs("out", exist_ok=True)
with open("out/summary.json", "w") as f:
    json.dump({"warmest": max(rows, key=lambda r: int(r["temp"]))["city"]}, f)
len(rows)
`,
    { files: { "weather.csv": csv } },
  )
) {
  if (event.type === "stdout") console.log("live:", event.data.trimEnd());
  else if (event.type === "display") {
    console.log("display:", event.data["text/html"]);
  } else if (event.type === "result") {
    const { result } = event;
    console.log("status:", result.status, "rows:", result.result); // success 3
    for (const file of result.files ?? []) {
      // /home/pyodide/out/summary.json {"warmest": "Cairo"}
      console.log(file.path, new TextDecoder().decode(file.content));
    }
    // The same displays, as MIME bundles: text/html and text/plain.
    console.log(Object.keys(result.displays?.[0] ?? {}));
  }
}

// A last expression with _repr_png_ becomes an image/png display (base64).
const image = await sandbox.execute(`
class Pixel:
    def _repr_png_(self):
        return bytes.fromhex(
            "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
            "1f15c4890000000d49444154789c6360f8cf0000000301010018dd8db0"
            "0000000049454e44ae426082"
        )
Pixel()
`);
console.log(String(image.displays?.[0]["image/png"]).slice(0, 16)); // iVBORw0KGgo...
