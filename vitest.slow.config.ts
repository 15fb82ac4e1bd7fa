import { defineConfig } from "vitest/config"
import { shared, slowSuites } from "./vitest.config.js"

export default defineConfig({
  test: {
    ...shared,
    // One file at a time: each starts load processes of its own, and runs side by side would measure
    // each other's load (a busy machine is tested by the suites that add it on purpose).
    maxWorkers: 1,
    include: slowSuites,
    outputFile: { json: ".tmp/vitest-slow-results.json" }
  }
})
