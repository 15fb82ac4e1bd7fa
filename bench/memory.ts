/**
 * Memory held by idle keys, one library per process so the heaps do not mix:
 * `node --expose-gc --import tsx bench/memory.ts rate-sync|rate-limiter-flexible|effect-experimental KEYS SECONDS`
 * makes up to KEYS keys, one call each, for at most SECONDS, and prints as JSON how many it made, the
 * bytes of heap they hold after a full GC and the milliseconds making them took.
 */
import * as ExperimentalLimiter from "@effect/experimental/RateLimiter"
import { Duration, Effect, Layer } from "effect"
import { RateLimiterMemory } from "rate-limiter-flexible"
import type { Made } from "./idle.js"
import { RateLimiter, RateSync, Stores } from "./library.js"

const heap = () => {
  const gc: unknown = Reflect.get(globalThis, "gc")
  if (typeof gc !== "function") throw new Error("run with --expose-gc")
  for (let i = 0; i < 3; i++) gc()
  return process.memoryUsage().heapUsed
}

/** One call per key, in one loop, until `keys` are made or `deadline` (a `performance.now()`) passes. */
const makeKeys = <E, R>(keys: number, deadline: number, call: (key: string) => Effect.Effect<unknown, E, R>) =>
  Effect.gen(function*() {
    yield* call("warm")
    const before = heap()
    const started = performance.now()
    let made = 0
    while (made < keys && performance.now() < deadline) yield* call(`user-${made++}`)
    const ms = performance.now() - started
    return { keys: made, bytes: heap() - before, ms } satisfies Made
  })

// Every limiter allows one call per key an hour: every key keeps its state for the whole measurement.
const measure = (which: string, keys: number, deadline: number): Effect.Effect<Made> => {
  switch (which) {
    case "rate-sync":
      return makeKeys(keys, deadline, (key) => Effect.scoped(RateLimiter.acquire("idle", { key }))).pipe(
        Effect.provide(
          RateSync.layer({ stores: { s: { engine: "memory" } }, limiters: { idle: { store: "s", rate_per_second: 1 / 3600 } } })
            .pipe(Layer.provide(Stores.layer))
        ),
        Effect.orDie
      )
    case "rate-limiter-flexible": {
      const limiter = new RateLimiterMemory({ points: 1, duration: 3600 })
      return makeKeys(keys, deadline, (key) => Effect.promise(() => limiter.consume(key)))
    }
    case "effect-experimental":
      return Effect.flatMap(ExperimentalLimiter.RateLimiter, (limiter) =>
        makeKeys(keys, deadline, (key) => limiter.consume({ key, limit: 1, window: Duration.hours(1), onExceeded: "fail" }))).pipe(
          Effect.provide(ExperimentalLimiter.layer.pipe(Layer.provide(ExperimentalLimiter.layerStoreMemory))),
          Effect.orDie
        )
    default:
      return Effect.dieMessage(`unknown library ${which}`)
  }
}

const [library, keys, seconds] = process.argv.slice(2)
if (library !== undefined) {
  const count = Number(keys)
  const deadline = performance.now() + 1000 * Number(seconds ?? Infinity)
  const program = Number.isInteger(count) && count > 0 ? measure(library, count, deadline) : Effect.dieMessage(`not a number of keys: ${keys}`)
  Effect.runPromise(program).then(
    (made) => process.stdout.write(`${JSON.stringify(made)}\n`, () => process.exit(0)),
    (error) => {
      console.error(error)
      process.exit(1)
    }
  )
}
