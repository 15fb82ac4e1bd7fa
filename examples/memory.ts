/**
 * `npm start`: 40 workers push work through one limiter (50/s, burst 5, at most 10 at once) on
 * the memory store, and each second prints how many were admitted against the configured rate.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Duration, Effect, Fiber, Layer, Random } from "effect"
import { MemoryStore, RateLimiter, RateSync } from "../src/index.js"

const RATE = 50
const BURST = 5
const SECONDS = Number(process.env["DEMO_SECONDS"] ?? 5)

const Limits = RateSync.layer({
  stores: { local: { engine: "memory" } },
  limiters: { upstream: { store: "local", rate_per_second: RATE, burst: BURST, max_concurrent: 10 } }
}).pipe(Layer.provide(MemoryStore.layer))

const program = Effect.gen(function*() {
  let admitted = 0
  let inFlight = 0
  let peak = 0
  const callUpstream = Effect.gen(function*() {
    admitted++
    inFlight++
    peak = Math.max(peak, inFlight)
    yield* Effect.sleep(Duration.millis(yield* Random.nextIntBetween(20, 250)))
    inFlight--
  }).pipe(RateLimiter.withPermit("upstream"))

  console.log(`40 workers, limiter: ${RATE}/s, burst ${BURST}, max_concurrent 10 (memory store)`)
  const workers = yield* Effect.forEach(Array.from({ length: 40 }), () => Effect.fork(Effect.forever(callUpstream)))
  let total = 0
  for (let second = 1; second <= SECONDS; second++) {
    yield* Effect.sleep("1 second")
    total += admitted
    console.log(
      `second ${second}: admitted ${String(admitted).padStart(3)} (at most burst + rate = ${BURST + RATE}), ` +
        `at most ${peak} in flight (limit 10)`
    )
    admitted = 0
    peak = inFlight
  }
  yield* Fiber.interruptAll(workers)
  console.log(`total ${total} in ${SECONDS} s: ${(total / SECONDS).toFixed(1)}/s against ${RATE}/s configured`)
})

NodeRuntime.runMain(program.pipe(Effect.provide(Limits)))
