/** Backoff from upstream: every caller held, those already waiting too, and no refund undoes it. */
import { describe, expect } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import { slidingWindowTable, tokenBucketTable } from "../support/fixtures.js"
import { type Compliance, RateLimiter, unique } from "./harness.js"

export const backoff = ({ elapse, limiters, live, settle, test }: Compliance) => {
  describe("backoff from upstream", () => {
    test("pushes the next slot out for every caller, token bucket and sliding window", () => {
      const tb = unique("bo")
      const sw = unique("bosw")
      return Effect.gen(function*() {
        for (const name of [tb, sw]) {
          yield* RateLimiter.backoff(name, { retryAfter: "3 seconds" })
          const denied = yield* Effect.scoped(RateLimiter.tryAcquire(name, {})).pipe(Effect.flip)
          if (denied._tag !== "RateLimitExceeded") throw new Error(`expected RateLimitExceeded, got ${denied._tag}`)
          expect(Duration.toMillis(denied.retryAfter)).toBeGreaterThan(2_000)
          // Other keys are not pushed.
          yield* Effect.scoped(RateLimiter.tryAcquire(name, { key: "other" }))
        }
        yield* elapse(3_100)
        yield* Effect.scoped(RateLimiter.tryAcquire(tb))
        yield* Effect.scoped(RateLimiter.tryAcquire(sw))
      }).pipe(Effect.provide(limiters({
        [tb]: tokenBucketTable({ rate_per_second: 100, burst: 5 }),
        [sw]: slidingWindowTable({ limit: 5 })
      })))
    }, 30_000)
    // At 10/s each waiter holds its own slot; at 2,000/s with a line shorter than the margin the
    // stores also hold slots reserved ahead for the process's next callers, which must not be
    // handed out inside the hold either.
    // (The memory engine reserves nothing ahead: the second case would only repeat the first, slowly on TestClock.)
    for (const { fibers, rate } of live ? [{ rate: 10, fibers: 20 }, { rate: 2_000, fibers: 4 }] : [{ rate: 10, fibers: 20 }]) {
      test(`holds the callers that were already waiting (${rate}/s, ${fibers} callers): none is admitted before the backoff ends`, () => {
        const name = unique("bowait")
        return Effect.gen(function*() {
          const admittedAt: Array<number> = []
          const worker = Effect.scoped(RateLimiter.acquire(name)).pipe(
            Effect.zipRight(Effect.clockWith((clock) => clock.currentTimeMillis)),
            Effect.map((at) => admittedAt.push(at)),
            Effect.forever
          )
          const fibersRunning = yield* Effect.forEach(Array.from({ length: fibers }), () => Effect.fork(worker))
          yield* elapse(250)
          yield* RateLimiter.backoff(name, { retryAfter: "1 second" })
          const returned = yield* Effect.clockWith((clock) => clock.currentTimeMillis)
          const before = admittedAt.length
          yield* elapse(1_600)
          yield* Fiber.interruptAll(fibersRunning)
          expect(before).toBeGreaterThan(0)
          // Strictly after: a caller recorded in the very millisecond the backoff returned may have
          // been decided before it (on TestClock, in the same instant).
          const inside = admittedAt.filter((at) => at > returned && at < returned + 1_000)
          expect(inside).toEqual([])
          // Then the line goes on at the limiter's rate.
          expect(admittedAt.filter((at) => at >= returned + 1_000).length).toBeGreaterThanOrEqual(2)
        }).pipe(Effect.provide(limiters({ [name]: tokenBucketTable({ rate_per_second: rate }) }, { timing_margin_ms: "default" })))
      }, 30_000)
    }

    test("no refund undoes it: a waiter interrupted after the backoff gives back nothing inside it", () => {
      const name = unique("borefund")
      return Effect.gen(function*() {
        yield* Effect.scoped(RateLimiter.acquire(name))
        // The next slot is 200 ms away: a waiter reserves it, the upstream says "wait 300 ms", the waiter leaves.
        const waiter = yield* Effect.fork(Effect.scoped(RateLimiter.acquire(name)))
        yield* settle
        yield* RateLimiter.backoff(name, { retryAfter: "300 millis" })
        yield* Fiber.interrupt(waiter)
        yield* elapse(live ? 150 : 200)
        const early = yield* Effect.scoped(RateLimiter.tryAcquire(name)).pipe(Effect.flip)
        expect(early._tag).toBe("RateLimitExceeded")
        yield* elapse(live ? 400 : 300)
        yield* Effect.scoped(RateLimiter.tryAcquire(name))
      }).pipe(Effect.provide(limiters({ [name]: tokenBucketTable({ rate_per_second: 5 }) })))
    }, 30_000)
  })
}
