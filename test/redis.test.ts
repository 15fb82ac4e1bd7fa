import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { Redis } from "ioredis"
import { inject } from "vitest"
import * as RateLimiterModule from "../src/RateLimiter.js"
import { RateLimiter } from "../src/RateLimiter.js"
import * as RateSync from "../src/RateSync.js"
import * as RedisStore from "../src/redis/RedisStore.js"
import { decodeSettings, toLimiterSpec } from "../src/Settings.js"
import * as Stores from "../src/Stores.js"
import { startRedisServer } from "./support/redisServer.js"

const url = inject("redisUrl")
let n = 0
const freshPrefix = () => `rate-sync-redis-test:${process.pid}:${n++}:`

const limiters = (store: Record<string, unknown>, limiter: Record<string, unknown>) =>
  RateSync.layer({
    stores: { r: { engine: "redis", url, timing_margin_ms: 0, ...store } },
    limiters: { api: { store: "r", ...limiter } }
  }).pipe(Layer.provide(Stores.layer))

/** A connection of the test's own, to look at what the store wrote. */
const inspect = <A>(use: (redis: Redis) => Promise<A>, at: string = url) =>
  Effect.acquireUseRelease(
    Effect.sync(() => new Redis(at)),
    (redis) => Effect.promise(() => use(redis)),
    (redis) => Effect.promise(() => redis.quit())
  )

/** A redis-server of the test's own, for what would disturb other tests (a password, a pause); stopped with the scope. */
const ownServer = Effect.acquireRelease(
  Effect.promise(() => startRedisServer()),
  (started) => Effect.promise(() => started?.stop() ?? Promise.resolve())
).pipe(Effect.flatMap((started) => started === undefined ? Effect.die("redis-server is not installed") : Effect.succeed(started)))

const keysUnder = (prefix: string) => inspect((redis) => redis.keys(`${prefix}*`))

describe.skipIf(url === "")("Redis engine", () => {
  it.live("every key carries a TTL that covers its state and no more, so idle keys vanish", () => {
    const prefix = freshPrefix()
    return Effect.gen(function*() {
      // Rate 10/s, burst 1: one admission's state lasts one interval (100 ms).
      yield* Effect.scoped(RateLimiter.acquire("api", { key: "idle" }))
      const [keys, ttls] = yield* inspect(async (redis) => {
        const keys = await redis.keys(`${prefix}*`)
        return [keys, await Promise.all(keys.map((key) => redis.pttl(key)))] as const
      })
      expect(keys.length).toBeGreaterThan(0)
      for (const ttl of ttls) {
        expect(ttl).toBeGreaterThan(0)
        expect(ttl).toBeLessThanOrEqual(102)
      }
      yield* Effect.sleep("250 millis")
      expect(yield* keysUnder(prefix)).toEqual([])
    }).pipe(Effect.provide(limiters({ key_prefix: prefix }, { rate_per_second: 10 })))
  })

  it.live("a held lease's keys live as long as the lease, and renewal extends them", () => {
    const prefix = freshPrefix()
    return Effect.gen(function*() {
      yield* Effect.scoped(Effect.gen(function*() {
        yield* RateLimiter.acquire("api", { key: "held" })
        // The lease ttl is 1 s; renewal runs every third of it.
        yield* Effect.sleep("1500 millis")
        const ttls = yield* inspect(async (redis) => Promise.all((await redis.keys(`${prefix}*`)).map((key) => redis.pttl(key))))
        expect(ttls.length).toBeGreaterThan(0)
        for (const ttl of ttls) expect(ttl).toBeGreaterThan(300)
        expect((yield* RateLimiter.state("api", { key: "held" })).leasesHeld).toBe(1)
      }))
      // Released: nothing left that differs from a fresh key.
      expect(yield* keysUnder(prefix)).toEqual([])
    }).pipe(Effect.provide(limiters({ key_prefix: prefix }, { max_concurrent: 1, lease_ttl_seconds: 1 })))
  })

  it.live("all keys of one limiter key share one hash tag, whatever the key holds", () => {
    const prefix = freshPrefix()
    return Effect.gen(function*() {
      const key = "a}b{c'\"; DROP TABLE x; -- é"
      const keys = yield* Effect.scoped(Effect.zipRight(RateLimiter.acquire("api", { key }), keysUnder(prefix)))
      expect(keys.length).toBeGreaterThan(1)
      const tags = new Set(keys.map((k) => k.slice(k.indexOf("{") + 1, k.indexOf("}", k.indexOf("{")))))
      expect(tags.size).toBe(1)
    }).pipe(Effect.provide(limiters({ key_prefix: prefix }, { rate_per_second: 1, max_concurrent: 2 })))
  })

  it.live("scripts flushed from the server (restart, SCRIPT FLUSH) are loaded again", () =>
    Effect.gen(function*() {
      yield* Effect.scoped(RateLimiter.acquire("api"))
      yield* inspect((redis) => redis.script("FLUSH"))
      const permit = yield* Effect.scoped(RateLimiter.acquire("api"))
      expect(permit.degraded).toBe(false)
      expect((yield* RateLimiter.state("api")).remaining).toBe(998)
    }).pipe(Effect.provide(limiters({ key_prefix: freshPrefix() }, { rate_per_second: 1, burst: 1_000 }))))

  it.live("an unreachable server: the layer starts, fail_closed fails with StoreUnavailable, the default admits", () =>
    Effect.gen(function*() {
      const down = { url: "redis://127.0.0.1:1", connect_timeout_ms: 300 }
      const closed = yield* Effect.scoped(RateLimiter.acquire("api")).pipe(
        Effect.provide(limiters(down, { rate_per_second: 10, fail_closed: true })),
        Effect.flip
      )
      expect(closed._tag).toBe("StoreUnavailable")
      expect(closed._tag === "StoreUnavailable" && closed.reason).toBe("unreachable")
      // The message is for people: where, and what the driver said.
      expect(closed.message).toMatch(/^cannot reach Redis at redis:\/\/127\.0\.0\.1:1 /)
      const open = yield* Effect.scoped(RateLimiter.acquire("api")).pipe(Effect.provide(limiters(down, { rate_per_second: 10 })))
      expect(open.degraded).toBe(true)
    }))

  it.live("connections killed by the server are re-established and the limiter resumes by itself", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      const settings = yield* decodeSettings({
        stores: { r: { engine: "redis", url, key_prefix: prefix } },
        limiters: { api: { store: "r", rate_per_second: 1_000, fail_closed: true } }
      })
      const config = settings.stores["r"]
      if (config?.engine !== "redis") return yield* Effect.die("not a redis store")
      const store = yield* RedisStore.make("r", config)
      const limiter = yield* RateLimiterModule.make({
        stores: new Map([["r", store]]),
        limiters: [toLimiterSpec("api", settings.limiters["api"]!)]
      })
      yield* Effect.scoped(limiter.acquire("api"))
      const subscribers = () => inspect(async (redis) => Number((await redis.pubsub("NUMSUB", `${prefix}released`))[1]))
      expect(yield* subscribers()).toBe(1)

      // This store's connections (commands and subscriber) carry its name and this process's id.
      const killed = yield* inspect(async (redis) => {
        const lines = String(await redis.client("LIST")).split("\n").filter((line) => line.includes(` name=rate-sync:r:${process.pid} `))
        for (const line of lines) await redis.client("KILL", "ID", /\bid=(\d+)/.exec(line)![1]!)
        return lines.length
      })
      expect(killed).toBe(2)
      let resumed = false
      for (let i = 0; i < 100 && !resumed; i++) {
        const outcome = yield* Effect.scoped(limiter.acquire("api")).pipe(Effect.either)
        if (outcome._tag === "Right") resumed = true
        else {
          expect(outcome.left._tag).toBe("StoreUnavailable")
          yield* Effect.sleep("100 millis")
        }
      }
      expect(resumed).toBe(true)
      // The subscriber is back on its channel as well, so releases keep waking waiters.
      let subscribed = 0
      for (let i = 0; i < 100 && subscribed === 0; i++) {
        subscribed = yield* subscribers()
        if (subscribed === 0) yield* Effect.sleep("100 millis")
      }
      expect(subscribed).toBe(1)
    }).pipe(Effect.scoped))

  it.live("a wrong password fails the layer with WRONGPASS, and a password that goes wrong later never admits", () =>
    Effect.gen(function*() {
      const server = yield* ownServer
      const withPassword = (password: string) => server.url.replace("redis://", `redis://:${password}@`)
      yield* inspect((redis) => redis.config("SET", "requirepass", "right"), withPassword(""))
      const wrong = yield* Layer.build(limiters({ url: withPassword("wrong"), connect_timeout_ms: 1_000 }, { rate_per_second: 10 }))
        .pipe(Effect.flip)
      expect(wrong._tag).toBe("StoreMisconfigured")
      expect(wrong._tag === "StoreMisconfigured" && wrong.reason).toBe("authentication")
      expect(wrong.message).toMatch(/WRONGPASS/)
      // Started with the right password, which is then changed: calls fail with the cause, under the default fail_closed = false.
      yield* Effect.scoped(Effect.gen(function*() {
        yield* RateLimiter.consume("api")
        yield* inspect(async (redis) => {
          await redis.config("SET", "requirepass", "changed")
          await redis.client("KILL", "TYPE", "normal")
        }, withPassword("right"))
        // Until the client has tried the old password again, the connection is merely lost (an outage);
        // from the refusal on, every call fails with the cause and none is admitted.
        let refused = 0
        for (let i = 0; i < 40 && refused < 10; i++) {
          const outcome = yield* Effect.either(RateLimiter.consume("api"))
          if (refused > 0) expect(outcome._tag === "Left" && outcome.left._tag).toBe("StoreMisconfigured")
          if (outcome._tag === "Left" && outcome.left._tag === "StoreMisconfigured") {
            refused++
            expect(outcome.left.message).toMatch(/WRONGPASS|NOAUTH/)
          }
          yield* Effect.sleep("50 millis")
        }
        expect(refused).toBe(10)
      }).pipe(Effect.provide(limiters({ url: withPassword("right") }, { rate_per_second: 1_000 }))))
    }).pipe(Effect.scoped), 30_000)

  it.live("a paused server cannot hold an acquire past its timeout nor admit it degraded; without a deadline, command_timeout_ms bounds it", () =>
    Effect.gen(function*() {
      const server = yield* ownServer
      yield* Effect.gen(function*() {
        yield* RateLimiter.consume("api")
        yield* Effect.scoped(RateLimiter.acquire("leased"))
        // Not through inspect: its QUIT would wait out the pause.
        yield* Effect.promise(async () => {
          const redis = new Redis(server.url)
          await redis.client("PAUSE", 2_500)
          redis.disconnect()
        })
        for (const call of [RateLimiter.consume("api", { timeout: "300 millis" }), Effect.scoped(RateLimiter.acquire("leased", { timeout: "300 millis" }))]) {
          const started = Date.now()
          const error = yield* Effect.flip(call)
          expect(error._tag).toBe("AcquireTimeout")
          expect(Date.now() - started).toBeLessThan(1_500)
        }
        const started = Date.now()
        const error = yield* Effect.flip(Effect.scoped(RateLimiter.tryAcquire("api")))
        expect(error._tag).toBe("StoreTimeout")
        expect(Date.now() - started).toBeLessThan(2_000)
        // After the pause: both work, and the lease granted to the caller that gave up was given back.
        yield* Effect.sleep("2 seconds")
        yield* Effect.scoped(RateLimiter.acquire("leased", { timeout: "2 seconds" }))
        yield* RateLimiter.consume("api", { timeout: "2 seconds" })
        let held = 1
        for (let i = 0; i < 20 && held > 0; i++) {
          held = (yield* RateLimiter.state("leased")).leasesHeld
          if (held > 0) yield* Effect.sleep("100 millis")
        }
        expect(held).toBe(0)
      }).pipe(Effect.provide(RateSync.layer({
        stores: { r: { engine: "redis", url: server.url, command_timeout_ms: 700 } },
        limiters: { api: { store: "r", rate_per_second: 100 }, leased: { store: "r", max_concurrent: 1, lease_ttl_seconds: 30 } }
      }).pipe(Layer.provide(Stores.layer))))
    }).pipe(Effect.scoped), 30_000)
})

describe.skipIf(url === "")("Redis engine over the program's own client (RedisStore.layerWith)", () => {
  it.live("one connection for the program and its limiters: limits hold, lease wake-ups arrive, the store leaves the client open", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      // The program's client, with ioredis's defaults (commands queue while it is down, and retry),
      // made with lazyConnect: it has sent nothing yet, so it is not connected.
      const client = new Redis(url, { connectionName: "the-program", lazyConnect: true })
      yield* Effect.addFinalizer(() => Effect.sync(() => client.disconnect()))
      const layer = RateSync.layer({
        stores: { r: { engine: "redis", url: "redis://unused.invalid:1", key_prefix: prefix, timing_margin_ms: 0, command_timeout_ms: 500 } },
        limiters: { api: { store: "r", rate_per_second: 1 }, leased: { store: "r", max_concurrent: 1, lease_ttl_seconds: 30 } }
      }).pipe(Layer.provide(RedisStore.layerWith(client)))
      yield* Effect.gen(function*() {
        const limiter = yield* RateLimiter
        yield* Effect.scoped(limiter.tryAcquire("api"))
        const refused = yield* Effect.scoped(limiter.tryAcquire("api")).pipe(Effect.flip)
        expect(refused._tag).toBe("RateLimitExceeded")
        // Its state is on the server the program's client points at (the url in the file was never used).
        expect((yield* keysUnder(prefix)).length).toBeGreaterThan(0)
        // The store's own connections: only the subscriber (a duplicate of the program's client).
        const list = yield* Effect.promise(() => client.call("CLIENT", "LIST") as Promise<string>)
        const ours = list.split("\n").filter((line) => line.includes(`rate-sync:r:${process.pid}`))
        expect(ours.map((line) => line.match(/name=(\S+)/)?.[1])).toEqual([`rate-sync:r:${process.pid}:sub`])
        // A lease waiter is woken through that subscriber when the holder releases.
        const holder = yield* Effect.scoped(Effect.gen(function*() {
          yield* limiter.acquire("leased")
          const waiter = yield* Effect.fork(Effect.scoped(limiter.acquire("leased", { timeout: "5 seconds" })))
          yield* Effect.sleep("100 millis")
          return waiter
        }))
        const woken = yield* holder.await
        expect(woken._tag).toBe("Success")
      }).pipe(Effect.provide(layer))
      // The limiters closed, the program's client is still open and its own.
      expect(yield* Effect.promise(() => client.ping())).toBe("PONG")
    }).pipe(Effect.scoped), 30_000)

  it.live("the program's client reconnecting: an acquire is an outage at once, not queued until the server is back", () =>
    Effect.gen(function*() {
      const server = yield* ownServer
      // ioredis's defaults: a command sent while reconnecting waits in the offline queue.
      const client = new Redis(server.url)
      yield* Effect.addFinalizer(() => Effect.sync(() => client.disconnect()))
      yield* Effect.promise(() => client.ping())
      yield* Effect.gen(function*() {
        const limiter = yield* RateLimiter
        yield* Effect.promise(() => server.stop())
        while (client.status === "ready") yield* Effect.sleep("20 millis")
        const started = Date.now()
        const degraded = yield* Effect.scoped(limiter.acquire("api", { timeout: "20 seconds" }))
        expect(degraded.degraded).toBe(true)
        // command_timeout_ms is 10 s: an answer well before it was not waited for.
        expect(Date.now() - started).toBeLessThan(5_000)
      }).pipe(Effect.provide(RateSync.layer({
        stores: { r: { engine: "redis", url: server.url, command_timeout_ms: 10_000 } },
        limiters: { api: { store: "r", rate_per_second: 1 } }
      }).pipe(Layer.provide(RedisStore.layerWith(client)))))
    }).pipe(Effect.scoped), 30_000)
})
