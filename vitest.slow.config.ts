import { defineConfig } from "vitest/config"
import { shared, slowSuites } from "./vitest.config.js"

export default defineConfig({
  test: {
    ...shared,
    include: slowSuites,
    outputFile: { json: ".tmp/vitest-slow-results.json" }
  }
})
