/**
 * The token bucket's batch plan, pure: which requests of a batch are admitted against one reading of
 * the row (GCRA's theoretical arrival time `tat` and the server's `now`), how long each refused one
 * would wait, and the slack: how far the row may have moved on (another process's write) before the
 * plan stops holding. Requests are decided in order; an admitted one takes its cost from the units
 * before the next is decided, exactly as `Gcra.reserve` one after the other.
 *
 * The last `spares` requests are slots reserved ahead for this process's next callers (see
 * coalesce.ts): they never spend the free burst, which is for callers at once, unless the rate
 * refills it within the margin and at least half of it stays free after the slot.
 */
import * as Gcra from "../internal/gcra.js"
import type { TokenBucket } from "../LimiterSpec.js"

/** One request of the plan: admitted with the bucket's units taken up to and including it, or refused with its wait. */
export type Step =
  | { readonly admitted: true; readonly through: number }
  | { readonly admitted: false; readonly wait: number }

export interface Request {
  readonly cost: number
  readonly maxWaitMs: number
}

/** Decides `batch` in order against the row's `tat` at `now` (ms, one clock). */
export const plan = (
  rate: TokenBucket,
  marginMs: number,
  tat: number,
  now: number,
  batch: ReadonlyArray<Request>,
  spares: number
): Array<Step> => {
  const tolerance = Gcra.tolerance(rate)
  const start = Math.max(tat, now)
  let units = 0
  return batch.map((request, i): Step => {
    const ahead = start + (units + request.cost) * rate.intervalMs - tolerance - now
    const wait = Gcra.settle(ahead)
    // The free burst is for callers at once: spent ahead only where a rate it refills within the
    // margin leaves at least half of it free after the slot.
    const spendsBurst = i >= batch.length - spares && wait <= 0 && (rate.intervalMs > marginMs || ahead > -tolerance / 2)
    if (wait > request.maxWaitMs || spendsBurst) return { admitted: false, wait }
    units += request.cost
    return { admitted: true, through: units }
  })
}

/** The index of the last admitted step (-1 when none is). */
export const newest = (steps: ReadonlyArray<Step>): number => {
  for (let i = steps.length - 1; i >= 0; i--) if (steps[i]!.admitted) return i
  return -1
}

/** The units the plan takes: those up to its last admitted step. */
export const units = (steps: ReadonlyArray<Step>): number => {
  const last = steps[newest(steps)]
  return last?.admitted === true ? last.through : 0
}

/**
 * How far past `now` (ms) the row's tat may lie when the plan is written, with every admitted request
 * still starting within its own bound (Infinity when nothing is admitted): the least of
 * `maxWaitMs + tolerance - through * interval` over the admitted steps.
 */
export const slack = (rate: TokenBucket, steps: ReadonlyArray<Step>, batch: ReadonlyArray<Request>): number => {
  const tolerance = Gcra.tolerance(rate)
  let least = Infinity
  for (let i = 0; i < steps.length; i++) {
    const step = steps[i]!
    if (step.admitted) least = Math.min(least, batch[i]!.maxWaitMs + tolerance - step.through * rate.intervalMs)
  }
  return least
}
