/** The sliding window: at most its limit in any window, costs included. */
import { describe, expect } from "@effect/vitest"
import * as Effect from "effect/Effect"
import { slidingWindowTable } from "../support/fixtures.js"
import { units, windowPeak } from "./bounds.js"
import { type Compliance, liveTarget, unique } from "./harness.js"

export const slidingWindow = ({ drive, limiters, live, test }: Compliance) => {
  describe("sliding window: at most limit admissions in any window", () => {
    for (const [limit, windowSeconds] of [[1, 0.2], [5, 0.5], [50, 1], [1_000, 1]] as const) {
      test(`limit ${limit} per ${windowSeconds}s`, () => {
        const name = unique("sw")
        const windowMs = windowSeconds * 1000
        const durationMs = live ? 1_100 : windowMs * 10.5
        // The limit in every window begun by then (callers always waiting, each window starts where the last ended).
        const allowed = (ms: number) => limit * (Math.floor(ms / windowMs) + 1)
        return Effect.gen(function*() {
          const { admissions, elapsedMs } = yield* drive(name, { fibers: 8, durationMs, target: liveTarget(limit, allowed) })
          expect(windowPeak(admissions, windowMs)).toBeLessThanOrEqual(limit)
          if (!live) expect(units(admissions)).toBe(allowed(durationMs))
          else expect(units(admissions)).toBeGreaterThanOrEqual(liveTarget(limit, allowed)(elapsedMs))
        }).pipe(Effect.provide(limiters({ [name]: slidingWindowTable({ limit, window_seconds: windowSeconds }) })))
      }, 30_000)
    }

    test("costs count as units in the window", () => {
      const name = unique("swc")
      return Effect.gen(function*() {
        const { admissions } = yield* drive(name, { fibers: 4, durationMs: live ? 1_100 : 5_500, cost: (w, n) => 1 + ((w + n) % 4) })
        expect(windowPeak(admissions, 500)).toBeLessThanOrEqual(10)
        expect(units(admissions)).toBeGreaterThanOrEqual(live ? 10 : 90)
      }).pipe(Effect.provide(limiters({ [name]: slidingWindowTable({ limit: 10, window_seconds: 0.5 }) })))
    }, 30_000)
  })
}
