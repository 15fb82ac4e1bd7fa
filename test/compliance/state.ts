/** What a limiter reports (`state`, a permit's fields), and shadow mode, which only reports. */
import { describe, expect } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import * as Metrics from "../../src/Metrics.js"
import { bothTable, leasedTable, tokenBucketTable } from "../support/fixtures.js"
import { type Compliance, RateLimiter, unique } from "./harness.js"

/** Whether `metric` has counted at least `n`: the decisions are made in the background. */
const counted = <Type, In>(metric: Metric.Metric<Type, In, { readonly count: number }>, n: number) =>
  Effect.map(Metric.value(metric), (value) => value.count >= n)

const shadowMetrics = (name: string) => ({
  rate: Metrics.shadowRefusals.pipe(Metric.tagged("limiter", name), Metric.tagged("store", "s"), Metric.tagged("reason", "rate")),
  concurrency: Metrics.shadowRefusals.pipe(Metric.tagged("limiter", name), Metric.tagged("store", "s"), Metric.tagged("reason", "concurrency")),
  wait: Metrics.shadowWait.pipe(Metric.tagged("limiter", name), Metric.tagged("store", "s"))
})

export const state = ({ eventually, limiters, live, promptly, test }: Compliance) => {
  describe("state", () => {
    test("a token bucket's permit says its limit and when the bucket is full again, as state() would", () => {
      const name = unique("pr")
      return Effect.gen(function*() {
        const permit = yield* Effect.scoped(RateLimiter.tryAcquire(name, { key: "k", cost: 3 }))
        expect(permit.limit).toBe(4)
        expect(permit.remaining).toBe(1)
        expect(Duration.toMillis(permit.resetAfter ?? Duration.zero)).toBeCloseTo(3_000, 0)
        const view = yield* RateLimiter.state(name, { key: "k" })
        // Read a little later (real time on the server engines): the bucket is that much closer to full.
        expect(Duration.toMillis(view.resetAfter)).toBeLessThanOrEqual(3_000)
        expect(Duration.toMillis(view.resetAfter)).toBeGreaterThan(live ? 2_500 : 2_999)
      }).pipe(Effect.provide(limiters({ [name]: tokenBucketTable({ burst: 4 }) })))
    })

    test("reports limit, remaining, leases held and reset time", () => {
      const name = unique("st")
      return Effect.gen(function*() {
        const fresh = yield* RateLimiter.state(name, { key: "k" })
        expect(fresh.limit).toBe(4)
        expect(fresh.remaining).toBe(4)
        expect(fresh.maxConcurrent).toBe(2)
        yield* Effect.scoped(Effect.gen(function*() {
          yield* RateLimiter.acquire(name, { key: "k", cost: 3 })
          const used = yield* RateLimiter.state(name, { key: "k" })
          expect(used.remaining).toBe(1)
          expect(used.leasesHeld).toBe(1)
          expect(Duration.toMillis(used.resetAfter)).toBeGreaterThan(2_000)
        }))
        expect((yield* RateLimiter.state(name, { key: "k" })).leasesHeld).toBe(0)
      }).pipe(Effect.provide(limiters({ [name]: bothTable({ burst: 4, max_concurrent: 2 }) })))
    })
  })

  describe("shadow mode: every call proceeds, what enforcing would have done is counted", () => {
    test("rate: never refused nor kept waiting; what would have waited or been refused takes nothing, so enforcing inherits no debt", () => {
      const name = unique("sh")
      return Effect.gen(function*() {
        const m = shadowMetrics(name)
        // burst 2 at 1/s: enforcing admits 2 of 5 at once and refuses 3.
        for (let i = 0; i < 5; i++) {
          const permit = yield* Effect.scoped(RateLimiter.tryAcquire(name))
          expect(Duration.toMillis(permit.waited)).toBe(0)
        }
        yield* eventually(counted(m.rate, 3))
        expect((yield* Metric.value(m.rate)).count).toBe(3)
        expect((yield* RateLimiter.state(name)).remaining).toBe(0)
        // Enforcing would make these wait for the next unit, about a second away: they proceed at once.
        yield* promptly(Effect.repeatN(RateLimiter.consume(name), 2), 500)
        yield* eventually(counted(m.wait, 5))
        const waits = yield* Metric.value(m.wait)
        // 2 admitted at once (wait 0) and 3 that would have waited for the next unit.
        expect(waits.count).toBe(5)
        expect(waits.max).toBeGreaterThan(500)
        expect(waits.max).toBeLessThanOrEqual(1_000)
        expect((yield* Metric.value(m.rate)).count).toBe(3)
        // A wait bound enforcing would miss is a would-be refusal.
        yield* RateLimiter.consume(name, { timeout: "100 millis" })
        yield* eventually(counted(m.rate, 4))
        expect((yield* Metric.value(m.rate)).count).toBe(4)
        expect((yield* Metric.value(m.wait)).count).toBe(5)
        // None of them reserved anything: the next unit is still the one a second after the burst.
        expect(Duration.toMillis((yield* RateLimiter.state(name)).nextSlotAfter)).toBeLessThanOrEqual(1_000)
      }).pipe(Effect.provide(limiters({ [name]: tokenBucketTable({ burst: 2, mode: "shadow" }) })))
    })

    test("leases: held until the caller's scope closes; a caller that would wait for one proceeds and is counted", () => {
      const name = unique("shl")
      return Effect.gen(function*() {
        const m = shadowMetrics(name)
        const held = (n: number) => Effect.map(RateLimiter.state(name), (state) => state.leasesHeld >= n)
        yield* Effect.scoped(Effect.gen(function*() {
          yield* RateLimiter.acquire(name)
          yield* eventually(held(1))
          // Enforcing would keep this one waiting for the lease held above.
          const second = yield* RateLimiter.acquire(name, { timeout: "10 millis" })
          expect(second.leaseId).toBeUndefined()
          yield* eventually(counted(m.concurrency, 1))
          expect((yield* RateLimiter.state(name)).leasesHeld).toBe(1)
          expect((yield* Metric.value(m.concurrency)).count).toBe(1)
        }))
        yield* eventually(Effect.map(held(1), (stillHeld) => !stillHeld))
        expect((yield* RateLimiter.state(name)).leasesHeld).toBe(0)
        // A consume of a limiter with leases needs a scope in shadow as when enforced: the same errors.
        expect((yield* RateLimiter.consume(name).pipe(Effect.flip))._tag).toBe("LeaseNeedsScope")
      }).pipe(Effect.provide(limiters({ [name]: leasedTable({ lease_ttl_seconds: 30, mode: "shadow" }) })))
    })
  })
}
