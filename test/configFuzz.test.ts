/**
 * Property-based tests of the configuration loader: whatever text or value it is given, it answers
 * with a valid configuration or a typed `ConfigurationError` naming at least one problem, never with
 * an exception, and a configuration it accepts always builds.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FastCheck from "effect/FastCheck"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import { ConfigurationError } from "../src/Errors.js"
import * as MemoryStore from "../src/memory/MemoryStore.js"
import * as RateSync from "../src/RateSync.js"
import { decodeSettings, limiterKeys, type Settings, storeKeys, toLimiterSpec } from "../src/Settings.js"
import * as Toml from "../src/Toml.js"

const VALID = `
[stores.db]
engine = "postgres"
url = "\${DATABASE_URL:-postgres://app@db/prod}"
schema_name = "rate_limiting"
table_name = "rate_limiter_state"
auto_create = false
pool_min_size = 2
pool_max_size = 10
timing_margin_ms = 10.0

[stores.cache]
engine = "redis"
url = "redis://127.0.0.1:6379"
key_prefix = "app:"

[stores.local]
engine = "memory"

[limiters.api]
store = "db"
rate_per_second = 100.0
burst = 20
max_concurrent = 50
timeout = 30.0
fail_closed = true

[limiters.window]
store = "cache"
algorithm = "sliding_window"
limit = 10
window_seconds = 1.5

[limiters.uploads]
store = "local"
max_concurrent = 3
lease_ttl_seconds = 60
`

/** What a loader must answer: a configuration, or a ConfigurationError with at least one issue. */
const expectTyped = (exit: Exit.Exit<Settings, ConfigurationError>) => {
  if (Exit.isSuccess(exit)) {
    // An accepted configuration must be usable: every limiter turns into an engine spec.
    for (const [name, limiter] of Object.entries(exit.value.limiters)) toLimiterSpec(name, limiter)
    return exit.value
  }
  const failure = Cause.failureOption(exit.cause)
  expect(Option.isSome(failure), `not a typed failure: ${Cause.pretty(exit.cause)}`).toBe(true)
  const error = Option.getOrThrow(failure)
  expect(error).toBeInstanceOf(ConfigurationError)
  expect(error.issues.length).toBeGreaterThan(0)
  for (const issue of error.issues) expect(issue.message).not.toBe("")
  return undefined
}

const parse = (text: string) => Effect.runSyncExit(Toml.parseText(text))

/** Mostly edits that keep TOML well-formed, so most mutants reach the decoder and its cross-key rules. */
const mutation = FastCheck.oneof(
  { weight: 1, arbitrary: FastCheck.record({ kind: FastCheck.constant("delete" as const), at: FastCheck.nat(), length: FastCheck.integer({ min: 1, max: 40 }) }) },
  { weight: 1, arbitrary: FastCheck.record({ kind: FastCheck.constant("insert" as const), at: FastCheck.nat(), text: FastCheck.string({ unit: "binary", maxLength: 20 }) }) },
  { weight: 4, arbitrary: FastCheck.record({
    kind: FastCheck.constant("value" as const),
    line: FastCheck.nat(),
    value: FastCheck.oneof(
      FastCheck.constantFrom("-1", "0", "0.0", "1e309", "-inf", "nan", "true", "\"\"", "\"x; DROP TABLE t --\"", "[]", "{}", "1979-05-27", "\"${UNSET_RATE_SYNC_VAR}\""),
      FastCheck.double().map(String),
      FastCheck.integer().map(String),
      FastCheck.string().map((s) => JSON.stringify(s))
    )
  }) },
  { weight: 1, arbitrary: FastCheck.record({ kind: FastCheck.constant("duplicate" as const), line: FastCheck.nat() }) },
  {
    weight: 2,
    arbitrary: FastCheck.record({
      kind: FastCheck.constant("key" as const),
      line: FastCheck.nat(),
      key: FastCheck.constantFrom(...limiterKeys, ...storeKeys.postgres, ...storeKeys.redis, "engine", "Store", "rate")
    })
  }
)

type Mutation = typeof mutation extends FastCheck.Arbitrary<infer M> ? M : never

const mutate = (text: string, m: Mutation): string => {
  const lines = text.split("\n")
  const line = "line" in m ? m.line % lines.length : 0
  switch (m.kind) {
    case "delete": {
      const at = m.at % text.length
      return text.slice(0, at) + text.slice(at + m.length)
    }
    case "insert": {
      const at = m.at % (text.length + 1)
      return text.slice(0, at) + m.text + text.slice(at)
    }
    case "value":
      lines[line] = lines[line]!.includes("=") ? `${lines[line]!.split("=")[0]}= ${m.value}` : lines[line]!
      return lines.join("\n")
    case "duplicate":
      lines.splice(line, 0, lines[line]!)
      return lines.join("\n")
    case "key":
      lines[line] = lines[line]!.includes("=") ? `${m.key} =${lines[line]!.split("=").slice(1).join("=")}` : lines[line]!
      return lines.join("\n")
  }
}

/** Values for a store or limiter key: right types, wrong types, edge numbers. */
const anyValue = FastCheck.oneof(
  FastCheck.constantFrom(0, -1, 0.5, 1, 10, 1e9, Number.MAX_SAFE_INTEGER, Infinity, -Infinity, NaN, true, false, null, "", "memory", "postgres", "redis", "token_bucket", "sliding_window", "s"),
  FastCheck.double(),
  FastCheck.string(),
  FastCheck.anything()
)

const tableOf = (keys: ReadonlyArray<string>) =>
  FastCheck.dictionary(FastCheck.constantFrom(...keys, "unknown_key"), anyValue, { maxKeys: 8 })

describe("configuration loader, property-based", () => {
  it("the valid example is accepted (the mutants below start from a configuration that loads)", () => {
    expect(expectTyped(parse(VALID))?.limiters).toHaveProperty("api")
  })

  it.prop("any text: a configuration or a ConfigurationError, never an exception", [FastCheck.string({ unit: "binary", maxLength: 400 })], ([text]) => {
    expectTyped(parse(text))
  }, { fastCheck: { numRuns: 500 } })

  it.prop("mutated TOML: a configuration or a ConfigurationError, never an exception", [FastCheck.array(mutation, { minLength: 1, maxLength: 4 })], ([mutations]) => {
    expectTyped(parse(mutations.reduce(mutate, VALID)))
  }, { fastCheck: { numRuns: 1_000 } })

  it.prop("any value as a whole configuration", [FastCheck.anything()], ([input]) => {
    expectTyped(Effect.runSyncExit(decodeSettings(input)))
  }, { fastCheck: { numRuns: 300 } })

  it.prop(
    "stores and limiters with random values for their keys",
    [
      FastCheck.dictionary(FastCheck.constantFrom("s", "t", "bad name"), tableOf([...storeKeys.postgres, ...storeKeys.redis, "engine"]), { maxKeys: 2 }),
      FastCheck.dictionary(FastCheck.constantFrom("api", "x", "a.b"), tableOf(limiterKeys), { maxKeys: 2 })
    ],
    ([stores, limiters]) => {
      expectTyped(Effect.runSyncExit(decodeSettings({ stores, limiters })))
    },
    { fastCheck: { numRuns: 1_000 } }
  )

  it.effect.prop(
    "an accepted memory configuration builds its limiters; a rejected one fails the layer with the same typed error",
    [tableOf(limiterKeys)],
    ([limiter]) =>
      Effect.gen(function*() {
        const input = { stores: { s: { engine: "memory" as const } }, limiters: { api: { store: "s", ...limiter } } }
        const decoded = yield* Effect.exit(decodeSettings(input))
        expectTyped(decoded)
        const built = yield* Effect.exit(Effect.scoped(Layer.build(RateSync.layer(input).pipe(Layer.provide(MemoryStore.layer)))))
        if (Exit.isSuccess(decoded)) expect(Exit.isSuccess(built), Exit.isFailure(built) ? Cause.pretty(built.cause) : "").toBe(true)
        else expect(Exit.isFailure(built) && Option.getOrUndefined(Cause.failureOption(built.cause))?._tag).toBe("ConfigurationError")
      }),
    { fastCheck: { numRuns: 300 } }
  )

  it.prop(
    "environment variables with random names and values: the layer builds or fails with a ConfigurationError",
    [FastCheck.dictionary(
      FastCheck.tuple(
        FastCheck.constantFrom("STORES_S_", "STORES_DB_", "LIMITERS_API_", "LIMITERS_A_B_", ""),
        FastCheck.constantFrom(...limiterKeys, ...storeKeys.postgres, ...storeKeys.redis, "ENGINE", "engine", "x")
      ).map(([prefix, key]) => `RATE_SYNC_${prefix}${key.toUpperCase()}`),
      FastCheck.oneof(FastCheck.constantFrom("memory", "postgres", "1", "-1", "true", "abc", "", "1e309"), FastCheck.string()),
      { maxKeys: 6 }
    )],
    ([vars]) => {
      const provider = ConfigProvider.fromMap(new Map(Object.entries(vars)), { pathDelim: "_" })
      const exit = Effect.runSyncExit(Effect.scoped(Layer.build(RateSync.layerConfig().pipe(Layer.provide(MemoryStore.layer)))).pipe(
        Effect.as(undefined),
        Effect.withConfigProvider(provider)
      ))
      if (Exit.isFailure(exit)) {
        const error = Option.getOrUndefined(Cause.failureOption(exit.cause))
        expect(error?._tag, Cause.pretty(exit.cause)).toBe("ConfigurationError")
      }
    },
    { fastCheck: { numRuns: 300 } }
  )
})
