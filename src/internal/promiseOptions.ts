/**
 * What `rate-sync/promise` checks itself before a call reaches the Effect API: what JavaScript callers
 * can pass that the types forbid and the Effect API never sees (the options object itself, the
 * limiter's name, a signal, a callback, a configuration's name). The options' values (`key`,
 * `timeout`, `cost`, `retryAfter`) are checked by the Effect API, which names them the same way.
 */
import * as Either from "effect/Either"
import * as Predicate from "effect/Predicate"
import { ConfigIssue, ConfigurationError, InvalidOption } from "../Errors.js"

const show = (value: unknown): string => {
  if (value === null) return "null"
  if (typeof value === "string") return JSON.stringify(value)
  if (typeof value === "bigint") return `${value}n`
  if (typeof value === "symbol" || typeof value === "function") return typeof value
  if (typeof value === "object") return Array.isArray(value) ? "an array" : "an object"
  return `${typeof value} ${String(value)}`
}

/** As `fetch` and Node do, anything shaped like an `AbortSignal` is one (polyfills, other realms). */
const isSignal = (value: unknown): value is AbortSignal =>
  Predicate.hasProperty(value, "aborted") && typeof value.aborted === "boolean" &&
  Predicate.hasProperty(value, "addEventListener") && Predicate.isFunction(value.addEventListener) &&
  Predicate.hasProperty(value, "removeEventListener") && Predicate.isFunction(value.removeEventListener)

export interface Checked {
  readonly limiter: string
  readonly signal: AbortSignal | undefined
}

/**
 * A call's limiter name and options object, and its `signal` where it takes one. A name that is not
 * a string has no limiter to name in the error: `limiter` is "" there.
 */
export const call = (
  limiter: unknown,
  options: unknown,
  takes: { readonly signal: boolean }
): Either.Either<Checked, InvalidOption> =>
  typeof limiter === "string"
    ? withOptions(limiter, options, takes)
    : Either.left(new InvalidOption({ limiter: "", option: "limiter", found: show(limiter), expected: "a limiter's name (a string)" }))

/** The options object of a call of several limiters (`acquireAll`...): no one limiter to name in an error. */
export const callAll = (options: unknown, takes: { readonly signal: boolean }): Either.Either<Checked, InvalidOption> =>
  withOptions("", options, takes)

const withOptions = (limiter: string, options: unknown, takes: { readonly signal: boolean }): Either.Either<Checked, InvalidOption> => {
  const invalid = (option: string, found: unknown, expected: string) =>
    Either.left(new InvalidOption({ limiter, option, found: show(found), expected }))
  if (options === undefined) return Either.right({ limiter, signal: undefined })
  if (!Predicate.isObject(options) || Predicate.isFunction(options) || Array.isArray(options)) {
    return invalid("options", options, "an object ({ key, cost, ... }) or nothing")
  }
  const signal = takes.signal && Predicate.hasProperty(options, "signal") ? options.signal : undefined
  if (signal !== undefined && !isSignal(signal)) return invalid("signal", signal, "an AbortSignal")
  return Either.right({ limiter, signal })
}

/** `withPermit`'s callback, once the call is checked. */
export const callback = (checked: Checked, fn: unknown): Either.Either<Checked, InvalidOption> =>
  Predicate.isFunction(fn)
    ? Either.right(checked)
    : Either.left(
      new InvalidOption({ limiter: checked.limiter, option: "fn", found: show(fn), expected: "a function (returning a promise)" })
    )

const configIssue = (path: string, message: string) => new ConfigurationError({ issues: [new ConfigIssue({ path, message })] })

/** The name given to `configureStore` or `configureLimiter`: a string (a number would be coerced, a symbol dropped). */
export const name = (table: "stores" | "limiters", value: unknown): Either.Either<string, ConfigurationError> =>
  typeof value === "string"
    ? Either.right(value)
    : Either.left(configIssue(table, `Expected a name (a string), found ${show(value)}`))

/** The path given to `loadConfig`. */
export const path = (value: unknown): Either.Either<string | undefined, ConfigurationError> =>
  value === undefined || typeof value === "string"
    ? Either.right(value)
    : Either.left(configIssue("", `loadConfig: expected a file path (a string) or nothing, found ${show(value)}`))
