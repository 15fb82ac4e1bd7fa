/**
 * `npx tsx scripts/cost.ts [--store redis] [--rate 5000] [--fibers 16] [--seconds 5]`: the CPU one
 * process spends per admission on a saturated limiter (process.cpuUsage over the admissions after a
 * warm-up), the number `npm run accuracy` depends on when several processes share 2 cores.
 */
import { execFileSync } from "node:child_process"
import { parseArgs } from "node:util"
import { Effect, Layer } from "effect"
import { RateLimiter, RateSync, Stores } from "../src/index.js"
import { resolveStore } from "./stores.js"

const { values } = parseArgs({
  options: {
    store: { type: "string", default: "redis" },
    rate: { type: "string", default: "5000" },
    fibers: { type: "string", default: "16" },
    seconds: { type: "string", default: "5" },
    warmup: { type: "string", default: "3" },
    margin: { type: "string" }
  }
})
const rate = Number(values.rate)
const resolved = await resolveStore(values.store ?? "redis")
const target = values.margin === undefined ? resolved : { ...resolved, store: { ...resolved.store, timing_margin_ms: Number(values.margin) } }
const layer = RateSync.layer({
  stores: { s: target.store },
  limiters: { l: { store: "s", rate_per_second: rate } }
}).pipe(Layer.provide(Stores.layer))

const run = (ms: number) =>
  Effect.gen(function*() {
    let n = 0
    const until = Date.now() + ms
    const loop = RateLimiter.consume("l", { timeout: ms + 1000 }).pipe(
      Effect.tap(() => Effect.sync(() => n++)),
      Effect.repeat({ while: () => Date.now() < until }),
      Effect.ignore
    )
    yield* Effect.all(Array.from({ length: Number(values.fibers) }, () => loop), { concurrency: "unbounded" })
    return n
  })

/** Redis's total command calls and CPU (µs), from INFO (0 when no redis-cli is at hand). */
const redisCalls = () => {
  if (values.store !== "redis") return { calls: 0, usec: 0 }
  try {
    const info = execFileSync("redis-cli", ["info", "commandstats"], { encoding: "utf8" })
    let calls = 0, usec = 0
    for (const m of info.matchAll(/calls=(\d+),usec=(\d+)/g)) { calls += Number(m[1]); usec += Number(m[2]) }
    return { calls, usec }
  } catch {
    return { calls: 0, usec: 0 }
  }
}

const main = Effect.gen(function*() {
  yield* run(Number(values.warmup) * 1000)
  const before = redisCalls()
  const cpu = process.cpuUsage()
  const t0 = performance.now()
  const n = yield* run(Number(values.seconds) * 1000)
  const used = process.cpuUsage(cpu)
  const wall = (performance.now() - t0) / 1000
  const after = redisCalls()
  if (values.store === "redis") {
    console.log(`redis: ${((after.calls - before.calls) / n).toFixed(3)} commands and ${((after.usec - before.usec) / n).toFixed(1)} µs of server time per admission`)
  }
  console.log(
    `${values.store} ${rate}/s x ${values.fibers} fibers: ${(n / wall).toFixed(0)}/s (${(100 * n / wall / rate).toFixed(1)}%), ` +
      `${((used.user + used.system) / n).toFixed(1)} µs CPU per admission (user ${(used.user / n).toFixed(1)}, system ${(used.system / n).toFixed(1)})`
  )
}).pipe(Effect.provide(layer))

await Effect.runPromise(main)
await target.stop()
process.exit(0)
