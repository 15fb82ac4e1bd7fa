/**
 * Several limits at once: `npx tsx examples/acquireAll.ts`.
 *
 * Every request of a user passes three limits: a rate per user (in this process's memory), a global
 * rate and a daily quota per user (on PostgreSQL when `DATABASE_URL` is set, else on Redis when
 * `REDIS_URL` is set, else in memory too). A request refused by any of them takes nothing from the
 * others; one that has to wait waits for the latest slot among the three, within one timeout.
 */
import { Duration, Effect, Layer } from "effect"
import { RateLimiter, RateSync, Stores } from "../src/index.js"
import type { StoreConfigInput } from "../src/Settings.js"

const databaseUrl = process.env["DATABASE_URL"]
const redisUrl = process.env["REDIS_URL"]

const shared: StoreConfigInput = databaseUrl !== undefined
  ? { engine: "postgres", url: databaseUrl, auto_create: true }
  : redisUrl !== undefined
  ? { engine: "redis", url: redisUrl }
  : { engine: "memory" }

const Limits = RateSync.layer({
  stores: { local: { engine: "memory" }, shared },
  limiters: {
    perUser: { store: "local", rate_per_second: 5, burst: 3 },
    global: { store: "shared", rate_per_second: 100, burst: 20 },
    daily: { store: "shared", algorithm: "sliding_window", limit: 4, window_seconds: 86_400 }
  }
}).pipe(Layer.provide(Stores.layer))

// A quota of its own on each run: the shared store outlives the process.
const user = `ann-${Date.now().toString(36)}`
const limits = [{ limiter: "perUser", key: user }, { limiter: "global" }, { limiter: "daily", key: user }]

const left = Effect.gen(function*() {
  const perUser = yield* RateLimiter.state("perUser", { key: user })
  const daily = yield* RateLimiter.state("daily", { key: user })
  return `perUser ${perUser.remaining} of ${perUser.limit} left, daily ${daily.remaining} of ${daily.limit} left`
})

/** A request that never waits: admitted now, or refused by one of the limits with nothing taken. */
const tryRequest = (n: number) =>
  RateLimiter.tryConsumeAll(limits).pipe(
    Effect.as("admitted"),
    Effect.catchTag("RateLimitExceeded", (refused) => Effect.succeed(`refused by ${refused.limiter}, nothing taken`)),
    Effect.flatMap((outcome) => Effect.map(left, (state) => console.log(`request ${n}: ${outcome} (${state})`)))
  )

const program = Effect.gen(function*() {
  console.log(`${user}: perUser 5/s burst 3 (memory); global 100/s and daily 4 (${shared.engine})`)
  // Three at once: perUser's burst. The fourth is refused by perUser, and takes nothing of the daily quota.
  for (const n of [1, 2, 3, 4]) yield* tryRequest(n)
  // A request that waits: perUser's next unit is 200 ms away, and all three limits are taken then.
  const permits = yield* RateLimiter.consumeAll(limits, { timeout: "2 seconds" })
  console.log(`request 5: admitted after waiting ${Math.round(Duration.toMillis(permits[0]!.waited))} ms (${yield* left})`)
  yield* Effect.sleep("400 millis")
  // The quota is spent: refused by daily, and perUser keeps the unit it would have taken.
  yield* tryRequest(6)
})

Effect.runPromise(program.pipe(Effect.provide(Limits))).catch((error: unknown) => {
  console.error(error)
  process.exitCode = 1
})
