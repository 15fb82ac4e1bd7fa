/**
 * Token buckets of different keys decided in one script call (redis/buckets.ts): what one key's
 * trouble does to the others in its call, how many calls a burst of keys costs, and what a caller
 * that gives up while queued leaves behind. On a server of the test's own, so its command counts
 * and pauses disturb no other test.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as FastCheck from "effect/FastCheck"
import * as Fiber from "effect/Fiber"
import { Redis } from "ioredis"
import * as RedisStore from "../src/redis/RedisStore.js"
import { decodeSettings, toLimiterSpec } from "../src/Settings.js"
import type { RateRequest } from "../src/Store.js"
import { startRedisServer } from "./support/redisServer.js"

const prefix = "buckets:"

/** A store on a server of the test's own, its limiter (1/s, burst 100: a key's state lasts a second), and a connection to look with. */
const setup = setupWith(100)

function setupWith(burst: number) {
  return Effect.gen(function*() {
  const started = yield* Effect.acquireRelease(
    Effect.promise(() => startRedisServer()),
    (server) => Effect.promise(() => server?.stop() ?? Promise.resolve())
  )
  if (started === undefined) return yield* Effect.die("redis-server is not installed")
  const settings = yield* decodeSettings({
    // One connection, so every key's call goes on it; no slots reserved ahead.
    stores: { r: { engine: "redis", url: started.url, key_prefix: prefix, pool_max_size: 1, timing_margin_ms: 0 } },
    limiters: { api: { store: "r", rate_per_second: 1, burst } }
  })
  const config = settings.stores["r"]
  if (config?.engine !== "redis") return yield* Effect.die("not a redis store")
  const store = yield* RedisStore.make("r", config)
  const limiter = toLimiterSpec("api", settings.limiters["api"]!)
  const look = yield* Effect.acquireRelease(Effect.sync(() => new Redis(started.url)), (redis) => Effect.promise(() => redis.quit()))
  const request = (key: string): RateRequest => ({ limiter, key, cost: 1, maxWaitMs: Infinity })
  const evalshas = () =>
    Effect.promise(async () => Number(/cmdstat_evalsha:calls=(\d+)/.exec(await look.info("commandstats"))?.[1] ?? 0))
  return { store, look, request, evalshas }
  })
}

describe("Redis token buckets, several keys in one call", () => {
  it.live("twelve keys asked at once cost at most three calls: the first two alone (two calls in flight), the rest together", () =>
    Effect.gen(function*() {
      const { store, request, evalshas } = yield* setup
      yield* store.acquireRate(request("warm"))
      const before = yield* evalshas()
      const outcomes = yield* Effect.forEach(Array.from({ length: 12 }, (_, i) => `k${i}`), (key) => store.acquireRate(request(key)), {
        concurrency: "unbounded"
      })
      expect(outcomes.every((o) => o._tag === "Admitted" && o.waitMs <= 0)).toBe(true)
      expect((yield* evalshas()) - before).toBeLessThanOrEqual(3)
    }).pipe(Effect.scoped))

  it.live("a key holding something else fails its own caller alone; the others in its call are decided", () =>
    Effect.gen(function*() {
      const { store, look, request } = yield* setup
      yield* Effect.promise(() => look.set(`${prefix}{api:bad}:s`, "not a hash"))
      // The first two keys go alone; the next ones, bad among them, queue and go in one call.
      const results = yield* Effect.forEach(["a", "b", "c", "bad", "d", "e"], (key) => Effect.either(store.acquireRate(request(key))), {
        concurrency: "unbounded"
      })
      expect(results.map((r) => Either.isRight(r) ? r.right._tag : r.left._tag)).toEqual([
        "Admitted",
        "Admitted",
        "Admitted",
        "StoreMisconfigured",
        "Admitted",
        "Admitted"
      ])
      const bad = results[3]!
      expect(Either.isLeft(bad) && bad.left.message).toContain("WRONGTYPE")
    }).pipe(Effect.scoped))

  it.live("a caller that gives up while its key is queued leaves nothing in Redis; the others are decided", () =>
    Effect.gen(function*() {
      const { store, look, request } = yield* setup
      // A paused server holds the first two calls (as many as go at once); the next two queue behind them.
      yield* Effect.promise(() => look.client("PAUSE", 300, "ALL"))
      const first = yield* Effect.fork(store.acquireRate(request("first")))
      const second = yield* Effect.fork(store.acquireRate(request("second")))
      yield* Effect.sleep("20 millis")
      const quitter = yield* Effect.fork(store.acquireRate(request("quitter")))
      const stayer = yield* Effect.fork(store.acquireRate(request("stayer")))
      yield* Effect.sleep("20 millis")
      yield* Fiber.interrupt(quitter)
      expect((yield* Fiber.join(first))._tag).toBe("Admitted")
      expect((yield* Fiber.join(second))._tag).toBe("Admitted")
      expect((yield* Fiber.join(stayer))._tag).toBe("Admitted")
      const keys = yield* Effect.promise(() => look.keys(`${prefix}*`))
      expect(keys.sort()).toEqual([`${prefix}{api:first}:s`, `${prefix}{api:second}:s`, `${prefix}{api:stayer}:s`])
    }).pipe(Effect.scoped))

  it.live("property: keys decided together get what the token bucket gives each alone, request by request, in order", () =>
    Effect.gen(function*() {
      // 1/s: the few milliseconds a sample takes move no wait across a whole second, so every
      // outcome is the reference GCRA's at one instant (waits within that drift of it).
      const samples = FastCheck.sample(
        FastCheck.record({
          burst: FastCheck.integer({ min: 1, max: 4 }),
          rounds: FastCheck.array(
            FastCheck.array(
              FastCheck.record({
                key: FastCheck.constantFrom("a", "b", "c"),
                cost: FastCheck.integer({ min: 1, max: 4 }),
                maxWaitMs: FastCheck.constantFrom(0, 1_500, 2_500, Infinity)
              }),
              { minLength: 1, maxLength: 8 }
            ),
            { minLength: 1, maxLength: 4 }
          )
        }),
        25
      )
      for (const [n, { burst, rounds }] of samples.entries()) yield* Effect.scoped(Effect.gen(function*() {
        const { store, request } = yield* setupWith(burst)
        const tat = new Map<string, number>()
        const started = Date.now()
        for (const round of rounds) {
          const asked = round.map((r) => ({ ...r, key: `${n}:${r.key}`, cost: Math.min(r.cost, burst) }))
          const outcomes = yield* Effect.forEach(asked, (r) => store.acquireRate({ ...request(r.key), cost: r.cost, maxWaitMs: r.maxWaitMs }), {
            concurrency: "unbounded"
          })
          const drift = Date.now() - started + 50
          asked.forEach((r, i) => {
            const from = Math.max(0, tat.get(r.key) ?? 0)
            const wait = Math.max(0, from + r.cost * 1_000 - burst * 1_000)
            const outcome = outcomes[i]!
            if (wait > r.maxWaitMs) {
              expect(outcome._tag).toBe("RateLimited")
            } else {
              expect(outcome._tag).toBe("Admitted")
              if (outcome._tag === "Admitted") expect(Math.abs(outcome.waitMs - wait)).toBeLessThan(drift)
              tat.set(r.key, from + r.cost * 1_000)
            }
          })
        }
      }))
    }))
})
