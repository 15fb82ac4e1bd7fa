/**
 * What the framework stores share: one request counted against a rate-sync limiter, answered as the
 * fixed-window count those frameworks expect (`totalHits` against their `limit`, and a reset time).
 *
 * The limiter decides; the count is derived from its answer so that the framework's own test
 * (`totalHits > limit`) agrees with it:
 * - admitted: `totalHits = limit - remaining`, the units in use right after this request (1 or more),
 *   and the reset is the time until the key's rate is full again (the limiter's `resetAfter`);
 * - refused: `totalHits = limit + 1`, and the reset is the limiter's `retryAfter`, the time until the
 *   next unit is free (what `Retry-After` says).
 *
 * `limit` is the limiter's capacity (`burst`, or a sliding window's `limit`). A framework configured
 * with another limit would print headers that disagree with the decision: that is refused with
 * `LimitMismatch` rather than answered.
 */
import { type Permit, RateLimitExceeded, state, tryConsume } from "../promise.js"
import { LimitMismatch } from "./errors.js"

export interface Hit {
  readonly admitted: boolean
  /** Units in use, counting this request; the limiter's capacity + 1 when refused. */
  readonly totalHits: number
  /**
   * Milliseconds until the key's rate is full again (admitted), or until the next unit is free
   * (refused); undefined when that is not known (the store was unavailable and the limiter fails open).
   */
  readonly resetMs: number | undefined
}

const check = (limiter: string, framework: string, expected: number | undefined, limit: number): void => {
  if (expected !== undefined && expected !== limit) throw new LimitMismatch({ limiter, framework, expected, limit })
}

/**
 * Counts one request of `key` against `limiter`: one atomic decision by the limiter (nothing is
 * written when it refuses), then, when admitted, a read of the key's state for its reset time.
 * `expected` is the framework's own limit, when it is a number: it must be the limiter's capacity.
 */
export const hit = async (
  limiter: string,
  key: string,
  framework: string,
  expected: number | undefined
): Promise<Hit> => {
  let remaining: number
  let permit: Permit
  try {
    permit = await tryConsume(limiter, { key })
    if (permit.degraded || permit.remaining === undefined) {
      // The store is down and the limiter fails open: admitted, with nothing known of the key.
      return { admitted: true, totalHits: 1, resetMs: undefined }
    }
    remaining = permit.remaining
  } catch (error) {
    if (!(error instanceof RateLimitExceeded)) throw error
    check(limiter, framework, expected, error.limit)
    return { admitted: false, totalHits: error.limit + 1, resetMs: error.retryAfter }
  }
  // A token bucket's permit says when the key is full again; a sliding window's needs a read of its
  // state (the unit is taken: a failed read must not turn the admission into an error).
  const view = permit.resetAfter !== undefined && permit.limit !== undefined
    ? { limit: permit.limit, resetAfter: permit.resetAfter }
    : await state(limiter, { key }).catch(() => undefined)
  const limit = view?.limit ?? expected ?? remaining + 1
  check(limiter, framework, expected, limit)
  return { admitted: true, totalHits: Math.max(1, limit - remaining), resetMs: view?.resetAfter }
}

/** A key's count now, without counting a request: undefined when the key has nothing in use. */
export const peek = async (limiter: string, key: string): Promise<{ readonly totalHits: number; readonly resetMs: number } | undefined> => {
  const view = await state(limiter, { key })
  if (view.limit === undefined || view.remaining === undefined) return undefined
  const totalHits = view.limit - view.remaining
  return totalHits <= 0 && view.resetAfter === 0 ? undefined : { totalHits, resetMs: view.resetAfter }
}
