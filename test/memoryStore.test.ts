import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Metric from "effect/Metric"
import * as TestClock from "effect/TestClock"
import * as MemoryStore from "../src/memory/MemoryStore.js"
import * as Metrics from "../src/Metrics.js"
import * as RateLimiterModule from "../src/RateLimiter.js"
import { decodeSettings, toLimiterSpec } from "../src/Settings.js"

describe("memory engine", () => {
  it.effect("refused, timed-out and interrupted lease waiters on many keys leave no wake-up entry or place in line behind", () =>
    Effect.gen(function*() {
      const settings = yield* decodeSettings({
        stores: { m: { engine: "memory" } },
        limiters: { leased: { store: "m", max_concurrent: 1, lease_ttl_seconds: 30 } }
      })
      const store = yield* MemoryStore.make()
      const limiter = yield* RateLimiterModule.make({
        stores: new Map([["m", store]]),
        limiters: [toLimiterSpec("leased", settings.limiters["leased"]!)]
      })
      const keys = Array.from({ length: 50 }, (_, i) => `k${i}`)
      yield* Effect.scoped(Effect.gen(function*() {
        yield* Effect.forEach(keys, (key) => limiter.acquire("leased", { key }))
        yield* Effect.forEach(keys, (key) => Effect.flip(Effect.scoped(limiter.tryAcquire("leased", { key }))))
        const timedOut = yield* Effect.forEach(keys.slice(0, 20), (key) =>
          Effect.fork(Effect.flip(Effect.scoped(limiter.acquire("leased", { key, timeout: "50 millis" })))))
        const interrupted = yield* Effect.forEach(keys.slice(20, 40), (key) => Effect.fork(Effect.scoped(limiter.acquire("leased", { key }))))
        yield* Effect.repeatN(Effect.yieldNow(), 50)
        // While they wait, each is subscribed and keeps its place.
        expect(store.waiters()).toEqual({ subscribed: 40, queued: 40 })
        yield* TestClock.adjust("100 millis")
        yield* Effect.forEach(timedOut, Fiber.join)
        yield* Fiber.interruptAll(interrupted)
        yield* Effect.repeatN(Effect.yieldNow(), 50)
        // Checked while the leases are still held: a release would wake (and drop) what was left.
        expect(store.waiters()).toEqual({ subscribed: 0, queued: 0 })
      }))
    }).pipe(Effect.scoped))

  it.effect("a held lease is renewed every third of its ttl; one the store no longer has is counted lost once and renewal stops", () =>
    Effect.gen(function*() {
      const settings = yield* decodeSettings({
        stores: { m: { engine: "memory" } },
        limiters: { lost: { store: "m", max_concurrent: 1, lease_ttl_seconds: 3 } }
      })
      const spec = toLimiterSpec("lost", settings.limiters["lost"]!)
      const store = yield* MemoryStore.make({ name: "m" })
      const limiter = yield* RateLimiterModule.make({ stores: new Map([["m", store]]), limiters: [spec] })
      const lost = Metric.value(Metrics.leasesLost.pipe(Metric.tagged("limiter", "lost"), Metric.tagged("store", "m")))
      const before = (yield* lost).count
      yield* Effect.scoped(Effect.gen(function*() {
        const permit = yield* limiter.acquire("lost")
        // Held for ten ttls: renewal keeps it.
        for (let i = 0; i < 30; i++) yield* TestClock.adjust("1 second")
        expect((yield* store.state(spec, "")).leasesHeld).toBe(1)
        expect((yield* lost).count).toBe(before)
        // Gone behind the holder's back: the next renewal finds nothing, counts it once, and stops.
        yield* store.release(spec, "", permit.leaseId!)
        for (let i = 0; i < 30; i++) yield* TestClock.adjust("1 second")
        expect((yield* lost).count).toBe(before + 1)
      }))
    }).pipe(Effect.scoped))
})
