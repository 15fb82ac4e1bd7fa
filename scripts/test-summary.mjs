// Prints the plain "N passed, N failed" line from vitest's JSON report, for CI logs.
import { readFileSync } from "node:fs"

// The report of `npm test`, or the one named (`.tmp/vitest-slow-results.json` for `npm run test:slow`).
const report = JSON.parse(readFileSync(new URL(`../${process.argv[2] ?? ".tmp/vitest-results.json"}`, import.meta.url), "utf8"))
const skipped = report.numPendingTests + report.numTodoTests
console.log(`${report.numPassedTests} passed, ${report.numFailedTests} failed${skipped > 0 ? `, ${skipped} skipped` : ""}`)
