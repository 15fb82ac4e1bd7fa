/**
 * The hot path's own timers and hand-offs (src/internal/timer.ts, detach.ts, slot.ts), where they
 * differ from Effect's sleeps and races:
 *
 * 1. A timer on any clock but Effect's live one, or longer than a JavaScript timer (2^31-1 ms, about
 *    24.8 days; a `timeout` may be up to 1e12 ms), is a sleeping fiber: cancelling it must work from
 *    the uninterruptible region a bounded store call starts it in, or every store call that answered
 *    leaves a fiber and a live timer behind (memory grows, and the process cannot exit).
 * 2. An interruption already pending when the caller reaches its sleep (delivered while it was
 *    uninterruptible, between the store's reservation and the sleep) still gives the slot back.
 * 3. `detached` hands `abandoned` only calls whose caller has gone: a failure the caller received is not
 *    abandoned.
 *
 * Mutations: each of the three fixes undone fails its tests (startTimer's fiber not interruptible;
 * the refund inside `restore`; `abandoned` on any exit but a result).
 */
import { describe, expect, it } from "@effect/vitest"
import type * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as FiberId from "effect/FiberId"
import * as Layer from "effect/Layer"
import * as TestClock from "effect/TestClock"
import { inject } from "vitest"
import { detached } from "../src/internal/detach.js"
import { startTimer } from "../src/internal/timer.js"
import { RateLimiter } from "../src/RateLimiter.js"
import * as RateSync from "../src/RateSync.js"
import type { SettingsInput, StoreConfigInput } from "../src/Settings.js"
import * as Stores from "../src/Stores.js"

const databaseUrl = inject("databaseUrl")
const redisUrl = inject("redisUrl")
let n = 0

const timers = () => process.getActiveResourcesInfo().filter((resource) => resource === "Timeout").length

describe("startTimer's cancel", () => {
  it.effect("cancels a TestClock timer started from an uninterruptible region, as awaitAtMost starts it", () =>
    Effect.gen(function*() {
      let fired = false
      const clock = yield* Effect.clock
      const cancel = yield* Effect.uninterruptible(startTimer(clock, 1_000, () => {
        fired = true
      }))
      cancel()
      yield* TestClock.adjust(Duration.millis(2_000))
      expect(fired).toBe(false)
    }))

  const stores: ReadonlyArray<readonly [string, () => StoreConfigInput, boolean]> = [
    ["postgres", () => ({ engine: "postgres", url: databaseUrl, auto_create: true }), true],
    ["redis", () => ({ engine: "redis", url: redisUrl, key_prefix: `rate-sync-hotpath:${process.pid}:${n++}:` }), redisUrl !== ""]
  ]
  for (const [engine, store, available] of stores) {
    it.live.skipIf(!available)(`${engine}: acquires with a 30-day timeout leave no timer behind once answered`, () => {
      const name = `hotpath_${process.pid}_${n++}`
      const settings: SettingsInput = {
        stores: { s: store() },
        limiters: { [name]: { store: "s", rate_per_second: 1_000, burst: 1_000 } }
      }
      return Effect.gen(function*() {
        const before = timers()
        yield* Effect.scoped(Effect.gen(function*() {
          const layer = yield* Layer.build(RateSync.layer(settings).pipe(Layer.provide(Stores.layer)))
          for (let i = 0; i < 20; i++) {
            yield* Effect.scoped(RateLimiter.acquire(name, { key: `k${i}`, timeout: "30 days" })).pipe(Effect.provide(layer))
          }
        }))
        yield* Effect.sleep(Duration.millis(50))
        // Before the change: none (Effect's own timeout never armed a timer that long). Now: one a call, for weeks.
        expect(timers() - before).toBeLessThan(5)
      })
    }, 30_000)
  }
})

describe("a slot reserved, then the caller interrupted before its sleep", () => {
  const settings: SettingsInput = {
    stores: { s: { engine: "memory" } },
    limiters: { api: { store: "s", rate_per_second: 1, burst: 1 } }
  }

  /** The live clock, which interrupts `target` at its k-th reading (the fiber sees it at its next step). */
  const interruptingClock = (live: Clock.Clock, k: number, target: () => Fiber.RuntimeFiber<unknown, unknown>) => {
    let reads = 0
    const read = () => {
      if (++reads === k) target().unsafeInterruptAsFork(FiberId.none)
      return live.unsafeCurrentTimeMillis()
    }
    return Object.assign(Object.create(live), { unsafeCurrentTimeMillis: read, currentTimeMillis: Effect.sync(read) }) as Clock.Clock
  }

  // Reading 1 comes before the store is asked for a slot to wait for (the first ask, for a slot due
  // now, reserves nothing); readings 2-4 fall between the reservation and the sleep.
  for (let k = 1; k <= 4; k++) {
    it.live(`interrupted at the acquire's clock reading ${k}: the slot is given back`, () =>
      Effect.gen(function*() {
        const live = yield* Effect.clock
        yield* Effect.scoped(RateLimiter.acquire("api"))
        let target: Fiber.RuntimeFiber<unknown, unknown> | undefined
        const fiber = yield* Effect.fork(Effect.scoped(Effect.zipRight(
          Effect.withFiberRuntime<void>((self) => Effect.sync(() => {
            target = self as Fiber.RuntimeFiber<unknown, unknown>
          })),
          RateLimiter.acquire("api").pipe(Effect.withClock(interruptingClock(live, k, () => target!)))
        )))
        const exit = yield* Fiber.await(fiber)
        expect(Exit.isInterrupted(exit)).toBe(true)
        yield* Effect.sleep(Duration.millis(20))
        // The burst's one token is spent: the next slot is a second away, unless the interrupted caller kept one.
        const state = yield* RateLimiter.state("api")
        expect(Duration.toMillis(state.nextSlotAfter)).toBeLessThanOrEqual(1_000)
      }).pipe(Effect.provide(RateSync.layer(settings).pipe(Layer.provide(Stores.layer)))))
  }
})

describe("detached's abandoned", () => {
  it.live("is not handed a call that failed while its caller was waiting for it", () =>
    Effect.gen(function*() {
      const abandoned: Array<Exit.Exit<string, string>> = []
      const result = yield* Effect.either(detached(Effect.fail("boom"), 1_000, (exit) =>
        Effect.sync(() => {
          abandoned.push(exit)
        })))
      expect(result).toStrictEqual(Effect.runSync(Effect.either(Effect.fail("boom"))))
      yield* Effect.sleep(Duration.millis(20))
      expect(abandoned).toHaveLength(0)
    }))
})
