/**
 * A process that takes every permit of a limiter and then hangs, holding them, until it is killed:
 * `node --import tsx test/support/holder.ts '<settings json>' <limiter> <count>`. Prints "held" once
 * it holds them.
 */
import { Effect, Layer } from "effect"
import { RateLimiter } from "../../src/RateLimiter.js"
import * as RateSync from "../../src/RateSync.js"
import * as Stores from "../../src/Stores.js"

const [settings, limiter, count] = process.argv.slice(2)

const program = Effect.gen(function*() {
  for (let i = 0; i < Number(count); i++) yield* RateLimiter.acquire(limiter!)
  yield* Effect.sync(() => process.stdout.write("held\n"))
  return yield* Effect.never
}).pipe(Effect.scoped, Effect.provide(RateSync.layer(JSON.parse(settings!)).pipe(Layer.provide(Stores.layer))))

Effect.runPromise(program).catch((error) => {
  console.error(error)
  process.exit(1)
})
