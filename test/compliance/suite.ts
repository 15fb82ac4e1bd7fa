/**
 * The behaviour every engine must have (README, Semantics and Guarantees), run against any store. Memory runs it on
 * `TestClock`; the server engines run the same tests against real servers in real time, where
 * the bounds are checked on the slot times the store itself reported, so no result depends on
 * client timing. Each section is a module of its own, given what `harness.ts` shares.
 */
import { describe } from "@effect/vitest"
import { backoff } from "./backoff.js"
import { calls } from "./calls.js"
import { compliance, type Harness } from "./harness.js"
import { keys } from "./keys.js"
import { leases } from "./leases.js"
import { state } from "./state.js"
import { tokenBucket } from "./tokenBucket.js"
import { slidingWindow } from "./window.js"

export type { Harness } from "./harness.js"

export const complianceSuite = (harness: Harness) => {
  const context = compliance(harness)
  describe.skipIf(harness.unavailable === true)(`compliance: ${harness.name}`, () => {
    for (const section of [tokenBucket, slidingWindow, leases, calls, keys, backoff, state]) section(context)
  })
}
