/**
 * GCRA (generic cell rate algorithm) over a theoretical arrival time `tat`, all in ms of one
 * clock. A request of `cost` units is admitted at `tat' - tolerance` where `tat' = max(tat, now)
 * + cost * T`, which keeps every interval of length L at or below `burst + L / T` units.
 *
 * The tolerance is the whole burst, `burst * T`: `burst = b` admits b at once after idle time. The
 * store's schedule is exact; how late callers proceed after their slot is bounded where slots are
 * handed out (see `coalesce.ts`), never by taking from the burst or the rate.
 */
import type { TokenBucket } from "../LimiterSpec.js"

export type Decision =
  | { readonly admitted: true; readonly tatMs: number; readonly slotMs: number; readonly waitMs: number }
  | { readonly admitted: false; readonly retryAfterMs: number }

/** A wait below a nanosecond is float noise from adding and subtracting large times: none at all. */
export const settle = (waitMs: number): number => (waitMs < 1e-6 ? 0 : waitMs)

export const tolerance = (policy: TokenBucket): number => policy.burst * policy.intervalMs

export const reserve = (tat: number, now: number, policy: TokenBucket, cost: number, maxWaitMs: number): Decision => {
  const next = Math.max(tat, now) + cost * policy.intervalMs
  const wait = settle(next - tolerance(policy) - now)
  const slot = now + wait
  return wait > maxWaitMs
    ? { admitted: false, retryAfterMs: wait }
    : { admitted: true, tatMs: next, slotMs: slot, waitMs: wait }
}

/** Whole units that could be admitted now without waiting. */
export const remaining = (tat: number, now: number, policy: TokenBucket): number => {
  const debt = Math.max(0, tat - now)
  // The small epsilon absorbs float error so that exactly-earned units count.
  return Math.max(0, Math.floor((tolerance(policy) - debt) / policy.intervalMs + 1e-9))
}

export const resetAfter = (tat: number, now: number): number => Math.max(0, tat - now)

export const nextSlotAfter = (tat: number, now: number, policy: TokenBucket): number =>
  Math.max(0, tat + policy.intervalMs - tolerance(policy) - now)

/** The least tat whose next slot is `at` or later. */
export const floorFor = (at: number, policy: TokenBucket): number => at + tolerance(policy) - policy.intervalMs

/** The tat after an upstream asked every caller to wait `retryAfterMs`: the next slot is no earlier. */
export const backoff = (tat: number, now: number, policy: TokenBucket, retryAfterMs: number): number =>
  Math.max(tat, floorFor(now + retryAfterMs, policy))

/**
 * The tat after giving back a reservation, or undefined when it cannot be given back: only the
 * newest reservation can, since later ones were spaced from it and would otherwise bunch up; and
 * never below `floor`, the tat a backoff set, so a refund cannot undo a backoff.
 */
export const refund = (tat: number, reservedTat: number, policy: TokenBucket, cost: number, floor = -Infinity): number | undefined =>
  tat === reservedTat ? Math.max(floor, reservedTat - cost * policy.intervalMs) : undefined
