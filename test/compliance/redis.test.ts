import { inject } from "vitest"
import * as Stores from "../../src/Stores.js"
import { complianceSuite } from "./suite.js"

let prefixes = 0
const url = inject("redisUrl")

complianceSuite({
  name: "redis",
  factory: Stores.layer,
  // Each test under its own key prefix, so no test sees another's keys.
  store: () => ({
    engine: "redis",
    url,
    key_prefix: `rate-sync-test:${process.pid}:${prefixes++}:`,
    timing_margin_ms: 0
  }),
  clock: "live",
  unavailable: url === ""
})
