import { inject } from "vitest"
import * as Stores from "../../src/Stores.js"
import { complianceSuite } from "./suite.js"

complianceSuite({
  name: "postgres",
  factory: Stores.layer,
  store: { engine: "postgres", url: inject("databaseUrl"), auto_create: true, pool_max_size: 10, timing_margin_ms: 0 },
  clock: "live"
})
