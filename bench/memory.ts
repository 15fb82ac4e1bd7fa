/**
 * Memory per 100,000 idle keys, one library per process so the heaps do not mix:
 * `node --expose-gc --import tsx bench/memory.ts rate-sync|rate-limiter-flexible|effect-experimental`
 * prints the bytes of heap the keys hold after a full GC.
 */
import * as ExperimentalLimiter from "@effect/experimental/RateLimiter"
import { Duration, Effect, Layer } from "effect"
import { RateLimiterMemory } from "rate-limiter-flexible"
import { RateLimiter, RateSync, Stores } from "./library.js"

export const KEYS = 100_000

const heap = () => {
  const gc: unknown = Reflect.get(globalThis, "gc")
  if (typeof gc !== "function") throw new Error("run with --expose-gc")
  for (let i = 0; i < 3; i++) gc()
  return process.memoryUsage().heapUsed
}

const measure = async (which: string): Promise<number> => {
  switch (which) {
    case "rate-sync":
      // One slot per hour: every key keeps its state for the whole measurement.
      return Effect.runPromise(Effect.gen(function*() {
        yield* Effect.scoped(RateLimiter.acquire("idle", { key: "warm" }))
        const before = heap()
        for (let i = 0; i < KEYS; i++) yield* Effect.scoped(RateLimiter.acquire("idle", { key: `user-${i}` }))
        return heap() - before
      }).pipe(Effect.provide(
        RateSync.layer({ stores: { s: { engine: "memory" } }, limiters: { idle: { store: "s", rate_per_second: 1 / 3600 } } })
          .pipe(Layer.provide(Stores.layer))
      )))
    case "rate-limiter-flexible": {
      const limiter = new RateLimiterMemory({ points: 1, duration: 3600 })
      await limiter.consume("warm")
      const before = heap()
      for (let i = 0; i < KEYS; i++) await limiter.consume(`user-${i}`)
      return heap() - before
    }
    case "effect-experimental":
      return Effect.runPromise(Effect.gen(function*() {
        const limiter = yield* ExperimentalLimiter.RateLimiter
        const consume = (key: string) => limiter.consume({ key, limit: 1, window: Duration.hours(1), onExceeded: "fail" })
        yield* consume("warm")
        const before = heap()
        for (let i = 0; i < KEYS; i++) yield* consume(`user-${i}`)
        return heap() - before
      }).pipe(Effect.provide(ExperimentalLimiter.layer.pipe(Layer.provide(ExperimentalLimiter.layerStoreMemory)))))
    default:
      throw new Error(`unknown library ${which}`)
  }
}

if (process.argv[2] !== undefined) {
  measure(process.argv[2]).then(
    (bytes) => process.stdout.write(`${bytes}\n`, () => process.exit(0)),
    (error) => {
      console.error(error)
      process.exit(1)
    }
  )
}
