/** The token bucket: its bound over every interval, its burst, costs, and the order of its waiters. */
import { describe, expect } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import { tokenBucketTable } from "../support/fixtures.js"
import { rateExcess, units } from "./bounds.js"
import { type Compliance, liveTarget, RateLimiter, unique } from "./harness.js"

export const tokenBucket = ({ drive, elapse, limiters, live, settle, test }: Compliance) => {
  describe("token bucket: admitted <= burst + T * rate for every interval T", () => {
    const rates = [0.1, 1, 10, 100, 1_000, 10_000, 100_000]
    const bursts = [1, 10, 100]
    for (const rate of rates) {
      for (const burst of bursts) {
        test(`rate ${rate}/s, burst ${burst}`, () => {
          const name = unique("tb")
          // 200 slots past the burst on TestClock; in real time, a short run that still spans many slots.
          const durationMs = live ? Math.min(1_000, Math.max(500, 200_000 / rate)) : 200_000 / rate
          const allowed = (ms: number) => burst + Math.floor((rate * ms) / 1000)
          return Effect.gen(function*() {
            const { admissions, elapsedMs } = yield* drive(name, { fibers: 8, durationMs, target: liveTarget(burst, allowed) })
            expect(rateExcess(admissions, rate, burst)).toBeLessThanOrEqual(1e-6)
            // Liveness: the limiter also admits what the rate allows; live, as far as the store keeps up.
            if (!live) expect(units(admissions)).toBeGreaterThanOrEqual(allowed(durationMs) - 1)
            else expect(units(admissions)).toBeGreaterThanOrEqual(liveTarget(burst, allowed)(elapsedMs))
          }).pipe(Effect.provide(limiters({ [name]: tokenBucketTable({ rate_per_second: rate, burst }) })))
        }, 30_000)
      }
    }

    test("with a timing margin, slots reserved ahead for a process's next callers keep the bound", () => {
      const name = unique("ahead")
      const rate = 2_000
      const target = liveTarget(1, (ms) => 1 + Math.floor((rate * ms) / 1000))
      return Effect.gen(function*() {
        const { admissions, elapsedMs } = yield* drive(name, { fibers: 16, durationMs: live ? 800 : 300, target })
        expect(rateExcess(admissions, rate, 1)).toBeLessThanOrEqual(1e-6)
        // Each slot was handed out once.
        expect(new Set(admissions.map((a) => a.slot)).size).toBe(admissions.length)
        expect(units(admissions)).toBeGreaterThanOrEqual(live ? target(elapsedMs) : 500)
      }).pipe(Effect.provide(limiters({ [name]: tokenBucketTable({ rate_per_second: rate }) }, { timing_margin_ms: 20 })))
    })

    test("with a timing margin, a lone caller still gets its whole burst (nothing is reserved ahead for it)", () => {
      const name = unique("lone")
      return Effect.gen(function*() {
        let admitted = 0
        for (let i = 0; i < 10; i++) {
          const outcome = yield* Effect.scoped(RateLimiter.tryAcquire(name)).pipe(Effect.either)
          if (outcome._tag === "Right") admitted++
          yield* elapse(30)
        }
        // Burst 10 at 1/s: all 10, whatever the margin.
        expect(admitted).toBe(10)
      }).pipe(Effect.provide(limiters({ [name]: tokenBucketTable({ burst: 10 }) }, { timing_margin_ms: 20 })))
    })

    // `burst = b` is b at once after idle time at the store's default margin: a per-user limit of 3
    // answers three simultaneous requests, and refuses the fourth.
    for (const burst of [1, 3, 10]) {
      test(`burst ${burst} at the defaults: ${burst} at once after idle time, together or one by one, never more`, () => {
        const together = unique("bt")
        const apart = unique("ba")
        const table = tokenBucketTable({ rate_per_second: 0.5, burst })
        return Effect.gen(function*() {
          const all = yield* Effect.all(
            Array.from({ length: burst + 1 }, () => Effect.either(Effect.scoped(RateLimiter.tryAcquire(together)))),
            { concurrency: "unbounded" }
          )
          expect(all.filter((e) => e._tag === "Right").length).toBe(burst)
          for (let i = 0; i < burst; i++) yield* Effect.scoped(RateLimiter.acquire(apart, { timeout: 0 }))
          const refused = yield* Effect.scoped(RateLimiter.tryAcquire(apart)).pipe(Effect.flip)
          expect(refused._tag).toBe("RateLimitExceeded")
        }).pipe(Effect.provide(limiters({ [together]: table, [apart]: table }, { timing_margin_ms: "default" })))
      }, 30_000)
    }

    test("a burst is never spent ahead: 3 callers together, then 7 more, all get one of burst 10 at once", () => {
      const name = unique("bahead")
      const tryAll = (n: number) =>
        Effect.all(Array.from({ length: n }, () => Effect.either(Effect.scoped(RateLimiter.tryAcquire(name)))), { concurrency: "unbounded" })
      return Effect.gen(function*() {
        const first = yield* tryAll(3)
        yield* elapse(50)
        const then = yield* tryAll(7)
        expect([...first, ...then].filter((e) => e._tag === "Right").length).toBe(10)
      }).pipe(Effect.provide(limiters({ [name]: tokenBucketTable({ rate_per_second: 0.5, burst: 10 }) }, { timing_margin_ms: "default" })))
    })

    test("costs above 1 count as that many units", () => {
      const name = unique("cost")
      const rate = live ? 200 : 50
      return Effect.gen(function*() {
        const { admissions } = yield* drive(name, { fibers: 6, durationMs: live ? 800 : 10_000, cost: (w, n) => 1 + ((w * 7 + n * 3) % 10) })
        expect(admissions.some((a) => a.cost > 1)).toBe(true)
        expect(rateExcess(admissions, rate, 10)).toBeLessThanOrEqual(1e-6)
        if (!live) expect(units(admissions)).toBeGreaterThanOrEqual(10 + 500 - 10)
      }).pipe(Effect.provide(limiters({ [name]: tokenBucketTable({ rate_per_second: rate, burst: 10 }) })))
    })

    test("a cost that can never fit fails at once with a typed error", () => {
      const name = unique("big")
      return Effect.gen(function*() {
        const tooBig = yield* Effect.scoped(RateLimiter.acquire(name, { cost: 6 })).pipe(Effect.flip)
        expect(tooBig._tag).toBe("CostExceedsCapacity")
        const zero = yield* Effect.scoped(RateLimiter.acquire(name, { cost: 0 })).pipe(Effect.flip)
        expect(zero._tag).toBe("InvalidCost")
        const fraction = yield* Effect.scoped(RateLimiter.tryAcquire(name, { cost: 1.5 })).pipe(Effect.flip)
        expect(fraction._tag).toBe("InvalidCost")
        const state = yield* RateLimiter.state(name)
        expect(state.remaining).toBe(5)
      }).pipe(Effect.provide(limiters({ [name]: tokenBucketTable({ burst: 5 }) })))
    })
  })

  describe("fairness", () => {
    test("rate waiters are admitted in the order they reserved", () => {
      const name = unique("fair")
      return Effect.gen(function*() {
        const order: Array<number> = []
        const fibers: Array<Fiber.RuntimeFiber<void, unknown>> = []
        for (let i = 0; i < 5; i++) {
          fibers.push(yield* Effect.fork(Effect.scoped(RateLimiter.acquire(name)).pipe(Effect.map(() => {
            order.push(i)
          }))))
          yield* settle
        }
        yield* elapse(live ? 1_000 : 500)
        yield* Fiber.joinAll(fibers)
        expect(order).toEqual([0, 1, 2, 3, 4])
      }).pipe(Effect.provide(limiters({ [name]: tokenBucketTable({ rate_per_second: 10 }) })))
    }, 30_000)
  })
}
