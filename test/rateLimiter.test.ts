import { describe, expect, it } from "@effect/vitest"
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Metric from "effect/Metric"
import * as TestClock from "effect/TestClock"
import * as Tracer from "effect/Tracer"
import { StoreUnavailable } from "../src/Errors.js"
import type { LimiterSpec } from "../src/LimiterSpec.js"
import * as MemoryStore from "../src/memory/MemoryStore.js"
import * as Metrics from "../src/Metrics.js"
import * as RateLimiter from "../src/RateLimiter.js"
import * as RateSync from "../src/RateSync.js"
import { type Store, StoreFactory } from "../src/Store.js"
import * as Stores from "../src/Stores.js"
import { rateExcess } from "./compliance/bounds.js"

const { RateLimiter: Limiter } = RateLimiter

/** The production configuration of an application: PostgreSQL stores, as it would ship. */
const production = {
  stores: {
    db: { engine: "postgres", url: "postgres://app@db.internal/prod", auto_create: false, pool_max_size: 20 },
    cache: { engine: "redis", url: "redis://cache.internal:6379" }
  },
  limiters: {
    api: { store: "db", rate_per_second: 10, burst: 2, max_concurrent: 3 },
    search: { store: "cache", algorithm: "sliding_window", limit: 5, window_seconds: 1 }
  }
} as const

/** Application code, written once against the service. */
const callUpstream = (n: number) =>
  Effect.scoped(Effect.gen(function*() {
    yield* Limiter.acquire("api")
    return n * 2
  }))

describe("RateLimiter service", () => {
  it.effect("Effect.scoped(RateLimiter.acquire(name)) works as written in the contract", () =>
    Effect.gen(function*() {
      const permit = yield* Effect.scoped(Limiter.acquire("api"))
      expect(permit.limiter).toBe("api")
      expect(permit.degraded).toBe(false)
      // Burst 2: the second is admitted at once (the clock moves on anyway).
      const second = yield* Effect.fork(callUpstream(21))
      yield* TestClock.adjust("10 millis")
      expect(yield* Fiber.join(second)).toBe(42)
    }).pipe(Effect.provide(RateSync.layer(production).pipe(Layer.provide(MemoryStore.layer)))))

  it.effect("the production configuration runs in tests with every store in memory, by one Layer.provide", () =>
    Effect.gen(function*() {
      const results = yield* Effect.forEach([1, 2, 3, 4], callUpstream, { concurrency: "unbounded" }).pipe(Effect.fork)
      yield* TestClock.adjust("1 second")
      expect(yield* Fiber.join(results)).toEqual([2, 4, 6, 8])
      yield* Effect.scoped(Limiter.tryAcquire("search"))
    }).pipe(Effect.provide(RateSync.layer(production).pipe(Layer.provide(MemoryStore.layer)))))

  it.effect("the live factory builds memory stores from their config", () =>
    Effect.gen(function*() {
      yield* Effect.scoped(Limiter.tryAcquire("a"))
      const denied = yield* Effect.scoped(Limiter.tryAcquire("a")).pipe(Effect.flip)
      expect(denied._tag).toBe("RateLimitExceeded")
    }).pipe(Effect.provide(
      RateSync.layer({ stores: { m: { engine: "memory" } }, limiters: { a: { store: "m", rate_per_second: 1 } } })
        .pipe(Layer.provide(Stores.layer))
    )))

  it.effect("withPermit holds a lease while the effect runs and releases it after, on failure too", () =>
    Effect.gen(function*() {
      const inside = yield* Effect.gen(function*() {
        return (yield* Limiter.state("c")).leasesHeld
      }).pipe(Limiter.withPermit("c"))
      expect(inside).toBe(1)
      const failed = yield* Effect.fail("boom" as const).pipe(Limiter.withPermit("c"), Effect.flip)
      expect(failed).toBe("boom")
      expect((yield* Limiter.state("c")).leasesHeld).toBe(0)
    }).pipe(Effect.provide(
      RateSync.layer({ stores: { m: { engine: "memory" } }, limiters: { c: { store: "m", max_concurrent: 1 } } })
        .pipe(Layer.provide(MemoryStore.layer))
    )))

  it.effect("tryConsume takes a rate slot free now without a scope, refuses without waiting, and refuses a limiter with leases", () =>
    Effect.gen(function*() {
      yield* Limiter.tryConsume("r")
      const second = yield* Limiter.tryConsume("r")
      expect(second.remaining).toBe(0)
      const refused = yield* Limiter.tryConsume("r").pipe(Effect.flip)
      expect(refused._tag).toBe("RateLimitExceeded")
      expect(refused._tag === "RateLimitExceeded" && Duration.toMillis(refused.retryAfter)).toBe(100)
      // What tryConsume took, acquire sees as taken.
      expect((yield* Effect.scoped(Limiter.tryAcquire("r")).pipe(Effect.flip))._tag).toBe("RateLimitExceeded")
      expect((yield* Limiter.tryConsume("c").pipe(Effect.flip))._tag).toBe("LeaseNeedsScope")
    }).pipe(Effect.provide(
      RateSync.layer({
        stores: { m: { engine: "memory" } },
        limiters: { r: { store: "m", rate_per_second: 10, burst: 2 }, c: { store: "m", max_concurrent: 1 } }
      }).pipe(Layer.provide(MemoryStore.layer))
    )))

  it.effect("consume takes rate slots without a scope, waits for them, and refuses a limiter with leases", () =>
    Effect.gen(function*() {
      // Burst 2 at 10/s: two at once, the third waits its 100 ms.
      yield* Limiter.consume("r")
      yield* Limiter.consume("r")
      const third = yield* Effect.fork(Limiter.consume("r"))
      yield* TestClock.adjust("99 millis")
      expect(third.unsafePoll()).toBeNull()
      yield* TestClock.adjust("1 millis")
      expect((yield* Fiber.join(third)).waited).toEqual(Duration.millis(100))
      // What consume took, acquire sees as taken.
      expect((yield* Effect.scoped(Limiter.tryAcquire("r")).pipe(Effect.flip))._tag).toBe("RateLimitExceeded")
      const timedOut = yield* Limiter.consume("r", { timeout: "10 millis" }).pipe(Effect.flip)
      expect(timedOut._tag).toBe("AcquireTimeout")
      const leased = yield* Limiter.consume("c").pipe(Effect.flip)
      expect(leased._tag).toBe("LeaseNeedsScope")
      expect(leased.message).toContain("use acquire (released when its scope closes")
      // withPermit on a rate-only limiter takes its slot too, with no scope of its own.
      yield* TestClock.adjust("1 second")
      expect(yield* Effect.succeed("ran").pipe(Limiter.withPermit("r"))).toBe("ran")
      expect((yield* Limiter.state("r")).remaining).toBe(1)
    }).pipe(Effect.provide(
      RateSync.layer({
        stores: { m: { engine: "memory" } },
        limiters: { r: { store: "m", rate_per_second: 10, burst: 2 }, c: { store: "m", max_concurrent: 1 } }
      }).pipe(Layer.provide(MemoryStore.layer))
    )))

  it.effect("a slot further ahead than a JavaScript timer can wait (24.8 days) is slept for in steps a timer can take", () => {
    // A clock like the live one, whose timers cannot wait past 2^31 - 1 ms (Effect treats a longer sleep as one that never ends).
    let now = 0
    const requested: Array<number> = []
    const clock: Clock.Clock = {
      [Clock.ClockTypeId]: Clock.ClockTypeId,
      unsafeCurrentTimeMillis: () => now,
      unsafeCurrentTimeNanos: () => BigInt(Math.round(now * 1e6)),
      currentTimeMillis: Effect.sync(() => now),
      currentTimeNanos: Effect.sync(() => BigInt(Math.round(now * 1e6))),
      sleep: (duration) =>
        Effect.suspend(() => {
          const ms = Duration.toMillis(duration)
          requested.push(ms)
          if (ms > 2 ** 31 - 1) return Effect.never
          now += ms
          return Effect.void
        })
    }
    return Effect.gen(function*() {
      yield* Limiter.consume("long")
      const second = yield* Limiter.consume("long")
      expect(second.degraded).toBe(false)
      expect(now).toBeGreaterThanOrEqual(10_000_000_000)
      expect(Math.max(...requested)).toBeLessThanOrEqual(2 ** 31 - 1)
    }).pipe(
      Effect.provide(
        RateSync.layer({
          stores: { m: { engine: "memory" } },
          limiters: { long: { store: "m", algorithm: "sliding_window", limit: 1, window_seconds: 10_000_000 } }
        }).pipe(Layer.provide(Stores.layer))
      ),
      Effect.withClock(clock),
      Effect.timeout("1 second")
    )
  })

  it.effect("an unknown limiter fails with LimiterNotFound naming the known ones", () =>
    Effect.gen(function*() {
      const error = yield* Effect.scoped(Limiter.acquire("nope")).pipe(Effect.flip)
      expect(error._tag).toBe("LimiterNotFound")
      expect(error.message).toBe(`No limiter named "nope" (configured: api, search)`)
    }).pipe(Effect.provide(RateSync.layer(production).pipe(Layer.provide(MemoryStore.layer)))))

  const margined = (margin: number, limiters: Record<string, object>) =>
    RateSync.layer({
      stores: { m: { engine: "memory", timing_margin_ms: margin } },
      limiters: Object.fromEntries(Object.entries(limiters).map(([name, l]) => [name, { store: "m", ...l }]))
    }).pipe(Layer.provide(MemoryStore.layer))

  it.effect("timing_margin_ms takes nothing from the burst and never shortens the interval", () =>
    Effect.gen(function*() {
      // burst 10 at 1000/s with a 5 ms margin: 10 at once after idle, never more.
      for (let i = 0; i < 10; i++) yield* Effect.scoped(Limiter.tryAcquire("bursty"))
      expect((yield* Effect.scoped(Limiter.tryAcquire("bursty")).pipe(Effect.flip))._tag).toBe("RateLimitExceeded")
      // The earlier library subtracted its 10 ms margin from a 10 ms interval: no limit at 100/s.
      yield* Effect.scoped(Limiter.tryAcquire("hundred"))
      expect((yield* Effect.scoped(Limiter.tryAcquire("hundred")).pipe(Effect.flip))._tag).toBe("RateLimitExceeded")
    }).pipe(Effect.provide(margined(5, {
      bursty: { rate_per_second: 1000, burst: 10 },
      hundred: { rate_per_second: 100 }
    }))))

  it.effect("with a margin the sustained rate is still the configured one, and the bound holds in caller time", () =>
    Effect.gen(function*() {
      const admitted: Array<{ slot: number; cost: number }> = []
      const worker = Effect.scoped(Limiter.acquire("fast")).pipe(
        Effect.zipRight(Effect.clockWith((clock) => clock.currentTimeMillis)),
        Effect.map((at) => admitted.push({ slot: at, cost: 1 })),
        Effect.forever
      )
      const fibers = yield* Effect.forEach(Array.from({ length: 8 }), () => Effect.fork(worker))
      yield* TestClock.adjust("200 millis")
      yield* Fiber.interruptAll(fibers)
      expect(rateExcess(admitted, 1000, 4)).toBeLessThanOrEqual(1e-6)
      expect(admitted.length).toBeGreaterThanOrEqual(200)
    }).pipe(Effect.provide(margined(10, { fast: { rate_per_second: 1000, burst: 4 } }))))

  it.effect("a waiter woken long after its slot gives it up for the next free one, and the slot given up is counted", () =>
    Effect.gen(function*() {
      // A clock that reads `offset` ms ahead of the test clock, which it sleeps on: a process starved of
      // CPU, whose sleeper wakes long after its timer was due.
      const test = yield* Effect.clock
      let offset = 0
      const starved: Clock.Clock = {
        [Clock.ClockTypeId]: Clock.ClockTypeId,
        unsafeCurrentTimeMillis: () => test.unsafeCurrentTimeMillis() + offset,
        currentTimeMillis: Effect.sync(() => test.unsafeCurrentTimeMillis() + offset),
        unsafeCurrentTimeNanos: () => test.unsafeCurrentTimeNanos() + BigInt(offset) * 1_000_000n,
        currentTimeNanos: Effect.sync(() => test.unsafeCurrentTimeNanos() + BigInt(offset) * 1_000_000n),
        sleep: (duration) => test.sleep(duration)
      }
      const givenUp = Metrics.slotsGivenUp.pipe(Metric.tagged("limiter", "late"), Metric.tagged("store", "m"))
      // The second consume's slot is 100 ms ahead; it wakes 400 ms after that.
      const run = yield* Effect.gen(function*() {
        yield* Limiter.consume("late")
        const permit = yield* Limiter.consume("late")
        return { permit, state: yield* Limiter.state("late") }
      }).pipe(
        Effect.provide(
          RateSync.layer({ stores: { m: { engine: "memory" } }, limiters: { late: { store: "m", rate_per_second: 10 } } }).pipe(
            Layer.provide(Stores.layer)
          )
        ),
        Effect.withClock(starved),
        Effect.fork
      )
      yield* TestClock.adjust("1 millis")
      offset = 400
      yield* TestClock.adjust("99 millis")
      const { permit, state } = yield* Fiber.join(run)
      expect(Duration.toMillis(permit.waited)).toBe(500)
      expect((yield* Metric.value(givenUp)).count).toBe(1)
      // The slot at 100 ms was not used late: the waiter took the one free at 500 ms, so the next is at 600 ms.
      expect(Duration.toMillis(state.nextSlotAfter)).toBe(100)
    }))

  it.effect("a slot whose answer came back long after it (a wait below 0) is given up like one woken up late; tryAcquire keeps it", () =>
    Effect.gen(function*() {
      // The memory engine, with its answers read as a server store's that came back 150 ms after
      // their slot: the engines' coalescer reports such a slot with a wait of -50 ms.
      const late = Layer.effect(
        StoreFactory,
        Effect.map(StoreFactory, (base) => ({
          make: (name, config) =>
            Effect.map(base.make(name, config), (store): Store => ({
              ...store,
              acquireRateNow: undefined,
              acquireRate: (request) =>
                Effect.map(store.acquireRate(request), (o) => (o._tag === "Admitted" && o.waitMs <= 0 ? { ...o, waitMs: o.waitMs - 150 } : o))
            }))
        }))
      ).pipe(Layer.provide(Stores.layer))
      const givenUp = Metrics.slotsGivenUp.pipe(Metric.tagged("limiter", "answered"), Metric.tagged("store", "m"))
      const run = yield* Effect.gen(function*() {
        const permit = yield* Limiter.consume("answered")
        const kept = yield* Effect.scoped(Limiter.tryAcquire("other"))
        return { permit, kept }
      }).pipe(
        Effect.provide(
          RateSync.layer({
            stores: { m: { engine: "memory" } },
            limiters: { answered: { store: "m", rate_per_second: 10 }, other: { store: "m", rate_per_second: 10 } }
          }).pipe(Layer.provide(late))
        ),
        Effect.fork
      )
      yield* TestClock.adjust("100 millis")
      const { permit } = yield* Fiber.join(run)
      // The slot at 0 was given up; the next free one, at 100 ms, was used.
      expect(Duration.toMillis(permit.waited)).toBe(100)
      expect((yield* Metric.value(givenUp)).count).toBe(1)
      const other = Metrics.slotsGivenUp.pipe(Metric.tagged("limiter", "other"), Metric.tagged("store", "m"))
      expect((yield* Metric.value(other)).count).toBe(0)
    }))
})

describe("store failure", () => {
  const spec = (failClosed: boolean): Array<LimiterSpec> => [{
    name: "api",
    store: "down",
    rate: { _tag: "TokenBucket", ratePerSecond: 1, burst: 1, intervalMs: 1000 },
    concurrency: undefined,
    timeoutMs: undefined,
    failClosed,
    retry: { maxAttempts: 3, baseDelayMs: 1, maxDelayMs: 10 }
  }]

  /** A store whose server is unreachable: every operation fails as a real engine's would. */
  const unreachable: Store = (() => {
    const down = new StoreUnavailable({ store: "down", engine: "test", message: "connection refused" })
    return {
      name: "down",
      engine: "test",
      timingMarginMs: 0,
      acquireRate: () => Effect.fail(down),
      acquireLease: () => Effect.fail(down),
      release: () => Effect.fail(down),
      renew: () => Effect.fail(down),
      refund: () => Effect.fail(down),
      backoff: () => Effect.fail(down),
      backoffs: { mark: () => 0, until: () => undefined, any: () => false },
      state: () => Effect.fail(down),
      releases: () => Effect.succeed(Effect.never)
    }
  })()

  const capture = () => {
    const lines: Array<string> = []
    const logger = Logger.make(({ logLevel, message }) => {
      lines.push(`${logLevel.label} ${Array.isArray(message) ? message.join(" ") : String(message)}`)
    })
    return { lines, layer: Logger.replace(Logger.defaultLogger, logger) }
  }

  it.scoped("fail_closed = true fails with StoreUnavailable", () =>
    Effect.gen(function*() {
      const limiter = yield* RateLimiter.make({ limiters: spec(true), stores: new Map([["down", unreachable]]) })
      const error = yield* Effect.scoped(limiter.acquire("api")).pipe(Effect.flip)
      expect(error._tag).toBe("StoreUnavailable")
      expect(error.message).toBe("connection refused")
    }))

  it.scoped("a limiter in shadow mode proceeds through an outage even with fail_closed = true, and counts the failures", () =>
    Effect.gen(function*() {
      const limiter = yield* RateLimiter.make({
        limiters: spec(true).map((s) => ({ ...s, name: "shadowed", shadow: true })),
        stores: new Map([["down", unreachable]])
      })
      const errors = Metrics.storeErrors.pipe(Metric.tagged("limiter", "shadowed"), Metric.tagged("store", "down"))
      const before = (yield* Metric.value(errors)).count
      const permit = yield* Effect.scoped(limiter.acquire("shadowed"))
      expect(permit.degraded).toBe(false)
      yield* Effect.repeatN(Effect.yieldNow(), 20)
      expect((yield* Metric.value(errors)).count).toBe(before + 1)
    }))

  it.scoped("by default it admits, warns once per outage, and counts it", () => {
    const { layer, lines } = capture()
    return Effect.gen(function*() {
      const limiter = yield* RateLimiter.make({ limiters: spec(false), stores: new Map([["down", unreachable]]) })
      const before = (yield* Metric.value(Metrics.failOpen.pipe(Metric.tagged("limiter", "api"), Metric.tagged("store", "down")))).count
      for (let i = 0; i < 5; i++) {
        const permit = yield* Effect.scoped(limiter.acquire("api"))
        expect(permit.degraded).toBe(true)
      }
      const after = (yield* Metric.value(Metrics.failOpen.pipe(Metric.tagged("limiter", "api"), Metric.tagged("store", "down")))).count
      expect(after - before).toBe(5)
      expect(lines.filter((line) => line.startsWith("WARN"))).toEqual([
        `WARN rate-sync: store "down" is unavailable: connection refused`
      ])
    }).pipe(Effect.provide(layer))
  })
})

describe("metrics", () => {
  it.effect("acquisitions, timeouts and wait time are recorded per limiter", () =>
    Effect.gen(function*() {
      const tagged = <T, I, O>(metric: Metric.Metric<T, I, O>) =>
        metric.pipe(Metric.tagged("limiter", "metered"), Metric.tagged("store", "m"))
      yield* Effect.scoped(Limiter.acquire("metered"))
      const waiting = yield* Effect.fork(Effect.scoped(Limiter.acquire("metered")))
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(waiting)
      yield* Effect.scoped(Limiter.acquire("metered", { timeout: "10 millis" })).pipe(Effect.flip)
      expect((yield* Metric.value(tagged(Metrics.acquisitions))).count).toBe(2)
      expect((yield* Metric.value(tagged(Metrics.timeouts))).count).toBe(1)
      const waits = yield* Metric.value(tagged(Metrics.waitTime))
      expect(waits.count).toBe(2)
      expect(waits.max).toBe(1000)
    }).pipe(Effect.provide(
      RateSync.layer({ stores: { m: { engine: "memory" } }, limiters: { metered: { store: "m", rate_per_second: 1 } } })
        .pipe(Layer.provide(MemoryStore.layer))
    )))
})

describe("tracing", () => {
  it.effect("with a tracer installed, acquire and tryAcquire run in spans named for them", () =>
    Effect.gen(function*() {
      const builtIn = yield* Effect.tracer
      const names: Array<string> = []
      const recording = Tracer.make({
        span: (name, ...rest) => {
          names.push(name)
          return builtIn.span(name, ...rest)
        },
        context: (f) => f()
      })
      yield* Effect.scoped(Limiter.acquire("traced")).pipe(Effect.withTracer(recording))
      yield* Effect.scoped(Limiter.tryAcquire("traced")).pipe(Effect.withTracer(recording), Effect.ignore)
      expect(names).toEqual(["rate_sync.acquire", "rate_sync.try_acquire"])
    }).pipe(Effect.provide(
      RateSync.layer({ stores: { m: { engine: "memory" } }, limiters: { traced: { store: "m", rate_per_second: 1 } } })
        .pipe(Layer.provide(MemoryStore.layer))
    )))
})

describe("memory engine footprint", () => {
  it.scoped("idle keys are dropped once their state no longer matters", () =>
    Effect.gen(function*() {
      const store = yield* MemoryStore.make()
      const limiter = yield* RateLimiter.make({
        stores: new Map([["m", store]]),
        limiters: [{
          name: "k",
          store: "m",
          rate: { _tag: "TokenBucket", ratePerSecond: 10, burst: 1, intervalMs: 100 },
          concurrency: undefined,
          timeoutMs: undefined,
          failClosed: false,
          retry: { maxAttempts: 3, baseDelayMs: 1, maxDelayMs: 10 }
        }]
      })
      for (let i = 0; i < 10_000; i++) yield* Effect.scoped(limiter.tryAcquire("k", { key: `user-${i}` }))
      expect(store.size()).toBe(10_000)
      // A tenth of a second later every one of those keys is as good as new.
      yield* TestClock.adjust(Duration.millis(100))
      for (let i = 0; i < 5_000; i++) yield* Effect.scoped(limiter.tryAcquire("k", { key: "hot" }).pipe(Effect.ignore))
      expect(store.size()).toBeLessThan(100)
      // A key still inside its interval is kept, and still limited.
      const denied = yield* Effect.scoped(limiter.tryAcquire("k", { key: "hot" })).pipe(Effect.flip)
      expect(denied._tag).toBe("RateLimitExceeded")
    }))
})
