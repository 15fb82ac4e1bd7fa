/**
 * The Redis engine on a real Redis Cluster that this file starts on loopback: three masters with a
 * replica each (support/redisCluster.ts). Limiters whose keys land on all three masters, two stores
 * seeded with different nodes, wake-ups and backoffs heard across nodes, a store pointed at one node
 * without `cluster = true`, a slot moved while limiters run (ASK, then MOVED), and a master killed.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import { Cluster } from "ioredis"
import { inject } from "vitest"
import * as RateLimiterModule from "../src/RateLimiter.js"
import { RateLimiter } from "../src/RateLimiter.js"
import * as RateSync from "../src/RateSync.js"
import * as Check from "../src/redis/check.js"
import * as RedisErrors from "../src/redis/errors.js"
import * as RedisStore from "../src/redis/RedisStore.js"
import * as Stores from "../src/Stores.js"
import { decodeSettings, type LimiterConfigInput, type RedisStoreConfig, toLimiterSpec } from "../src/Settings.js"
import { type Admission, rateExcess, units } from "./compliance/bounds.js"
import { installed, masterOf, onNode, type RedisCluster, startRedisCluster, waitUntilOk } from "./support/redisCluster.js"

const available = await installed()
if (!available && process.env["REQUIRE_REDIS"] === "1") throw new Error("REQUIRE_REDIS=1 but redis-server or redis-cli is not installed")

let cluster: RedisCluster
beforeAll(async () => {
  if (available) cluster = (await startRedisCluster(3, 1))!
}, 60_000)
afterAll(async () => {
  await cluster?.stop()
})

let prefixes = 0
const freshPrefix = () => `rsc:${process.pid}:${prefixes++}:`

/** A store's table as the engine receives it (every key decoded). */
const storeConfig = (url: string, prefix: string, overrides: Partial<RedisStoreConfig> = {}) => {
  const config = {
    engine: "redis" as const,
    url,
    cluster: true,
    key_prefix: prefix,
    pool_max_size: 1,
    timing_margin_ms: 0,
    connect_timeout_ms: 2_000,
    command_timeout_ms: 2_000,
    ...overrides
  }
  return config
}

/** A limiter service over one store built by the test, with these limiters' tables. */
const serviceOn = (store: RedisStore.RedisStore, tables: Record<string, Omit<LimiterConfigInput, "store">>) =>
  Effect.gen(function*() {
    const settings = yield* decodeSettings({
      stores: { c: { engine: "redis", url: "redis://unused.invalid" } },
      limiters: Object.fromEntries(Object.entries(tables).map(([name, table]) => [name, { ...table, store: "c" }]))
    })
    const specs = Object.entries(settings.limiters).map(([name, config]) => toLimiterSpec(name, config))
    const service = yield* RateLimiterModule.make({ stores: new Map([["c", store]]), limiters: specs })
    return { service, spec: (name: string) => specs.find((spec) => spec.name === name)! }
  })

const portOf = (url: string) => Number(new URL(url).port)
const nodeUrl = (port: number | undefined) => `redis://127.0.0.1:${port}`

/** Keys of `limiter` whose state lands on each master: one per master, with its url (CLUSTER KEYSLOT and SLOTS). */
const keysOnEveryMaster = async (prefix: string, limiter: string) => {
  const found = new Map<string, string>()
  for (let i = 0; found.size < 3 && i < 200; i++) {
    const master = await masterOf(cluster.nodes[0]!.url, `${prefix}{${limiter}:k${i}}:s`)
    if (!found.has(master)) found.set(master, `k${i}`)
  }
  return [...found].map(([master, key]) => ({ master, key }))
}

/** A key of `limiter` whose master is none of `avoid` (urls). */
const keyAwayFrom = async (prefix: string, limiter: string, avoid: ReadonlyArray<string>) => {
  for (const { master, key } of await keysOnEveryMaster(prefix, limiter)) if (!avoid.includes(master)) return { master, key }
  throw new Error(`every master is one of ${avoid.join(", ")}`)
}

interface Run {
  readonly admissions: Array<Admission>
  degraded: number
  readonly errors: Array<string>
}

/** `fibers` callers consuming `name`/`key` back to back for `ms` (or until `until` completes), with what each call ended in. */
const drive = (service: RateLimiterModule.RateLimiter["Type"], name: string, key: string, fibers: number, ms: number | Effect.Effect<void>) =>
  Effect.gen(function*() {
    const run: Run = { admissions: [], degraded: 0, errors: [] }
    const worker = service.consume(name, { key, timeout: "3 seconds" }).pipe(
      Effect.match({
        onFailure: (error) => void run.errors.push(error._tag === "StoreMisconfigured" ? `StoreMisconfigured(${error.reason})` : error._tag),
        onSuccess: (permit) => permit.degraded ? void run.degraded++ : void run.admissions.push({ slot: permit.slotMs!, cost: 1 })
      }),
      // A failed call comes back at once: not a busy loop.
      Effect.zipLeft(Effect.sleep("1 millis")),
      Effect.forever
    )
    const running = yield* Effect.forEach(Array.from({ length: fibers }), () => Effect.fork(worker))
    yield* typeof ms === "number" ? Effect.sleep(Duration.millis(ms)) : ms
    yield* Fiber.interruptAll(running)
    return run
  })

const statsOf = async (url: string, section: string, field: RegExp) =>
  onNode(url, async (redis) => Number(field.exec(String(await redis.info(section)))?.[1] ?? 0))

describe.skipIf(!available)("Redis engine on a Redis Cluster (3 masters, 3 replicas, started by the test)", () => {
  it.live("each limiter key's state lives on the master of its slot, on all three masters", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      const store = yield* RedisStore.make("c", storeConfig(cluster.seeds, prefix))
      const { service } = yield* serviceOn(store, { slow: { rate_per_second: 0.2 } })
      const keys = yield* Effect.promise(() => keysOnEveryMaster(prefix, "slow"))
      expect(new Set(keys.map((k) => k.master)).size).toBe(3)
      for (const { master, key } of keys) {
        const permit = yield* service.consume("slow", { key })
        expect(permit.degraded).toBe(false)
        // On its master, read without redirection; any other master redirects it.
        expect(yield* Effect.promise(() => onNode(master, (redis) => redis.exists(`${prefix}{slow:${key}}:s`)))).toBe(1)
        const other = keys.find((k) => k.master !== master)!.master
        const elsewhere = yield* Effect.promise(() => onNode(other, (redis) => redis.exists(`${prefix}{slow:${key}}:s`)).catch(RedisErrors.messageOf))
        expect(String(elsewhere)).toMatch(/^MOVED /)
        expect((yield* Effect.flip(service.tryConsume("slow", { key })))._tag).toBe("RateLimitExceeded")
      }
    }).pipe(Effect.scoped), 30_000)

  it.live("configured as a file would be (cluster = true, seed urls comma-separated): limits on keys of every master", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      const keys = yield* Effect.promise(() => keysOnEveryMaster(prefix, "api"))
      yield* Effect.gen(function*() {
        for (const { key } of keys) {
          expect((yield* RateLimiter.tryConsume("api", { key })).degraded).toBe(false)
          expect((yield* Effect.flip(RateLimiter.tryConsume("api", { key })))._tag).toBe("RateLimitExceeded")
        }
      }).pipe(Effect.provide(RateSync.layer({
        stores: { r: { engine: "redis", cluster: "true", url: `${cluster.nodes[4]!.url}, ${cluster.nodes[5]!.url}`, key_prefix: prefix } },
        limiters: { api: { store: "r", rate_per_second: 0.5 } }
      }).pipe(Layer.provide(Stores.layer))))
    }), 30_000)

  it.live("two stores seeded with different nodes admit within burst + rate * T on keys of every master", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      const rate = 40
      const burst = 4
      const [a, b] = [cluster.nodes[0]!.url, cluster.nodes[1]!.url]
      const services = yield* Effect.forEach([a, b], (seed) =>
        RedisStore.make("c", storeConfig(seed, prefix)).pipe(Effect.flatMap((store) => serviceOn(store, { api: { rate_per_second: rate, burst } }))))
      const keys = yield* Effect.promise(() => keysOnEveryMaster(prefix, "api"))
      const durationMs = 1_500
      const started = Date.now()
      const runs = yield* Effect.forEach(keys, ({ key }) =>
        Effect.forEach(services, ({ service }) => drive(service, "api", key, 4, durationMs), { concurrency: "unbounded" }), { concurrency: "unbounded" })
      const elapsedMs = Date.now() - started
      for (const perStore of runs) {
        for (const run of perStore) {
          expect(run.errors).toEqual([])
          expect(run.degraded).toBe(0)
          // One store's slots share its time base: the bound over every interval.
          expect(rateExcess(run.admissions, rate, burst)).toBeLessThanOrEqual(1e-6)
        }
        // Both stores together: each slot lies within the run, so at most burst + rate * elapsed.
        const together = perStore.reduce((sum, run) => sum + units(run.admissions), 0)
        expect(together).toBeLessThanOrEqual(burst + Math.ceil((rate * elapsedMs) / 1_000))
        expect(together).toBeGreaterThanOrEqual(burst + (rate * durationMs) / 1_000 / 2)
      }
    }).pipe(Effect.scoped), 60_000)

  it.live("a release on one store wakes a waiter on a store seeded with another node, whose subscriber is on a third", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      const seeds = [cluster.nodes[0]!.url, cluster.nodes[1]!.url]
      const [holder, waiter] = yield* Effect.forEach(seeds, (seed) =>
        Effect.gen(function*() {
          const store = yield* RedisStore.make("c", storeConfig(seed, prefix))
          return { store, ...(yield* serviceOn(store, { leased: { max_concurrent: 1, lease_ttl_seconds: 30 }, api: { rate_per_second: 100 } })) }
        }))
      const listening = [holder!, waiter!].map(({ store }) => nodeUrl(store.subscriber()?.options.port))
      const { key } = yield* Effect.promise(() => keyAwayFrom(prefix, "leased", listening))
      // The waiting store's own wake-up, taken before the release: with nothing else going on in that
      // store, it completes only on hearing the message.
      const released = yield* waiter!.store.releases(waiter!.spec("leased"), key)
      yield* Effect.scoped(holder!.service.acquire("leased", { key }))
      yield* released.pipe(
        Effect.timeoutFail({ duration: "5 seconds", onTimeout: () => new Error("the release was never heard by the other store's subscriber") })
      )
      // And through the limiters: a waiter in line on one store gets the lease the other releases.
      const woken = yield* Effect.scoped(Effect.gen(function*() {
        yield* holder!.service.acquire("leased", { key })
        const woken = yield* Effect.fork(Effect.scoped(waiter!.service.acquire("leased", { key, timeout: "10 seconds" })))
        yield* Effect.sleep("100 millis")
        return woken
      }))
      expect((yield* Fiber.join(woken)).degraded).toBe(false)

      // A backoff pushed through one store is heard by the other.
      const mark = waiter!.store.backoffs.mark()
      yield* holder!.service.backoff("api", { key, retryAfter: "5 seconds" })
      let until: number | undefined
      for (let i = 0; i < 100 && until === undefined; i++) {
        until = waiter!.store.backoffs.until(waiter!.spec("api"), key, mark, Date.now())
        if (until === undefined) yield* Effect.sleep("50 millis")
      }
      expect(until !== undefined, "the backoff was never heard by the other store's subscriber").toBe(true)
      expect(until).toBeGreaterThan(Date.now() + 3_000)
    }).pipe(Effect.scoped), 30_000)

  it.live("the program's own Cluster (RedisStore.layerWith): limits on every master, lease wake-ups, the client left open", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      const client = new Cluster([cluster.nodes[2]!.url], { lazyConnect: true })
      yield* Effect.addFinalizer(() => Effect.sync(() => client.disconnect()))
      const keys = yield* Effect.promise(() => keysOnEveryMaster(prefix, "api"))
      yield* Effect.gen(function*() {
        const limiter = yield* RateLimiter
        for (const { key } of keys) {
          expect((yield* limiter.tryConsume("api", { key })).degraded).toBe(false)
          expect((yield* Effect.flip(limiter.tryConsume("api", { key })))._tag).toBe("RateLimitExceeded")
        }
        const key = keys[0]!.key
        const waiter = yield* Effect.scoped(Effect.gen(function*() {
          yield* limiter.acquire("leased", { key })
          const waiter = yield* Effect.fork(Effect.scoped(limiter.acquire("leased", { key, timeout: "5 seconds" })))
          yield* Effect.sleep("100 millis")
          return waiter
        }))
        expect((yield* Fiber.join(waiter)).degraded).toBe(false)
      }).pipe(Effect.provide(RateSync.layer({
        stores: { r: { engine: "redis", url: "redis://unused.invalid:1", key_prefix: prefix } },
        limiters: { api: { store: "r", rate_per_second: 0.5 }, leased: { store: "r", max_concurrent: 1, lease_ttl_seconds: 30 } }
      }).pipe(Layer.provide(RedisStore.layerWith(client)))))
      expect(client.status).toBe("ready")
      expect(yield* Effect.promise(() => client.get(`${prefix}{none}`))).toBe(null)
    }).pipe(Effect.scoped), 30_000)

  it.live("a plain url to one node, without cluster = true: a key whose slot is elsewhere fails StoreMisconfigured, never admitted", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      const keys = yield* Effect.promise(() => keysOnEveryMaster(prefix, "api"))
      const node = keys[0]!.master
      const leasedKeys = (yield* Effect.promise(() => keysOnEveryMaster(prefix, "leased"))).filter((k) => k.master !== node)
      // The default fail_closed = false: an outage would be admitted, a misconfiguration never.
      const store = yield* RedisStore.make("c", storeConfig(node, prefix, { cluster: false }))
      const { service } = yield* serviceOn(store, { api: { rate_per_second: 100 }, leased: { max_concurrent: 2 } })
      expect((yield* service.consume("api", { key: keys[0]!.key })).degraded).toBe(false)
      for (const [i, { key }] of keys.slice(1).entries()) {
        const calls: ReadonlyArray<Effect.Effect<unknown, { readonly _tag: string; readonly message: string; readonly reason?: unknown }>> = [
          service.consume("api", { key }),
          service.state("api", { key }),
          Effect.scoped(service.acquire("leased", { key: leasedKeys[i]!.key }))
        ]
        for (const call of calls) {
          const error = yield* Effect.flip(call)
          expect(error._tag).toBe("StoreMisconfigured")
          expect(error.reason).toBe("redirect")
          expect(error.message).toMatch(/MOVED .*set cluster = true/)
        }
      }
      // rate-sync check says so too.
      const report = yield* Check.check("c", storeConfig(node, prefix, { cluster: false }))
      expect(report.problems.map((p) => p.message).join("\n")).toMatch(/this is a Redis Cluster node/)
    }).pipe(Effect.scoped), 30_000)

  it.live("cluster = true on a standalone server fails at start with StoreMisconfigured", () =>
    Effect.gen(function*() {
      const standalone = inject("redisUrl")
      if (standalone === "") return
      const error = yield* Effect.flip(RedisStore.make("c", storeConfig(standalone, freshPrefix())))
      expect(error._tag).toBe("StoreMisconfigured")
      expect(error.message).toMatch(/cluster support disabled/)
      const checked = yield* Effect.flip(Check.check("c", storeConfig(standalone, freshPrefix())))
      expect(checked._tag).toBe("StoreMisconfigured")
    }).pipe(Effect.scoped), 30_000)

  it.live("no seed node answering: the store starts, and fail_closed calls fail with StoreUnavailable (unreachable)", () =>
    Effect.gen(function*() {
      const store = yield* RedisStore.make("c", storeConfig("redis://127.0.0.1:1,redis://127.0.0.1:2", freshPrefix(), { connect_timeout_ms: 300 }))
      const { service } = yield* serviceOn(store, { api: { rate_per_second: 10, fail_closed: true }, open: { rate_per_second: 10 } })
      const error = yield* Effect.flip(service.consume("api"))
      expect(error._tag === "StoreUnavailable" && error.reason).toBe("unreachable")
      expect(error.message).toMatch(/^cannot reach Redis at redis:\/\/127\.0\.0\.1:1, redis:\/\/127\.0\.0\.1:2 \(cluster\)/)
      expect((yield* service.consume("open")).degraded).toBe(true)
    }).pipe(Effect.scoped), 30_000)

  it.live("a seed url's credentials are used on every node found; a wrong password fails at start (authentication), never shown", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      const user = `limiter${prefixes}`
      const name = `auth${prefixes}`
      yield* Effect.promise(() => Promise.all(cluster.nodes.map((node) => onNode(node.url, (redis) => redis.acl("SETUSER", user, "on", ">right", "~*", "&*", "+@all")))))
      const seed = (password: string) => `redis://${user}:${password}@127.0.0.1:${cluster.nodes[0]!.port}`
      const wrong = yield* Effect.flip(RedisStore.make("c", storeConfig(seed("wrong"), prefix)))
      expect(wrong._tag === "StoreMisconfigured" && wrong.reason).toBe("authentication")
      expect(wrong.message).not.toMatch(/wrong/)
      const store = yield* RedisStore.make(name, storeConfig(seed("right"), prefix))
      const { service } = yield* serviceOn(store, { api: { rate_per_second: 10 } })
      for (const { key, master } of yield* Effect.promise(() => keysOnEveryMaster(prefix, "api"))) {
        expect((yield* service.consume("api", { key })).degraded).toBe(false)
        // The master was found through the seed, and connected to as the seed's user.
        const list = yield* Effect.promise(() => onNode(master, (redis) => redis.client("LIST")))
        const ours = String(list).split("\n").filter((line) => line.includes(` name=rate-sync:${name}:${process.pid} `))
        expect(ours.length).toBeGreaterThan(0)
        for (const line of ours) expect(line).toMatch(new RegExp(` user=${user} `))
      }
    }).pipe(Effect.scoped), 30_000)

  it.live("a cluster url with a database number other than 0 fails at start (a cluster has only database 0)", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(RedisStore.make("c", storeConfig(`${cluster.nodes[0]!.url},redis://:secret@127.0.0.1:1/2`, freshPrefix())))
      expect(error._tag === "StoreMisconfigured" && error.reason).toBe("database")
      expect(error.message).toBe("Redis Cluster at redis://127.0.0.1:1/2: a cluster has database 0 only; remove the database number from url")
      expect((yield* Effect.scoped(RedisStore.make("c", storeConfig(`${cluster.nodes[0]!.url}/0`, freshPrefix())))).engine).toBe("redis")
    }).pipe(Effect.scoped), 30_000)

  it.live("rate-sync check on a cluster names it and checks every master", () =>
    Effect.gen(function*() {
      const report = yield* Check.check("c", storeConfig(`${cluster.nodes[0]!.url}, ${cluster.nodes[3]!.url}`, freshPrefix()))
      expect(report.mode).toMatch(/^cluster of 3 masters \(/)
      expect(report.problems).toEqual([])
      expect(report.where).toBe(`${cluster.nodes[0]!.url}, ${cluster.nodes[3]!.url}`)
      expect(report.version).toMatch(/^\d+\.\d+\.\d+$/)
    }).pipe(Effect.scoped), 30_000)

  it("errors: a redirect is a misconfiguration unless the store is a cluster, where a cluster in flux is an outage", () => {
    const context = { store: "r", where: "redis://127.0.0.1:7000", commandTimeoutMs: 2_000 }
    const cases = [
      ["MOVED 3999 127.0.0.1:7001", false, "StoreMisconfigured"],
      ["ASK 3999 127.0.0.1:7001", false, "StoreMisconfigured"],
      ["CLUSTERDOWN The cluster is down", false, "StoreMisconfigured"],
      ["TRYAGAIN Multiple keys request during rehashing of slot", false, "StoreMisconfigured"],
      ["CLUSTERDOWN The cluster is down", true, "StoreUnavailable"],
      ["Too many Cluster redirections. Last error: Error: Connection is closed.", true, "StoreUnavailable"],
      ["Cluster isn't ready and enableOfflineQueue options is false", true, "StoreUnavailable"],
      ["ERR This instance has cluster support disabled", true, "StoreMisconfigured"],
      // ioredis follows MOVED on a cluster: one that reaches the store is no outage either.
      ["MOVED 3999 127.0.0.1:7001", true, "StoreMisconfigured"],
      ["CROSSSLOT Keys in request don't hash to the same slot", true, "StoreMisconfigured"]
    ] as const
    for (const [message, isCluster, tag] of cases) {
      expect([message, isCluster, RedisErrors.classify({ ...context, cluster: isCluster }, new Error(message), undefined)._tag]).toEqual([message, isCluster, tag])
    }
    expect(RedisErrors.describeUrl("redis://:secret@127.0.0.1:7000, rediss://u:p@10.0.0.2:7001/0")).toBe("redis://127.0.0.1:7000, rediss://10.0.0.2:7001/0")
  })

  it.live("a slot moved while limiters run on it (ASK during the migration, MOVED after): every call admitted or a typed outage, the bound kept", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      const rate = 100
      // The program's own cluster client, which learns of the move only from the redirections (no periodic refresh of the slots).
      const client = new Cluster([cluster.nodes[0]!.url], { slotsRefreshInterval: 0 })
      yield* Effect.addFinalizer(() => Effect.sync(() => client.disconnect()))
      const store = yield* RedisStore.make("c", storeConfig("redis://unused.invalid", prefix), client)
      const { service } = yield* serviceOn(store, { api: { rate_per_second: rate, burst: 5, fail_closed: true } })
      const spread = yield* Effect.promise(() => keysOnEveryMaster(prefix, "api"))
      const { key, master: source } = spread[0]!
      const target = spread[1]!.master
      const slot = yield* Effect.promise(() => onNode(source, (redis) => redis.cluster("KEYSLOT", `${prefix}{api:${key}}:s`)))
      const idOf = (url: string) => onNode(url, (redis) => redis.cluster("MYID"))
      const [sourceId, targetId] = yield* Effect.promise(() => Promise.all([idOf(source), idOf(target)]))
      const redirections = () =>
        Effect.promise(async () => ({
          asked: await statsOf(source, "errorstats", /errorstat_ASK:count=(\d+)/),
          asking: await statsOf(target, "commandstats", /cmdstat_asking:calls=(\d+)/),
          // A retry after TRYAGAIN goes to any node: the MOVED may come from any of them.
          moved: (await Promise.all(cluster.nodes.map((node) => statsOf(node.url, "errorstats", /errorstat_MOVED:count=(\d+)/)))).reduce((a, b) => a + b)
        }))
      const before = yield* redirections()
      const running = yield* Effect.fork(drive(service, "api", key, 4, 3_000))
      yield* Effect.sleep("500 millis")
      yield* Effect.promise(async () => {
        await onNode(target, (redis) => redis.cluster("SETSLOT", slot, "IMPORTING", sourceId))
        await onNode(source, async (redis) => {
          await redis.cluster("SETSLOT", slot, "MIGRATING", targetId)
          for (;;) {
            const keys = await redis.cluster("GETKEYSINSLOT", slot, 100)
            if (keys.length === 0) break
            await redis.migrate("127.0.0.1", portOf(target), "", 0, 5_000, "KEYS", ...keys)
          }
        })
        // The keys have moved, the slot not yet: the source answers ASK.
        await new Promise((resolve) => setTimeout(resolve, 700))
        for (const node of [target, source, ...cluster.nodes.map((n) => n.url).filter((url) => url !== target && url !== source)]) {
          await onNode(node, (redis) => redis.cluster("SETSLOT", slot, "NODE", targetId)).catch(() => "a replica")
        }
      })
      const run = yield* Fiber.join(running)
      expect(yield* Effect.promise(() => masterOf(cluster.nodes[0]!.url, `${prefix}{api:${key}}:s`))).toBe(target)
      // The store was sent on by both kinds of redirection, and followed them (ASKING on the target).
      const after = yield* redirections()
      expect(after.asked).toBeGreaterThan(before.asked)
      expect(after.asking).toBeGreaterThan(before.asking)
      expect(after.moved).toBeGreaterThan(before.moved)
      expect(run.errors.filter((tag) => tag !== "StoreUnavailable" && tag !== "StoreTimeout")).toEqual([])
      expect(run.degraded).toBe(0)
      // MIGRATE moves the state whole: the bound holds across the move.
      expect(rateExcess(run.admissions, rate, 5)).toBeLessThanOrEqual(1e-6)
      // Admissions went on after the move, on the new master.
      expect(units(run.admissions)).toBeGreaterThan(5 + rate)
    }).pipe(Effect.scoped), 60_000)

  it.live("a master killed: after its replica takes over, limits hold again and wake-ups reach a store whose subscriber was on it", () =>
    Effect.gen(function*() {
      const prefix = freshPrefix()
      const rate = 50
      const keys = yield* Effect.promise(() => keysOnEveryMaster(prefix, "api"))
      const { key, master: doomed } = keys[0]!
      const victim = cluster.nodes.find((node) => node.url === doomed)!
      // Seeded with the doomed master alone, the waiter's store subscribes there first.
      const waiterStore = yield* RedisStore.make("c", storeConfig(doomed, prefix))
      expect(nodeUrl(waiterStore.subscriber()?.options.port)).toBe(doomed)
      const waiter = yield* serviceOn(waiterStore, { leased: { max_concurrent: 1, lease_ttl_seconds: 30 } })
      const holderStore = yield* RedisStore.make("c", storeConfig(cluster.nodes.find((n) => n.url !== doomed)!.url, prefix))
      const holder = yield* serviceOn(holderStore, { api: { rate_per_second: rate, burst: 5, fail_closed: true }, leased: { max_concurrent: 1, lease_ttl_seconds: 30 } })

      const switched = yield* Deferred.make<void>()
      const during = yield* Effect.fork(drive(holder.service, "api", key, 4, Deferred.await(switched)))
      yield* Effect.sleep("300 millis")
      yield* Effect.promise(() => victim.kill())
      // Until a replica serves the slot again (node timeout 1 s, then an election).
      const survivors = cluster.nodes.filter((node) => node !== victim).map((node) => node.url)
      yield* Effect.promise(() => waitUntilOk(survivors, 30_000, cluster.nodes.length))
      let recovered = false
      for (let i = 0; i < 100 && !recovered; i++) {
        recovered = (yield* Effect.either(holder.service.state("api", { key })))._tag === "Right"
        if (!recovered) yield* Effect.sleep("100 millis")
      }
      expect(recovered).toBe(true)
      yield* Deferred.succeed(switched, undefined)
      // During the switch: admitted, or an outage (fail_closed = true makes it visible); never a misconfiguration.
      const switchRun = yield* Fiber.join(during)
      expect(switchRun.errors.filter((tag) => tag !== "StoreUnavailable" && tag !== "StoreTimeout")).toEqual([])
      expect(switchRun.errors.length).toBeGreaterThan(0)
      expect(yield* Effect.promise(() => masterOf(survivors[0]!, `${prefix}{api:${key}}:s`))).not.toBe(doomed)

      // After the switch: the bound holds (what the replica had not yet received may be lost, so only
      // admissions after it are measured against each other).
      const after = yield* drive(holder.service, "api", key, 4, 1_500)
      expect(after.errors).toEqual([])
      expect(after.degraded).toBe(0)
      expect(rateExcess(after.admissions, rate, 5)).toBeLessThanOrEqual(1e-6)
      expect(units(after.admissions)).toBeGreaterThanOrEqual(rate / 2)

      // The waiter's subscriber moved to a live node: a release is heard there.
      const heard = yield* waiterStore.releases(waiter.spec("leased"), key)
      yield* Effect.scoped(holder.service.acquire("leased", { key }))
      yield* heard.pipe(
        Effect.timeoutFail({ duration: "10 seconds", onTimeout: () => new Error("the release was never heard: the subscriber did not move off the dead node") })
      )
      expect(waiterStore.subscriber()?.options.port).not.toBe(victim.port)
    }).pipe(Effect.scoped), 90_000)
})
