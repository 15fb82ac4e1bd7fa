/**
 * The behaviour every engine must have (README, Semantics and Guarantees), run against any store. Memory runs it on
 * `TestClock`; the server engines run the same tests against real servers in real time, where
 * the bounds are checked on the slot times the store itself reported, so no result depends on
 * client timing.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Scope from "effect/Scope"
import * as TestClock from "effect/TestClock"
import * as Metrics from "../../src/Metrics.js"
import * as RateLimiter_ from "../../src/RateLimiter.js"
import { decodeSettings, type LimiterConfigInput, type StoreConfigInput, toLimiterSpec } from "../../src/Settings.js"
import { type Store, StoreFactory } from "../../src/Store.js"
import { type Admission, rateExcess, units, windowPeak } from "./bounds.js"

const RateLimiter = RateLimiter_.RateLimiter
const RateLimiterTag = RateLimiter_.RateLimiter

class StoreUnderTest extends Context.Tag("test/StoreUnderTest")<StoreUnderTest, Store>() {}

export interface Harness {
  readonly name: string
  readonly factory: Layer.Layer<StoreFactory>
  /** A function gives each test its own store configuration (a key prefix of its own, say). */
  readonly store: StoreConfigInput | (() => StoreConfigInput)
  /** "test": time is `TestClock` and only moves when the test moves it. "live": real time. */
  readonly clock: "test" | "live"
  /** Set when the server is not to be had on this machine (reported, see test/support/globalSetup.ts). */
  readonly unavailable?: boolean
}

let counter = 0
const unique = (prefix: string) => `${prefix}_${process.pid}_${Date.now().toString(36)}_${counter++}`

export const complianceSuite = (harness: Harness) => {
  const live = harness.clock === "live"
  const test = live ? it.live : it.effect

  /**
   * The limiters under test on one store built by the harness, through the same decoding as a
   * configuration file; that store is also provided as `StoreUnderTest`, for the operations the
   * public API cannot express (a double release, a holder that died).
   */
  const limiters = (configs: Record<string, Omit<LimiterConfigInput, "store">>, storeOverrides: { timing_margin_ms?: number | "default" } = {}) =>
    Layer.scopedContext(Effect.gen(function*() {
      const harnessStore = typeof harness.store === "function" ? harness.store() : harness.store
      // "default": the engine's own default margin, whatever the harness sets.
      const { timing_margin_ms: harnessMargin, ...rest } = harnessStore
      const margin = storeOverrides.timing_margin_ms ?? harnessMargin
      const store = margin === "default" || margin === undefined ? rest : { ...rest, timing_margin_ms: margin }
      const settings = yield* decodeSettings({
        stores: { s: store },
        limiters: Object.fromEntries(Object.entries(configs).map(([name, config]) => [name, { ...config, store: "s" }]))
      })
      const built = yield* (yield* StoreFactory).make("s", settings.stores["s"]!)
      const limiter = yield* RateLimiter_.make({
        stores: new Map([["s", built]]),
        limiters: Object.entries(settings.limiters).map(([name, config]) => toLimiterSpec(name, config))
      })
      return Context.make(RateLimiterTag, limiter).pipe(Context.add(StoreUnderTest, built))
    })).pipe(Layer.provide(harness.factory))

  /** Lets time pass: the test clock is moved, or real time elapses. */
  const elapse = (ms: number) => live ? Effect.sleep(Duration.millis(ms)) : TestClock.adjust(Duration.millis(ms))
  /** Lets forked fibers reach their first wait. */
  const settle = live ? Effect.sleep(Duration.millis(100)) : Effect.repeatN(Effect.yieldNow(), 50)

  /** The store under test itself, for the operations the public API cannot express (double release). */
  const withRawStore = <A, E, R>(use: (store: Store) => Effect.Effect<A, E, R>) => Effect.flatMap(StoreUnderTest, use)

  const drive = (
    name: string,
    options: { fibers: number; durationMs: number; cost?: (worker: number, n: number) => number }
  ) =>
    Effect.gen(function*() {
      const admissions: Array<Admission> = []
      // A live store opens its first connection on first use: measure a ready store (this reads, taking nothing).
      if (live) yield* RateLimiter.state(name, { key: "warm-up" })
      const worker = (w: number) =>
        Effect.gen(function*() {
          for (let n = 0;; n++) {
            const cost = options.cost?.(w, n) ?? 1
            const permit = yield* Effect.scoped(RateLimiter.acquire(name, { cost }))
            admissions.push({ slot: permit.slotMs!, cost })
          }
        })
      const fibers = yield* Effect.forEach(Array.from({ length: options.fibers }, (_, w) => w), (w) => Effect.fork(worker(w)))
      yield* elapse(options.durationMs)
      yield* Fiber.interruptAll(fibers)
      return admissions
    })

  describe.skipIf(harness.unavailable === true)(`compliance: ${harness.name}`, () => {
    describe("token bucket: admitted <= burst + T * rate for every interval T", () => {
      const rates = [0.1, 1, 10, 100, 1_000, 10_000, 100_000]
      const bursts = [1, 10, 100]
      for (const rate of rates) {
        for (const burst of bursts) {
          test(`rate ${rate}/s, burst ${burst}`, () => {
            const name = unique("tb")
            // 200 slots past the burst on TestClock; in real time, a short run that still spans many slots.
            const durationMs = live ? Math.min(1_000, Math.max(500, 200_000 / rate)) : 200_000 / rate
            return Effect.gen(function*() {
              const admissions = yield* drive(name, { fibers: 8, durationMs })
              expect(rateExcess(admissions, rate, burst)).toBeLessThanOrEqual(1e-6)
              const expected = burst + Math.floor((rate * durationMs) / 1000)
              // Liveness: the limiter must also admit what the rate allows (a store's own speed caps it live).
              if (!live) expect(units(admissions)).toBeGreaterThanOrEqual(expected - 1)
              else expect(units(admissions)).toBeGreaterThanOrEqual(Math.min(burst, expected))
            }).pipe(Effect.provide(limiters({ [name]: { rate_per_second: rate, burst } })))
          }, 30_000)
        }
      }

      test("with a timing margin, slots reserved ahead for a process's next callers keep the bound", () => {
        const name = unique("ahead")
        const rate = 2_000
        return Effect.gen(function*() {
          const admissions = yield* drive(name, { fibers: 16, durationMs: live ? 800 : 300 })
          expect(rateExcess(admissions, rate, 1)).toBeLessThanOrEqual(1e-6)
          // Each slot was handed out once.
          expect(new Set(admissions.map((a) => a.slot)).size).toBe(admissions.length)
          expect(units(admissions)).toBeGreaterThanOrEqual(live ? 100 : 500)
        }).pipe(Effect.provide(limiters({ [name]: { rate_per_second: rate } }, { timing_margin_ms: 20 })))
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
        }).pipe(Effect.provide(limiters({ [name]: { rate_per_second: 1, burst: 10 } }, { timing_margin_ms: 20 })))
      })

      // `burst = b` is b at once after idle time at the store's default margin: a per-user limit of 3
      // answers three simultaneous requests, and refuses the fourth.
      for (const burst of [1, 3, 10]) {
        test(`burst ${burst} at the defaults: ${burst} at once after idle time, together or one by one, never more`, () => {
          const together = unique("bt")
          const apart = unique("ba")
          return Effect.gen(function*() {
            const all = yield* Effect.all(
              Array.from({ length: burst + 1 }, () => Effect.either(Effect.scoped(RateLimiter.tryAcquire(together)))),
              { concurrency: "unbounded" }
            )
            expect(all.filter((e) => e._tag === "Right").length).toBe(burst)
            for (let i = 0; i < burst; i++) yield* Effect.scoped(RateLimiter.acquire(apart, { timeout: 0 }))
            const refused = yield* Effect.scoped(RateLimiter.tryAcquire(apart)).pipe(Effect.flip)
            expect(refused._tag).toBe("RateLimitExceeded")
          }).pipe(Effect.provide(limiters({ [together]: { rate_per_second: 0.5, burst }, [apart]: { rate_per_second: 0.5, burst } }, { timing_margin_ms: "default" })))
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
        }).pipe(Effect.provide(limiters({ [name]: { rate_per_second: 0.5, burst: 10 } }, { timing_margin_ms: "default" })))
      })

      test("costs above 1 count as that many units", () => {
        const name = unique("cost")
        const rate = live ? 200 : 50
        return Effect.gen(function*() {
          const admissions = yield* drive(name, { fibers: 6, durationMs: live ? 800 : 10_000, cost: (w, n) => 1 + ((w * 7 + n * 3) % 10) })
          expect(admissions.some((a) => a.cost > 1)).toBe(true)
          expect(rateExcess(admissions, rate, 10)).toBeLessThanOrEqual(1e-6)
          if (!live) expect(units(admissions)).toBeGreaterThanOrEqual(10 + 500 - 10)
        }).pipe(Effect.provide(limiters({ [name]: { rate_per_second: rate, burst: 10 } })))
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
        }).pipe(Effect.provide(limiters({ [name]: { rate_per_second: 1, burst: 5 } })))
      })
    })

    describe("sliding window: at most limit admissions in any window", () => {
      for (const [limit, windowSeconds] of [[1, 0.2], [5, 0.5], [50, 1], [1_000, 1]] as const) {
        test(`limit ${limit} per ${windowSeconds}s`, () => {
          const name = unique("sw")
          const windowMs = windowSeconds * 1000
          const durationMs = live ? 1_100 : windowMs * 10.5
          return Effect.gen(function*() {
            const admissions = yield* drive(name, { fibers: 8, durationMs })
            expect(windowPeak(admissions, windowMs)).toBeLessThanOrEqual(limit)
            const windows = Math.floor(durationMs / windowMs) + 1
            if (!live) expect(units(admissions)).toBe(limit * windows)
            else expect(units(admissions)).toBeGreaterThanOrEqual(Math.min(limit, 20))
          }).pipe(
            Effect.provide(limiters({ [name]: { algorithm: "sliding_window", limit, window_seconds: windowSeconds } }))
          )
        }, 30_000)
      }

      test("costs count as units in the window", () => {
        const name = unique("swc")
        return Effect.gen(function*() {
          const admissions = yield* drive(name, { fibers: 4, durationMs: live ? 1_100 : 5_500, cost: (w, n) => 1 + ((w + n) % 4) })
          expect(windowPeak(admissions, 500)).toBeLessThanOrEqual(10)
          expect(units(admissions)).toBeGreaterThanOrEqual(live ? 10 : 90)
        }).pipe(Effect.provide(limiters({ [name]: { algorithm: "sliding_window", limit: 10, window_seconds: 0.5 } })))
      }, 30_000)
    })

    describe("concurrency leases", () => {
      test("at most max_concurrent permits are held at once", () => {
        const name = unique("cc")
        return Effect.gen(function*() {
          let held = 0
          let peak = 0
          let done = 0
          const worker = Effect.scoped(Effect.gen(function*() {
            yield* RateLimiter.acquire(name)
            held++
            peak = Math.max(peak, held)
            yield* Effect.sleep(Duration.millis(40))
            held--
            done++
          })).pipe(Effect.forever)
          const fibers = yield* Effect.forEach(Array.from({ length: 10 }), () => Effect.fork(worker))
          // 3 slots, 40 ms each: on TestClock, every slot is used back to back. Live, the run goes on
          // until all 3 were held at once and 15 permits passed (about 200 ms with wake-ups on release,
          // far longer with slow polling), however loaded the machine; only the bound is exact.
          const target = live ? 15 : 3 * (2_000 / 40) - 3
          let ran = 0
          do {
            yield* elapse(live ? 100 : 2_000)
            ran += live ? 100 : 2_000
            expect(peak).toBeLessThanOrEqual(3)
          } while (live && (peak < 3 || done < target) && ran < 15_000)
          const state = yield* RateLimiter.state(name)
          expect(state.leasesHeld).toBeLessThanOrEqual(3)
          yield* Fiber.interruptAll(fibers)
          expect(peak).toBe(3)
          expect(done).toBeGreaterThanOrEqual(target)
        }).pipe(Effect.provide(limiters({ [name]: { max_concurrent: 3, lease_ttl_seconds: 5 } })))
      }, 30_000)

      test("releasing twice, or releasing after expiry, never raises capacity", () => {
        const name = unique("dbl")
        return withRawStore((store) => Effect.gen(function*() {
          const rl = yield* RateLimiter
          const scope = yield* Scope.make()
          const first = yield* Scope.extend(rl.acquire(name), scope)
          yield* Scope.close(scope, Exit.void)
          // The public release ran; release the same lease again, twice, through the store.
          const spec = { name, store: "s", rate: undefined, concurrency: { max: 2, leaseTtlMs: 1_000 }, timeoutMs: undefined, failClosed: true, retry: { maxAttempts: 5, baseDelayMs: 1, maxDelayMs: 10 } }
          yield* store.release(spec, "", first.leaseId!)
          yield* store.release(spec, "", first.leaseId!)
          yield* Effect.scoped(Effect.gen(function*() {
            yield* rl.acquire(name)
            yield* rl.acquire(name)
            const third = yield* rl.tryAcquire(name).pipe(Effect.flip)
            expect(third._tag).toBe("RateLimitExceeded")
            // A lease that expired and whose slot went to someone else: releasing it frees nothing.
            yield* store.release(spec, "", first.leaseId!)
            expect((yield* rl.state(name)).leasesHeld).toBe(2)
            expect((yield* rl.tryAcquire(name).pipe(Effect.flip))._tag).toBe("RateLimitExceeded")
          }))
        })).pipe(Effect.provide(limiters({ [name]: { max_concurrent: 2, lease_ttl_seconds: 1 } })))
      }, 30_000)

      test("a lease whose holder stops renewing expires after lease_ttl_seconds", () => {
        const name = unique("exp")
        const spec = { name, store: "s", rate: undefined, concurrency: { max: 1, leaseTtlMs: 600 }, timeoutMs: undefined, failClosed: true, retry: { maxAttempts: 5, baseDelayMs: 1, maxDelayMs: 10 } }
        return withRawStore((store) => Effect.gen(function*() {
          // A holder that took the lease and died: nobody renews or releases it.
          const granted = yield* store.acquire({ limiter: spec, key: "", cost: 1, leaseId: "dead-holder", maxWaitMs: 0, queue: false })
          expect(granted._tag).toBe("Admitted")
          expect((yield* Effect.scoped(RateLimiter.tryAcquire(name)).pipe(Effect.flip))._tag).toBe("RateLimitExceeded")
          yield* elapse(700)
          const permit = yield* Effect.scoped(RateLimiter.tryAcquire(name))
          expect(permit.leaseId).toBeDefined()
        })).pipe(Effect.provide(limiters({ [name]: { max_concurrent: 1, lease_ttl_seconds: 0.6 } })))
      }, 30_000)

      test("a holder whose scope stays open keeps its lease past the ttl (renewal)", () => {
        const name = unique("renew")
        return Effect.gen(function*() {
          const holder = yield* Effect.fork(Effect.scoped(Effect.zipRight(RateLimiter.acquire(name), Effect.never)))
          yield* settle
          yield* elapse(live ? 1_600 : 3_000)
          const denied = yield* Effect.scoped(RateLimiter.tryAcquire(name)).pipe(Effect.flip)
          expect(denied._tag).toBe("RateLimitExceeded")
          yield* Fiber.interrupt(holder)
          yield* Effect.scoped(RateLimiter.tryAcquire(name))
        }).pipe(Effect.provide(limiters({ [name]: { max_concurrent: 1, lease_ttl_seconds: 0.6 } })))
      }, 30_000)

      test("waiters for a lease are served in the order they asked", () => {
        const name = unique("fifo")
        return Effect.gen(function*() {
          const order: Array<number> = []
          const scope = yield* Scope.make()
          yield* Scope.extend(RateLimiter.acquire(name), scope)
          const waiters: Array<Fiber.RuntimeFiber<void, unknown>> = []
          for (let i = 0; i < 4; i++) {
            waiters.push(yield* Effect.fork(Effect.scoped(Effect.gen(function*() {
              yield* RateLimiter.acquire(name)
              order.push(i)
              yield* Effect.sleep(Duration.millis(10))
            }))))
            yield* settle
          }
          yield* Scope.close(scope, Exit.void)
          yield* elapse(live ? 1_000 : 200)
          yield* Fiber.joinAll(waiters)
          expect(order).toEqual([0, 1, 2, 3])
        }).pipe(Effect.provide(limiters({ [name]: { max_concurrent: 1, lease_ttl_seconds: 5 } })))
      }, 30_000)
    })

    describe("timeouts", () => {
      test("a rate slot beyond the timeout fails at once and consumes nothing", () => {
        const name = unique("to")
        return Effect.gen(function*() {
          const first = yield* Effect.scoped(RateLimiter.acquire(name))
          const started = Date.now()
          const error = yield* Effect.scoped(RateLimiter.acquire(name, { timeout: "1500 millis" })).pipe(Effect.flip)
          expect(error._tag).toBe("AcquireTimeout")
          // "At once": it did not sit out its 1.5 s timeout (on TestClock no time can pass at all).
          expect(Date.now() - started).toBeLessThan(1_000)
          const next = yield* Effect.fork(Effect.scoped(RateLimiter.acquire(name)))
          yield* elapse(2_100)
          const second = yield* Fiber.join(next)
          // Nothing was consumed: the next slot is one interval after the first, not two.
          expect(second.slotMs! - first.slotMs!).toBeCloseTo(2_000, 0)
        }).pipe(Effect.provide(limiters({ [name]: { rate_per_second: 0.5 } })))
      }, 30_000)

      test("a lease that does not free up in time fails with AcquireTimeout and leaves no place in line", () => {
        const name = unique("tol")
        return Effect.gen(function*() {
          const scope = yield* Scope.make()
          yield* Scope.extend(RateLimiter.acquire(name), scope)
          const waiting = yield* Effect.fork(Effect.scoped(RateLimiter.acquire(name, { timeout: "300 millis" })))
          yield* elapse(live ? 600 : 400)
          const error = yield* Fiber.join(waiting).pipe(Effect.flip)
          expect(error._tag).toBe("AcquireTimeout")
          yield* Scope.close(scope, Exit.void)
          yield* Effect.scoped(RateLimiter.tryAcquire(name))
        }).pipe(Effect.provide(limiters({ [name]: { max_concurrent: 1, lease_ttl_seconds: 5 } })))
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
          yield* settle
          const next = yield* Effect.fork(Effect.scoped(RateLimiter.acquire(name)))
          yield* elapse(live ? 1_300 : 1_100)
          const permit = yield* Fiber.join(next)
          expect(permit.slotMs! - first.slotMs!).toBeCloseTo(1_000, 0)
        }).pipe(Effect.provide(limiters({ [name]: { rate_per_second: 1 } })))
      }, 30_000)

      test("a caller granted its lease and interrupted while it waits for its rate slot gives the lease back at once", () => {
        const name = unique("intlr")
        return Effect.gen(function*() {
          // The rate slot is taken, the lease free: the next caller gets the lease, then sleeps ~1 s for its slot.
          yield* Effect.scoped(RateLimiter.acquire(name))
          const outer = yield* Scope.make()
          const waiter = yield* Effect.fork(Scope.extend(RateLimiter.acquire(name), outer))
          yield* settle
          expect((yield* RateLimiter.state(name)).leasesHeld).toBe(1)
          yield* Fiber.interrupt(waiter)
          // The caller's own scope is still open: the lease must not wait for it.
          yield* elapse(live ? 200 : 1)
          expect((yield* RateLimiter.state(name)).leasesHeld).toBe(0)
          yield* Scope.close(outer, Exit.void)
        }).pipe(Effect.provide(limiters({ [name]: { max_concurrent: 1, lease_ttl_seconds: 5, rate_per_second: 1 } })))
      }, 30_000)

      test("an interrupted lease waiter leaves the line", () => {
        const name = unique("intl")
        return Effect.gen(function*() {
          const scope = yield* Scope.make()
          yield* Scope.extend(RateLimiter.acquire(name), scope)
          const first = yield* Effect.fork(Effect.scoped(RateLimiter.acquire(name)))
          yield* settle
          const second = yield* Effect.fork(Effect.scoped(RateLimiter.acquire(name)))
          yield* settle
          yield* Fiber.interrupt(first)
          yield* Scope.close(scope, Exit.void)
          // Prompt: on a release, well before the abandoned place could expire (5 s).
          yield* elapse(live ? 500 : 50)
          const permit = yield* Fiber.join(second)
          expect(permit.leaseId).toBeDefined()
        }).pipe(Effect.provide(limiters({ [name]: { max_concurrent: 1, lease_ttl_seconds: 5 } })))
      }, 30_000)
    })

    describe("per-key state", () => {
      const keys = ["", "a", "b", "it's \"quoted\"", "ключ-🔑", "'; DROP TABLE rate_limiter_state; --", "{tag}:KEYS[1]", "x".repeat(10_000), "x".repeat(9_999) + "y",
        // Lone surrogates: UTF-8 would turn each into U+FFFD, making these one key.
        "a\uD800", "a\uDC00", "a\uFFFD", "\uDC00\uD800", "\uD800\uDC00"]
      test("every key has its own limit, whatever characters it holds", () => {
        const name = unique("keys")
        return Effect.gen(function*() {
          for (const key of keys) yield* Effect.scoped(RateLimiter.tryAcquire(name, { key }))
          for (const key of keys) {
            const denied = yield* Effect.scoped(RateLimiter.tryAcquire(name, { key })).pipe(Effect.flip)
            expect(denied._tag).toBe("RateLimitExceeded")
          }
        }).pipe(Effect.provide(limiters({ [name]: { rate_per_second: 0.1 } })))
      }, 30_000)

      test("a limiter name near the longest with a long plain key works on every algorithm, each key its own", () => {
        const name = `${"n".repeat(96)}_${unique("l")}`.slice(0, 128)
        const window = `${"w".repeat(96)}_${unique("w")}`.slice(0, 128)
        const leased = `${"c".repeat(96)}_${unique("c")}`.slice(0, 128)
        const long = ["k".repeat(150), "k".repeat(149) + "j"]
        return Effect.gen(function*() {
          for (const limiter of [name, window, leased]) {
            yield* Effect.scoped(Effect.gen(function*() {
              for (const key of long) {
                const permit = yield* RateLimiter.tryAcquire(limiter, { key })
                expect(permit.degraded).toBe(false)
              }
              for (const key of long) {
                expect((yield* RateLimiter.tryAcquire(limiter, { key }).pipe(Effect.flip))._tag).toBe("RateLimitExceeded")
              }
            }))
          }
        }).pipe(Effect.provide(limiters({
          [name]: { rate_per_second: 0.1 },
          [window]: { algorithm: "sliding_window", limit: 1, window_seconds: 10 },
          [leased]: { max_concurrent: 1 }
        })))
      }, 30_000)

      test("limiters sharing a store do not share state", () => {
        const a = unique("la")
        const b = unique("lb")
        return Effect.gen(function*() {
          yield* Effect.scoped(RateLimiter.tryAcquire(a, { key: "k" }))
          yield* Effect.scoped(RateLimiter.tryAcquire(b, { key: "k" }))
        }).pipe(Effect.provide(limiters({ [a]: { rate_per_second: 0.1 }, [b]: { rate_per_second: 0.1 } })))
      })
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
          [rate]: { rate_per_second: 1 },
          [leased]: { max_concurrent: 1, rate_per_second: 1 },
          [window]: { algorithm: "sliding_window", limit: 1, window_seconds: 1 }
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
        }).pipe(Effect.provide(limiters({ [name]: { rate_per_second: 1, burst: 2 } })))
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
        }).pipe(Effect.provide(limiters({ [name]: { rate_per_second: 0.1, burst: 3 } })))
      })

      test("with both bounds, a refused rate slot takes no lease", () => {
        const name = unique("both")
        return Effect.gen(function*() {
          yield* Effect.scoped(RateLimiter.tryAcquire(name))
          yield* Effect.scoped(RateLimiter.tryAcquire(name)).pipe(Effect.flip)
          const state = yield* RateLimiter.state(name)
          expect(state.leasesHeld).toBe(0)
        }).pipe(Effect.provide(limiters({ [name]: { rate_per_second: 0.1, max_concurrent: 5 } })))
      })
    })

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
          [tb]: { rate_per_second: 100, burst: 5 },
          [sw]: { algorithm: "sliding_window", limit: 5, window_seconds: 1 }
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
          }).pipe(Effect.provide(limiters({ [name]: { rate_per_second: rate } }, { timing_margin_ms: "default" })))
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
        }).pipe(Effect.provide(limiters({ [name]: { rate_per_second: 5 } })))
      }, 30_000)
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
        }).pipe(Effect.provide(limiters({ [name]: { rate_per_second: 10 } })))
      }, 30_000)
    })

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
        }).pipe(Effect.provide(limiters({ [name]: { rate_per_second: 1, burst: 4 } })))
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
        }).pipe(Effect.provide(limiters({ [name]: { rate_per_second: 1, burst: 4, max_concurrent: 2 } })))
      })
    })

    describe("shadow mode: every call proceeds, what enforcing would have done is counted", () => {
      const shadowMetrics = (name: string) => ({
        rate: Metrics.shadowRefusals.pipe(Metric.tagged("limiter", name), Metric.tagged("store", "s"), Metric.tagged("reason", "rate")),
        concurrency: Metrics.shadowRefusals.pipe(Metric.tagged("limiter", name), Metric.tagged("store", "s"), Metric.tagged("reason", "concurrency")),
        wait: Metrics.shadowWait.pipe(Metric.tagged("limiter", name), Metric.tagged("store", "s"))
      })

      test("rate: never refused nor kept waiting; what would have waited or been refused takes nothing, so enforcing inherits no debt", () => {
        const name = unique("sh")
        return Effect.gen(function*() {
          const m = shadowMetrics(name)
          // burst 2 at 1/s: enforcing admits 2 of 5 at once and refuses 3.
          for (let i = 0; i < 5; i++) {
            const permit = yield* Effect.scoped(RateLimiter.tryAcquire(name))
            expect(Duration.toMillis(permit.waited)).toBe(0)
          }
          yield* settle
          expect((yield* Metric.value(m.rate)).count).toBe(3)
          expect((yield* RateLimiter.state(name)).remaining).toBe(0)
          // Enforcing would make these wait for the next unit, about a second away: they proceed at once.
          const started = yield* Clock.currentTimeMillis
          for (let i = 0; i < 3; i++) yield* RateLimiter.consume(name)
          expect((yield* Clock.currentTimeMillis) - started).toBeLessThan(live ? 500 : 1)
          yield* settle
          const waits = yield* Metric.value(m.wait)
          // 2 admitted at once (wait 0) and 3 that would have waited for the next unit.
          expect(waits.count).toBe(5)
          expect(waits.max).toBeGreaterThan(500)
          expect(waits.max).toBeLessThanOrEqual(1_000)
          expect((yield* Metric.value(m.rate)).count).toBe(3)
          // A wait bound enforcing would miss is a would-be refusal.
          yield* RateLimiter.consume(name, { timeout: "100 millis" })
          yield* settle
          expect((yield* Metric.value(m.rate)).count).toBe(4)
          expect((yield* Metric.value(m.wait)).count).toBe(5)
          // None of them reserved anything: the next unit is still the one a second after the burst.
          expect(Duration.toMillis((yield* RateLimiter.state(name)).nextSlotAfter)).toBeLessThanOrEqual(1_000)
        }).pipe(Effect.provide(limiters({ [name]: { rate_per_second: 1, burst: 2, mode: "shadow" } })))
      })

      test("leases: held until the caller's scope closes; a caller that would wait for one proceeds and is counted", () => {
        const name = unique("shl")
        return Effect.gen(function*() {
          const m = shadowMetrics(name)
          yield* Effect.scoped(Effect.gen(function*() {
            yield* RateLimiter.acquire(name)
            yield* settle
            // Enforcing would keep this one waiting for the lease held above.
            const second = yield* RateLimiter.acquire(name, { timeout: "10 millis" })
            expect(second.leaseId).toBeUndefined()
            yield* settle
            expect((yield* RateLimiter.state(name)).leasesHeld).toBe(1)
            expect((yield* Metric.value(m.concurrency)).count).toBe(1)
          }))
          yield* settle
          expect((yield* RateLimiter.state(name)).leasesHeld).toBe(0)
          // A consume of a limiter with leases needs a scope in shadow as when enforced: the same errors.
          expect((yield* RateLimiter.consume(name).pipe(Effect.flip))._tag).toBe("LeaseNeedsScope")
        }).pipe(Effect.provide(limiters({ [name]: { max_concurrent: 1, mode: "shadow" } })))
      })
    })
  })
}
