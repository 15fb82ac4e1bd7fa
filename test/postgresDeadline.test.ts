/**
 * operation_timeout_ms bounds each store call from the call's own start: a token-bucket write queued
 * behind a stuck one (every writer busy) fails with StoreTimeout at its own deadline, not at the end
 * of the stuck write plus a bound of its own.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import pg from "pg"
import { inject } from "vitest"
import { RateLimiter } from "../src/RateLimiter.js"
import * as RateSync from "../src/RateSync.js"
import * as Stores from "../src/Stores.js"

const url = inject("databaseUrl")
const TIMEOUT_MS = 1_500

describe("PostgreSQL operation deadline", () => {
  it.live("a write queued behind a stuck one fails at its own call's deadline", () =>
    Effect.gen(function*() {
      const table = `deadline_${process.pid}`
      yield* Effect.gen(function*() {
        // Both rows exist, then another session locks them for 4 s.
        yield* RateLimiter.consume("api", { key: "stuck" })
        yield* RateLimiter.consume("api", { key: "queued" })
        const locker = new pg.Client({ connectionString: url })
        yield* Effect.promise(() => locker.connect())
        yield* Effect.promise(() => locker.query(`BEGIN; SELECT * FROM ${table} FOR UPDATE`))
        const unlock = Effect.promise(() => locker.query("COMMIT").then(() => locker.end()))
        yield* Effect.gen(function*() {
          // One connection, so one writer: "queued" waits behind "stuck", whose write waits for the lock.
          const stuck = yield* Effect.fork(Effect.flip(Effect.scoped(RateLimiter.tryAcquire("api", { key: "stuck" }))))
          yield* Effect.sleep("300 millis")
          const started = Date.now()
          const error = yield* Effect.flip(Effect.scoped(RateLimiter.tryAcquire("api", { key: "queued" })))
          const waited = Date.now() - started
          expect(error._tag).toBe("StoreTimeout")
          // Its own bound (1.5 s), with room for a loaded machine; bounded only once its write started,
          // it would wait out the rest of the stuck write's bound first (2.7 s).
          expect(waited).toBeGreaterThanOrEqual(TIMEOUT_MS - 50)
          expect(waited).toBeLessThan(2_200)
          expect((yield* Fiber.join(stuck))._tag).toBe("StoreTimeout")
        }).pipe(Effect.ensuring(Effect.sleep("2500 millis").pipe(Effect.zipRight(unlock))))
      }).pipe(
        Effect.provide(RateSync.layer({
          stores: { db: { engine: "postgres", url, table_name: table, auto_create: true, pool_max_size: 1, pool_min_size: 1, operation_timeout_ms: TIMEOUT_MS } },
          limiters: { api: { store: "db", rate_per_second: 1_000 } }
        }).pipe(Layer.provide(Stores.layer)))
      )
    }), 20_000)
})
