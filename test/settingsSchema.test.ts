/**
 * The configuration document as one Schema: it decodes on its own exactly as `decodeSettings` does
 * (every problem at once, unknown keys refused), `SettingsWithSpecs` gives `toLimiterSpec`'s specs, and
 * bad documents get the documented issues word for word, in the documented order.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as FastCheck from "effect/FastCheck"
import * as Schema from "effect/Schema"
import type { ConfigurationError } from "../src/Errors.js"
import { configurationError } from "../src/internal/settingsSchema.js"
import { decodeSettings, SettingsDocument, SettingsWithSpecs, toLimiterSpec } from "../src/Settings.js"

const issuesOf = (error: ConfigurationError) => error.issues.map((issue) => `${issue.path}: ${issue.message}`)

/** What the Schema alone answers, as `ConfigurationError` issues (or the decoded value). */
const viaSchema = <A, I>(schema: Schema.Schema<A, I>, input: unknown) =>
  Either.mapLeft(Schema.decodeUnknownEither(schema)(input), (error) => issuesOf(configurationError(error)))

const viaDecodeSettings = (input: unknown) => {
  const exit = Effect.runSyncExit(Effect.mapError(decodeSettings(input), issuesOf))
  return Exit.isSuccess(exit) ? Either.right(exit.value) : Either.left(exit.cause._tag === "Fail" ? exit.cause.error : ["defect"])
}

// ---- generated configurations ------------------------------------------------------------------

/** A number as a TOML file or an environment variable gives it. */
const spelled = (arb: FastCheck.Arbitrary<number>) => FastCheck.oneof(arb, arb.map(String))
const double = (min: number, max: number) => FastCheck.double({ min, max, noNaN: true })
const name = FastCheck.oneof(
  FastCheck.stringMatching(/^[A-Za-z0-9_.-]{1,12}$/),
  FastCheck.constantFrom("__proto__", "constructor", "n".repeat(128))
)

const store = FastCheck.oneof(
  FastCheck.record({ engine: FastCheck.constant("memory"), timing_margin_ms: spelled(double(0, 1000)) }, { requiredKeys: ["engine"] }),
  FastCheck.tuple(FastCheck.integer({ min: 1, max: 1000 }), FastCheck.nat(1000)).chain(([max, min]) =>
    FastCheck.record({
      engine: FastCheck.constant("postgres"),
      url: FastCheck.constant("postgres://app@db/prod"),
      listen_url: FastCheck.constant("postgres://app@db-direct/prod"),
      pool_max_size: spelled(FastCheck.constant(max)),
      pool_min_size: spelled(FastCheck.constant(min % (max + 1))),
      table_name: FastCheck.stringMatching(/^[a-z_][a-z0-9_]{0,20}$/),
      auto_create: FastCheck.oneof(FastCheck.boolean(), FastCheck.constantFrom("true", "FALSE")),
      operation_timeout_ms: spelled(FastCheck.integer({ min: 100, max: 3_600_000 }))
    }, { requiredKeys: ["engine", "url", "pool_max_size", "pool_min_size"] })
  ),
  FastCheck.record({
    engine: FastCheck.constant("redis"),
    url: FastCheck.constant("redis://cache:6379"),
    key_prefix: FastCheck.string(),
    pool_max_size: spelled(FastCheck.integer({ min: 1, max: 64 }))
  }, { requiredKeys: ["engine", "url"] })
)

/** A rate, a window, or nothing (then `max_concurrent` bounds the limiter), each as its rules want it. */
const policy = FastCheck.oneof(
  double(0.000001, 1_000_000).chain((rate) =>
    FastCheck.record({
      rate_per_second: spelled(FastCheck.constant(rate)),
      // A drained bucket refills within MAX_STATE_SECONDS (with room for rounding).
      burst: spelled(FastCheck.integer({ min: 1, max: Math.floor(Math.min(1e9, rate * 1e9 * 0.999)) }))
    }, { requiredKeys: ["rate_per_second"] })
  ),
  FastCheck.record({
    algorithm: FastCheck.constant("sliding_window"),
    limit: spelled(FastCheck.integer({ min: 1, max: 10_000 })),
    window_seconds: spelled(double(0.001, 10_000_000))
  }),
  FastCheck.constant({})
)

const limiter = (stores: ReadonlyArray<string>) =>
  FastCheck.tuple(
    policy,
    FastCheck.record({
      store: FastCheck.constantFrom(...stores),
      max_concurrent: spelled(FastCheck.integer({ min: 1, max: 10_000 })),
      timeout: spelled(double(0, 1e300)),
      lease_ttl_seconds: spelled(double(0.5, 1_000_000)),
      fail_closed: FastCheck.oneof(FastCheck.boolean(), FastCheck.constantFrom("true", " False ")),
      mode: FastCheck.constantFrom("enforce", "shadow"),
      retry_max_attempts: spelled(FastCheck.integer({ min: 1, max: 1000 }))
    }, { requiredKeys: ["store"] }),
    FastCheck.tuple(double(0.001, 60_000), double(0.001, 60_000))
  ).map(([rate, rest, [a, b]]) => ({
    ...rate,
    ...rest,
    ...("rate_per_second" in rate || "limit" in rate || "max_concurrent" in rest ? {} : { max_concurrent: 1 }),
    retry_base_delay_ms: Math.min(a, b),
    retry_max_delay_ms: Math.max(a, b)
  }))

/** Names as own properties, `__proto__` included. */
const table = <A>(entry: FastCheck.Arbitrary<A>, minLength: number) =>
  FastCheck.uniqueArray(FastCheck.tuple(name, entry), { selector: ([key]) => key, minLength, maxLength: 3 })
    .map((entries) => Object.fromEntries(entries))

const validConfiguration = table(store, 1).chain((stores) =>
  table(limiter(Object.keys(stores)), 0).map((limiters) => ({ stores, limiters }))
)

/** One edit that may break a valid configuration: a key removed, or set to a value of the wrong kind or range. */
const edited = FastCheck.tuple(
  validConfiguration,
  FastCheck.constantFrom("stores", "limiters"),
  FastCheck.nat(),
  FastCheck.constantFrom("store", "burst", "limit", "pool_min_size", "pool_max_size", "retry_base_delay_ms", "engine", "rate", "max_concurrent"),
  FastCheck.constantFrom(undefined, 0, 2e9, "x", "", "memory", "sliding_window", 60_000, true)
).map(([configuration, section, at, key, value]) => {
  const tables: Record<string, Record<string, Record<string, unknown>>> = configuration
  const entries = Object.entries(tables[section] ?? {})
  if (entries.length === 0) return configuration
  const [entryName, entry] = entries[at % entries.length]!
  const { [key]: _removed, ...rest } = entry
  const changed = value === undefined ? rest : { ...rest, [key]: value }
  return { ...configuration, [section]: Object.fromEntries([...entries.filter(([n]) => n !== entryName), [entryName, changed]]) }
})

describe("SettingsDocument: the whole configuration as one Schema", () => {
  it("decodes on its own with the document's options: unknown keys refused, every problem reported", () => {
    const input = { stores: { m: { engine: "memory", colour: "red" } }, limiters: { api: { store: "nowhere", rate_per_second: "5" } } }
    // Called with no options (and with the opposite ones), the Schema still decodes as the document is decoded.
    for (const options of [undefined, { errors: "first", onExcessProperty: "ignore" } as const]) {
      const result = Schema.decodeUnknownEither(SettingsDocument)(input, options)
      expect(Either.mapLeft(result, (error) => issuesOf(configurationError(error)))).toEqual(Either.left([
        `stores.m.colour: unknown key (known keys: "engine" | "timing_margin_ms")`,
        `limiters.api.store: Expected the name of a configured store (configured: "m"), found "nowhere"`
      ]))
    }
    const decoded = Schema.decodeUnknownSync(SettingsDocument)({ stores: { m: { engine: "memory" } }, limiters: { api: { store: "m", rate_per_second: "5" } } })
    expect(decoded.limiters["api"]).toMatchObject({ store: "m", rate_per_second: 5, algorithm: "token_bucket", lease_ttl_seconds: 30 })
    expect(decoded.stores["m"]).toEqual({ engine: "memory", timing_margin_ms: 0 })
  })

  it.prop(
    "generated valid configurations decode, and SettingsWithSpecs gives decodeSettings' stores with toLimiterSpec's specs",
    [validConfiguration],
    ([input]) => {
      const settings = Either.getOrThrow(viaDecodeSettings(input))
      const withSpecs = Either.getOrThrow(viaSchema(SettingsWithSpecs, input))
      expect(withSpecs.stores).toEqual(settings.stores)
      expect(Object.keys(withSpecs.limiters)).toEqual(Object.keys(input.limiters))
      for (const [limiterName, config] of Object.entries(settings.limiters)) {
        expect(withSpecs.limiters[limiterName]).toEqual(toLimiterSpec(limiterName, config))
      }
      expect(Either.getOrThrow(viaSchema(SettingsDocument, input))).toEqual(settings)
    },
    { fastCheck: { numRuns: 200 } }
  )

  it.prop(
    "configurations with one edit: the Schemas and decodeSettings agree, problem for problem",
    [edited],
    ([input]) => {
      const expected = viaDecodeSettings(input)
      expect(Either.map(viaSchema(SettingsDocument, input), () => "ok")).toEqual(Either.map(expected, () => "ok"))
      expect(Either.map(viaSchema(SettingsWithSpecs, input), () => "ok")).toEqual(Either.map(expected, () => "ok"))
    },
    { fastCheck: { numRuns: 200 } }
  )

  it("SettingsWithSpecs only decodes: a spec is never written back as a limiter's table", () => {
    const decoded = Schema.decodeUnknownSync(SettingsWithSpecs)({ stores: { m: { engine: "memory" } }, limiters: { api: { store: "m", max_concurrent: 2 } } })
    expect(decoded.limiters["api"]).toEqual(toLimiterSpec("api", Schema.decodeUnknownSync(SettingsDocument)({
      stores: { m: { engine: "memory" } },
      limiters: { api: { store: "m", max_concurrent: 2 } }
    }).limiters["api"]!))
    expect(Either.isLeft(Schema.encodeEither(SettingsWithSpecs)(decoded))).toBe(true)
  })
})

/** Bad documents and the issues `decodeSettings` has always given for them, word for word, in order. */
const badDocuments: ReadonlyArray<readonly [string, unknown, ReadonlyArray<string>]> = [
  ["not a table", [1], [": Expected a configuration table, found an array"]],
  ["a date", new Date(0), [": Expected a configuration table, found the date 1970-01-01T00:00:00.000Z"]],
  ["unknown keys first, in their order, then the tables, then the rules", {
    zeta: 1,
    stores: { m: { engine: "nope" } },
    alpha: 2,
    limiters: { a: { store: "m" } },
    "1": 3
  }, [
    `1: unknown key (known keys: "stores" | "limiters")`,
    `zeta: unknown key (known keys: "stores" | "limiters")`,
    `alpha: unknown key (known keys: "stores" | "limiters")`,
    `stores.m.engine: Expected "memory", "postgres" or "redis", found "nope"`,
    "limiters.a: needs at least one of rate_per_second, limit + window_seconds, or max_concurrent"
  ]],
  ["a store that fails still counts as declared; a bad name in its place", {
    stores: { db: { engine: "postgres" }, "bad name": { engine: "memory" } },
    limiters: { a: { store: "x", rate_per_second: 1 }, b: { store: "bad name", max_concurrent: 1 } }
  }, [
    "stores.db.url: is required",
    "stores.bad name: Expected a name of letters, digits, '_', '-' or '.' (at most 128)",
    `limiters.a.store: Expected the name of a configured store (configured: "db", "bad name"), found "x"`
  ]],
  ["a limiter's store first, then its other rules, limiter by limiter", {
    stores: {},
    limiters: { a: { store: "x", algorithm: "sliding_window", limit: 5 }, b: { store: "y" } }
  }, [
    `limiters.a.store: Expected the name of a configured store (no store is configured), found "x"`,
    `limiters.a.window_seconds: is required with algorithm = "sliding_window"`,
    `limiters.b.store: Expected the name of a configured store (no store is configured), found "y"`,
    "limiters.b: needs at least one of rate_per_second, limit + window_seconds, or max_concurrent"
  ]],
  ["tables that are not tables", { stores: [], limiters: "x" }, ["stores: Expected a table, found an array", `limiters: Expected a table, found "x"`]],
  ["the pool rule only once the store's values decode", {
    stores: { a: { engine: "postgres", url: "u", pool_min_size: 20, pool_max_size: 5, auto_create: "x" }, b: { engine: "postgres", url: "u", pool_min_size: 20 } }
  }, [`stores.a.auto_create: Expected true or false, found "x"`, "stores.b.pool_min_size: Expected at most pool_max_size (10), found 20"]],
  ["engines that are not one", {
    stores: { a: {}, b: { engine: 1 }, c: { engine: ["memory"] }, d: { engine: { toString: 1 } }, e: { engine: null }, f: "memory" }
  }, [
    `stores.a.engine: Expected "memory", "postgres" or "redis", found nothing`,
    `stores.b.engine: Expected "memory", "postgres" or "redis", found 1`,
    `stores.c.engine: Expected "memory", "postgres" or "redis", found an array`,
    `stores.d.engine: Expected "memory", "postgres" or "redis", found a table`,
    `stores.e.engine: Expected "memory", "postgres" or "redis", found null`,
    `stores.f: Expected a table, found "memory"`
  ]],
  ["a store's keys are its engine's", {
    stores: { m: { engine: "memory", url: "x" }, r: { engine: "redis" }, p: { engine: "postgres", url: "", listen_url: "  " } }
  }, [
    `stores.m.url: unknown key (known keys: "engine" | "timing_margin_ms")`,
    "stores.r.url: is required",
    "stores.p.url: Expected a non-empty string",
    "stores.p.listen_url: Expected a non-empty string"
  ]],
  ["limiters that are not tables", { stores: { s: { engine: "memory" } }, limiters: { a: [], e: new Date(0) } }, [
    "limiters.a: Expected Struct (Encoded side), actual []",
    "limiters.e.store: is required"
  ]]
]

describe("bad documents: today's issues, word for word and in order", () => {
  for (const [label, input, issues] of badDocuments) {
    it(label, () => {
      expect(viaDecodeSettings(input)).toEqual(Either.left(issues))
      expect(viaSchema(SettingsDocument, input)).toEqual(Either.left(issues))
      expect(viaSchema(SettingsWithSpecs, input)).toEqual(Either.left(issues))
    })
  }
})
