/**
 * `npx tsx scripts/steps.ts [--store memory|redis|postgres] [--rate 5000] [--burst N] [--fibers 16] [--keys 1]
 * [--timeout 60000|none]`: how many
 * Effect steps (fiber runtime operations, counted by a supervisor) one admission costs on a saturated
 * limiter in one process. Unlike CPU time, the count does not depend on how busy the machine is, so
 * it compares two versions of the hot path on a shared machine. With a rate and burst far above
 * what the callers take (`--rate 1000000 --burst 1000000`), it counts a call that never waits; with
 * `--keys 10000`, each call is on a key drawn at random from that many.
 */
import { execFileSync } from "node:child_process"
import { parseArgs } from "node:util"
import { Effect, Layer, RuntimeFlags, Supervisor } from "effect"
import type * as Fiber from "effect/Fiber"
import { RateLimiter, RateSync, Stores } from "../src/index.js"
import { resolveStore } from "./stores.js"

const { values } = parseArgs({
  options: {
    store: { type: "string", default: "memory" },
    rate: { type: "string", default: "5000" },
    fibers: { type: "string", default: "16" },
    admissions: { type: "string", default: "5000" },
    burst: { type: "string" },
    keys: { type: "string", default: "1" },
    timeout: { type: "string", default: "60000" }
  }
})

class Steps extends Supervisor.AbstractSupervisor<void> {
  count = 0
  get value() {
    return Effect.void
  }
  override onEffect<A, E>(_fiber: Fiber.RuntimeFiber<A, E>, _effect: Effect.Effect<unknown, unknown, unknown>) {
    this.count++
  }
}

const target = await resolveStore(values.store ?? "memory")
const layer = RateSync.layer({
  stores: { s: target.store },
  limiters: { l: { store: "s", rate_per_second: Number(values.rate), ...(values.burst === undefined ? {} : { burst: Number(values.burst) }) } }
}).pipe(Layer.provide(Stores.layer))

const keys = Number(values.keys)
// Fresh key names on every run: each call on a key drawn from `keys`, none stored at the start.
const run = Date.now().toString(36)
const keyOf = () => (keys === 1 ? undefined : `${run}:${Math.floor(Math.random() * keys)}`)
const timeout = values.timeout === "none" ? undefined : Number(values.timeout)

const admit = (count: number) =>
  Effect.gen(function*() {
    let left = count
    const loop = Effect.whileLoop({
      while: () => left-- > 0,
      body: () => RateLimiter.consume("l", { key: keyOf(), ...(timeout === undefined ? {} : { timeout }) }),
      step: () => {}
    })
    yield* Effect.all(Array.from({ length: Number(values.fibers) }, () => loop), { concurrency: "unbounded" })
  })

/** The store's round trips so far: Redis commands, PostgreSQL transactions (0 when its CLI is missing). */
const roundTrips = (): number => {
  try {
    if (values.store === "redis") {
      const info = execFileSync("redis-cli", ["info", "commandstats"], { encoding: "utf8" })
      return [...info.matchAll(/calls=(\d+)/g)].reduce((sum, m) => sum + Number(m[1]), 0)
    }
    if (values.store === "postgres") {
      return Number(execFileSync("psql", ["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-Atc", "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"], { encoding: "utf8" }))
    }
  } catch {
    // no CLI: not reported
  }
  return 0
}

const steps = new Steps()
const main = Effect.gen(function*() {
  yield* admit(Number(values.admissions))
  const before = steps.count
  const trips = roundTrips()
  const n = Number(values.admissions)
  yield* admit(n)
  console.log(
    `${values.store} ${values.rate}/s x ${values.fibers} fibers: ${((steps.count - before) / n).toFixed(1)} Effect steps and ` +
      `${((roundTrips() - trips) / n).toFixed(2)} store round trips per admission`
  )
}).pipe(
  Effect.provide(layer),
  Effect.supervised(steps),
  Effect.provide(Layer.merge(RuntimeFlags.enableOpSupervision, Layer.empty))
)

await Effect.runPromise(main)
await target.stop()
process.exit(0)
