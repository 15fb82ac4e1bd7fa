/**
 * What every section of the compliance suite shares: the store under test, limiters on it, time
 * (TestClock or real), and a load driver recording the slots the store reported.
 */
import { expect, it } from "@effect/vitest"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as TestClock from "effect/TestClock"
import * as RateLimiter_ from "../../src/RateLimiter.js"
import { decodeSettings, type StoreConfigInput, toLimiterSpec } from "../../src/Settings.js"
import { type Store, StoreFactory } from "../../src/Store.js"
import type { LimiterTable } from "../support/fixtures.js"
import { type Admission, units } from "./bounds.js"

export const RateLimiter = RateLimiter_.RateLimiter

export class StoreUnderTest extends Context.Tag("test/StoreUnderTest")<StoreUnderTest, Store>() {}

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
/** A limiter name no other test (nor an earlier run against the same server) uses. */
export const unique = (prefix: string) => `${prefix}_${process.pid}_${Date.now().toString(36)}_${counter++}`

/**
 * Live, the most units a liveness check asks of one key: what PostgreSQL (about 2,000 admissions a
 * second on one key) and Redis (about 20,000) reach within a few seconds even on a loaded two-core
 * machine, where one key's admissions were seen to drop below 100 a second.
 */
export const LIVE_UNITS = 150
/** Live, how much longer a run may go on when a loaded machine kept the store from its target in time. */
const LIVE_GRACE_MS = 8_000

/**
 * Live, what a limiter must have admitted `elapsedMs` into a run: all of its free units (the burst,
 * or a window's limit) and half of what its rate allowed since, up to `LIVE_UNITS`. `allowed` is
 * what the limit allows by then, free units included.
 */
export const liveTarget = (free: number, allowed: (elapsedMs: number) => number) => (elapsedMs: number): number =>
  Math.min(free + Math.floor((allowed(elapsedMs) - free) / 2), LIVE_UNITS)

export const compliance = (harness: Harness) => {
  const live = harness.clock === "live"
  const test = live ? it.live : it.effect

  /**
   * The limiters under test on one store built by the harness, through the same decoding as a
   * configuration file; that store is also provided as `StoreUnderTest`, for the operations the
   * public API cannot express (a double release, a holder that died).
   */
  const limiters = (configs: Record<string, LimiterTable>, storeOverrides: { timing_margin_ms?: number | "default" } = {}) =>
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
      return Context.make(RateLimiter, limiter).pipe(Context.add(StoreUnderTest, built))
    })).pipe(Layer.provide(harness.factory))

  /** Lets time pass: the test clock is moved, or real time elapses. */
  const elapse = (ms: number) => live ? Effect.sleep(Duration.millis(ms)) : TestClock.adjust(Duration.millis(ms))
  /** Lets forked fibers reach their first wait. */
  const settle = live ? Effect.sleep(Duration.millis(100)) : Effect.repeatN(Effect.yieldNow(), 50)

  /**
   * Lets what a limiter does in the background (shadow decisions, releases) finish: live, until
   * `done` holds, for at most 5 s on a loaded machine; on TestClock, until forked fibers have run.
   */
  const eventually = (done: Effect.Effect<boolean, unknown, RateLimiter_.RateLimiter>) =>
    Effect.gen(function*() {
      if (!live) return yield* settle
      for (let waited = 0; waited < 5_000 && !(yield* done); waited += 50) yield* Effect.sleep(Duration.millis(50))
    })

  /** The store under test itself, for the operations the public API cannot express (double release). */
  const withRawStore = <A, E, R>(use: (store: Store) => Effect.Effect<A, E, R>) => Effect.flatMap(StoreUnderTest, use)

  /**
   * Runs `effect` and checks that it waited for nothing: on TestClock it is done while the clock
   * stands still (a wait could not end); live, within `liveBoundMs` of real time.
   */
  const promptly = <A, E, R>(effect: Effect.Effect<A, E, R>, liveBoundMs: number) =>
    Effect.gen(function*() {
      if (live) {
        const started = Date.now()
        const exit = yield* Effect.exit(effect)
        expect(Date.now() - started).toBeLessThan(liveBoundMs)
        return yield* exit
      }
      // A daemon, so that a call stuck waiting (uninterruptibly, even) does not hold up the failing test.
      const fiber = yield* Effect.forkDaemon(effect)
      yield* settle
      const done = Option.isSome(yield* Fiber.poll(fiber))
      if (!done) yield* Fiber.interruptFork(fiber)
      expect(done).toBe(true)
      return yield* Fiber.join(fiber)
    })

  /** Whether `fiber` is done within `ms`, looked at every 50 ms (so a live run ends as soon as it is). */
  const doneWithin = <A, E>(fiber: Fiber.Fiber<A, E>, ms: number) =>
    Effect.gen(function*() {
      for (let waited = 0; waited < ms; waited += 50) {
        yield* elapse(Math.min(50, ms - waited))
        if (Option.isSome(yield* Fiber.poll(fiber))) return true
      }
      return false
    })

  /**
   * Callers taking permits of limiter `name` back to back for `durationMs`, with the slots the store
   * reported. Live, with a `target` (units by elapsed time, see `liveTarget`), a run that has not
   * reached it goes on while it catches up, for at most `LIVE_GRACE_MS` more.
   */
  const drive = (
    name: string,
    options: {
      fibers: number
      durationMs: number
      cost?: (worker: number, n: number) => number
      target?: (elapsedMs: number) => number
    }
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
      const started = yield* Clock.currentTimeMillis
      const fibers = yield* Effect.forEach(Array.from({ length: options.fibers }, (_, w) => w), (w) => Effect.fork(worker(w)))
      yield* elapse(options.durationMs)
      let elapsedMs = (yield* Clock.currentTimeMillis) - started
      const target = options.target
      while (live && target !== undefined && units(admissions) < target(elapsedMs) && elapsedMs < options.durationMs + LIVE_GRACE_MS) {
        yield* elapse(50)
        elapsedMs = (yield* Clock.currentTimeMillis) - started
      }
      yield* Fiber.interruptAll(fibers)
      return { admissions, elapsedMs }
    })

  return { harness, live, test, limiters, elapse, settle, eventually, withRawStore, promptly, doneWithin, drive }
}

/** What every section of the suite is given. */
export type Compliance = ReturnType<typeof compliance>
