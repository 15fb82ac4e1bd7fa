/**
 * The one Schema every configuration source goes through (TOML, Effect `Config`, plain objects),
 * with keys exactly as documented in the README (snake_case). Numbers and booleans are typed by the key
 * they belong to, never by what a string looks like: `"123456"` given for a password stays a string,
 * while `"100"` given for `rate_per_second` (as env vars must) decodes to 100.
 */
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import { ConfigIssue, ConfigurationError } from "./Errors.js"
import {
  BooleanLike,
  describe,
  Identifier,
  NonEmptyString,
  oneOf,
  optional,
  ranged,
  ranges,
  Str,
  withDefault
} from "./internal/configValues.js"
import { limiterIssues } from "./internal/limiterRules.js"

/** The ranges of the numeric keys, for tools and tests; the engines' view of a validated limiter. */
export { inRange, MAX_STATE_SECONDS, type Range, ranges } from "./internal/configValues.js"
export { fromConfig as toLimiterSpec } from "./LimiterSpec.js"

export const MemoryStoreConfig = Schema.Struct({
  engine: Schema.Literal("memory"),
  timing_margin_ms: withDefault(ranged(ranges.memory.timing_margin_ms), 0)
})

export const PostgresStoreConfig = Schema.Struct({
  engine: Schema.Literal("postgres"),
  url: NonEmptyString,
  /**
   * A direct connection (or a session-mode pool) for the one LISTEN connection, when `url` goes
   * through a pooler in transaction mode, where LISTEN cannot hold. Unset: LISTEN goes through `url`.
   */
  listen_url: optional(NonEmptyString),
  table_name: withDefault(Identifier, "rate_limiter_state"),
  schema_name: withDefault(Identifier, "public"),
  auto_create: withDefault(BooleanLike, false),
  pool_min_size: withDefault(ranged(ranges.postgres.pool_min_size), 2),
  pool_max_size: withDefault(ranged(ranges.postgres.pool_max_size), 10),
  timing_margin_ms: withDefault(ranged(ranges.postgres.timing_margin_ms), 10),
  /** Speed knob: an UNLOGGED table (with auto_create); its state is lost if the server crashes. */
  unlogged: withDefault(BooleanLike, false),
  /** Speed knob: the limiter's own commits are not waited for on disk. */
  synchronous_commit: withDefault(BooleanLike, true),
  /** How long an operation waits for a free pooled connection before failing. */
  pool_timeout_ms: withDefault(ranged(ranges.postgres.pool_timeout_ms), 5_000),
  /** The longest one store operation may take (a row lock held elsewhere, an overloaded server) before it fails with StoreTimeout. */
  operation_timeout_ms: withDefault(ranged(ranges.postgres.operation_timeout_ms), 2_000)
})

export const RedisStoreConfig = Schema.Struct({
  engine: Schema.Literal("redis"),
  url: NonEmptyString,
  key_prefix: withDefault(Str, "rate-sync:"),
  pool_max_size: withDefault(ranged(ranges.redis.pool_max_size), 1),
  timing_margin_ms: withDefault(ranged(ranges.redis.timing_margin_ms), 10),
  connect_timeout_ms: withDefault(ranged(ranges.redis.connect_timeout_ms), 5_000),
  command_timeout_ms: withDefault(ranged(ranges.redis.command_timeout_ms), 2_000)
})

export type Engine = "memory" | "postgres" | "redis"
export type MemoryStoreConfig = typeof MemoryStoreConfig.Type
/** What the PostgreSQL engine is built from: every key decoded, the url read. */
export type PostgresStoreConfig = typeof PostgresStoreConfig.Type
/** What the Redis engine is built from: every key decoded, the url read. */
export type RedisStoreConfig = typeof RedisStoreConfig.Type
/** A store whose every key, url included, is known: what `decodeSettings` and `Toml.load` give. */
export type StoreConfig = MemoryStoreConfig | PostgresStoreConfig | RedisStoreConfig

/**
 * A server store's url, or how to read it when the store connects. `RateSync.layerToml` defers a url
 * holding `${VAR}` this way, so a store served by `MemoryStore.layer` never reads its variables (a test
 * needs no DATABASE_URL); reading fails as loading would have, naming the variable and the key.
 */
export type StoreUrl = string | Effect.Effect<string, ConfigurationError>

/** The keys that hold where a server store connects: their `${VAR}` may wait until it connects. */
export const urlKeys = ["url", "listen_url"] as const

/** A server store's keys with its urls (`url`, and `listen_url` where there is one) possibly still to read. */
export type WithDeferredUrl<C extends { readonly url: string }> =
  & Omit<C, "url" | "listen_url">
  & { readonly url: StoreUrl }
  & ("listen_url" extends keyof C ? { readonly listen_url?: StoreUrl } : unknown)

/**
 * What a `StoreFactory` is given: every key decoded, and a server store's url possibly still to read.
 * A factory that connects reads it (`resolveUrl`, `resolveStore`); one that does not (`MemoryStore.layer`)
 * never does. A `StoreConfig` is one.
 */
export type DeferredStoreConfig =
  | MemoryStoreConfig
  | WithDeferredUrl<PostgresStoreConfig>
  | WithDeferredUrl<RedisStoreConfig>
export type StoreConfigInput =
  | typeof MemoryStoreConfig.Encoded
  | typeof PostgresStoreConfig.Encoded
  | typeof RedisStoreConfig.Encoded

export const LimiterConfig = Schema.Struct({
  store: NonEmptyString,
  algorithm: withDefault(oneOf("token_bucket", "sliding_window"), "token_bucket"),
  rate_per_second: optional(ranged(ranges.limiter.rate_per_second)),
  burst: optional(ranged(ranges.limiter.burst)),
  limit: optional(ranged(ranges.limiter.limit)),
  window_seconds: optional(ranged(ranges.limiter.window_seconds)),
  max_concurrent: optional(ranged(ranges.limiter.max_concurrent)),
  /** Any finite wait: one too long for a timer is no bound at all. */
  timeout: optional(ranged(ranges.limiter.timeout)),
  lease_ttl_seconds: withDefault(ranged(ranges.limiter.lease_ttl_seconds), 30),
  fail_closed: withDefault(BooleanLike, false),
  /** "shadow": every call proceeds at once, and what enforcing would have done is only counted. */
  mode: withDefault(oneOf("enforce", "shadow"), "enforce"),
  retry_max_attempts: withDefault(ranged(ranges.limiter.retry_max_attempts), 12),
  retry_base_delay_ms: withDefault(ranged(ranges.limiter.retry_base_delay_ms), 1),
  retry_max_delay_ms: withDefault(ranged(ranges.limiter.retry_max_delay_ms), 100)
})
export type LimiterConfig = typeof LimiterConfig.Type
export type LimiterConfigInput = typeof LimiterConfig.Encoded

export const storeKeys: Record<Engine, ReadonlyArray<string>> = {
  memory: Object.keys(MemoryStoreConfig.fields),
  postgres: Object.keys(PostgresStoreConfig.fields),
  redis: Object.keys(RedisStoreConfig.fields)
}
export const limiterKeys: ReadonlyArray<string> = Object.keys(LimiterConfig.fields)
export const engines: ReadonlyArray<Engine> = ["memory", "postgres", "redis"]

/**
 * A validated configuration. By default every store is resolved; `Settings<DeferredStoreConfig>` (what
 * `RateSync` builds from) may hold server urls still to read.
 */
export interface Settings<S extends DeferredStoreConfig = StoreConfig> {
  readonly stores: Readonly<Record<string, S>>
  readonly limiters: Readonly<Record<string, LimiterConfig>>
}

/** What a user writes: the TOML tables, or the same shape as a plain object. */
export interface SettingsInput {
  readonly stores?: Readonly<Record<string, StoreConfigInput>>
  readonly limiters?: Readonly<Record<string, LimiterConfigInput>>
}

/** Store and limiter names: letters, digits, '_', '-' and '.', at most this long (`:` separates a limiter's name from a key). */
export const maxNameLength = 128

const NAME = /^[A-Za-z0-9_.-]+$/

const isName = (name: string) => name.length >= 1 && name.length <= maxNameLength && NAME.test(name)

const issue = (path: string, message: string) => new ConfigIssue({ path, message })

const isRecord = (u: unknown): u is Readonly<Record<string, unknown>> =>
  typeof u === "object" && u !== null && !Array.isArray(u) && !(u instanceof Date)

const schemaIssues = (prefix: string, error: ParseResult.ParseError): Array<ConfigIssue> =>
  ParseResult.ArrayFormatter.formatErrorSync(error).map((entry) => {
    const path = [prefix, ...entry.path.map(String)].join(".")
    switch (entry._tag) {
      case "Unexpected":
        return issue(path, `unknown key (${entry.message.replace(/^is unexpected, expected: /, "known keys: ")})`)
      case "Missing":
        return issue(path, "is required")
      default:
        return issue(path, entry.message)
    }
  })

const decodeEntry = <A, I>(schema: Schema.Schema<A, I>, prefix: string, input: unknown) =>
  Schema.decodeUnknownEither(schema, { errors: "all", onExcessProperty: "error" })(input).pipe(
    Either.mapLeft((error) => schemaIssues(prefix, error))
  )

const decodeStore = (name: string, input: unknown): Either.Either<StoreConfig, Array<ConfigIssue>> => {
  const path = `stores.${name}`
  if (!isRecord(input)) return Either.left([issue(path, `Expected a table, found ${describe(input)}`)])
  const engine = input["engine"]
  if (engine !== "memory" && engine !== "postgres" && engine !== "redis") {
    return Either.left([
      issue(`${path}.engine`, `Expected "memory", "postgres" or "redis", found ${describe(engine)}`)
    ])
  }
  const decoded: Either.Either<StoreConfig, Array<ConfigIssue>> = engine === "memory"
    ? decodeEntry(MemoryStoreConfig, path, input)
    : engine === "postgres"
    ? decodeEntry(PostgresStoreConfig, path, input)
    : decodeEntry(RedisStoreConfig, path, input)
  return Either.flatMap(decoded, (store) =>
    store.engine === "postgres" && store.pool_min_size > store.pool_max_size
      ? Either.left([
        issue(`${path}.pool_min_size`, `Expected at most pool_max_size (${store.pool_max_size}), found ${store.pool_min_size}`)
      ])
      : Either.right(store))
}

const decodeTable = <A>(
  table: "stores" | "limiters",
  input: unknown,
  decode: (name: string, value: unknown) => Either.Either<A, Array<ConfigIssue>>,
  issues: Array<ConfigIssue>
): Record<string, A> => {
  if (input === undefined) return {}
  if (!isRecord(input)) {
    issues.push(issue(table, `Expected a table, found ${describe(input)}`))
    return {}
  }
  const entries: Array<readonly [string, A]> = []
  for (const [name, value] of Object.entries(input)) {
    if (!isName(name)) {
      issues.push(issue(`${table}.${name}`, `Expected a name of letters, digits, '_', '-' or '.' (at most ${maxNameLength})`))
      continue
    }
    Either.match(decode(name, value), {
      onLeft: (found) => issues.push(...found),
      onRight: (decoded) => entries.push([name, decoded])
    })
  }
  // Own data properties, whatever the name: an assignment to `out["__proto__"]` would set the prototype instead.
  return Object.fromEntries(entries)
}

/** Validates a whole configuration, reporting every problem at once with its key path. */
export const decodeSettings = (input: unknown): Effect.Effect<Settings, ConfigurationError> =>
  Effect.suspend(() => {
    if (!isRecord(input)) {
      return Effect.fail(new ConfigurationError({ issues: [issue("", `Expected a configuration table, found ${describe(input)}`)] }))
    }
    const issues: Array<ConfigIssue> = []
    for (const key of Object.keys(input)) {
      if (key !== "stores" && key !== "limiters") issues.push(issue(key, "unknown key (known keys: \"stores\" | \"limiters\")"))
    }
    const stores = decodeTable("stores", input["stores"], decodeStore, issues)
    const limiters = decodeTable(
      "limiters",
      input["limiters"],
      (name, value) => decodeEntry(LimiterConfig, `limiters.${name}`, value),
      issues
    )
    const storeNames = Object.keys(stores)
    const declaredStores = isRecord(input["stores"]) ? Object.keys(input["stores"]) : storeNames
    for (const [name, limiter] of Object.entries(limiters)) {
      issues.push(...limiterIssues(name, limiter, declaredStores))
    }
    return issues.length > 0
      ? Effect.fail(new ConfigurationError({ issues }))
      : Effect.succeed({ stores, limiters })
  })

/**
 * The url a server store connects to, read now if it was deferred, and checked as loading checks it
 * (`stores.NAME.url: Expected a non-empty string` for `${VAR:-}` left empty).
 */
export const resolveUrl = (
  store: string,
  url: StoreUrl,
  key: (typeof urlKeys)[number] = "url"
): Effect.Effect<string, ConfigurationError> =>
  typeof url === "string" ? Effect.succeed(url) : Effect.flatMap(url, (read) =>
    Either.match(decodeEntry(PostgresStoreConfig.fields.url, `stores.${store}.${key}`, read), {
      onLeft: (issues) => Effect.fail(new ConfigurationError({ issues })),
      onRight: Effect.succeed
    }))

/** A PostgreSQL store's `listen_url`, read now if it was deferred (as `resolveUrl`); undefined when unset. */
export const resolveListenUrl = (store: string, url: StoreUrl | undefined): Effect.Effect<string | undefined, ConfigurationError> =>
  url === undefined ? Effect.succeed(undefined) : resolveUrl(store, url, "listen_url")

/** A PostgreSQL store with its urls (`url`, `listen_url`) read, each as `resolveUrl` reads it. */
export const resolvePostgres = (
  name: string,
  config: WithDeferredUrl<PostgresStoreConfig>
): Effect.Effect<PostgresStoreConfig, ConfigurationError> =>
  Effect.map(
    Effect.all([resolveUrl(name, config.url), resolveListenUrl(name, config.listen_url)]),
    ([url, listen_url]): PostgresStoreConfig => {
      const { listen_url: _deferred, ...rest } = config
      return listen_url === undefined ? { ...rest, url } : { ...rest, url, listen_url }
    }
  )

/** A store as its engine takes it: its deferred urls read (see `StoreUrl`). */
export const resolveStore = (name: string, config: DeferredStoreConfig): Effect.Effect<StoreConfig, ConfigurationError> => {
  switch (config.engine) {
    case "memory":
      return Effect.succeed(config)
    case "postgres":
      return resolvePostgres(name, config)
    case "redis":
      return Effect.map(resolveUrl(name, config.url), (url): RedisStoreConfig => ({ ...config, url }))
  }
}
