/**
 * The Lua scripts' replies as outcomes: flat arrays of strings (what every Redis client returns
 * alike), 7 per outcome.
 */
import type { AcquireOutcome, RateOutcome } from "../Store.js"

export const optionalNumber = (s: string | undefined): number | undefined => (s === undefined || s === "" ? undefined : Number(s))

/** The `i`th outcome: {"A", wait, slot, tat, version, limit, remaining}, {"R", ...} or {"C", ...}. */
const outcome = (flat: ReadonlyArray<string>, i: number): AcquireOutcome => {
  const [tag, a, b, c, d, e, f] = flat.slice(i * 7, i * 7 + 7)
  if (tag === "R") return { _tag: "RateLimited", retryAfterMs: Number(a), limit: Number(b), remaining: Number(c) }
  if (tag === "C") return { _tag: "ConcurrencyFull", expiresInMs: optionalNumber(a), held: Number(b), limit: Number(c) }
  const slotMs = optionalNumber(b)
  return {
    _tag: "Admitted",
    waitMs: Number(a),
    reservation: slotMs === undefined ? undefined : { slotMs, tatMs: Number(c), version: optionalNumber(d) },
    limit: optionalNumber(e),
    remaining: optionalNumber(f)
  }
}

/** Every outcome of a reply. */
export const outcomes = (flat: ReadonlyArray<string>): Array<AcquireOutcome> =>
  Array.from({ length: Math.floor(flat.length / 7) }, (_, i) => outcome(flat, i))

/**
 * The batch's `requests` outcomes, then one per slot reserved ahead ({"B", count, first wait,
 * interval, now, tat, version, limit, remaining}). Only the last of those carries the version
 * written: a refund gives back only the newest reservation, as for separate requests. Undefined for
 * a reply that is not a rate script's (a lease's outcome in it).
 */
export const rateOutcomes = (flat: ReadonlyArray<string>, requests: number): Array<RateOutcome> | undefined => {
  const decided: Array<RateOutcome> = []
  for (let i = 0; i < requests; i++) {
    const next = outcome(flat, i)
    if (next._tag === "ConcurrencyFull") return undefined
    decided.push(next)
  }
  const [tag, count, first, interval, now, tat, version, limit, remaining] = flat.slice(requests * 7)
  if (tag !== "B") return decided
  const n = Number(count)
  for (let j = 0; j < n; j++) {
    const waitMs = Math.max(0, Number(first) + j * Number(interval))
    decided.push({
      _tag: "Admitted",
      waitMs,
      reservation: {
        slotMs: Number(now) + waitMs,
        tatMs: Number(tat) - (n - 1 - j) * Number(interval),
        version: j === n - 1 ? Number(version) : undefined
      },
      limit: Number(limit),
      remaining: Number(remaining)
    })
  }
  return decided
}
