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
import type { LimiterSpec, RatePolicy } from "./LimiterSpec.js"

/** How a found value is shown in a message; never throws, whatever the value (`{ toString: 1 }`, null prototypes). */
const describe = (actual: unknown): string => {
  if (typeof actual === "string") return JSON.stringify(actual)
  if (actual === undefined) return "nothing"
  if (typeof actual === "number") return Object.is(actual, -0) ? "-0" : String(actual)
  if (typeof actual === "bigint") return `${actual}n`
  if (typeof actual === "symbol") return actual.toString()
  if (Array.isArray(actual)) return "an array"
  if (actual instanceof Date) return Number.isNaN(actual.getTime()) ? "an invalid date" : `the date ${actual.toISOString()}`
  if (typeof actual === "object" && actual !== null) return "a table"
  try {
    return String(actual)
  } catch {
    return typeof actual
  }
}

/** A lone UTF-16 surrogate: a string holding one cannot be written to a store as it is (UTF-8 replaces it). */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/

const numberMessage = (issue: ParseResult.ParseIssue) => `Expected a number, found ${describe(issue.actual)}`
const booleanMessage = (issue: ParseResult.ParseIssue) => `Expected true or false, found ${describe(issue.actual)}`

const NumberLike = Schema.transformOrFail(Schema.Union(
  Schema.Number.annotations({ message: numberMessage }),
  Schema.String.annotations({ message: numberMessage })
), Schema.Number, {
  strict: true,
  decode: (input, _, ast) => {
    const value = typeof input === "number" ? input : input.trim() === "" ? Number.NaN : Number(input)
    return Number.isFinite(value)
      ? ParseResult.succeed(value === 0 ? 0 : value) // -0 is 0
      : ParseResult.fail(new ParseResult.Type(ast, input, `Expected a number, found ${describe(input)}`))
  },
  encode: ParseResult.succeed
}).annotations({ message: numberMessage })

const BooleanLike = Schema.transformOrFail(Schema.Union(
  Schema.Boolean.annotations({ message: booleanMessage }),
  Schema.String.annotations({ message: booleanMessage })
), Schema.Boolean, {
  strict: true,
  decode: (input, _, ast) => {
    if (typeof input === "boolean") return ParseResult.succeed(input)
    const lowered = input.trim().toLowerCase()
    return lowered === "true" || lowered === "false"
      ? ParseResult.succeed(lowered === "true")
      : ParseResult.fail(new ParseResult.Type(ast, input, `Expected true or false, found ${describe(input)}`))
  },
  encode: ParseResult.succeed
}).annotations({ message: booleanMessage })

const refined = (filter: (n: number) => boolean, expected: string) =>
  NumberLike.pipe(Schema.filter((n) => filter(n) || `Expected ${expected}, found ${describe(n)}`))

/**
 * The values a numeric key accepts. Every bound is one every engine serves: values a store's time
 * arithmetic (PostgreSQL timestamps and intervals, Redis integers), a Node timer (at most 2^31 - 1 ms,
 * longer ones fire at once) or a pool cannot hold are refused here, naming the key, rather than
 * failing on first use.
 */
export interface Range {
  readonly min: number
  readonly max: number
  /** The minimum itself is refused: a number above `min`. */
  readonly above?: boolean
  readonly whole?: boolean
  /** What the number is called in messages: "a rate"; "a number" or "a whole number" by default. */
  readonly noun?: string
  /** " ms", " seconds", " per second". */
  readonly unit?: string
  /** Why the bound is there, when that is not obvious. */
  readonly why?: string
}

export const inRange = (range: Range, n: number): boolean =>
  Number.isFinite(n) && (range.above === true ? n > range.min : n >= range.min) && n <= range.max &&
  (range.whole !== true || Number.isSafeInteger(n))

const expectedOf = (range: Range): string => {
  const what = range.noun ?? (range.whole === true ? "a whole number" : "a number")
  const unit = range.unit ?? ""
  const span = range.max === Infinity
    ? `${what} of ${range.min} or more${unit}`
    : range.above === true
    ? `${what} above ${range.min} and at most ${range.max}${unit}`
    : `${what} from ${range.min} to ${range.max}${unit}`
  return range.why === undefined ? span : `${span} (${range.why})`
}

const ranged = (range: Range) => refined((n) => inRange(range, n), expectedOf(range))

/** Timers that must fire for the store to work at all: below a tenth of a second a busy but healthy server trips them. */
const timerMs = (what: string): Range => ({
  min: 100,
  max: 3_600_000,
  unit: " ms",
  why: `${what}; below 100 ms a healthy but busy server trips it, above an hour it is no bound`
})

/**
 * The furthest ahead of now a limiter's state may lie, in seconds: about 31 years, well inside PostgreSQL
 * timestamps and intervals and exact in Redis' microsecond doubles.
 */
export const MAX_STATE_SECONDS = 1_000_000_000

/** Every numeric key's accepted values, by table: the schemas below are built from these. */
export const ranges = {
  limiter: {
    rate_per_second: { min: 0.000001, max: 1_000_000, noun: "a rate", unit: " per second" },
    burst: { min: 1, max: 1_000_000_000, whole: true },
    limit: {
      min: 1,
      max: 10_000,
      whole: true,
      why: "PostgreSQL keeps a row per admission in the window and reads them all at each one"
    },
    window_seconds: { min: 0.001, max: 10_000_000, unit: " seconds" },
    max_concurrent: { min: 1, max: 10_000, whole: true, why: "PostgreSQL keeps a row per permit" },
    timeout: { min: 0, max: Infinity, unit: " seconds" },
    lease_ttl_seconds: {
      min: 0.5,
      max: 1_000_000,
      unit: " seconds",
      why: "a lease is renewed every third of it: a shorter one expires before its renewal lands, a longer one outgrows the renewal timer"
    },
    retry_max_attempts: { min: 1, max: 1_000, whole: true },
    retry_base_delay_ms: { min: 0, above: true, max: 60_000, unit: " ms" },
    retry_max_delay_ms: { min: 0, above: true, max: 60_000, unit: " ms" }
  },
  memory: {
    timing_margin_ms: { min: 0, max: 1_000, unit: " ms" }
  },
  postgres: {
    pool_min_size: { min: 0, max: 1_000, whole: true },
    pool_max_size: { min: 1, max: 1_000, whole: true },
    timing_margin_ms: { min: 0, max: 1_000, unit: " ms" },
    pool_timeout_ms: timerMs("a wait for a pooled connection"),
    operation_timeout_ms: timerMs("a store operation's time")
  },
  redis: {
    pool_max_size: { min: 1, max: 64, whole: true, why: "each is a connection opened when the store starts" },
    timing_margin_ms: { min: 0, max: 1_000, unit: " ms" },
    connect_timeout_ms: timerMs("a connection attempt"),
    command_timeout_ms: timerMs("a command's time")
  }
} as const satisfies Record<"limiter" | Engine, Record<string, Range>>

const Str = Schema.String.annotations({ message: (issue) => `Expected a string, found ${describe(issue.actual)}` }).pipe(
  Schema.filter((s) => !LONE_SURROGATE.test(s) || "Expected text, found a string with a lone UTF-16 surrogate")
)

const NonEmptyString = Str.pipe(Schema.filter((s) => s.trim().length > 0 || "Expected a non-empty string"))

/** A plain SQL identifier: it is quoted as well, but anything else is refused before any SQL runs. */
const Identifier = Str.pipe(
  Schema.filter((s) =>
    /^[A-Za-z_][A-Za-z0-9_]{0,62}$/.test(s) ||
    `Expected a plain identifier (a letter or _, then letters, digits or _, at most 63), found ${describe(s)}`
  )
)

/** One of a few strings, reported as one issue (a literal union would report one per member). */
const oneOf = <const L extends ReadonlyArray<string>>(...literals: L) => {
  const isOne = (s: string): s is L[number] => literals.includes(s)
  const expected = literals.map((l) => JSON.stringify(l)).join(" or ")
  return Schema.transformOrFail(Str, Schema.Literal(...literals), {
    strict: true,
    decode: (s, _, ast) =>
      isOne(s) ? ParseResult.succeed(s) : ParseResult.fail(new ParseResult.Type(ast, s, `Expected ${expected}, found ${describe(s)}`)),
    encode: ParseResult.succeed
  })
}

const optional = <S extends Schema.Schema.All>(schema: S) => Schema.optionalWith(schema, { exact: true })
const withDefault = <A, I, R>(schema: Schema.Schema<A, I, R>, value: A) =>
  Schema.optionalWith(schema, { exact: true, default: () => value })

export const MemoryStoreConfig = Schema.Struct({
  engine: Schema.Literal("memory"),
  timing_margin_ms: withDefault(ranged(ranges.memory.timing_margin_ms), 0)
})

export const PostgresStoreConfig = Schema.Struct({
  engine: Schema.Literal("postgres"),
  url: NonEmptyString,
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
export type PostgresStoreConfig = typeof PostgresStoreConfig.Type
export type RedisStoreConfig = typeof RedisStoreConfig.Type
export type StoreConfig = MemoryStoreConfig | PostgresStoreConfig | RedisStoreConfig
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

export interface Settings {
  readonly stores: Readonly<Record<string, StoreConfig>>
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

const checkLimiter = (name: string, limiter: LimiterConfig, stores: ReadonlyArray<string>): Array<ConfigIssue> => {
  const path = `limiters.${name}`
  const issues: Array<ConfigIssue> = []
  if (!stores.includes(limiter.store)) {
    const known = stores.length === 0 ? "no store is configured" : `configured: ${stores.map((s) => JSON.stringify(s)).join(", ")}`
    issues.push(issue(`${path}.store`, `Expected the name of a configured store (${known}), found ${JSON.stringify(limiter.store)}`))
  }
  if (limiter.algorithm === "token_bucket") {
    for (const key of ["limit", "window_seconds"] as const) {
      if (limiter[key] !== undefined) issues.push(issue(`${path}.${key}`, `belongs to algorithm = "sliding_window"`))
    }
    if (limiter.burst !== undefined && limiter.rate_per_second === undefined) {
      issues.push(issue(`${path}.burst`, "needs rate_per_second"))
    }
  } else {
    for (const key of ["rate_per_second", "burst"] as const) {
      if (limiter[key] !== undefined) issues.push(issue(`${path}.${key}`, `belongs to algorithm = "token_bucket"`))
    }
    for (const key of ["limit", "window_seconds"] as const) {
      if (limiter[key] === undefined) issues.push(issue(`${path}.${key}`, `is required with algorithm = "sliding_window"`))
    }
  }
  if (
    limiter.rate_per_second === undefined && limiter.limit === undefined && limiter.window_seconds === undefined &&
    limiter.max_concurrent === undefined
  ) {
    issues.push(issue(path, "needs at least one of rate_per_second, limit + window_seconds, or max_concurrent"))
  }
  if (limiter.burst !== undefined && limiter.rate_per_second !== undefined) {
    const seconds = limiter.burst / limiter.rate_per_second
    if (seconds > MAX_STATE_SECONDS) {
      issues.push(issue(
        `${path}.burst`,
        `Expected burst / rate_per_second at most ${MAX_STATE_SECONDS} seconds (a drained bucket must refill within about 31 years, which every store's time holds), found ${limiter.burst} / ${limiter.rate_per_second} = ${seconds} seconds`
      ))
    }
  }
  if (limiter.retry_base_delay_ms > limiter.retry_max_delay_ms) {
    issues.push(issue(`${path}.retry_base_delay_ms`, `Expected at most retry_max_delay_ms (${limiter.retry_max_delay_ms}), found ${limiter.retry_base_delay_ms}`))
  }
  return issues
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
      issues.push(...checkLimiter(name, limiter, declaredStores))
    }
    return issues.length > 0
      ? Effect.fail(new ConfigurationError({ issues }))
      : Effect.succeed({ stores, limiters })
  })

/** The engines' view of a validated limiter, in milliseconds. */
export const toLimiterSpec = (name: string, config: LimiterConfig): LimiterSpec => {
  let rate: RatePolicy | undefined
  if (config.algorithm === "sliding_window" && config.limit !== undefined && config.window_seconds !== undefined) {
    rate = { _tag: "SlidingWindow", limit: config.limit, windowMs: config.window_seconds * 1000 }
  } else if (config.rate_per_second !== undefined) {
    rate = {
      _tag: "TokenBucket",
      ratePerSecond: config.rate_per_second,
      burst: config.burst ?? 1,
      intervalMs: 1000 / config.rate_per_second
    }
  }
  return {
    name,
    store: config.store,
    rate,
    concurrency: config.max_concurrent === undefined
      ? undefined
      : { max: config.max_concurrent, leaseTtlMs: config.lease_ttl_seconds * 1000 },
    // A timeout of more than about 1.8e305 s would be an infinite number of ms.
    timeoutMs: config.timeout === undefined ? undefined : Math.min(config.timeout * 1000, Number.MAX_VALUE),
    failClosed: config.fail_closed,
    retry: {
      maxAttempts: config.retry_max_attempts,
      baseDelayMs: config.retry_base_delay_ms,
      maxDelayMs: config.retry_max_delay_ms
    }
  }
}
