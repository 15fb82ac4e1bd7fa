/**
 * `rate-sync/experimental`: `@effect/experimental`'s `RateLimiter` on rate-sync's PostgreSQL and Redis
 * engines, held to the scenarios of that package's own test suite (fixed window and token bucket,
 * `onExceeded` "delay" and "fail", the delays, `retryAfter` and `remaining` it expects), in real time
 * with short windows: values that depend on time elapsed between calls are checked within a bound a
 * loaded machine keeps; counts, and delays computed from counts, exactly. Then many fibers of two
 * limiters (two processes' worth of clients) share one key: the bucket never admits more than it holds.
 */
import { spawn } from "node:child_process"
import { describe, expect, it } from "@effect/vitest"
import { RateLimiter } from "@effect/experimental"
import { PgClient } from "@effect/sql-pg"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import { Redis } from "ioredis"
import { inject } from "vitest"
import * as Experimental from "../src/experimental/index.js"
import * as RateSync from "../src/RateSync.js"
import * as Stores from "../src/Stores.js"

const databaseUrl = inject("databaseUrl")
const redisUrl = inject("redisUrl")

/** How far a value that depends on real time elapsed may lie below the one the TestClock suite expects. */
const SLACK_MS = 600

const ms = (d: Duration.Duration) => Duration.toMillis(d)

let n = 0
const freshKey = () => `exp-${process.pid}-${Date.now()}-${n++}`

const scenarios = (engine: string, store: Layer.Layer<RateLimiter.RateLimiterStore>) =>
  describe(`@effect/experimental RateLimiter on ${engine}`, () => {
    const run = <A, E>(effect: Effect.Effect<A, E, RateLimiter.RateLimiter>) =>
      Effect.provide(effect, RateLimiter.layer.pipe(Layer.provide(store)))

    it.live("fixed-window, onExceeded delay", () =>
      run(Effect.gen(function*() {
        const limiter = yield* RateLimiter.RateLimiter
        const key = freshKey()
        const consume = limiter.consume({ algorithm: "fixed-window", onExceeded: "delay", window: "2 seconds", limit: 5, key })
        yield* Effect.repeatN(consume, 3)
        expect(ms((yield* consume).delay)).toBe(0) // 5
        const sixth = ms((yield* consume).delay)
        expect(sixth).toBeGreaterThan(2_000 - SLACK_MS)
        expect(sixth).toBeLessThanOrEqual(2_000)
        yield* Effect.repeatN(consume, 2) // 7, 8, 9
        const tenth = ms((yield* consume).delay)
        expect(tenth).toBeGreaterThan(2_000 - SLACK_MS)
        expect(tenth).toBeLessThanOrEqual(2_000)
        const eleventh = ms((yield* consume).delay)
        expect(eleventh).toBeGreaterThan(4_000 - SLACK_MS)
        expect(eleventh).toBeLessThanOrEqual(4_000)
      })), 30_000)

    it.live("fixed-window, onExceeded fail", () =>
      run(Effect.gen(function*() {
        const limiter = yield* RateLimiter.RateLimiter
        const key = freshKey()
        const consume = limiter.consume({ algorithm: "fixed-window", onExceeded: "fail", window: "2 seconds", limit: 5, key })
        yield* Effect.repeatN(consume, 3)
        expect(ms((yield* consume).delay)).toBe(0)
        let error = yield* Effect.flip(consume)
        expect(error.reason).toBe("Exceeded")
        if (error.reason !== "Exceeded") return
        expect(ms(error.retryAfter)).toBeGreaterThan(2_000 - SLACK_MS)
        expect(ms(error.retryAfter)).toBeLessThanOrEqual(2_000)
        expect(error.remaining).toBe(0)
        yield* Effect.sleep("1 second")
        error = yield* Effect.flip(consume)
        if (error.reason !== "Exceeded") return expect(error.reason).toBe("Exceeded")
        expect(ms(error.retryAfter)).toBeGreaterThan(1_000 - SLACK_MS)
        expect(ms(error.retryAfter)).toBeLessThanOrEqual(1_000)
        // Past the window's end (measured on the store's clock): a fresh window.
        yield* Effect.sleep(Duration.millis(ms(error.retryAfter) + 50))
        const result = yield* consume
        expect(ms(result.delay)).toBe(0)
        expect(result.remaining).toBe(4)
      })), 30_000)

    it.live("token-bucket, onExceeded delay", () =>
      run(Effect.gen(function*() {
        const limiter = yield* RateLimiter.RateLimiter
        const key = freshKey()
        // A token every second: the sleep below refills 5, however busy the machine (up to 1 s late).
        const consume = limiter.consume({ algorithm: "token-bucket", onExceeded: "delay", window: "5 seconds", limit: 5, key })
        yield* Effect.repeatN(consume, 3)
        expect(ms((yield* consume).delay)).toBe(0) // 5
        expect(ms((yield* consume).delay)).toBe(1_000) // 6
        expect(ms((yield* consume).delay)).toBe(2_000) // 7
        yield* Effect.sleep("5 seconds") // -2 + 5 = 3
        const result = yield* consume
        expect(ms(result.delay)).toBe(0)
        expect(result.remaining).toBe(2)
      })), 30_000)

    it.live("token-bucket, onExceeded fail", () =>
      run(Effect.gen(function*() {
        const limiter = yield* RateLimiter.RateLimiter
        const key = freshKey()
        const consume = limiter.consume({ algorithm: "token-bucket", onExceeded: "fail", window: "5 seconds", limit: 5, key })
        yield* Effect.repeatN(consume, 3)
        expect(ms((yield* consume).delay)).toBe(0)
        const error = yield* Effect.flip(consume)
        if (error.reason !== "Exceeded") return expect(error.reason).toBe("Exceeded")
        expect(ms(error.retryAfter)).toBe(1_000)
        expect(error.remaining).toBe(0)
        yield* Effect.sleep("3 seconds")
        const result = yield* consume
        expect(ms(result.delay)).toBe(0)
        expect(result.remaining).toBe(2)
      })), 30_000)

    it.live("any key: 10,000 characters, NUL, lone surrogates, each its own limit", () =>
      run(Effect.gen(function*() {
        const limiter = yield* RateLimiter.RateLimiter
        const base = freshKey()
        const keys = [`${base}${"k".repeat(10_000)}`, `${base}\u0000nul`, `${base}\ud800`, `${base}\udc00`]
        for (const key of keys) {
          const consume = limiter.consume({ algorithm: "token-bucket", onExceeded: "fail", window: "1 minute", limit: 1, key })
          yield* consume
          expect((yield* Effect.flip(consume)).reason).toBe("Exceeded")
        }
      })), 30_000)

    it.live("many callers of two limiters on one key: the bucket admits what it holds, never more", () =>
      Effect.gen(function*() {
        const key = freshKey()
        const limiters = yield* Effect.all([RateLimiter.make, RateLimiter.make])
        // 40 tokens and a refill of one a minute: 100 callers at once, exactly 40 admitted.
        const outcomes = yield* Effect.forEach(
          Array.from({ length: 100 }, (_, i) => limiters[i % 2]!),
          (limiter) =>
            limiter.consume({ algorithm: "token-bucket", onExceeded: "fail", window: "40 minutes", limit: 40, key }).pipe(Effect.either),
          { concurrency: "unbounded" }
        )
        expect(outcomes.filter((o) => o._tag === "Right").length).toBe(40)
        const windowed = yield* Effect.forEach(
          Array.from({ length: 100 }, (_, i) => limiters[i % 2]!),
          (limiter) =>
            limiter.consume({ algorithm: "fixed-window", onExceeded: "fail", window: "1 minute", limit: 30, key }).pipe(Effect.either),
          { concurrency: "unbounded" }
        )
        expect(windowed.filter((o) => o._tag === "Right").length).toBe(30)
      }).pipe(Effect.provide(store)), 30_000)
  })

/** PostgreSQL: rate-sync's table made by a PostgreSQL store (auto_create), the program's own PgClient. */
const postgres = Layer.unwrapScoped(Effect.gen(function*() {
  const table = `exp_${process.pid}_${Date.now()}`
  // Build (and so create) the table with a rate-sync store once.
  yield* Effect.scoped(Layer.build(RateSync.layer({
    stores: { db: { engine: "postgres", url: databaseUrl, table_name: table, auto_create: true } },
    limiters: { any: { store: "db", rate_per_second: 1 } }
  }).pipe(Layer.provide(Stores.layer))))
  return Experimental.layerPostgres({ table_name: table }).pipe(Layer.provide(PgClient.layer({ url: Redacted.make(databaseUrl) })))
})).pipe(Layer.orDie)

scenarios("PostgreSQL", postgres)

/** Redis: the program's own ioredis client. */
const redis = Layer.unwrapScoped(Effect.map(
  Effect.acquireRelease(Effect.promise(async () => {
    const client = new Redis(redisUrl)
    await client.ping()
    return client
  }), (client) => Effect.promise(() => client.quit())),
  (client) => Experimental.layerRedis(client, { key_prefix: `rate-sync-exp-test:${process.pid}:` })
))

if (redisUrl !== "") scenarios("Redis", redis)

describe("examples/durableRateLimiter.ts", () => {
  it.live("a workflow's DurableRateLimiter on rate-sync's PostgreSQL engine: 2 emails at once, then one a second", () =>
    Effect.promise(() =>
      new Promise<string>((resolve, reject) => {
        const child = spawn(process.execPath, ["--import", "tsx", "examples/durableRateLimiter.ts"], {
          env: { ...process.env, DATABASE_URL: databaseUrl },
          stdio: ["ignore", "pipe", "inherit"]
        })
        let out = ""
        child.stdout.on("data", (chunk: Buffer) => (out += chunk.toString()))
        child.on("exit", (code) => (code === 0 ? resolve(out) : reject(new Error(`exit ${code}: ${out}`))))
      })
    ).pipe(Effect.map((out) => {
      const sentAt = (out.match(/^sent at ([\d, ]+) ms/m)?.[1] ?? "").split(",").map(Number)
      expect(sentAt.length).toBe(5)
      // Whole refills of one a second (the window of 2 s over a limit of 2): never sooner, on the database's clock.
      expect(sentAt[2]! - sentAt[0]!).toBeGreaterThanOrEqual(950)
      expect(sentAt[4]! - sentAt[2]!).toBeGreaterThanOrEqual(1_900)
    })), 60_000)
})
