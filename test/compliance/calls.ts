/** One call's bounds: a rate slot's timeout and interruption, the call's inputs, and `tryAcquire`. */
import { describe, expect } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import type * as Scope from "effect/Scope"
import type * as RateLimiter_ from "../../src/RateLimiter.js"
import { bothTable, slidingWindowTable, tokenBucketTable } from "../support/fixtures.js"
import { type Compliance, RateLimiter, unique } from "./harness.js"

export const calls = ({ elapse, eventually, limiters, live, promptly, settle, test }: Compliance) => {
  describe("timeouts", () => {
    test("a rate slot beyond the timeout fails at once and consumes nothing", () => {
      const name = unique("to")
      return Effect.gen(function*() {
        const first = yield* Effect.scoped(RateLimiter.acquire(name))
        // "At once": it does not sit out its 1.5 s timeout.
        const error = yield* promptly(Effect.scoped(RateLimiter.acquire(name, { timeout: "1500 millis" })).pipe(Effect.flip), 1_000)
        expect(error._tag).toBe("AcquireTimeout")
        const next = yield* Effect.fork(Effect.scoped(RateLimiter.acquire(name)))
        yield* elapse(2_100)
        const second = yield* Fiber.join(next)
        // Nothing was consumed: the next slot is one interval after the first, not two.
        expect(second.slotMs! - first.slotMs!).toBeCloseTo(2_000, 0)
      }).pipe(Effect.provide(limiters({ [name]: tokenBucketTable({ rate_per_second: 0.5 }) })))
    }, 30_000)
  })

  describe("interruption while waiting gives back what was reserved", () => {
    test("an interrupted rate waiter's slot goes to the next caller", () => {
      const name = unique("intr")
      return Effect.gen(function*() {
        const first = yield* Effect.scoped(RateLimiter.acquire(name))
        const waiter = yield* Effect.fork(Effect.scoped(RateLimiter.acquire(name)))
        yield* settle
        yield* Fiber.interrupt(waiter)
        // Given back in the background, so the interrupted caller never waits for the store.
        yield* eventually(Effect.map(RateLimiter.state(name), (state) => Duration.toMillis(state.nextSlotAfter) < 1_000))
        const next = yield* Effect.fork(Effect.scoped(RateLimiter.acquire(name)))
        yield* elapse(live ? 1_300 : 1_100)
        const permit = yield* Fiber.join(next)
        expect(permit.slotMs! - first.slotMs!).toBeCloseTo(1_000, 0)
      }).pipe(Effect.provide(limiters({ [name]: tokenBucketTable() })))
    }, 30_000)
  })

  describe("inputs of the call", () => {
    test("a timeout too long for any timer means no bound, on every path; a backoff that long is refused", () => {
      const rate = unique("huge")
      const leased = unique("hugel")
      const window = unique("hugew")
      return Effect.gen(function*() {
        const timeouts = [Duration.millis(1e308), Duration.infinity, 1e300, "1000000000 hours" as const]
        for (const [i, timeout] of timeouts.entries()) {
          for (const name of [rate, leased, window]) {
            const permit = yield* Effect.scoped(RateLimiter.acquire(name, { key: `k${i}`, timeout }))
            expect(permit.degraded).toBe(false)
          }
          const consumed = yield* RateLimiter.consume(rate, { key: `c${i}`, timeout })
          expect(consumed.degraded).toBe(false)
        }
        // A timeout of 0 still gets a free permit: the store's round trip is not a wait.
        for (const name of [rate, leased, window]) {
          expect((yield* Effect.scoped(RateLimiter.acquire(name, { key: "zero", timeout: 0 }))).degraded).toBe(false)
        }
        const error = yield* RateLimiter.backoff(rate, { retryAfter: Duration.millis(1e308) }).pipe(Effect.flip)
        expect(error._tag).toBe("InvalidOption")
        // The limit is intact.
        yield* Effect.scoped(RateLimiter.tryAcquire(rate, { key: "fresh" }))
        expect((yield* Effect.scoped(RateLimiter.tryAcquire(rate, { key: "fresh" })).pipe(Effect.flip))._tag).toBe("RateLimitExceeded")
      }).pipe(Effect.provide(limiters({
        [rate]: tokenBucketTable(),
        [leased]: bothTable(),
        [window]: slidingWindowTable()
      })))
    }, 30_000)

    test("options of the wrong kind (from JavaScript) are a typed error naming the option, and take nothing", () => {
      const name = unique("kinds")
      // What an untyped caller can pass: checked at run time, so typed as unknown here.
      const call = (options: Record<string, unknown>) =>
        Effect.scoped(Reflect.apply(RateLimiter.acquire, RateLimiter, [name, options]) as Effect.Effect<unknown, { _tag: string; option?: string }, RateLimiter_.RateLimiter | Scope.Scope>)
      return Effect.gen(function*() {
        for (const [options, option] of [
          [{ key: 42 }, "key"],
          [{ key: null }, "key"],
          [{ timeout: Number.NaN }, "timeout"],
          [{ timeout: -5 }, "timeout"],
          [{ timeout: "abc" }, "timeout"],
          [{ timeout: {} }, "timeout"]
        ] as const) {
          const error = yield* Effect.flip(call(options))
          expect([error._tag, error.option]).toEqual(["InvalidOption", option])
        }
        for (const cost of [0, -1, 1.5, Number.NaN, "1"]) {
          expect((yield* Effect.flip(call({ cost })))._tag).toBe("InvalidCost")
        }
        // Nothing was taken by any of them.
        expect((yield* RateLimiter.state(name)).remaining).toBe(2)
      }).pipe(Effect.provide(limiters({ [name]: tokenBucketTable({ burst: 2 }) })))
    })
  })

  describe("tryAcquire never waits", () => {
    test("it fails with RateLimitExceeded carrying retryAfter, limit and remaining, and writes nothing", () => {
      const name = unique("try")
      return Effect.gen(function*() {
        for (let i = 0; i < 3; i++) yield* Effect.scoped(RateLimiter.tryAcquire(name))
        const before = yield* RateLimiter.state(name)
        const denied = yield* Effect.scoped(RateLimiter.tryAcquire(name)).pipe(Effect.flip)
        if (denied._tag !== "RateLimitExceeded") throw new Error(`expected RateLimitExceeded, got ${denied._tag}`)
        expect(denied.limit).toBe(3)
        expect(denied.remaining).toBe(0)
        const retryAfter = Duration.toMillis(denied.retryAfter)
        expect(retryAfter).toBeGreaterThan(8_000)
        expect(retryAfter).toBeLessThanOrEqual(10_000)
        const after = yield* RateLimiter.state(name)
        // The rejection reserved nothing: the next slot did not move later.
        expect(Duration.toMillis(after.nextSlotAfter)).toBeLessThanOrEqual(Duration.toMillis(before.nextSlotAfter))
        expect(before.remaining).toBe(0)
      }).pipe(Effect.provide(limiters({ [name]: tokenBucketTable({ rate_per_second: 0.1, burst: 3 }) })))
    })

    test("with both bounds, a refused rate slot takes no lease", () => {
      const name = unique("both")
      return Effect.gen(function*() {
        yield* Effect.scoped(Effect.gen(function*() {
          yield* RateLimiter.tryAcquire(name)
          expect((yield* RateLimiter.tryAcquire(name).pipe(Effect.flip))._tag).toBe("RateLimitExceeded")
          // Counted while the first permit is still held: only it has a lease.
          expect((yield* RateLimiter.state(name)).leasesHeld).toBe(1)
        }))
        expect((yield* RateLimiter.state(name)).leasesHeld).toBe(0)
      }).pipe(Effect.provide(limiters({ [name]: bothTable({ rate_per_second: 0.1, max_concurrent: 5 }) })))
    })
  })
}
