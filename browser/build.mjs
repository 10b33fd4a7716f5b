// Builds the sidecar's browser script: src/index.js with Floating UI, one minified IIFE.
//   node build.mjs          write server/pyfriction_server/static/pyfriction.js
//   node build.mjs --check  exit 1 when the committed file differs from a fresh build
// Also writes pyfriction.js.br (brotli, quality 11) for the sidecar to serve; --check verifies
// that it decompresses to the script (brotli's bytes may differ between zlib versions).
import { build } from "esbuild";
import { readFileSync, writeFileSync } from "node:fs";
import { brotliCompressSync, brotliDecompressSync, constants } from "node:zlib";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "server", "pyfriction_server", "static", "pyfriction.js");
const result = await build({
  entryPoints: [join(here, "src", "index.js")],
  bundle: true,
  format: "iife",
  minify: true,
  // Internal property names start with "_" (browser/src): renamed to short ones. `_pf` is kept:
  // it is set on the page's XMLHttpRequest objects.
  mangleProps: /^_/,
  reserveProps: /^_pf$/,
  target: ["chrome90", "firefox90", "safari15"],
  legalComments: "inline",
  charset: "utf8",
  write: false,
  absWorkingDir: here,
});
const text = result.outputFiles[0].text;
if (process.argv.includes("--check")) {
  let old = "";
  try {
    old = readFileSync(out, "utf8");
  } catch (e) {}
  if (old !== text) {
    console.error(`${out} is not the build of browser/src: run "npm run build" in browser/`);
    process.exit(1);
  }
  let br = "";
  try {
    br = brotliDecompressSync(readFileSync(out + ".br")).toString("utf8");
  } catch (e) {}
  if (br !== text) {
    console.error(`${out}.br is not the brotli of pyfriction.js: run "npm run build" in browser/`);
    process.exit(1);
  }
  console.log("pyfriction.js matches its build");
} else {
  writeFileSync(out, text);
  const br = brotliCompressSync(Buffer.from(text, "utf8"), {
    params: { [constants.BROTLI_PARAM_QUALITY]: 11, [constants.BROTLI_PARAM_SIZE_HINT]: text.length },
  });
  writeFileSync(out + ".br", br);
  console.log(`wrote ${out} (${text.length} bytes)`);
}
