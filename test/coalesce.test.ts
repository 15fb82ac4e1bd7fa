/**
 * The coalescer's pool of slots reserved ahead, against the reference GCRA (`internal/gcra.ts`) on
 * `TestClock`: it grows only for a key in demand, never spends the free burst, and a backoff
 * learned of empties it, so no slot reserved before a backoff is handed out inside it.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Metric from "effect/Metric"
import * as Scope from "effect/Scope"
import * as TestClock from "effect/TestClock"
import * as Coalesce from "../src/internal/coalesce.js"
import * as Gcra from "../src/internal/gcra.js"
import * as Holds from "../src/internal/holds.js"
import { StoreUnavailable } from "../src/Errors.js"
import * as Metrics from "../src/Metrics.js"
import type { LimiterSpec, TokenBucket } from "../src/LimiterSpec.js"
import type { RateOutcome, RateRequest } from "../src/Store.js"

const rate: TokenBucket = { _tag: "TokenBucket", ratePerSecond: 2_000, burst: 3, intervalMs: 0.5 }
const limiter: LimiterSpec = {
  name: "pool",
  store: "s",
  rate,
  concurrency: undefined,
  timeoutMs: undefined,
  failClosed: false,
  retry: { maxAttempts: 3, baseDelayMs: 1, maxDelayMs: 10 }
}
const request = (maxWaitMs = Infinity): RateRequest => ({ limiter, key: "k", cost: 1, maxWaitMs })

/** A coalescer over one in-process GCRA bucket, reserving ahead as a store engine does. */
const setup = Effect.gen(function*() {
  const scope = yield* Scope.make()
  const clock = yield* Effect.clock
  const holds = Holds.make()
  let tat = -Infinity
  const reserve = (r: RateRequest, spare: boolean): RateOutcome => {
    const now = clock.unsafeCurrentTimeMillis()
    const decision = Gcra.reserve(tat, now, rate, r.cost, r.maxWaitMs)
    if (!decision.admitted || (spare && decision.waitMs <= 0)) return { _tag: "RateLimited", retryAfterMs: 0, limit: 3, remaining: 0 }
    tat = decision.tatMs
    return { _tag: "Admitted", waitMs: decision.waitMs, reservation: { slotMs: decision.slotMs, tatMs: tat }, limit: 3, remaining: 0 }
  }
  const coalescer = Coalesce.make({
    scope,
    maxBatch: 64,
    marginMs: 10,
    held: { mark: holds.mark, since: (id, mark, nowMs) => holds.until(id, mark, nowMs) !== undefined },
    // Answered after the other callers had their turn, as a store's reply is.
    decide: (_id, batch, ahead) =>
      Effect.zipRight(Effect.yieldNow(), Effect.sync(() => [
        ...batch.map((r) => reserve(r, false)),
        ...Array.from({ length: ahead.count }, () => reserve(ahead.request, true)).filter((o) => o._tag === "Admitted")
      ])),
    closed: new StoreUnavailable({ store: "s", engine: "test", message: "closed" })
  })
  /** Rounds of eight callers asking at once, until the pool holds a slot for the next one. */
  const busy = Effect.gen(function*() {
    for (let round = 0; round < 20; round++) {
      yield* Effect.all(Array.from({ length: 8 }, () => coalescer.submit("k", request())), { concurrency: "unbounded" })
      if (coalescer.takeNow("k", request(), clock) !== undefined) return true
      yield* TestClock.adjust("1 millis")
    }
    return false
  })
  return { clock, coalescer, holds, busy }
})

describe("slots reserved ahead", () => {
  it.effect("a busy key gets a pool; a backoff learned of empties it", () =>
    Effect.gen(function*() {
      const { busy, clock, coalescer, holds } = yield* setup
      expect(yield* busy).toBe(true)
      const now = clock.unsafeCurrentTimeMillis()
      holds.hold("k", now + 1_000, now)
      // Whatever was reserved before the backoff is not handed out, at once or through a batch.
      expect(coalescer.takeNow("k", request(), clock)).toBeUndefined()
      const next = yield* coalescer.submit("k", request())
      expect(next._tag).toBe("Admitted")
      if (next._tag === "Admitted") expect(next.reservation?.slotMs).toBeGreaterThan(now - 1e-9)
    }))

  it.effect("a pool never spends the free burst, and a lone caller gets none", () =>
    Effect.gen(function*() {
      const { clock, coalescer } = yield* setup
      // One caller now and then: no pool, and each is admitted from the burst at once.
      for (let i = 0; i < 3; i++) {
        const outcome = yield* coalescer.submit("k", request(0))
        expect(outcome._tag).toBe("Admitted")
        expect(coalescer.takeNow("k", request(0), clock)).toBeUndefined()
        yield* TestClock.adjust("200 millis")
      }
    }))

  it.effect("slots reserved ahead that nobody took in time are dropped, never handed out late, and counted as given up", () =>
    Effect.gen(function*() {
      const { busy, clock, coalescer } = yield* setup
      const givenUp = Metrics.slotsGivenUp.pipe(Metric.tagged("limiter", "pool"), Metric.tagged("store", "s"))
      const before = (yield* Metric.value(givenUp)).count
      expect(yield* busy).toBe(true)
      // Nobody asks for 100 ms: every slot of the pool (due within the 10 ms margin) is past its lateness.
      yield* TestClock.adjust("100 millis")
      expect(coalescer.takeNow("k", request(), clock)).toBeUndefined()
      expect((yield* Metric.value(givenUp)).count).toBeGreaterThan(before)
    }))
})

describe("keys remembered", () => {
  it.effect("idle keys beyond maxKeys are forgotten, a key being decided never is, and its callers are all answered", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const gate = yield* Deferred.make<void>()
      const decided: Array<string> = []
      // One writer per key: the busy key's calls never overlap.
      let busyCalls = 0
      let mostBusyCalls = 0
      const coalescer = Coalesce.make({
        scope,
        maxBatch: 64,
        marginMs: 10,
        maxKeys: 5,
        decide: (id, batch) =>
          id === "busy"
            ? Effect.sync(() => (mostBusyCalls = Math.max(mostBusyCalls, ++busyCalls))).pipe(
              Effect.zipRight(Deferred.await(gate)),
              Effect.ensuring(Effect.sync(() => busyCalls--)),
              Effect.as(batch.map((): RateOutcome => (decided.push(id), { _tag: "Admitted", waitMs: 0, reservation: undefined, limit: 1, remaining: 1 })))
            )
            // Answered after the other callers had their turn, as a store's reply is.
            : Effect.zipRight(
              Effect.yieldNow(),
              Effect.sync(() => batch.map((): RateOutcome => (decided.push(id), { _tag: "Admitted", waitMs: 0, reservation: undefined, limit: 1, remaining: 1 })))
            ),
        closed: new StoreUnavailable({ store: "s", engine: "test", message: "closed" })
      })
      const busy = yield* Effect.fork(coalescer.submit("busy", request()))
      yield* Effect.yieldNow()
      // A lone caller's key holds no pool and plans none: it is forgotten as soon as it is decided.
      yield* coalescer.submit("lone", { ...request(), key: "lone" })
      expect(coalescer.size()).toBe(1)
      // Three callers at once make a key in demand (a pool is planned for it): kept, up to maxKeys.
      for (let i = 0; i < 200; i++) {
        yield* Effect.all(Array.from({ length: 3 }, () => coalescer.submit(`k${i}`, { ...request(), key: `k${i}` })), { concurrency: "unbounded" })
      }
      expect(coalescer.size()).toBe(5)
      // The busy key kept its queue: a second caller waits in it and is decided after the first.
      const second = yield* Effect.fork(coalescer.submit("busy", request()))
      yield* Effect.yieldNow()
      yield* Deferred.succeed(gate, undefined)
      expect((yield* Fiber.join(busy))._tag).toBe("Admitted")
      expect((yield* Fiber.join(second))._tag).toBe("Admitted")
      expect(decided.filter((id) => id === "busy")).toHaveLength(2)
      expect(mostBusyCalls).toBe(1)
    }))
})
