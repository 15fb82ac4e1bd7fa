/**
 * The values configuration keys take, as Schemas: numbers and booleans typed by the key they belong
 * to (a string "100" decodes where a number is expected, as environment variables must), each numeric
 * key within a range every engine can serve, and the messages that say what was expected.
 */
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import type { Engine } from "../Settings.js"

/** How a found value is shown in a message; never throws, whatever the value (`{ toString: 1 }`, null prototypes). */
export const describe = (actual: unknown): string => {
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

/** Anything TOML calls a table: an object, not an array or a date. */
export const isTable = (u: unknown): u is Readonly<Record<string, unknown>> =>
  typeof u === "object" && u !== null && !Array.isArray(u) && !(u instanceof Date)

/** A lone UTF-16 surrogate: a string holding one cannot be written to a store as it is (UTF-8 replaces it). */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/

const numberMessage = (issue: ParseResult.ParseIssue) => `Expected a number, found ${describe(issue.actual)}`
const booleanMessage = (issue: ParseResult.ParseIssue) => `Expected true or false, found ${describe(issue.actual)}`

export const NumberLike = Schema.transformOrFail(Schema.Union(
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

export const BooleanLike = Schema.transformOrFail(Schema.Union(
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

export const ranged = (range: Range) => refined((n) => inRange(range, n), expectedOf(range))

/** Timers that must fire for the store to work at all: below a tenth of a second a busy but healthy server trips them. */
export const timerMs = (what: string): Range => ({
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

export const Str = Schema.String.annotations({ message: (issue) => `Expected a string, found ${describe(issue.actual)}` }).pipe(
  Schema.filter((s) => !LONE_SURROGATE.test(s) || "Expected text, found a string with a lone UTF-16 surrogate")
)

export const NonEmptyString = Str.pipe(Schema.filter((s) => s.trim().length > 0 || "Expected a non-empty string"))

/** A plain SQL identifier: it is quoted as well, but anything else is refused before any SQL runs. */
export const Identifier = Str.pipe(
  Schema.filter((s) =>
    /^[A-Za-z_][A-Za-z0-9_]{0,62}$/.test(s) ||
    `Expected a plain identifier (a letter or _, then letters, digits or _, at most 63), found ${describe(s)}`
  )
)

/** One of a few strings, reported as one issue (a literal union would report one per member). */
export const oneOf = <const L extends ReadonlyArray<string>>(...literals: L) => {
  const isOne = (s: string): s is L[number] => literals.includes(s)
  const expected = literals.map((l) => JSON.stringify(l)).join(" or ")
  return Schema.transformOrFail(Str, Schema.Literal(...literals), {
    strict: true,
    decode: (s, _, ast) =>
      isOne(s) ? ParseResult.succeed(s) : ParseResult.fail(new ParseResult.Type(ast, s, `Expected ${expected}, found ${describe(s)}`)),
    encode: ParseResult.succeed
  })
}

export const optional = <S extends Schema.Schema.All>(schema: S) => Schema.optionalWith(schema, { exact: true })
export const withDefault = <A, I, R>(schema: Schema.Schema<A, I, R>, value: A) =>
  Schema.optionalWith(schema, { exact: true, default: () => value })

