/**
 * The store's slots on this process's clock (`internal/storeClock.ts`): whatever the clocks' offset
 * and however long each answer takes to come back, a slot is never placed early, and it is placed
 * late by no more than the fastest answer so far took (plus the slow decay); through the coalescer,
 * an answer that came back slowly has its wait shortened by how much slower it was.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FastCheck from "effect/FastCheck"
import * as Scope from "effect/Scope"
import * as TestClock from "effect/TestClock"
import * as Coalesce from "../src/internal/coalesce.js"
import * as StoreClock from "../src/internal/storeClock.js"
import { StoreUnavailable } from "../src/Errors.js"
import type { LimiterSpec } from "../src/LimiterSpec.js"
import type { RateRequest } from "../src/Store.js"

/** One answer: sent at `gap` ms after the previous one was read, decided `toStore` ms later, read `back` ms after that. */
const answer = FastCheck.record({
  gap: FastCheck.double({ min: 0, max: 2_000, noNaN: true }),
  toStore: FastCheck.double({ min: 0, max: 50, noNaN: true }),
  back: FastCheck.double({ min: 0, max: 50, noNaN: true }),
  waitMs: FastCheck.double({ min: 0, max: 100, noNaN: true })
})

describe("storeClock", () => {
  it("never places a slot early, and late by at most the fastest answer's way back (plus the decay)", () => {
    FastCheck.assert(
      FastCheck.property(
        FastCheck.double({ min: -1e12, max: 1e12, noNaN: true }),
        FastCheck.double({ min: 0, max: 1e12, noNaN: true }),
        FastCheck.array(answer, { minLength: 1, maxLength: 60 }),
        (offset, start, answers) => {
          const clock = StoreClock.make()
          let local = start
          // The most the mapping may be late by: the fastest way back so far, aged by the decay.
          let fastest = Infinity
          let fastestAt = 0
          for (const a of answers) {
            local += a.gap
            const decidedAt = local + a.toStore
            const storeNow = decidedAt + offset
            const readAt = decidedAt + a.back
            const correction = clock.correction(storeNow, readAt)
            expect(correction).toBeLessThanOrEqual(0)
            const due = readAt + a.waitMs + correction
            const trueDue = decidedAt + a.waitMs
            // Float error only: the offset may be 1e12.
            const eps = 1e-3
            expect(due).toBeGreaterThanOrEqual(trueDue - eps)
            if (a.back <= fastest + (readAt - fastestAt) * 0.001) {
              fastest = a.back
              fastestAt = readAt
            }
            expect(due - trueDue).toBeLessThanOrEqual(fastest + (readAt - fastestAt) * 0.001 + eps)
            local = readAt
          }
        }
      ),
      { numRuns: 500 }
    )
  })

  it("a step of the clocks far beyond any way back starts the estimate afresh instead of moving slots by it", () => {
    const clock = StoreClock.make()
    expect(clock.correction(1_000, 0)).toBe(0)
    // The local clock jumped 10 s ahead (a test clock adjusted, a host resumed): no correction of 10 s.
    expect(clock.correction(1_010, 10_010)).toBe(0)
    // From then on, answers are measured against the new estimate.
    expect(clock.correction(1_020, 10_025)).toBeCloseTo(-5, 1)
  })
})

describe("coalescer on the store's clock", () => {
  const limiter: LimiterSpec = {
    name: "slow",
    store: "s",
    rate: { _tag: "TokenBucket", ratePerSecond: 10, burst: 1, intervalMs: 100 },
    concurrency: undefined,
    timeoutMs: undefined,
    failClosed: false,
    retry: { maxAttempts: 3, baseDelayMs: 1, maxDelayMs: 10 }
  }
  const request: RateRequest = { limiter, key: "k", cost: 1, maxWaitMs: Infinity }

  /**
   * A coalescer over a store that admits every request 100 ms ahead at once, on a clock `offsetMs`
   * from the test's, its answer coming back `backMs` (of the test clock) later.
   */
  const answering = (scope: Scope.Scope) =>
    Effect.map(Effect.clock, (clock) => {
      const timing = { offsetMs: 0, backMs: 0 }
      return Object.assign(timing, {
        coalescer: Coalesce.make({
          scope,
          maxBatch: 8,
          marginMs: 0,
          decide: (_id, batch) => {
            const now = clock.unsafeCurrentTimeMillis() + timing.offsetMs
            const outcomes = batch.map(() => ({ _tag: "Admitted" as const, waitMs: 100, reservation: { slotMs: now + 100, tatMs: now + 100 }, limit: 1, remaining: 0 }))
            return Effect.as(TestClock.adjust(timing.backMs), outcomes)
          },
          closed: new StoreUnavailable({ store: "s", engine: "test", message: "closed" })
        })
      })
    })

  it.effect("an answer that came back 30 ms slower than the fastest has its slot 30 ms sooner", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const store = yield* answering(scope)
      const coalescer = store.coalescer
      const fast = yield* coalescer.submit("k", request)
      store.backMs = 30
      const slow = yield* coalescer.submit("k", request)
      // (The estimate decays by 0.1% of the time between answers.)
      expect(fast._tag === "Admitted" && fast.waitMs).toBe(100)
      expect(slow._tag === "Admitted" && slow.waitMs).toBeCloseTo(70, 1)
      store.backMs = 130
      // Past already when read: a wait below 0, which the caller treats as a slot woken up to late.
      const past = yield* coalescer.submit("k", request)
      expect(past._tag === "Admitted" && past.waitMs).toBeCloseTo(-30, 0)
      yield* Scope.close(scope, Exit.void)
    }))

  it.effect("a store clock that stepped back (under the estimate's reset) moves no slot sooner than the call's own round trip allows", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const store = yield* answering(scope)
      const coalescer = store.coalescer
      yield* coalescer.submit("k", request)
      // The store's clock steps back 500 ms (a failover to a host behind): answers still come back at once.
      store.offsetMs = -500
      const stepped = yield* coalescer.submit("k", request)
      expect(stepped._tag === "Admitted" && stepped.waitMs).toBe(100)
      // An answer 20 ms slow is moved by at most those 20 ms.
      store.backMs = 20
      const slow = yield* coalescer.submit("k", request)
      expect(slow._tag === "Admitted" && slow.waitMs).toBeGreaterThanOrEqual(80)
      yield* Scope.close(scope, Exit.void)
    }))
})
