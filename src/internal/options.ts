/**
 * The options of a call, checked where the call is made: JavaScript callers (and `as` casts) can pass
 * anything, and a value an engine cannot serve must be a typed error naming the option, never an
 * unlimited limit or a defect deep in a store.
 */
import * as Duration from "effect/Duration"
import * as Either from "effect/Either"
import * as Option from "effect/Option"

/** Waits longer than this are no bound at all (about 31 years): they also stay clear of SQL interval overflow. */
export const UNBOUNDED_MS = 1e12

/** The longest `backoff` a caller can ask for: a year. Anything longer is a mistake, and would overflow the stores' time. */
export const MAX_BACKOFF_MS = 365 * 24 * 3_600_000

export interface Problem {
  readonly option: string
  readonly found: string
  readonly expected: string
}

const show = (value: unknown): string => {
  if (typeof value === "string") return JSON.stringify(value)
  if (typeof value === "bigint") return `${value}n`
  if (Duration.isDuration(value)) return `a Duration of ${Duration.toMillis(value)} ms`
  try {
    return `${typeof value} ${String(value)}`
  } catch {
    return typeof value
  }
}

const problem = (option: string, value: unknown, expected: string): Problem => ({ option, found: show(value), expected })

/** A problem is the one object these checks return: a key is a string, a timeout a number or undefined. */
export const isProblem = (checked: unknown): checked is Problem => typeof checked === "object" && checked !== null

/** A key, or its problem: absent is the limiter's one shared key, "". Without an `Either`, as an acquire checks it. */
export const keyOf = (value: unknown): string | Problem =>
  value === undefined
    ? ""
    : typeof value === "string"
    ? value
    : problem("key", value, "a string (convert numbers with String(id))")

export const key = (value: unknown): Either.Either<string, Problem> => {
  const checked = keyOf(value)
  return isProblem(checked) ? Either.left(checked) : Either.right(checked)
}

/** Milliseconds of a duration given as a number of ms, a bigint of ns, a string ("2 seconds") or a Duration. */
const millis = (value: unknown): number | undefined => {
  if (typeof value === "number") return Number.isNaN(value) || value < 0 ? undefined : value
  if (typeof value === "bigint") return value < 0n ? undefined : Number(value) / 1e6
  const decoded = Duration.decodeUnknown(value)
  if (Option.isNone(decoded)) return undefined
  const ms = Duration.toMillis(decoded.value)
  return Number.isNaN(ms) || ms < 0 ? undefined : ms
}

/** A wait bound in ms, or its problem; `undefined` when there is none (absent from the call and the limiter, or too long to matter). */
export const timeoutOf = (value: unknown, fallbackMs: number | undefined): number | undefined | Problem => {
  if (value === undefined) return fallbackMs === undefined || fallbackMs > UNBOUNDED_MS ? undefined : fallbackMs
  const ms = millis(value)
  if (ms === undefined) return problem("timeout", value, "a duration of 0 or more (ms as a number, or \"2 seconds\")")
  return ms > UNBOUNDED_MS ? undefined : ms
}

export const timeout = (value: unknown, fallbackMs: number | undefined): Either.Either<number | undefined, Problem> => {
  const checked = timeoutOf(value, fallbackMs)
  return isProblem(checked) ? Either.left(checked) : Either.right(checked)
}

export const retryAfter = (value: unknown): Either.Either<number, Problem> => {
  const ms = millis(value)
  return ms === undefined || ms > MAX_BACKOFF_MS
    ? Either.left(problem("retryAfter", value, "a duration of 0 or more, at most 365 days"))
    : Either.right(ms)
}
