/**
 * GCRA (generic cell rate algorithm) over a theoretical arrival time `tat`, all in ms of one
 * clock. A request of `cost` units is admitted at `tat' - tolerance` where `tat' = max(tat, now)
 * + cost * T`, which keeps every interval of length L at or below `tolerance / T + L / T` units.
 *
 * The tolerance is `burst * T` less the store's timing margin (never below one interval): callers
 * proceed a little after their slot, by differing latencies, and taking the margin out of the
 * burst allowance keeps that jitter (up to the margin) from pushing any interval over the bound.
 * The interval itself is never shortened, so the sustained rate is exactly the configured one.
 */
import type { TokenBucket } from "../LimiterSpec.js"

export type Decision =
  | { readonly admitted: true; readonly tatMs: number; readonly slotMs: number; readonly waitMs: number }
  | { readonly admitted: false; readonly retryAfterMs: number }

/** A wait below a nanosecond is float noise from adding and subtracting large times: none at all. */
export const settle = (waitMs: number): number => (waitMs < 1e-6 ? 0 : waitMs)

export const tolerance = (policy: TokenBucket, marginMs: number): number =>
  Math.max(policy.intervalMs, policy.burst * policy.intervalMs - marginMs)

export const reserve = (
  tat: number,
  now: number,
  policy: TokenBucket,
  marginMs: number,
  cost: number,
  maxWaitMs: number
): Decision => {
  const next = Math.max(tat, now) + cost * policy.intervalMs
  const wait = settle(next - tolerance(policy, marginMs) - now)
  const slot = now + wait
  return wait > maxWaitMs
    ? { admitted: false, retryAfterMs: wait }
    : { admitted: true, tatMs: next, slotMs: slot, waitMs: wait }
}

/** Whole units that could be admitted now without waiting. */
export const remaining = (tat: number, now: number, policy: TokenBucket, marginMs: number): number => {
  const debt = Math.max(0, tat - now)
  // The small epsilon absorbs float error so that exactly-earned units count.
  return Math.max(0, Math.floor((tolerance(policy, marginMs) - debt) / policy.intervalMs + 1e-9))
}

export const resetAfter = (tat: number, now: number): number => Math.max(0, tat - now)

export const nextSlotAfter = (tat: number, now: number, policy: TokenBucket, marginMs: number): number =>
  Math.max(0, tat + policy.intervalMs - tolerance(policy, marginMs) - now)

/** The tat after an upstream asked every caller to wait `retryAfterMs`: the next slot is no earlier. */
export const backoff = (tat: number, now: number, policy: TokenBucket, marginMs: number, retryAfterMs: number): number =>
  Math.max(tat, now + retryAfterMs + tolerance(policy, marginMs) - policy.intervalMs)

/**
 * The tat after giving back a reservation, or undefined when it cannot be given back: only the
 * newest reservation can, since later ones were spaced from it and would otherwise bunch up.
 */
export const refund = (tat: number, reservedTat: number, policy: TokenBucket, cost: number): number | undefined =>
  tat === reservedTat ? reservedTat - cost * policy.intervalMs : undefined
