/**
 * The token bucket's batch plan (src/postgres/bucketPlan.ts), pure, against GCRA's arithmetic
 * (src/internal/gcra.ts): a batch decided at once is the requests decided one after the other, the
 * slack is exactly the debt another process may add before an admitted request would start past its
 * bound, and slots reserved ahead never take the free burst at a rate slower than the margin.
 *
 * Times, intervals and waits are whole milliseconds here, so the two computations must agree exactly.
 */
import { describe, expect, it } from "@effect/vitest"
import * as FastCheck from "effect/FastCheck"
import * as Gcra from "../src/internal/gcra.js"
import type { TokenBucket } from "../src/LimiterSpec.js"
import * as Plan from "../src/postgres/bucketPlan.js"

const bucket = (burst: number, intervalMs: number): TokenBucket => ({
  _tag: "TokenBucket",
  ratePerSecond: 1000 / intervalMs,
  burst,
  intervalMs
})

const rates = FastCheck.record({ burst: FastCheck.integer({ min: 1, max: 10 }), intervalMs: FastCheck.integer({ min: 1, max: 1_000 }) })
  .map(({ burst, intervalMs }) => bucket(burst, intervalMs))

/** A rate, a reading of the row (tat may be far behind now, or ahead by a debt), and a batch. */
const cases = rates.chain((rate) =>
  FastCheck.record({
    rate: FastCheck.constant(rate),
    now: FastCheck.integer({ min: 0, max: 1_000_000 }),
    lag: FastCheck.oneof(FastCheck.constant(-Infinity), FastCheck.integer({ min: -20_000, max: 20_000 })),
    batch: FastCheck.array(
      FastCheck.record({
        cost: FastCheck.integer({ min: 1, max: rate.burst }),
        maxWaitMs: FastCheck.oneof(FastCheck.constant(0), FastCheck.integer({ min: 0, max: 20_000 }), FastCheck.constant(Infinity))
      }),
      { minLength: 1, maxLength: 20 }
    ),
    spares: FastCheck.integer({ min: 0, max: 20 }),
    marginMs: FastCheck.integer({ min: 0, max: 50 })
  }).map((c) => ({ ...c, tat: c.now + c.lag, spares: Math.min(c.spares, c.batch.length) }))
)

/** The requests decided one after the other by `Gcra.reserve`, each admitted one moving tat on. */
const sequential = (rate: TokenBucket, tat: number, now: number, batch: ReadonlyArray<Plan.Request>) => {
  let at = tat
  let units = 0
  return batch.map((request): Plan.Step => {
    const decision = Gcra.reserve(at, now, rate, request.cost, request.maxWaitMs)
    if (!decision.admitted) return { admitted: false, wait: decision.retryAfterMs }
    at = decision.tatMs
    units += request.cost
    expect(decision.waitMs).toBe(Math.max(0, Math.max(tat, now) + units * rate.intervalMs - Gcra.tolerance(rate) - now))
    return { admitted: true, through: units }
  })
}

describe("token bucket batch plan", () => {
  it("without slots reserved ahead, a batch is its requests decided one after the other by GCRA", () => {
    FastCheck.assert(
      FastCheck.property(cases, ({ batch, now, rate, tat }) => {
        expect(Plan.plan(rate, 0, tat, now, batch, 0)).toEqual(sequential(rate, tat, now, batch))
      }),
      { numRuns: 2_000 }
    )
  })

  it("units and newest are those of the last admitted request", () => {
    FastCheck.assert(
      FastCheck.property(cases, ({ batch, marginMs, now, rate, spares, tat }) => {
        const steps = Plan.plan(rate, marginMs, tat, now, batch, spares)
        const admitted = steps.flatMap((step, i) => (step.admitted ? [i] : []))
        expect(Plan.newest(steps)).toBe(admitted.at(-1) ?? -1)
        expect(Plan.units(steps)).toBe(admitted.reduce((sum, i) => sum + batch[i]!.cost, 0))
      }),
      { numRuns: 1_000 }
    )
  })

  it("every admitted request starts within its bound, whatever debt up to the slack another writer left", () => {
    FastCheck.assert(
      FastCheck.property(cases, FastCheck.double({ min: 0, max: 1, noNaN: true }), (c, share) => {
        const { batch, marginMs, now, rate, spares, tat } = c
        const steps = Plan.plan(rate, marginMs, tat, now, batch, spares)
        const slack = Plan.slack(rate, steps, batch)
        const admitted = steps.flatMap((step, i) => (step.admitted ? [{ through: step.through, request: batch[i]! }] : []))
        if (admitted.length === 0) {
          expect(slack).toBe(Infinity)
          return
        }
        // The slack is exact: the tightest admitted request would start exactly at its bound.
        const starts = (found: number) => admitted.map(({ through }) => Math.max(found, now) + through * rate.intervalMs - Gcra.tolerance(rate) - now)
        if (Number.isFinite(slack)) {
          expect(starts(now + slack).some((start, i) => start === admitted[i]!.request.maxWaitMs)).toBe(true)
          // The write adds the plan's units to max(tat found, now): any tat up to now + slack keeps every bound.
          const found = now + Math.floor(slack * share)
          starts(found).forEach((start, i) => expect(start).toBeLessThanOrEqual(admitted[i]!.request.maxWaitMs))
        }
        // And the plan itself keeps them: the tat it read is within the slack.
        starts(tat).forEach((start, i) => expect(start).toBeLessThanOrEqual(admitted[i]!.request.maxWaitMs))
      }),
      { numRuns: 2_000 }
    )
  })

  it("slots reserved ahead take the free burst only where the rate refills it within the margin and half stays free", () => {
    FastCheck.assert(
      FastCheck.property(cases, ({ batch, marginMs, now, rate, spares, tat }) => {
        const steps = Plan.plan(rate, marginMs, tat, now, batch, spares)
        let units = 0
        steps.forEach((step, i) => {
          if (!step.admitted) return
          const ahead = Math.max(tat, now) + step.through * rate.intervalMs - Gcra.tolerance(rate) - now
          if (i >= batch.length - spares && Gcra.settle(ahead) <= 0) {
            expect(rate.intervalMs).toBeLessThanOrEqual(marginMs)
            expect(ahead).toBeLessThanOrEqual(-Gcra.tolerance(rate) / 2)
          }
          units = step.through
        })
        expect(Plan.units(steps)).toBe(units)
      }),
      { numRuns: 2_000 }
    )
  })

  it("examples: an idle bucket of burst 3 admits three at once, then one per interval", () => {
    const rate = bucket(3, 100)
    const batch = Array.from({ length: 5 }, () => ({ cost: 1, maxWaitMs: 150 }))
    const steps = Plan.plan(rate, 0, -Infinity, 1_000, batch, 0)
    expect(steps).toEqual([
      { admitted: true, through: 1 },
      { admitted: true, through: 2 },
      { admitted: true, through: 3 },
      { admitted: true, through: 4 },
      { admitted: false, wait: 200 }
    ])
    // 50 ms of debt more and the fourth would start at 150 ms, its bound.
    expect(Plan.slack(rate, steps, batch)).toBe(50)
    // A slot reserved ahead at an idle key does not take the burst at a rate slower than the margin.
    expect(Plan.plan(rate, 5, -Infinity, 1_000, [{ cost: 1, maxWaitMs: 5 }], 1)).toEqual([{ admitted: false, wait: 0 }])
    // Where the rate refills within the margin it does, while at least half of the burst stays free.
    expect(Plan.plan(bucket(4, 1), 5, -Infinity, 1_000, [{ cost: 1, maxWaitMs: 5 }], 1)).toEqual([{ admitted: true, through: 1 }])
  })
})
