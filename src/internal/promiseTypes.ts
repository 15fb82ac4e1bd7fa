/**
 * `rate-sync/promise`'s own types (durations in milliseconds) and their conversion from the Effect
 * API's (durations as `Duration`).
 */
import * as Duration from "effect/Duration"
import type { LimiterState as EffectLimiterState, Permit as EffectPermit } from "../RateLimiter.js"

export interface Permit {
  readonly limiter: string
  readonly key: string
  readonly cost: number
  /** The admission slot in the store's own time base, in milliseconds, when a rate was reserved. */
  readonly slotMs: number | undefined
  /** How long the caller waited for the permit, in milliseconds. */
  readonly waited: number
  /** Units still free right after this admission, when the limiter has a rate. */
  readonly remaining: number | undefined
  /** The most units the key can take at once (`burst`, or a window's `limit`), when the limiter has a rate. */
  readonly limit?: number | undefined
  /** Milliseconds after this admission until the key's token bucket is full again (no `state` read needed). */
  readonly resetAfter?: number | undefined
  /** Set when the permit is a lease (the limiter has `max_concurrent`). */
  readonly leaseId: string | undefined
  /** Granted without the store, which was unavailable (`fail_closed = false`). */
  readonly degraded: boolean
}

/**
 * A permit from `acquire` or `tryAcquire`. A lease (limiter with `max_concurrent`) is held until
 * released: `withPermit`, `await using`, or `release()`. Without `max_concurrent` nothing is held and
 * `release()` does nothing. `release()` may be called any number of times.
 */
export interface HeldPermit extends Permit, AsyncDisposable {
  readonly release: () => Promise<void>
}

export interface LimiterState {
  readonly limiter: string
  readonly key: string
  /** The most units the key can take at once (`burst`, or `limit` per window), when the limiter has a rate. */
  readonly limit: number | undefined
  readonly remaining: number | undefined
  /** Milliseconds until the key's rate is back to full. */
  readonly resetAfter: number
  /** Milliseconds until the next unit is free; 0 when one is free now. */
  readonly nextSlotAfter: number
  readonly leasesHeld: number
  readonly maxConcurrent: number | undefined
  readonly waiting: number
}

export interface TryOptions {
  /** Applies the limiter's settings to this key's own state (per user, per tenant...). */
  readonly key?: string | undefined
  /** Units of rate to take at once: a whole number of 1 or more. Default 1. */
  readonly cost?: number | undefined
}

export interface AcquireOptions extends TryOptions {
  /** The longest wait: a number of milliseconds, or a string such as `"2 seconds"`. Overrides the limiter's `timeout`. */
  readonly timeout?: Duration.DurationInput | undefined
  /** Stops waiting with an `AbortError`, giving back whatever had been reserved. */
  readonly signal?: AbortSignal | undefined
}

/** One limit of several taken at once: a limiter, and the key and cost to take of it. */
export type { AcquireAllEntry } from "../RateLimiter.js"

export interface AcquireAllOptions {
  /** The one wait bound of all the entries: ms, or a string such as `"2 seconds"`; by default the least of their limiters' `timeout`. */
  readonly timeout?: Duration.DurationInput | undefined
  /** Stops waiting with an `AbortError`, giving back whatever every store had reserved. */
  readonly signal?: AbortSignal | undefined
}

export interface BackoffOptions {
  readonly key?: string | undefined
  /** How long no caller gets a slot: a number of milliseconds, or a string such as `"30 seconds"`. */
  readonly retryAfter: Duration.DurationInput
}

/** A permit of the Effect API with its durations in milliseconds. */
export const toPermit = (permit: EffectPermit): Permit => ({
  ...permit,
  waited: Duration.toMillis(permit.waited),
  resetAfter: permit.resetAfter === undefined ? undefined : Duration.toMillis(permit.resetAfter)
})

/** A state of the Effect API with its durations in milliseconds. */
export const toState = (state: EffectLimiterState): LimiterState => ({
  ...state,
  resetAfter: Duration.toMillis(state.resetAfter),
  nextSlotAfter: Duration.toMillis(state.nextSlotAfter)
})

