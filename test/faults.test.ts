/**
 * Faults on the real servers: a holder killed with SIGKILL gives its permits back by lease expiry.
 */
import { spawn } from "node:child_process"
import { describe, expect, it } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { inject } from "vitest"
import { RateLimiter } from "../src/RateLimiter.js"
import * as RateSync from "../src/RateSync.js"
import type { SettingsInput, StoreConfigInput } from "../src/Settings.js"
import * as Stores from "../src/Stores.js"

const databaseUrl = inject("databaseUrl")
const redisUrl = inject("redisUrl")
let n = 0

/** Each engine's store, with `pool` connections when given. */
const stores: ReadonlyArray<readonly [string, (pool?: number) => StoreConfigInput, boolean]> = [
  ["postgres", (pool) => ({
    engine: "postgres",
    url: databaseUrl,
    auto_create: true,
    ...(pool === undefined ? {} : { pool_max_size: pool, pool_min_size: 0 })
  }), true],
  ["redis", (pool) => ({
    engine: "redis",
    url: redisUrl,
    key_prefix: `rate-sync-faults:${process.pid}:${n++}:`,
    ...(pool === undefined ? {} : { pool_max_size: pool })
  }), redisUrl !== ""]
]

/** Starts a holder process and resolves once it holds `count` permits; the returned function kills it. */
const startHolder = (settings: SettingsInput, limiter: string, count: number) =>
  Effect.async<() => void, Error>((resume) => {
    const child = spawn(
      process.execPath,
      ["--import", "tsx", new URL("./support/holder.ts", import.meta.url).pathname, JSON.stringify(settings), limiter, String(count)],
      { stdio: ["ignore", "pipe", "inherit"] }
    )
    child.stdout.on("data", (chunk: Buffer) => {
      if (chunk.toString().includes("held")) resume(Effect.succeed(() => child.kill("SIGKILL")))
    })
    child.once("exit", (code) => resume(Effect.fail(new Error(`holder exited with ${code}`))))
    return Effect.sync(() => child.kill("SIGKILL"))
  })

describe("crashed holders", () => {
  for (const [engine, store, available] of stores) {
    it.live.skipIf(!available)(`${engine}: a holder killed with SIGKILL gives its permits back within lease_ttl_seconds + 1 s`, () => {
      const name = `crash_${process.pid}_${n++}`
      const settings: SettingsInput = {
        stores: { s: store() },
        limiters: { [name]: { store: "s", max_concurrent: 3, lease_ttl_seconds: 1 } }
      }
      return Effect.gen(function*() {
        const kill = yield* startHolder(settings, name, 3)
        // All three are held by the other process.
        const refused = yield* Effect.scoped(RateLimiter.tryAcquire(name)).pipe(Effect.flip)
        expect(refused._tag).toBe("RateLimitExceeded")
        kill()
        // Within the ttl plus a second, every permit is free again for this process.
        yield* Effect.scoped(Effect.gen(function*() {
          for (let i = 0; i < 3; i++) yield* RateLimiter.acquire(name, { timeout: Duration.seconds(2) })
          expect((yield* RateLimiter.state(name)).leasesHeld).toBe(3)
        }))
      }).pipe(Effect.provide(RateSync.layer(settings).pipe(Layer.provide(Stores.layer))))
    }, 30_000)
  }
})

describe("more callers than connections", () => {
  for (const [engine, store, available] of stores) {
    it.live.skipIf(!available)(`${engine}: 64 concurrent acquires on 64 keys through pool_max_size = 1 queue and all succeed`, () => {
      const name = `pool_${process.pid}_${n++}`
      const settings: SettingsInput = {
        stores: { s: store(1) },
        limiters: { [name]: { store: "s", rate_per_second: 10, burst: 1, max_concurrent: 1, lease_ttl_seconds: 5 } }
      }
      return Effect.gen(function*() {
        const permits = yield* Effect.forEach(
          Array.from({ length: 64 }, (_, i) => `user-${i}`),
          (key) => Effect.scoped(RateLimiter.acquire(name, { key, timeout: Duration.seconds(5) })),
          { concurrency: "unbounded" }
        )
        expect(permits.map((p) => p.degraded)).toEqual(Array.from({ length: 64 }, () => false))
      }).pipe(Effect.provide(RateSync.layer(settings).pipe(Layer.provide(Stores.layer))))
    }, 30_000)
  }
})
