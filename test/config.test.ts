import { mkdtempSync, mkdirSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { SystemError } from "@effect/platform/Error"
import * as FileSystem from "@effect/platform/FileSystem"
import * as Path from "@effect/platform/Path"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { settingsConfig } from "../src/EnvConfig.js"
import type { ConfigurationError } from "../src/Errors.js"
import * as MemoryStore from "../src/memory/MemoryStore.js"
import { RateLimiter } from "../src/RateLimiter.js"
import * as RateSync from "../src/RateSync.js"
import * as Settings from "../src/Settings.js"
import { decodeSettings, toLimiterSpec } from "../src/Settings.js"
import * as Stores from "../src/Stores.js"
import * as Toml from "../src/Toml.js"

const withVars = (vars: Record<string, string>) =>
  Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(vars)), { pathDelim: "_" }))

const issuesOf = (error: ConfigurationError) => error.issues.map((issue) => `${issue.path}: ${issue.message}`)

const tempDir = () => mkdtempSync(join(tmpdir(), "rate-sync-config-"))

const SEED_PRODUCTION = `
[stores.prod_db]
engine = "postgres"
url = "\${DATABASE_URL}"
auto_create = false
pool_min_size = 5
pool_max_size = 20

[limiters.api]
store = "prod_db"
rate_per_second = 100.0
max_concurrent = 50
timeout = 30.0
`

describe("TOML", () => {
  it.effect("the documented examples load with every documented key", () =>
    Effect.gen(function*() {
      const settings = yield* Toml.parseText(SEED_PRODUCTION).pipe(withVars({ DATABASE_URL: "postgres://app@db/prod" }))
      expect(settings.stores["prod_db"]).toEqual({
        engine: "postgres",
        url: "postgres://app@db/prod",
        table_name: "rate_limiter_state",
        schema_name: "public",
        auto_create: false,
        pool_min_size: 5,
        pool_max_size: 20,
        timing_margin_ms: 10,
        unlogged: false,
        synchronous_commit: true,
        pool_timeout_ms: 5_000,
        operation_timeout_ms: 2_000
      })
      const spec = toLimiterSpec("api", settings.limiters["api"]!)
      expect(spec.rate).toEqual({ _tag: "TokenBucket", ratePerSecond: 100, burst: 1, intervalMs: 10 })
      expect(spec.concurrency).toEqual({ max: 50, leaseTtlMs: 30_000 })
      expect(spec.timeoutMs).toBe(30_000)
      expect(spec.failClosed).toBe(false)

      const custom = yield* Toml.parseText(`
        [stores.db]
        engine = "postgres"
        url = "postgresql://user:pass@localhost:5432/mydb"
        schema_name = "rate_limiting"
        table_name = "rate_limiter_state"
        auto_create = true
        pool_min_size = 2
        pool_max_size = 10
        timing_margin_ms = 10.0
      `)
      expect(custom.stores["db"]).toMatchObject({ schema_name: "rate_limiting", auto_create: true })
    }))

  it.effect("fail_closed in TOML is honoured, and defaults to false", () =>
    Effect.gen(function*() {
      const settings = yield* Toml.parseText(`
        [stores.m]
        engine = "memory"
        [limiters.closed]
        store = "m"
        rate_per_second = 1
        fail_closed = true
        [limiters.open]
        store = "m"
        rate_per_second = 1
      `)
      expect(toLimiterSpec("closed", settings.limiters["closed"]!).failClosed).toBe(true)
      expect(toLimiterSpec("open", settings.limiters["open"]!).failClosed).toBe(false)
    }))

  it.effect("a TOML syntax error names the file, line and column", () =>
    Effect.gen(function*() {
      const error = yield* Toml.parseText("[stores.m\nengine = 1", "conf/rate-sync.toml").pipe(Effect.flip)
      expect(error._tag).toBe("ConfigurationError")
      expect(error.message).toMatch(/^conf\/rate-sync\.toml: invalid TOML at line 1, column \d+/)
    }))
})

describe("environment substitution", () => {
  const toml = (url: string, extra = "") => `
    [stores.r]
    engine = "redis"
    url = "${url}"
    ${extra}
    [limiters.api]
    store = "r"
    rate_per_second = 1
  `

  it.effect("${VAR} is replaced, ${VAR:-default} falls back when unset or empty, ${VAR:-} allows empty", () =>
    Effect.gen(function*() {
      const set = yield* Toml.parseText(toml("redis://${HOST}:${PORT:-6379}/0")).pipe(withVars({ HOST: "cache", PORT: "7000" }))
      expect(set.stores["r"]).toMatchObject({ url: "redis://cache:7000/0" })
      const unset = yield* Toml.parseText(toml("redis://${HOST}:${PORT:-6379}/0")).pipe(withVars({ HOST: "cache" }))
      expect(unset.stores["r"]).toMatchObject({ url: "redis://cache:6379/0" })
      const empty = yield* Toml.parseText(toml("redis://${HOST}:${PORT:-6379}/0")).pipe(withVars({ HOST: "cache", PORT: "" }))
      expect(empty.stores["r"]).toMatchObject({ url: "redis://cache:6379/0" })
      const blank = yield* Toml.parseText(toml("redis://h/0", `key_prefix = "\${PREFIX:-}"`)).pipe(withVars({}))
      expect(blank.stores["r"]).toMatchObject({ key_prefix: "" })
    }))

  it.effect("an unset ${VAR} with no default is an error naming the variable and the key", () =>
    Effect.gen(function*() {
      const error = yield* Toml.parseText(toml("${REDIS_URL}")).pipe(withVars({}), Effect.flip)
      expect(issuesOf(error)).toEqual([
        "stores.r.url: environment variable REDIS_URL is not set (write ${REDIS_URL:-default} to give a default)"
      ])
    }))

  it.effect("values are never re-typed: a numeric-looking string stays a string, a number key decodes by its type", () =>
    Effect.gen(function*() {
      const settings = yield* Toml.parseText(`
        [stores.r]
        engine = "redis"
        url = "redis://:\${PASSWORD}@h:6379"
        key_prefix = "\${PREFIX}"
        [limiters.api]
        store = "r"
        rate_per_second = "\${RATE}"
        fail_closed = "\${CLOSED}"
      `).pipe(withVars({ PASSWORD: "123456", PREFIX: "007", RATE: "2.5", CLOSED: "true" }))
      expect(settings.stores["r"]).toMatchObject({ url: "redis://:123456@h:6379", key_prefix: "007" })
      const limiter = settings.limiters["api"]!
      expect(limiter.rate_per_second).toBe(2.5)
      expect(limiter.fail_closed).toBe(true)
    }))
})

describe("discovery", () => {
  const file = (dir: string, path: string, rate: number) => {
    mkdirSync(join(dir, path, ".."), { recursive: true })
    writeFileSync(join(dir, path), `[stores.m]\nengine = "memory"\n[limiters.api]\nstore = "m"\nrate_per_second = ${rate}\n`)
  }

  it.effect("$RATE_SYNC_CONFIG, then ./rate-sync.toml, then ./config/rate-sync.toml", () =>
    Effect.gen(function*() {
      const dir = tempDir()
      const rateOf = (settings: { limiters: Readonly<Record<string, { rate_per_second?: number | undefined }>> }) =>
        settings.limiters["api"]?.rate_per_second

      const none = yield* Toml.load(undefined, dir).pipe(withVars({}), Effect.flip)
      expect(none.message).toMatch(/no configuration file: set RATE_SYNC_CONFIG or create rate-sync\.toml or config\/rate-sync\.toml/)

      file(dir, "config/rate-sync.toml", 3)
      expect(rateOf(yield* Toml.load(undefined, dir).pipe(withVars({})))).toBe(3)
      file(dir, "rate-sync.toml", 2)
      expect(rateOf(yield* Toml.load(undefined, dir).pipe(withVars({})))).toBe(2)
      file(dir, "elsewhere/custom.toml", 1)
      const fromEnv = yield* Toml.load(undefined, dir).pipe(withVars({ RATE_SYNC_CONFIG: join(dir, "elsewhere/custom.toml") }))
      expect(rateOf(fromEnv)).toBe(1)
      const explicit = yield* Toml.load(join(dir, "config/rate-sync.toml"), dir).pipe(withVars({ RATE_SYNC_CONFIG: "nope.toml" }))
      expect(rateOf(explicit)).toBe(3)

      const missing = yield* Toml.load(undefined, dir).pipe(withVars({ RATE_SYNC_CONFIG: join(dir, "missing.toml") }), Effect.flip)
      expect(missing.message).toMatch(/missing\.toml: cannot read the configuration file/)
    }).pipe(Effect.provide(Toml.nodeFiles)))

  it.effect("the file is read through the FileSystem the program provides: a test's in-memory one, its errors kept", () =>
    Effect.gen(function*() {
      const files = new Map([["/app/config/rate-sync.toml", `[stores.m]\nengine = "memory"\n[limiters.api]\nstore = "m"\nrate_per_second = 7\n`]])
      const read: Array<string> = []
      const inMemory = FileSystem.layerNoop({
        readFileString: (path) => {
          read.push(path)
          const text = files.get(path)
          return text !== undefined
            ? Effect.succeed(text)
            : Effect.fail(new SystemError({ reason: path.includes("locked") ? "PermissionDenied" : "NotFound", module: "FileSystem", method: "readFileString", pathOrDescriptor: path }))
        }
      })
      const found = yield* Toml.load(undefined, "/app").pipe(withVars({}), Effect.provide(Layer.merge(inMemory, Path.layer)))
      expect(found.limiters["api"]?.rate_per_second).toBe(7)
      // The search order: ./rate-sync.toml first, then ./config/rate-sync.toml.
      expect(read).toEqual(["/app/rate-sync.toml", "/app/config/rate-sync.toml"])
      // A file that exists but cannot be read is an error, not a reason to look elsewhere.
      files.clear()
      const denied = yield* Toml.load("locked.toml", "/app").pipe(withVars({}), Effect.provide(Layer.merge(inMemory, Path.layer)), Effect.flip)
      expect(denied.message).toMatch(/\/app\/locked\.toml: cannot read the configuration file: .*PermissionDenied/)
      // And the layer over it builds limiters from it.
      files.set("/work/rate-sync.toml", `[stores.m]\nengine = "memory"\n[limiters.api]\nstore = "m"\nrate_per_second = 1\n`)
      const permit = yield* Effect.scoped(RateLimiter.acquire("api")).pipe(
        Effect.provide(RateSync.layerTomlPlatform("/work/rate-sync.toml").pipe(Layer.provide(Layer.mergeAll(MemoryStore.layer, inMemory, Path.layer)))),
        withVars({})
      )
      expect(permit.degraded).toBe(false)
    }))
})

describe("validation: one Schema, errors with key path, expected and found", () => {
  it.effect("a typo in a key is an error, never a silently dropped limit", () =>
    Effect.gen(function*() {
      const error = yield* decodeSettings({
        stores: { m: { engine: "memory" } },
        limiters: { api: { store: "m", rate_per_secnd: 10 } }
      }).pipe(Effect.flip)
      const issues = issuesOf(error)
      expect(issues).toHaveLength(1)
      expect(issues[0]).toMatch(/^limiters\.api\.rate_per_secnd: unknown key \(known keys: "store" \| "algorithm" \| "rate_per_second"/)
    }))

  it.effect("each wrong value names its path, what was expected and what was found", () =>
    Effect.gen(function*() {
      const error = yield* decodeSettings({
        stores: {
          db: { engine: "postgres", url: "postgres://x", pool_min_size: 20, pool_max_size: 5, table_name: "t; DROP TABLE x" },
          r: { engine: "redis", url: "redis://x", pool_max_size: 0 },
          q: { engine: "sqlite" }
        },
        limiters: {
          a: { store: "db", rate_per_second: "fast", burst: 1.5 },
          b: { store: "nope", rate_per_second: -1 },
          c: { store: "db", algorithm: "leaky", max_concurrent: 2 },
          d: { store: "db", algorithm: "sliding_window", limit: 10 },
          e: { store: "db", rate_per_second: 10, limit: 5, fail_closed: "maybe" },
          "bad:name": { store: "db", rate_per_second: 1 }
        },
        limits: {}
      }).pipe(Effect.flip)
      expect(issuesOf(error)).toEqual([
        `limits: unknown key (known keys: "stores" | "limiters")`,
        `stores.db.table_name: Expected a plain identifier (a letter or _, then letters, digits or _, at most 63), found "t; DROP TABLE x"`,
        "stores.r.pool_max_size: Expected a whole number from 1 to 64 (each is a connection opened when the store starts), found 0",
        `stores.q.engine: Expected "memory", "postgres" or "redis", found "sqlite"`,
        `limiters.a.rate_per_second: Expected a number, found "fast"`,
        "limiters.a.burst: Expected a whole number from 1 to 1000000000, found 1.5",
        "limiters.b.rate_per_second: Expected a rate from 0.000001 to 1000000 per second, found -1",
        `limiters.c.algorithm: Expected "token_bucket" or "sliding_window", found "leaky"`,
        `limiters.e.fail_closed: Expected true or false, found "maybe"`,
        "limiters.bad:name: Expected a name of letters, digits, '_', '-' or '.' (at most 128)",
        `limiters.d.window_seconds: is required with algorithm = "sliding_window"`
      ])
    }))

  it.effect("cross-key rules: store references, pool sizes, algorithm keys", () =>
    Effect.gen(function*() {
      const error = yield* decodeSettings({
        stores: { db: { engine: "postgres", url: "postgres://x", pool_min_size: 20, pool_max_size: 5 } },
        limiters: {
          b: { store: "nope", rate_per_second: 1 },
          e: { store: "db", rate_per_second: 10, limit: 5 },
          f: { store: "db", algorithm: "sliding_window", limit: 5, window_seconds: 1, burst: 2 },
          g: { store: "db", max_concurrent: 1, retry_base_delay_ms: 50, retry_max_delay_ms: 10 }
        }
      }).pipe(Effect.flip)
      expect(issuesOf(error)).toEqual([
        "stores.db.pool_min_size: Expected at most pool_max_size (5), found 20",
        `limiters.b.store: Expected the name of a configured store (configured: "db"), found "nope"`,
        `limiters.e.limit: belongs to algorithm = "sliding_window"`,
        `limiters.f.burst: belongs to algorithm = "token_bucket"`,
        "limiters.g.retry_base_delay_ms: Expected at most retry_max_delay_ms (10), found 50"
      ])
    }))

  it.effect("the same mistake gives the same error from TOML, Config and a plain object", () =>
    Effect.gen(function*() {
      const fromObject = yield* decodeSettings({
        stores: { m: { engine: "memory" } },
        limiters: { api: { store: "m", rate_per_second: "abc", burst: "0" } }
      }).pipe(Effect.flip)
      const fromToml = yield* Toml.parseText(`
        [stores.m]
        engine = "memory"
        [limiters.api]
        store = "m"
        rate_per_second = "abc"
        burst = "0"
      `).pipe(Effect.flip)
      const fromConfig = yield* Effect.flatMap(settingsConfig(), decodeSettings).pipe(
        withVars({
          RATE_SYNC_STORES_M_ENGINE: "memory",
          RATE_SYNC_LIMITERS_API_STORE: "m",
          RATE_SYNC_LIMITERS_API_RATE_PER_SECOND: "abc",
          RATE_SYNC_LIMITERS_API_BURST: "0"
        }),
        Effect.flip
      )
      const expected = [
        `limiters.api.rate_per_second: Expected a number, found "abc"`,
        "limiters.api.burst: Expected a whole number from 1 to 1000000000, found 0"
      ]
      expect(issuesOf(fromObject)).toEqual(expected)
      expect(fromToml._tag === "ConfigurationError" ? issuesOf(fromToml) : []).toEqual(expected)
      expect(fromConfig._tag === "ConfigurationError" ? issuesOf(fromConfig) : []).toEqual(expected)
    }))
})

describe("Effect Config (environment variables)", () => {
  it.effect("RATE_SYNC_STORES_<NAME>_<KEY> and RATE_SYNC_LIMITERS_<NAME>_<KEY>, names with underscores included", () =>
    Effect.gen(function*() {
      const settings = yield* Effect.flatMap(settingsConfig(), decodeSettings).pipe(withVars({
        RATE_SYNC_STORES_PROD_DB_ENGINE: "postgres",
        RATE_SYNC_STORES_PROD_DB_URL: "postgres://u:123456@h/db",
        RATE_SYNC_STORES_PROD_DB_POOL_MAX_SIZE: "20",
        RATE_SYNC_STORES_PROD_DB_TIMING_MARGIN_MS: "5",
        RATE_SYNC_LIMITERS_API_STORE: "prod_db",
        RATE_SYNC_LIMITERS_API_RATE_PER_SECOND: "100",
        RATE_SYNC_LIMITERS_API_MAX_CONCURRENT: "50",
        RATE_SYNC_LIMITERS_API_FAIL_CLOSED: "true",
        UNRELATED_VARIABLE: "x"
      }))
      expect(settings.stores["prod_db"]).toMatchObject({
        engine: "postgres",
        url: "postgres://u:123456@h/db",
        pool_max_size: 20,
        timing_margin_ms: 5
      })
      expect(settings.limiters["api"]).toMatchObject({ store: "prod_db", rate_per_second: 100, max_concurrent: 50, fail_closed: true })
    }))

  it.effect("an environment variable with an unknown key is an error", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flatMap(settingsConfig(), decodeSettings).pipe(
        withVars({
          RATE_SYNC_STORES_M_ENGINE: "memory",
          RATE_SYNC_LIMITERS_API_STORE: "m",
          RATE_SYNC_LIMITERS_API_RATE_PER_SECND: "100"
        }),
        Effect.flip
      )
      expect(error._tag === "ConfigurationError" ? issuesOf(error)[0] : error).toMatch(/^limiters\.api\.rate_per_secnd: unknown key/)
    }))

  it.effect("RateSync.layerConfig builds the limiters from the environment", () =>
    Effect.gen(function*() {
      const limiter = yield* RateLimiter
      expect(limiter.limiters).toEqual(["api"])
      yield* Effect.scoped(RateLimiter.tryAcquire("api"))
    }).pipe(
      Effect.provide(RateSync.layerConfig().pipe(Layer.provide(MemoryStore.layer))),
      withVars({ RATE_SYNC_STORES_M_ENGINE: "memory", RATE_SYNC_LIMITERS_API_STORE: "m", RATE_SYNC_LIMITERS_API_RATE_PER_SECOND: "5" })
    ))
})

describe("errors are raised when the layer is built, never on first use", () => {
  it.effect("building the layer fails with the ConfigurationError", () =>
    Effect.gen(function*() {
      const error = yield* Layer.build(
        RateSync.layer({ stores: { m: { engine: "memory" } }, limiters: { api: { store: "m", rate_per_second: 0 } } })
          .pipe(Layer.provide(MemoryStore.layer))
      ).pipe(Effect.scoped, Effect.flip)
      expect(error._tag).toBe("ConfigurationError")
      expect(error.message).toBe("limiters.api.rate_per_second: Expected a rate from 0.000001 to 1000000 per second, found 0")
    }))
})

describe("the test swap: a production rate-sync.toml served from memory needs none of its urls' variables", () => {
  // The README's configuration, a Redis store with a password from the environment added.
  const production = `
    [stores.db]
    engine = "postgres"
    url = "\${DATABASE_URL}"
    listen_url = "\${DATABASE_DIRECT_URL}"
    pool_max_size = 20

    [stores.cache]
    engine = "redis"
    url = "redis://:\${REDIS_PASSWORD}@cache.internal:6379"

    [limiters.api]
    store = "db"
    rate_per_second = 100.0
    burst = 10
    max_concurrent = 50
    timeout = 30.0

    [limiters.search]
    store = "cache"
    rate_per_second = 5
  `
  const configFile = (text: string) => {
    const path = join(tempDir(), "rate-sync.toml")
    writeFileSync(path, text)
    return path
  }
  // The variables the swap runs with: RATE_SYNC_CONFIG only (no DATABASE_URL, DATABASE_DIRECT_URL or REDIS_PASSWORD).
  const onlyConfig = (path: string) => withVars({ RATE_SYNC_CONFIG: path })

  it.effect("RateSync.layerToml() with MemoryStore.layer builds and admits with DATABASE_URL unset", () =>
    Effect.gen(function*() {
      const limiter = yield* RateLimiter
      expect([...limiter.limiters].sort()).toEqual(["api", "search"])
      yield* Effect.scoped(RateLimiter.acquire("api"))
      yield* RateLimiter.consume("search")
      const state = yield* RateLimiter.state("api")
      expect(state.limit).toBe(10)
    }).pipe(
      Effect.provide(RateSync.layerToml().pipe(Layer.provide(MemoryStore.layer))),
      onlyConfig(configFile(production))
    ))

  it.effect("the same file with Stores.layer fails at build, naming the variable and the key", () =>
    Effect.gen(function*() {
      const error = yield* Layer.build(RateSync.layerToml().pipe(Layer.provide(Stores.layer))).pipe(
        Effect.scoped,
        Effect.flip,
        onlyConfig(configFile(production))
      )
      expect(error._tag).toBe("ConfigurationError")
      expect(error.message).toBe(
        "stores.db.url: environment variable DATABASE_URL is not set (write ${DATABASE_URL:-default} to give a default)"
      )
    }))

  it.effect("a url left empty (${VAR:-}) fails the production layer as loading would, and never the memory one", () =>
    Effect.gen(function*() {
      const path = configFile(production.replace("${DATABASE_URL}", "${DATABASE_URL:-}"))
      const error = yield* Layer.build(RateSync.layerToml().pipe(Layer.provide(Stores.layer))).pipe(
        Effect.scoped,
        Effect.flip,
        onlyConfig(path)
      )
      expect(error.message).toBe("stores.db.url: Expected a non-empty string")
      yield* Layer.build(RateSync.layerToml().pipe(Layer.provide(MemoryStore.layer))).pipe(Effect.scoped, onlyConfig(path))
    }))

  it.effect("a deferred url is read when the store connects, from the variables then in effect", () =>
    Effect.gen(function*() {
      const settings = yield* Toml.parseTextDeferred(production).pipe(withVars({}))
      const db = yield* Settings.resolveStore("db", settings.stores["db"]!).pipe(
        withVars({ DATABASE_URL: "postgres://app@db/prod", DATABASE_DIRECT_URL: "postgres://app@db-direct/prod" })
      )
      expect(db).toMatchObject({ engine: "postgres", url: "postgres://app@db/prod", listen_url: "postgres://app@db-direct/prod", pool_max_size: 20 })
      const cache = yield* Settings.resolveStore("cache", settings.stores["cache"]!).pipe(withVars({ REDIS_PASSWORD: "123456" }))
      expect(cache).toMatchObject({ engine: "redis", url: "redis://:123456@cache.internal:6379" })
      const unset = yield* Settings.resolveStore("cache", settings.stores["cache"]!).pipe(withVars({}), Effect.flip)
      expect(unset.message).toBe(
        "stores.cache.url: environment variable REDIS_PASSWORD is not set (write ${REDIS_PASSWORD:-default} to give a default)"
      )
    }))

  it.effect("every other key is still read and checked when the file is loaded", () =>
    Effect.gen(function*() {
      const error = yield* Toml.parseTextDeferred(production.replace("pool_max_size = 20", "pool_max_size = \"${POOL}\"")).pipe(
        withVars({}),
        Effect.flip
      )
      expect(issuesOf(error)).toEqual([
        "stores.db.pool_max_size: environment variable POOL is not set (write ${POOL:-default} to give a default)"
      ])
      // Tools that connect themselves (Toml.load) still read every variable at once.
      const eager = yield* Toml.parseText(production).pipe(withVars({}), Effect.flip)
      expect(issuesOf(eager)[0]).toMatch(/^stores\.db\.url: environment variable DATABASE_URL is not set/)
    }))
})
