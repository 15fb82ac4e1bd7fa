/**
 * What `npm run bench` measures: this library on each store and in each PostgreSQL mode, the peers
 * people would pick instead (installed from npm, used through their public APIs), and the physical
 * floors (one round trip per call of the same driver, doing the least a limiter could).
 */
import * as ExperimentalLimiter from "@effect/experimental/RateLimiter"
import * as ExperimentalRedis from "@effect/experimental/RateLimiter/Redis"
import { Duration, Effect, Layer, ManagedRuntime } from "effect"
import { Redis } from "ioredis"
import pg from "pg"
import { RateLimiterMemory, RateLimiterPostgres, RateLimiterRedis } from "rate-limiter-flexible"
import { RateLimiter, RateSync, Stores } from "./library.js"
import type { StoreConfigInput } from "../src/Settings.js"

export type StoreName = "memory" | "postgres" | "redis"

export interface Workload {
  readonly label: string
  readonly callers: number
  /** 1: every call on one hot key; more: each call on a key drawn at random from that many. */
  readonly keys: number
  /**
   * Set for a workload whose every round starts with none of its keys stored: before each key's name
   * go this prefix and the round's number, and the memory stores (state in this process) start anew.
   */
  readonly keyPrefix?: string
}

export interface Contender {
  readonly name: string
  readonly store: StoreName
  readonly kind: "rate-sync" | "peer" | "floor"
  readonly start: () => Promise<void>
  /** Runs `workload` for `seconds`; every call's latency in ms. */
  readonly run: (workload: Workload, seconds: number) => Promise<Array<number>>
  readonly stop: () => Promise<void>
}

/** The PostgreSQL tables the contenders write, each its own (a workload's keys start unstored for every one). */
const TABLES = {
  acquire: "rate_sync_bench_acquire",
  consume: "rate_sync_bench_consume",
  asyncCommit: "rate_sync_bench_async_commit",
  unlogged: "rate_sync_bench_unlogged",
  flexible: "rlflx_bench",
  floorSync: "rate_sync_bench_floor_sync",
  floorAsync: "rate_sync_bench_floor_async"
} as const

/** The bench's own tables (the contenders', the lease hand-off's and the HTTP servers'): dropped when it ends, so runs do not grow the database. */
export const POSTGRES_TABLES: ReadonlyArray<string> = [...Object.values(TABLES), "bench_handoff_state", "bench_http_state"]

/** The next call's key, as cheap as a key can be made: the hot key's name is made once. */
const keyChooser = (workload: Workload): () => string => {
  const prefix = workload.keyPrefix ?? ""
  if (workload.keys === 1) {
    const hot = `${prefix}hot`
    return () => hot
  }
  const many = `${prefix}k`
  return () => many + Math.floor(Math.random() * workload.keys)
}

/** A Promise-based caller loop, `workload.callers` at once. */
const promiseLoops = async (workload: Workload, seconds: number, call: (key: string) => Promise<unknown>) => {
  const latencies: Array<number> = []
  const keyOf = keyChooser(workload)
  const end = performance.now() + seconds * 1000
  await Promise.all(Array.from({ length: workload.callers }, async () => {
    while (performance.now() < end) {
      const started = performance.now()
      await call(keyOf())
      latencies.push(performance.now() - started)
    }
  }))
  return latencies
}

/**
 * An Effect-based caller loop: `workload.callers` fibers in one runtime, as Effect programs run. A
 * plain loop in `Effect.gen`: `Effect.repeat` with a `while` predicate costs about 6 µs a turn in
 * Schedule machinery, which would be charged to the library measured.
 */
const fiberLoops = <E, R>(workload: Workload, seconds: number, call: (key: string) => Effect.Effect<unknown, E, R>) =>
  Effect.suspend(() => {
    const latencies: Array<number> = []
    const keyOf = keyChooser(workload)
    const end = performance.now() + seconds * 1000
    const caller = Effect.gen(function*() {
      while (performance.now() < end) {
        const started = performance.now()
        yield* call(keyOf())
        latencies.push(performance.now() - started)
      }
    })
    return Effect.as(Effect.all(Array.from({ length: workload.callers }, () => caller), { concurrency: "unbounded", discard: true }), latencies)
  })

/**
 * This library with one store; the limiter's rate is high enough never to wait. `api`: the scoped
 * `acquire` as most code calls it, or `consume`, which needs no scope (the peers' `consume` is the
 * same operation: a rate slot taken, nothing held).
 */
export const rateSync = (name: string, store: StoreName, config: StoreConfigInput, api: "acquire" | "consume" = "acquire"): Contender => {
  let runtime: ManagedRuntime.ManagedRuntime<RateLimiter, unknown> | undefined
  const acquire = (key: string) =>
    api === "acquire" ? Effect.scoped(RateLimiter.acquire("bench", { key })) : RateLimiter.consume("bench", { key })
  return {
    name,
    store,
    kind: "rate-sync",
    start: async () => {
      runtime = ManagedRuntime.make(
        RateSync.layer({ stores: { s: config }, limiters: { bench: { store: "s", rate_per_second: 1_000_000, burst: 1_000_000 } } })
          .pipe(Layer.provide(Stores.layer))
      )
      await runtime.runPromise(acquire("hot"))
    },
    run: (workload, seconds) => runtime!.runPromise(fiberLoops(workload, seconds, acquire)),
    stop: async () => {
      await runtime?.dispose()
    }
  }
}

/** `@effect/experimental`'s RateLimiter on a store layer, `consume` with a limit never reached. */
export const effectExperimental = (
  name: string,
  store: StoreName,
  storeLayer: Layer.Layer<ExperimentalLimiter.RateLimiterStore>
): Contender => {
  let runtime: ManagedRuntime.ManagedRuntime<ExperimentalLimiter.RateLimiter, unknown> | undefined
  const consume = (key: string) =>
    Effect.flatMap(ExperimentalLimiter.RateLimiter, (limiter) =>
      // Its Redis store keeps whole milliseconds per token (window / limit): one per ms, a ten-hour window
      // (36 million: a fast run can take more than 3.6 million in its rounds).
      limiter.consume({ key, limit: 36_000_000, window: Duration.hours(10), onExceeded: "fail" }))
  return {
    name,
    store,
    kind: "peer",
    start: async () => {
      runtime = ManagedRuntime.make(ExperimentalLimiter.layer.pipe(Layer.provide(storeLayer)))
      await runtime.runPromise(consume("hot"))
    },
    run: (workload, seconds) => runtime!.runPromise(fiberLoops(workload, seconds, consume)),
    stop: async () => {
      await runtime?.dispose()
    }
  }
}

export const flexibleMemory = (): Contender => {
  let limiter: RateLimiterMemory | undefined
  return {
    name: "rate-limiter-flexible RateLimiterMemory",
    store: "memory",
    kind: "peer",
    start: async () => {
      limiter = new RateLimiterMemory({ points: 1_000_000_000, duration: 1 })
    },
    run: (workload, seconds) => promiseLoops(workload, seconds, (key) => limiter!.consume(key)),
    stop: async () => {}
  }
}

export const flexiblePostgres = (url: string): Contender => {
  const pool = new pg.Pool({ connectionString: url, max: 10 })
  let limiter: RateLimiterPostgres | undefined
  return {
    name: "rate-limiter-flexible RateLimiterPostgres",
    store: "postgres",
    kind: "peer",
    start: () =>
      new Promise<void>((resolve, reject) => {
        limiter = new RateLimiterPostgres(
          { storeClient: pool, tableName: TABLES.flexible, points: 1_000_000_000, duration: 1 },
          (error?: unknown) => (error ? reject(error) : resolve())
        )
      }),
    run: (workload, seconds) => promiseLoops(workload, seconds, (key) => limiter!.consume(key)),
    stop: () => pool.end()
  }
}

export const flexibleRedis = (url: string, keyPrefix: string): Contender => {
  const client = new Redis(url, { enableOfflineQueue: false })
  const limiter = new RateLimiterRedis({ storeClient: client, keyPrefix, points: 1_000_000_000, duration: 1 })
  return {
    name: "rate-limiter-flexible RateLimiterRedis",
    store: "redis",
    kind: "peer",
    start: async () => {
      await new Promise<void>((resolve) => (client.status === "ready" ? resolve() : client.once("ready", () => resolve())))
    },
    run: (workload, seconds) => promiseLoops(workload, seconds, (key) => limiter.consume(key)),
    stop: async () => {
      await client.quit()
    }
  }
}

/**
 * The floor on PostgreSQL: one single-statement upsert per call through `pg`, the least a limiter
 * that writes once per call could do, a key's first use included (it creates the row).
 */
export const postgresFloor = (url: string, synchronousCommit: boolean): Contender => {
  const pool = new pg.Pool({ connectionString: url, max: 10, ...(synchronousCommit ? {} : { options: "-c synchronous_commit=off" }) })
  const table = synchronousCommit ? TABLES.floorSync : TABLES.floorAsync
  return {
    name: `floor: INSERT ... ON CONFLICT DO UPDATE, synchronous_commit = ${synchronousCommit ? "on" : "off"}`,
    store: "postgres",
    kind: "floor",
    start: async () => {
      await pool.query(`CREATE TABLE IF NOT EXISTS ${table} (k text PRIMARY KEY, n bigint NOT NULL)`)
    },
    run: (workload, seconds) =>
      promiseLoops(workload, seconds, (key) =>
        pool.query(`INSERT INTO ${table} AS t VALUES ($1, 1) ON CONFLICT (k) DO UPDATE SET n = t.n + 1 RETURNING n`, [key])),
    stop: () => pool.end()
  }
}

/** The floor on Redis: EVALSHA of a trivial script per call, through `ioredis`. */
export const redisFloor = (url: string): Contender => {
  const client = new Redis(url)
  let sha = ""
  return {
    name: "floor: EVALSHA of a trivial script",
    store: "redis",
    kind: "floor",
    start: async () => {
      sha = String(await client.script("LOAD", "return 1"))
    },
    run: (workload, seconds) => promiseLoops(workload, seconds, (key) => client.evalsha(sha, 1, key)),
    stop: async () => {
      await client.quit()
    }
  }
}

/** Every contender; on Redis, every key they write starts with `redisPrefix`. */
export const all = (postgresUrl: string, redisUrl: string, redisPrefix: string): Array<Contender> => {
  const postgres = (table: string) => ({ engine: "postgres" as const, url: postgresUrl, auto_create: true, table_name: table })
  return [
    rateSync("rate-sync Effect.scoped(acquire)", "memory", { engine: "memory" }),
    rateSync("rate-sync consume", "memory", { engine: "memory" }, "consume"),
    flexibleMemory(),
    effectExperimental("@effect/experimental RateLimiter (memory store)", "memory", ExperimentalLimiter.layerStoreMemory),
    rateSync("rate-sync Effect.scoped(acquire)", "postgres", postgres(TABLES.acquire)),
    rateSync("rate-sync consume", "postgres", postgres(TABLES.consume), "consume"),
    rateSync("rate-sync acquire, synchronous_commit = false", "postgres", { ...postgres(TABLES.asyncCommit), synchronous_commit: false }),
    rateSync("rate-sync acquire, unlogged = true", "postgres", { ...postgres(TABLES.unlogged), unlogged: true }),
    flexiblePostgres(postgresUrl),
    postgresFloor(postgresUrl, true),
    postgresFloor(postgresUrl, false),
    rateSync("rate-sync Effect.scoped(acquire)", "redis", { engine: "redis", url: redisUrl, key_prefix: `${redisPrefix}a:` }),
    rateSync("rate-sync consume", "redis", { engine: "redis", url: redisUrl, key_prefix: `${redisPrefix}c:` }, "consume"),
    flexibleRedis(redisUrl, `${redisPrefix}rlflx`),
    effectExperimental(
      "@effect/experimental RateLimiter (Redis store)",
      "redis",
      ExperimentalRedis.layerStore({ ...redisOptions(redisUrl), prefix: `${redisPrefix}fx:` })
    ),
    redisFloor(redisUrl)
  ]
}

const redisOptions = (url: string) => {
  const parsed = new URL(url)
  return {
    host: parsed.hostname,
    port: Number(parsed.port || 6379),
    ...(parsed.password === "" ? {} : { password: decodeURIComponent(parsed.password) })
  }
}
