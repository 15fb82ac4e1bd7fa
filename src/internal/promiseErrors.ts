/**
 * The errors of `rate-sync/promise` that differ from the Effect API's: the two that carry durations
 * carry them as numbers of milliseconds (what plain JavaScript compares and prints), and an abort is
 * an `AbortError`, as `fetch` and Node's own APIs reject with.
 */
import * as Cause from "effect/Cause"
import * as Duration from "effect/Duration"
import * as Schema from "effect/Schema"
import * as Errors from "../Errors.js"

/** As the Effect API's `AcquireTimeout`, with its durations in milliseconds. Nothing was consumed. */
export class AcquireTimeout extends Schema.TaggedError<AcquireTimeout>()("AcquireTimeout", {
  limiter: Schema.String,
  key: Schema.String,
  /** The wait bound that ran out, in milliseconds. */
  timeout: Schema.Number,
  /** How long after the deadline a rate slot would have been free, in milliseconds, when that is known. */
  retryAfter: Schema.optional(Schema.Number)
}) {
  override get message(): string {
    return `Limiter "${this.limiter}": no permit within ${Math.round(this.timeout)} ms`
  }
}

/** As the Effect API's `RateLimitExceeded`, with `retryAfter` in milliseconds. Nothing was consumed. */
export class RateLimitExceeded extends Schema.TaggedError<RateLimitExceeded>()("RateLimitExceeded", {
  limiter: Schema.String,
  key: Schema.String,
  /**
   * Milliseconds until a permit is expected to be free (as `msBeforeNext` elsewhere); 0 when only a
   * concurrency release can free one.
   */
  retryAfter: Schema.Number,
  limit: Schema.Number,
  remaining: Schema.Number
}) {
  override get message(): string {
    return `Limiter "${this.limiter}": rate limit exceeded, retry after ${Math.ceil(this.retryAfter)} ms`
  }
}

/**
 * The call's `AbortSignal` was aborted: whatever the call had reserved was given back. `name` is
 * `"AbortError"` (as a `DOMException` from `fetch`), `cause` is the signal's `reason`.
 */
export class AbortError extends Schema.TaggedError<AbortError>()("AbortError", {
  cause: Schema.optional(Schema.Defect)
}) {
  /** Node's own aborted calls (`events.once`, `fs`, timers) carry this code. */
  get code(): "ABORT_ERR" {
    return "ABORT_ERR"
  }

  override get message(): string {
    return "The operation was aborted"
  }
}

/** What `acquire` and `withPermit` can reject with. */
export type AcquireError =
  | Errors.LimiterNotFound
  | AcquireTimeout
  | AbortError
  | Errors.CostExceedsCapacity
  | Errors.InvalidCost
  | Errors.InvalidOption
  | Errors.StoreError

/** What `consume` can reject with. */
export type ConsumeError = AcquireError | Errors.LeaseNeedsScope

/** What `tryAcquire` can reject with. */
export type TryAcquireError =
  | Errors.LimiterNotFound
  | RateLimitExceeded
  | Errors.CostExceedsCapacity
  | Errors.InvalidCost
  | Errors.InvalidOption
  | Errors.StoreError

/** What `tryConsume` can reject with. */
export type TryConsumeError = TryAcquireError | Errors.LeaseNeedsScope

const ms = Duration.toMillis

/** The rejection for a failed Effect: the same error, its durations in ms; an abort as `AbortError`. */
export const fromCause = (cause: Cause.Cause<unknown>, signal: AbortSignal | undefined): unknown => {
  if (signal?.aborted === true && Cause.isInterruptedOnly(cause)) return aborted(signal)
  const error = Cause.squash(cause)
  if (error instanceof Errors.AcquireTimeout) {
    return new AcquireTimeout({
      limiter: error.limiter,
      key: error.key,
      timeout: ms(error.timeout),
      retryAfter: error.retryAfter === undefined ? undefined : ms(error.retryAfter)
    })
  }
  if (error instanceof Errors.RateLimitExceeded) {
    return new RateLimitExceeded({
      limiter: error.limiter,
      key: error.key,
      retryAfter: ms(error.retryAfter),
      limit: error.limit,
      remaining: error.remaining
    })
  }
  return error
}

export const aborted = (signal: AbortSignal): AbortError => new AbortError({ cause: signal.reason })
