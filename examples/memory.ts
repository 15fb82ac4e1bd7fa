/**
 * `npm run start:memory`: 40 workers (fibers of this process) push work through one limiter (50/s,
 * burst 5, at most 10 at once) on the memory store. Each admission is stamped when its caller proceeds;
 * seconds are counted on those stamps, and the whole run against the bound for the time it really
 * lasted (a one-second sleep lasts longer on a busy machine: counting by sleeps made 58 look like a
 * breach of 55).
 */
import { NodeRuntime } from "@effect/platform-node"
import { Duration, Effect, Fiber, Layer, Random } from "effect"
import { MemoryStore, RateLimiter, RateSync } from "../src/index.js"
import { perSecond, stamp, verdict } from "./measure.js"

const RATE = 50
const BURST = 5
const MAX_CONCURRENT = 10
const WORKERS = 40
const SECONDS = Number(process.env["DEMO_SECONDS"] ?? 5)

const Limits = RateSync.layer({
  stores: { local: { engine: "memory" } },
  limiters: { upstream: { store: "local", rate_per_second: RATE, burst: BURST, max_concurrent: MAX_CONCURRENT } }
}).pipe(Layer.provide(MemoryStore.layer))

const program = Effect.gen(function*() {
  const stamps: Array<number> = []
  let inFlight = 0
  let peak = 0
  const callUpstream = Effect.gen(function*() {
    stamps.push(stamp())
    inFlight++
    peak = Math.max(peak, inFlight)
    yield* Effect.sleep(Duration.millis(yield* Random.nextIntBetween(20, 250)))
    inFlight--
  }).pipe(RateLimiter.withPermit("upstream"))

  console.log(
    `limiter ready (memory store): ${RATE}/s, burst ${BURST}, max_concurrent ${MAX_CONCURRENT}; ` +
      `starting ${WORKERS} workers, each calling an upstream that takes 20 to 250 ms`
  )
  const start = stamp()
  const workers = yield* Effect.forEach(Array.from({ length: WORKERS }), () => Effect.fork(Effect.forever(callUpstream)))
  for (let second = 1; second <= SECONDS; second++) {
    // Waits for the end of this second by the clock (a sleep may overrun on a busy machine; the
    // count is by stamps either way).
    yield* Effect.sleep(Duration.millis(Math.max(0, start + second * 1000 - stamp())))
    const admitted = perSecond(stamps, start, second)[second - 1]!
    console.log(
      `second ${second}: admitted ${String(admitted).padStart(3)} (at most burst + rate = ${BURST + RATE}), ` +
        `at most ${peak} in flight (limit ${MAX_CONCURRENT})`
    )
    peak = inFlight
  }
  yield* Fiber.interruptAll(workers)
  const shortfall = `whenever all ${MAX_CONCURRENT} calls in flight are slow ones (up to 250 ms), callers wait for a ` +
    `lease while rate slots pass unused (${MAX_CONCURRENT} calls of 135 ms on average allow about ` +
    `${Math.round(MAX_CONCURRENT / 0.135)}/s, but not at every moment); and a waiter that a busy machine wakes more ` +
    `than 10 ms after its slot gives it up rather than bunch with the next ones ("Where callers proceed" in the README)`
  for (const line of verdict(stamps, start, start + SECONDS * 1000, { rate: RATE, burst: BURST }, shortfall)) console.log(line)
})

NodeRuntime.runMain(program.pipe(Effect.provide(Limits)))
