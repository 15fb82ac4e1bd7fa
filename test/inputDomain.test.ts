/**
 * The input domain of the configuration: every key at its boundaries and beyond. For each key of each
 * table (read from the schemas, so a key added later is covered without touching this file), a value
 * is either refused when decoded, by a `ConfigurationError` naming the key, or gives settings that
 * build and serve `tryAcquire`, `acquire` and `consume` on every engine (memory, PostgreSQL with
 * `auto_create`, Redis), answering a permit or a typed error: never a defect, an untyped failure, a
 * store error from a store that is up, or a degraded permit.
 */
import { randomBytes } from "node:crypto"
import { readFileSync } from "node:fs"
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FastCheck from "effect/FastCheck"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import { Redis } from "ioredis"
import { inject } from "vitest"
import { settingsConfig } from "../src/EnvConfig.js"
import * as Errors from "../src/Errors.js"
import { type Permit, RateLimiter } from "../src/RateLimiter.js"
import * as RateSync from "../src/RateSync.js"
import {
  decodeSettings,
  type Engine,
  inRange,
  LimiterConfig,
  maxNameLength,
  MAX_STATE_SECONDS,
  MemoryStoreConfig,
  PostgresStoreConfig,
  type Range,
  ranges,
  RedisStoreConfig,
  type Settings
} from "../src/Settings.js"
import { type Store, StoreFactory } from "../src/Store.js"
import * as Stores from "../src/Stores.js"
import * as Toml from "../src/Toml.js"
import { admin } from "./support/admin.js"

const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8")
const databaseUrl = inject("databaseUrl")
const redisUrl = inject("redisUrl")
/** Makes every limiter name, so every state key, of this run its own. */
const run = randomBytes(3).toString("hex")
const TABLE = `rs_input_${run}`
let groups = 0
/** A name no earlier group used, so no limiter meets state another one left in a shared store. */
const uniqueName = (prefix: string) => `${prefix}${run}g${groups++}`

type Table = "limiter" | Engine
const schemas = { limiter: LimiterConfig, memory: MemoryStoreConfig, postgres: PostgresStoreConfig, redis: RedisStoreConfig }
const tables: ReadonlyArray<Table> = ["limiter", "memory", "postgres", "redis"]
const keysOf = (table: Table): ReadonlyArray<string> => Object.keys(schemas[table].fields)
const rangeOf = (table: Table, key: string): Range | undefined => (ranges[table] as Record<string, Range>)[key]
const numericKeys = tables.flatMap((table) => Object.entries(ranges[table] as Record<string, Range>).map(([key, range]) => ({ table, key, range })))
const enginesUnderTest: ReadonlyArray<Engine> = redisUrl === "" ? ["memory", "postgres"] : ["memory", "postgres", "redis"]

// ---- values --------------------------------------------------------------------------------------

/** Tried on every key: edge numbers, numbers as env vars spell them, wrong types, odd strings. */
const generic: ReadonlyArray<unknown> = [
  0, -1, -0, NaN, Infinity, -Infinity, 1e300, -1e300, 1e-300, 1e-13, 0.5, 1.5, 2 ** 31, 2 ** 53 + 2,
  Number.MAX_VALUE, Number.MIN_VALUE,
  "", "   ", "abc", "10", " 10 ", "1e300", "-0", "0x10", "NaN", "Infinity", "true", "FALSE",
  true, false, null, [], [1], {}, { toString: 1 }, Object.create(null), 10n, new Date(0),
  "a".repeat(63), "a".repeat(64), "x".repeat(10_000), "lone \uD800", "__proto__",
  "n".repeat(maxNameLength), "n".repeat(maxNameLength + 1)
]

/** The edges of a key's range, just inside and just outside, as numbers and as strings. */
const edges = (range: Range): ReadonlyArray<unknown> => {
  const max = Number.isFinite(range.max) ? range.max : Number.MAX_VALUE
  const below = range.min === 0 ? -Number.MIN_VALUE : range.min * (1 - 1e-12)
  const values: Array<unknown> = [range.min, max, below, max * (1 + 1e-12), String(range.min), String(max)]
  if (range.above === true) values.push(range.min + Number.MIN_VALUE, range.min === 0 ? 1e-300 : range.min * (1 + 1e-12))
  if (range.whole === true) values.push(range.min - 1, max + 1, max - 0.5, range.min + 0.5)
  return values
}

const valuesFor = (table: Table, key: string): ReadonlyArray<unknown> => {
  const range = rangeOf(table, key)
  return range === undefined ? generic : [...generic, ...edges(range)]
}

const show = (value: unknown): string => {
  if (typeof value === "string") return value.length > 40 ? `"${value.slice(0, 12)}..." (${value.length} chars)` : JSON.stringify(value)
  if (typeof value === "number") return Object.is(value, -0) ? "-0" : String(value)
  if (typeof value === "bigint") return `${value}n`
  try {
    return JSON.stringify(value) ?? String(value)
  } catch {
    return Object.prototype.toString.call(value)
  }
}

// ---- configurations ------------------------------------------------------------------------------

const storeBase = (engine: Engine, overrides: Record<string, unknown> = {}): Record<string, unknown> =>
  engine === "memory"
    ? { engine, ...overrides }
    : engine === "postgres"
    ? { engine, url: databaseUrl, auto_create: true, table_name: TABLE, ...overrides }
    : { engine, url: redisUrl, key_prefix: `rate-sync-input:${run}:`, ...overrides }

/**
 * The limiter (without its store) a key is tried in: the algorithm it belongs to, else a rate with
 * leases (both code paths). Store failures fail closed, so they surface as errors with the store's message.
 */
const limiterBase = (key: string): Record<string, unknown> =>
  key === "limit" || key === "window_seconds"
    ? { algorithm: "sliding_window", limit: 5, window_seconds: 1, fail_closed: true }
    : key === "rate_per_second"
    ? { rate_per_second: 10, fail_closed: true }
    : key === "burst"
    ? { rate_per_second: 10, burst: 2, fail_closed: true }
    : { rate_per_second: 10, max_concurrent: 2, fail_closed: true }

/** Keys a rule ties to another key: that one is set so the rule holds for every value in range. */
const companions: Partial<Record<Table, Record<string, Record<string, unknown>>>> = {
  limiter: {
    retry_base_delay_ms: { retry_max_delay_ms: ranges.limiter.retry_max_delay_ms.max },
    retry_max_delay_ms: { retry_base_delay_ms: Number.MIN_VALUE }
  },
  postgres: {
    pool_min_size: { pool_max_size: ranges.postgres.pool_max_size.max },
    pool_max_size: { pool_min_size: 0 }
  }
}

/** The limiter (without its store) or the store that tries `key = value`. */
const limiterCase = (key: string, value: unknown): Record<string, unknown> => ({
  ...limiterBase(key),
  ...companions.limiter?.[key],
  [key]: value
})
const storeCase = (engine: Engine, key: string, value: unknown): Record<string, unknown> => ({
  ...companions[engine]?.[key],
  [key]: value
})

const caseInput = (table: Table, key: string, value: unknown) =>
  table === "limiter"
    ? { stores: { s: storeBase("memory") }, limiters: { l: { store: "s", ...limiterCase(key, value) } } }
    : { stores: { s: storeBase(table, storeCase(table, key, value)) }, limiters: { l: { store: "s", rate_per_second: 1 } } }

const decode = (input: unknown) => Effect.runSyncExit(decodeSettings(input))

const failureOf = <A, E>(exit: Exit.Exit<A, E>): E | undefined =>
  Exit.isFailure(exit) ? Option.getOrUndefined(Cause.failureOption(exit.cause)) : undefined

/**
 * What decoding `value` for `key` must give: settings whose value for the key lies in its range, or
 * a ConfigurationError located in the entry, one of whose issues is the key's path (or, for a rule
 * between two keys, names the key in its message). Returns the decoded settings, or undefined.
 */
const expectDecoded = (table: Table, key: string, value: unknown): Settings | undefined => {
  const exit = decode(caseInput(table, key, value))
  const label = `${table}.${key} = ${show(value)}`
  const entry = table === "limiter" ? "limiters.l" : "stores.s"
  if (Exit.isSuccess(exit)) {
    const decoded: unknown = table === "limiter"
      ? (exit.value.limiters["l"] as Record<string, unknown> | undefined)?.[key]
      : (exit.value.stores["s"] as Record<string, unknown> | undefined)?.[key]
    const range = rangeOf(table, key)
    if (range !== undefined && decoded !== undefined) {
      expect(typeof decoded, label).toBe("number")
      expect(Number.isFinite(decoded), `${label} decoded to ${show(decoded)}`).toBe(true)
      expect(inRange(range, decoded as number), `${label} decoded to ${show(decoded)}, outside its range`).toBe(true)
      expect(Object.is(decoded, -0), `${label} decoded to -0`).toBe(false)
    }
    if (typeof decoded === "string") expect(/[\uD800-\uDFFF]/.test(decoded), `${label}: a lone surrogate got through`).toBe(false)
    return exit.value
  }
  const error = failureOf(exit)
  expect(error, `${label}: not a typed failure: ${Cause.pretty(exit.cause)}`).toBeInstanceOf(Errors.ConfigurationError)
  const issues = (error as Errors.ConfigurationError).issues
  expect(issues.length, label).toBeGreaterThan(0)
  for (const issue of issues) {
    expect(issue.path === entry || issue.path.startsWith(`${entry}.`), `${label}: an issue outside the entry: ${issue.path}`).toBe(true)
    expect(issue.message, label).not.toBe("")
  }
  const named = issues.some((issue) => issue.path === `${entry}.${key}` || (issue.path.startsWith(`${entry}.`) && issue.message.includes(key)))
  expect(named, `${label}: no issue names the key: ${error!.message}`).toBe(true)
  return undefined
}

/**
 * The values of `valuesFor` that decode, one per decoded value (`10`, `"10"` and `" 10 "` are one
 * configuration), each with every input that gave it.
 */
const acceptedValues = (table: Table, key: string): ReadonlyArray<{ readonly labels: string; readonly value: unknown }> => {
  const byDecoded = new Map<string, { labels: Array<string>; value: unknown }>()
  for (const value of valuesFor(table, key)) {
    const settings = expectDecoded(table, key, value)
    if (settings === undefined) continue
    const entry = (table === "limiter" ? settings.limiters["l"] : settings.stores["s"]) as unknown as Record<string, unknown>
    const decoded = JSON.stringify(entry[key])
    const seen = byDecoded.get(decoded)
    if (seen === undefined) byDecoded.set(decoded, { labels: [show(value)], value })
    else seen.labels.push(show(value))
  }
  return [...byDecoded.values()].map(({ labels, value }) => ({ labels: labels.join(" | "), value }))
}

// ---- serving -------------------------------------------------------------------------------------

/** Every class `src/Errors.ts` exports: a failure must be an instance of one of them. */
const errorClasses = Object.values(Errors).filter((value): value is typeof Errors.StoreUnavailable =>
  typeof value === "function" && typeof (value as { _tag?: unknown })._tag === "string"
)
/** A store that is up answering one of these for a valid configuration is the bug this file looks for. */
const storeFailures = new Set(["StoreUnavailable", "StoreTimeout", "StoreMisconfigured"])

/** undefined when the outcome is acceptable; else what went wrong. */
const judge = (exit: Exit.Exit<Permit, unknown>, tightBound: boolean): string | undefined => {
  if (Exit.isSuccess(exit)) return exit.value.degraded ? "a degraded permit: the store call failed" : undefined
  const error = failureOf(exit)
  if (error === undefined) return `a defect or interruption: ${Cause.pretty(exit.cause).split("\n").slice(0, 3).join(" ")}`
  const tag = typeof error === "object" && error !== null && "_tag" in error ? String(error._tag) : undefined
  if (tag === "TimeoutException") return "no answer within 10 s"
  if (tag === undefined || !errorClasses.some((cls) => cls._tag === tag && error instanceof cls)) {
    return `an untyped failure: ${tag ?? ""} ${error instanceof Error ? error.message : String(error)}`
  }
  // A store configured to answer within a fraction of a second may not, on a busy machine: its
  // StoreTimeout is the documented answer to that bound, not a bug.
  if (tag === "StoreTimeout" && tightBound) return undefined
  return storeFailures.has(tag) ? `${tag}: ${(error as Error).message}` : undefined
}

/**
 * Whether to also acquire a second permit on a key with the limiter's own `timeout`: when one is
 * configured and the next slot is near (10/s or faster, no window), so the call ends within 100 ms.
 */
const waitsConfigured = (config: Record<string, unknown>): boolean =>
  config["timeout"] !== undefined && config["algorithm"] === undefined && Number(config["rate_per_second"] ?? 10) >= 10

/** The calls each limiter serves: fresh keys (so none waits for a slot), then refusals and waits. */
const calls = (name: string, waitConfigured: boolean): ReadonlyArray<readonly [string, Effect.Effect<Permit, unknown, RateLimiter>]> => [
  ["tryAcquire", Effect.scoped(RateLimiter.tryAcquire(name, { key: "t" }))],
  ["tryAcquire, same key", Effect.scoped(RateLimiter.tryAcquire(name, { key: "t" }))],
  ["acquire", Effect.scoped(RateLimiter.acquire(name, { key: "a" }))],
  ["acquire, same key, timeout 20 ms", Effect.scoped(RateLimiter.acquire(name, { key: "a", timeout: "20 millis" }))],
  ...(waitConfigured ? [["acquire, same key, configured timeout", Effect.scoped(RateLimiter.acquire(name, { key: "a" }))] as const] : []),
  ["consume", RateLimiter.consume(name, { key: "c" })],
  ["tryAcquire, a 150-character key", Effect.scoped(RateLimiter.tryAcquire(name, { key: "k".repeat(150) }))],
  ["tryAcquire, a 10,000-character unicode key", Effect.scoped(RateLimiter.tryAcquire(name, { key: "ü".repeat(10_000) }))]
]

interface UnderTest {
  readonly name: string
  readonly label: string
  readonly waitConfigured: boolean
  /** Its store has a timeout under a second (a boundary value): a StoreTimeout is an answer. */
  readonly tightBound?: boolean
}

/** Store keys that bound how long a store call may take, in ms. */
const timeoutKeys = ["operation_timeout_ms", "pool_timeout_ms", "command_timeout_ms", "connect_timeout_ms"]

/** Runs every call of every limiter (limiters side by side, each one's calls in order); returns what went wrong, one line each. */
const serveAll = (limiters: ReadonlyArray<UnderTest>) =>
  Effect.forEach(limiters, (limiter) =>
    Effect.gen(function*() {
      const problems: Array<string> = []
      for (const [call, effect] of calls(limiter.name, limiter.waitConfigured)) {
        const exit = yield* Effect.exit(Effect.timeout(effect, "10 seconds"))
        const problem = judge(exit, limiter.tightBound === true)
        if (problem !== undefined) problems.push(`${limiter.label}: ${call}: ${problem}`)
      }
      return problems
    }), { concurrency: 8 }).pipe(Effect.map((all) => all.flat()))

const buildProblem = (label: string, exit: Exit.Failure<unknown, unknown>) => {
  const error = failureOf(exit)
  return `${label}: the layer did not build: ${error instanceof Error ? error.message : Cause.pretty(exit.cause)}`
}

// ---- one store per engine for the limiter keys, built once ---------------------------------------

/**
 * The stores every random limiter is served on. What is checked is that an input is served, not how
 * fast: the largest ones (10,000 leases on a 10,000-character key) take tens of milliseconds, and a
 * loaded machine can stretch that past the default 2 s bound, so the bound here is 30 s.
 */
const sharedConfigs = Object.fromEntries(
  enginesUnderTest.map((engine) => [
    engine,
    storeBase(engine, engine === "postgres" ? { operation_timeout_ms: 30_000 } : engine === "redis" ? { command_timeout_ms: 30_000 } : {})
  ])
)
let sharedScope: Scope.CloseableScope | undefined
const sharedStores = new Map<string, Store>()

/** Hands the stores built once to every layer, so each group of limiters costs no connection. */
const sharedFactory = Layer.succeed(StoreFactory, {
  make: (name) => Effect.sync(() => sharedStores.get(name)!)
})

/** Builds `limiters` (name -> config without the store) on every engine and serves them. */
const serveOnEveryEngine = (limiters: ReadonlyArray<readonly [label: string, config: Record<string, unknown>]>) =>
  Effect.gen(function*() {
    const group = uniqueName("")
    const entries = enginesUnderTest.flatMap((engine) =>
      limiters.map(([label, config], i) => ({
        name: `${engine[0]}${group}-${i}`,
        label: `${engine}: ${label}`,
        config: { ...config, store: engine },
        waitConfigured: waitsConfigured(config)
      }))
    )
    const input = { stores: sharedConfigs, limiters: Object.fromEntries(entries.map((e) => [e.name, e.config])) }
    const layer = RateSync.layer(input as never).pipe(Layer.provide(sharedFactory))
    const built = yield* Effect.exit(Layer.build(layer))
    if (Exit.isFailure(built)) return [buildProblem("limiters", built)]
    return yield* serveAll(entries).pipe(Effect.provide(built.value))
  }).pipe(Effect.scoped)

const postgresCleanup: Array<string> = []

beforeAll(async () => {
  const scope = await Effect.runPromise(Scope.make())
  sharedScope = scope
  await Effect.runPromise(Effect.gen(function*() {
    const settings = yield* decodeSettings({ stores: sharedConfigs })
    const factory = yield* StoreFactory
    for (const [name, config] of Object.entries(settings.stores)) {
      sharedStores.set(name, yield* Scope.extend(factory.make(name, config), scope))
    }
  }).pipe(Effect.provide(Stores.layer)))
  postgresCleanup.push(`DROP TABLE IF EXISTS public."${TABLE}"`)
})

/** Drops what this run wrote: its tables and schemas, and its Redis keys (some live as long as a 115-day window). */
afterAll(async () => {
  if (sharedScope !== undefined) await Effect.runPromise(Scope.close(sharedScope, Exit.void))
  await admin(databaseUrl, postgresCleanup.reverse())
  if (redisUrl === "") return
  const redis = new Redis(redisUrl)
  try {
    // Every limiter name of this run holds `${run}g`, whatever key_prefix its store had.
    for (const pattern of [`rate-sync-input:${run}:*`, `*{*${run}g*`]) {
      for await (const keys of redis.scanStream({ match: pattern, count: 1_000 }) as AsyncIterable<Array<string>>) {
        if (keys.length > 0) await redis.del(...keys)
      }
    }
  } finally {
    await redis.quit()
  }
})

/** Builds one store with `overrides` and limiters of every kind on it, serves them, closes it. */
const serveStore = (engine: Engine, overrides: Record<string, unknown>, label: string) =>
  Effect.gen(function*() {
    if (engine === "postgres") yield* Effect.promise(() => preparePostgres(overrides))
    const input = {
      stores: { s: storeBase(engine, overrides) },
      limiters: {
        [uniqueName("tb")]: { store: "s", rate_per_second: 10, burst: 2, fail_closed: true },
        [uniqueName("sw")]: { store: "s", algorithm: "sliding_window", limit: 2, window_seconds: 0.2, fail_closed: true },
        [uniqueName("lease")]: { store: "s", max_concurrent: 2, rate_per_second: 10, fail_closed: true }
      }
    }
    const built = yield* Effect.exit(Layer.build(RateSync.layer(input as never).pipe(Layer.provide(Stores.layer))))
    if (Exit.isFailure(built)) return [buildProblem(label, built)]
    const tightBound = timeoutKeys.some((key) => Number(overrides[key] ?? Infinity) < 1_000)
    return yield* serveAll(Object.keys(input.limiters).map((name) => ({ name, label: `${label}: ${name}`, waitConfigured: false, tightBound }))).pipe(
      Effect.provide(built.value)
    )
  }).pipe(Effect.scoped)

/** Schemas the accepted `schema_name` values need (they must exist); every table made here is dropped at the end. */
const preparePostgres = async (overrides: Record<string, unknown>) => {
  const settings = Effect.runSync(decodeSettings({ stores: { s: storeBase("postgres", overrides) } }))
  const store = settings.stores["s"]
  if (store?.engine !== "postgres") return
  const [existing] = await admin(databaseUrl, [`SELECT 1 FROM pg_namespace WHERE nspname = '${store.schema_name}'`])
  if (existing!.rowCount === 0) {
    await admin(databaseUrl, [`CREATE SCHEMA IF NOT EXISTS "${store.schema_name}"`])
    postgresCleanup.push(`DROP SCHEMA IF EXISTS "${store.schema_name}" CASCADE`)
  }
  postgresCleanup.push(`DROP TABLE IF EXISTS "${store.schema_name}"."${store.table_name}"`)
}

// ---- the tests -----------------------------------------------------------------------------------

describe("every key, every boundary value: refused naming the key, or served by every engine", () => {
  it("the keys and values under test come from the schemas", () => {
    for (const table of tables) {
      expect(keysOf(table).length).toBeGreaterThan(1)
      for (const key of keysOf(table)) {
        // A key that takes a number has a range: given 1, it takes it or says what range it wanted.
        const message = failureOf(decode(caseInput(table, key, 1)))?.message ?? ""
        const numeric = !/Expected (a string|true or false|")/.test(message)
        if (numeric) expect(rangeOf(table, key), `${table}.${key} takes a number but has no range in Settings.ranges`).toBeDefined()
      }
      for (const key of Object.keys(ranges[table])) expect(keysOf(table), `ranges.${table}.${key} is no key`).toContain(key)
      for (const key of keysOf(table)) {
        expect(readme.includes(`\`${key}\``) || readme.includes(`\n${key} = `), `README.md documents ${key}`).toBe(true)
      }
    }
  })

  it("the ends of every range are accepted, as numbers and as strings", () => {
    for (const { key, range, table } of numericKeys) {
      const max = Number.isFinite(range.max) ? range.max : Number.MAX_VALUE
      const least = range.above === true ? (range.whole === true ? range.min + 1 : range.min + Number.MIN_VALUE) : range.min
      for (const value of [least, max, String(least), String(max)]) {
        expect(expectDecoded(table, key, value), `${table}.${key} = ${show(value)} was refused`).toBeDefined()
      }
    }
  })

  for (const table of tables) {
    it(`${table}: each value decodes into its range or is refused naming the key`, () => {
      for (const key of keysOf(table)) for (const value of valuesFor(table, key)) expectDecoded(table, key, value)
    })
  }

  for (const key of keysOf("limiter")) {
    it.live(`limiters.${key}: every accepted value builds and serves on every engine`, () =>
      Effect.gen(function*() {
        const accepted = acceptedValues("limiter", key).map(({ labels, value }) => [`${key} = ${labels}`, limiterCase(key, value)] as const)
        if (rangeOf("limiter", key) !== undefined) expect(accepted.length, "some value is accepted").toBeGreaterThan(0)
        // A `store` value names a store: the ones accepted are the store each limiter below is given anyway.
        expect(yield* serveOnEveryEngine(key === "store" ? [] : accepted)).toEqual([])
      }), 60_000)
  }

  it.live("limiters: the largest and smallest accepted combinations serve on every engine", () =>
    Effect.gen(function*() {
      const r = ranges.limiter
      const combos: ReadonlyArray<readonly [string, Record<string, unknown>]> = [
        ["the most state ahead: rate 1e-6, burst at the bound", { rate_per_second: r.rate_per_second.min, burst: MAX_STATE_SECONDS * r.rate_per_second.min }],
        ["the fastest rate with the largest burst", { rate_per_second: r.rate_per_second.max, burst: r.burst.max }],
        ["the largest window", { algorithm: "sliding_window", limit: r.limit.max, window_seconds: r.window_seconds.max }],
        ["the smallest window", { algorithm: "sliding_window", limit: 1, window_seconds: r.window_seconds.min }],
        ["the most leases, longest ttl, slowest rate, longest timeout", {
          max_concurrent: r.max_concurrent.max,
          lease_ttl_seconds: r.lease_ttl_seconds.max,
          rate_per_second: r.rate_per_second.min,
          timeout: Number.MAX_VALUE
        }],
        ["one lease, the shortest ttl, a 1 ms window", {
          max_concurrent: 1,
          lease_ttl_seconds: r.lease_ttl_seconds.min,
          algorithm: "sliding_window",
          limit: 1,
          window_seconds: r.window_seconds.min
        }],
        ["the longest retry schedule", {
          rate_per_second: 10,
          retry_max_attempts: r.retry_max_attempts.max,
          retry_base_delay_ms: r.retry_base_delay_ms.max,
          retry_max_delay_ms: r.retry_max_delay_ms.max
        }]
      ]
      for (const [label, config] of combos) {
        expect(Exit.isSuccess(decode({ stores: { s: { engine: "memory" } }, limiters: { l: { store: "s", ...config } } })), label).toBe(true)
      }
      expect(yield* serveOnEveryEngine(combos.map(([label, config]) => [label, { ...config, fail_closed: true }]))).toEqual([])
    }), 60_000)

  it("a drained bucket must refill within the bound: burst / rate_per_second above it is refused, naming both keys", () => {
    const over = decode({
      stores: { s: { engine: "memory" } },
      limiters: { l: { store: "s", rate_per_second: 0.000001, burst: MAX_STATE_SECONDS * 0.000001 + 1 } }
    })
    const error = failureOf(over) as Errors.ConfigurationError
    expect(error.issues.map((i) => i.path)).toEqual(["limiters.l.burst"])
    expect(error.issues[0]!.message).toMatch(/^Expected burst \/ rate_per_second at most 1000000000 seconds .*found 1001 \/ 0\.000001 = /)
  })

  it("lease_ttl_seconds below half a second is refused, saying why", () => {
    const error = failureOf(decode({ stores: { s: { engine: "memory" } }, limiters: { l: { store: "s", max_concurrent: 1, lease_ttl_seconds: 0.001 } } }))
    expect(error?.message).toBe(
      "limiters.l.lease_ttl_seconds: Expected a number from 0.5 to 1000000 seconds (a lease is renewed every third of it: a shorter one expires before its renewal lands, a longer one outgrows the renewal timer), found 0.001"
    )
  })

  it.live("at the shortest lease_ttl_seconds, a held lease outlives three ttls on every engine (renewal keeps it)", () =>
    Effect.gen(function*() {
      const ttl = ranges.limiter.lease_ttl_seconds.min
      const names = enginesUnderTest.map((engine) => [engine, `${engine[0]}${uniqueName("ttl")}`] as const)
      const input = {
        stores: sharedConfigs,
        limiters: Object.fromEntries(names.map(([engine, name]) => [name, { store: engine, max_concurrent: 1, lease_ttl_seconds: ttl, fail_closed: true }]))
      }
      const built = yield* Layer.build(RateSync.layer(input as never).pipe(Layer.provide(sharedFactory)))
      const outcomes = yield* Effect.forEach(names, ([engine, name]) =>
        Effect.scoped(Effect.gen(function*() {
          yield* RateLimiter.acquire(name)
          yield* Effect.sleep(ttl * 3 * 1000)
          const state = yield* RateLimiter.state(name)
          const other = yield* Effect.either(Effect.scoped(RateLimiter.tryAcquire(name)))
          return `${engine}: held ${state.leasesHeld}, another caller ${other._tag === "Left" ? other.left._tag : "admitted"}`
        })), { concurrency: "unbounded" }).pipe(Effect.provide(built))
      expect(outcomes).toEqual(names.map(([engine]) => `${engine}: held 1, another caller RateLimitExceeded`))
    }).pipe(Effect.scoped), 30_000)

  for (const engine of enginesUnderTest) {
    for (const key of keysOf(engine)) {
      // The urls are where the store is: any other value is a store that is down (fail_closed decides),
      // and trying it would look up host names off this machine. `cluster` says what the url is: true
      // against this standalone server is refused at start by design (redisCluster.test.ts serves it on a cluster).
      if (key === "url" || key === "listen_url" || key === "engine" || key === "cluster") continue
      it.live(`stores (${engine}).${key}: every accepted value builds a store that serves`, () =>
        Effect.gen(function*() {
          const problems: Array<string> = []
          for (const { labels, value } of acceptedValues(engine, key)) {
            problems.push(...yield* serveStore(engine, storeCase(engine, key, value), `${engine}.${key} = ${labels}`))
          }
          expect(problems, problems.join("\n")).toEqual([])
        }), 60_000)
    }
  }
})

describe("names are entries, whatever they are", () => {
  const toml = `
    [stores.__proto__]
    engine = "memory"
    [limiters.__proto__]
    store = "__proto__"
    rate_per_second = 1
    [limiters.constructor]
    store = "__proto__"
    rate_per_second = 1
  `

  /** The names are own entries of the decoded tables, and the limiters they name are built and serve. */
  const served = (settings: Effect.Effect<Settings, Errors.ConfigurationError>) =>
    Effect.gen(function*() {
      const decoded = yield* settings
      expect(Object.keys(decoded.stores)).toEqual(["__proto__"])
      expect(Object.keys(decoded.limiters).sort()).toEqual(["__proto__", "constructor"])
      expect(Object.getPrototypeOf(decoded.limiters)).toBe(Object.prototype)
      yield* Effect.gen(function*() {
        const limiter = yield* RateLimiter
        expect([...limiter.limiters].sort()).toEqual(["__proto__", "constructor"])
        for (const name of ["__proto__", "constructor"]) {
          const permit = yield* Effect.scoped(limiter.tryAcquire(name))
          expect(permit.degraded).toBe(false)
        }
      }).pipe(Effect.provide(Layer.scoped(RateLimiter, RateSync.make(decoded)).pipe(Layer.provide(Stores.layer))))
    })

  it.live("[limiters.__proto__] and [stores.__proto__] in TOML", () => served(Toml.parseText(toml)))

  it.live("__proto__ as an own key of a plain object (JSON.parse, defineProperty)", () =>
    Effect.gen(function*() {
      yield* served(decodeSettings(JSON.parse(`{
        "stores": { "__proto__": { "engine": "memory" } },
        "limiters": { "__proto__": { "store": "__proto__", "rate_per_second": 1 }, "constructor": { "store": "__proto__", "rate_per_second": 1 } }
      }`)))
      const limiters = {}
      Object.defineProperty(limiters, "__proto__", { value: { store: "m", rate_per_second: 1 }, enumerable: true })
      const decoded = yield* decodeSettings({ stores: { m: { engine: "memory" } }, limiters })
      expect(Object.keys(decoded.limiters)).toEqual(["__proto__"])
    }))

  it.live("RATE_SYNC_LIMITERS___PROTO___* in the environment, without touching Object.prototype", () =>
    Effect.gen(function*() {
      const provider = ConfigProvider.fromMap(
        new Map([
          ["RATE_SYNC_STORES___PROTO___ENGINE", "memory"],
          ["RATE_SYNC_LIMITERS___PROTO___STORE", "__proto__"],
          ["RATE_SYNC_LIMITERS___PROTO___RATE_PER_SECOND", "1"],
          ["RATE_SYNC_LIMITERS_CONSTRUCTOR_STORE", "__proto__"],
          ["RATE_SYNC_LIMITERS_CONSTRUCTOR_RATE_PER_SECOND", "1"]
        ]),
        { pathDelim: "_" }
      )
      yield* served(Effect.flatMap(settingsConfig(), decodeSettings).pipe(Effect.withConfigProvider(provider), Effect.orDie))
      expect(({} as Record<string, unknown>)["store"]).toBeUndefined()
      expect(({} as Record<string, unknown>)["rate_per_second"]).toBeUndefined()
      // A key named __proto__ is an unknown key, reported, not dropped.
      const unknown = yield* Effect.flatMap(settingsConfig(), decodeSettings).pipe(
        Effect.withConfigProvider(ConfigProvider.fromMap(
          new Map([["RATE_SYNC_STORES_M_ENGINE", "memory"], ["RATE_SYNC_LIMITERS_API_STORE", "m"], ["RATE_SYNC_LIMITERS_API_RATE_PER_SECOND", "1"], ["RATE_SYNC_LIMITERS_API___PROTO__", "1"]]),
          { pathDelim: "_" }
        )),
        Effect.flip
      )
      expect(unknown.message).toMatch(/^limiters\.api\.__proto__: unknown key/)
    }))

  it.live(`the longest names (${maxNameLength} characters) serve on every engine, with 150-character keys`, () =>
    Effect.gen(function*() {
      const problems: Array<string> = []
      for (const engine of enginesUnderTest) {
        const store = "s".repeat(maxNameLength)
        const limiter = uniqueName("").padEnd(maxNameLength, "n")
        const input = {
          stores: { [store]: storeBase(engine) },
          limiters: { [limiter]: { store, max_concurrent: 2, rate_per_second: 10, fail_closed: true } }
        }
        const built = yield* Effect.exit(Layer.build(RateSync.layer(input as never).pipe(Layer.provide(Stores.layer))))
        if (Exit.isFailure(built)) problems.push(buildProblem(engine, built))
        else problems.push(...yield* serveAll([{ name: limiter, label: engine, waitConfigured: false }]).pipe(Effect.provide(built.value)))
      }
      expect(problems, problems.join("\n")).toEqual([])
      const longer = decode({ stores: { m: { engine: "memory" } }, limiters: { ["n".repeat(maxNameLength + 1)]: { store: "m", rate_per_second: 1 } } })
      expect(failureOf(longer)?.message).toMatch(/^limiters\.n+: Expected a name of letters, digits, '_', '-' or '\.' \(at most 128\)$/)
    }).pipe(Effect.scoped), 60_000)

  it("a key named __proto__, constructor or nothing is an unknown key, reported, in every table", () => {
    for (const table of tables) {
      for (const odd of ["__proto__", "constructor", "toString", ""]) {
        const entry = JSON.parse(JSON.stringify(table === "limiter" ? { store: "s", rate_per_second: 1 } : storeBase(table)))
        Object.defineProperty(entry, odd, { value: 1, enumerable: true })
        const input = table === "limiter"
          ? { stores: { s: storeBase("memory") }, limiters: { l: entry } }
          : { stores: { s: entry } }
        const error = failureOf(decode(input))
        const path = `${table === "limiter" ? "limiters.l" : "stores.s"}.${odd}`
        expect(error?.message, `${table}: ${JSON.stringify(odd)}`).toMatch(new RegExp(`^${path.replace(/\./g, "\\.")}: unknown key`))
      }
    }
  })

  it("TOML's own edge numbers (inf, nan, -0, 1e400) are refused or normalised, naming the key", () => {
    const exit = Effect.runSyncExit(Toml.parseText(`
      [stores.m]
      engine = "memory"
      timing_margin_ms = -0.0
      [limiters.a]
      store = "m"
      rate_per_second = inf
      timeout = nan
      [limiters.b]
      store = "m"
      rate_per_second = 1e400
      max_concurrent = -inf
      [limiters.c]
      store = "m"
      max_concurrent = 1
      timeout = inf
    `))
    expect((failureOf(exit) as Errors.ConfigurationError).issues.map((i) => i.path)).toEqual([
      "limiters.a.rate_per_second",
      "limiters.a.timeout",
      "limiters.b.rate_per_second",
      "limiters.b.max_concurrent",
      "limiters.c.timeout"
    ])
    const zero = Effect.runSync(Toml.parseText(`[stores.m]\nengine = "memory"\ntiming_margin_ms = -0.0`))
    expect(Object.is(zero.stores["m"]?.timing_margin_ms, 0)).toBe(true)
  })
})

// ---- property-based ------------------------------------------------------------------------------


const inside = (range: Range): FastCheck.Arbitrary<number> =>
  range.whole === true
    ? FastCheck.integer({ min: range.above === true ? range.min + 1 : range.min, max: range.max })
    : FastCheck.double({
      min: range.min,
      max: Number.isFinite(range.max) ? range.max : Number.MAX_VALUE,
      minExcluded: range.above === true,
      noNaN: true,
      noDefaultInfinity: true
    })

const outside = (range: Range): FastCheck.Arbitrary<number> =>
  FastCheck.oneof(
    FastCheck.double({ max: range.min }),
    FastCheck.double({ min: Number.isFinite(range.max) ? range.max : Number.MAX_VALUE }),
    FastCheck.constantFrom(NaN, Infinity, -Infinity),
    ...(range.whole === true ? [FastCheck.double({ min: range.min, max: range.max, noNaN: true })] : [])
  ).filter((n) => !inRange(range, n === 0 ? 0 : n) || Number.isNaN(n))

/** As a number, or as the string an environment variable holds. */
const spelled = (arbitrary: FastCheck.Arbitrary<number>) =>
  FastCheck.tuple(arbitrary, FastCheck.boolean()).map(([n, asString]) => (asString ? String(n) : n))

describe("numeric keys, property-based", () => {
  for (const { key, range, table } of numericKeys) {
    it.prop(`${table}.${key}: inside its range decodes to the value`, [spelled(inside(range))], ([value]) => {
      const settings = expectDecoded(table, key, value)
      expect(settings, `${show(value)} was refused`).toBeDefined()
    }, { fastCheck: { numRuns: 100 } })

    it.prop(`${table}.${key}: outside its range is refused naming the key`, [spelled(outside(range))], ([value]) => {
      expect(expectDecoded(table, key, value), `${show(value)} was accepted`).toBeUndefined()
    }, { fastCheck: { numRuns: 100 } })
  }

  it.prop("any value for any key: in range, or refused naming the key", [
    FastCheck.constantFrom(...tables.flatMap((table) => keysOf(table).map((key) => [table, key] as const))),
    FastCheck.anything({ withBigInt: true, withNullPrototype: true, withObjectString: true, withDate: true })
  ], ([[table, key], value]) => {
    expectDecoded(table, key, value)
  }, { fastCheck: { numRuns: 500 } })

  const limiterArbitrary = (shape: Record<string, unknown>, keys: ReadonlyArray<keyof typeof ranges.limiter>) =>
    FastCheck.record(Object.fromEntries(keys.map((key) => [key, inside(ranges.limiter[key])])), { requiredKeys: [] }).map((picked) => ({
      ...shape,
      ...picked
    }))

  it.live.prop(
    "random limiters inside the ranges: refused naming a key (a rule between keys) or served on every engine",
    [FastCheck.array(FastCheck.oneof(
      limiterArbitrary({ rate_per_second: 10 }, ["rate_per_second", "burst", "timeout", "retry_max_attempts", "retry_base_delay_ms", "retry_max_delay_ms"]),
      limiterArbitrary({ algorithm: "sliding_window", limit: 3, window_seconds: 1 }, ["limit", "window_seconds", "timeout"]),
      limiterArbitrary({ max_concurrent: 2 }, ["max_concurrent", "lease_ttl_seconds", "rate_per_second", "burst", "timeout"])
    ), { minLength: 1, maxLength: 4 })],
    ([limiters]) =>
      Effect.gen(function*() {
        const accepted = limiters.filter((config) =>
          Exit.isSuccess(decode({ stores: { s: { engine: "memory" } }, limiters: { l: { store: "s", ...config } } }))
        )
        const problems = yield* serveOnEveryEngine(accepted.map((config) => [JSON.stringify(config), { ...config, fail_closed: true }] as const))
        expect(problems, problems.join("\n")).toEqual([])
      }),
    // No shrinking: each run builds limiters on three engines, and the first failure says enough.
    { timeout: 60_000, fastCheck: { numRuns: 12, endOnFailure: true } }
  )

  for (const engine of enginesUnderTest) {
    const keys = Object.keys(ranges[engine]) as ReadonlyArray<string>
    it.live.prop(
      `random ${engine} stores inside the ranges build and serve`,
      [FastCheck.record(Object.fromEntries(keys.map((key) => [key, inside(rangeOf(engine, key)!)])), { requiredKeys: [] })],
      ([store]) =>
        Effect.gen(function*() {
          const settings = decode({ stores: { s: storeBase(engine, store) } })
          if (Exit.isFailure(settings)) {
            // Only a rule between two keys can refuse values each inside its range.
            expect(failureOf(settings)?.message).toMatch(/^stores\.s\.pool_min_size: Expected at most pool_max_size/)
            return
          }
          const problems = yield* serveStore(engine, store, `${engine} ${JSON.stringify(store)}`)
          expect(problems, problems.join("\n")).toEqual([])
        }),
      { timeout: 60_000, fastCheck: { numRuns: engine === "memory" ? 30 : 6, endOnFailure: true } }
    )
  }
})
