/**
 * Sliding-window log: at most `limit` units in any half-open interval of `windowMs`. The log
 * holds (time, units) entries in ascending time, including reservations in the future; entries
 * a window old no longer constrain anything and are pruned.
 *
 * Engines pass the window lengthened by their timing margin (`span`), so callers' differing
 * latencies, up to the margin, cannot fit more than `limit` into any real window.
 */
import type { SlidingWindow } from "../LimiterSpec.js"
import { settle } from "./gcra.js"

export const span = (policy: SlidingWindow, marginMs: number): SlidingWindow => ({
  ...policy,
  windowMs: policy.windowMs + marginMs
})

export interface Entry {
  at: number
  count: number
}

export type Decision =
  | { readonly admitted: true; readonly slotMs: number; readonly waitMs: number }
  | { readonly admitted: false; readonly retryAfterMs: number }

export const prune = (log: Array<Entry>, now: number, policy: SlidingWindow): void => {
  let drop = 0
  while (drop < log.length && log[drop]!.at + policy.windowMs <= now) drop++
  if (drop > 0) log.splice(0, drop)
}

/** The earliest slot at or after `notBefore` (and after every earlier reservation) that fits `cost`. */
export const earliestSlot = (
  log: ReadonlyArray<Entry>,
  notBefore: number,
  policy: SlidingWindow,
  cost: number
): number => {
  let slot = log.length === 0 ? notBefore : Math.max(notBefore, log[log.length - 1]!.at)
  let units = 0
  for (let i = log.length - 1; i >= 0; i--) {
    units += log[i]!.count
    if (units > policy.limit - cost) {
      slot = Math.max(slot, log[i]!.at + policy.windowMs)
      break
    }
  }
  return slot
}

export const reserve = (
  log: ReadonlyArray<Entry>,
  now: number,
  notBefore: number,
  policy: SlidingWindow,
  cost: number,
  maxWaitMs: number
): Decision => {
  const wait = settle(earliestSlot(log, Math.max(now, notBefore), policy, cost) - now)
  const slot = now + wait
  return wait > maxWaitMs ? { admitted: false, retryAfterMs: wait } : { admitted: true, slotMs: slot, waitMs: wait }
}

export const append = (log: Array<Entry>, at: number, count: number): void => {
  const last = log[log.length - 1]
  if (last !== undefined && last.at === at) last.count += count
  else log.push({ at, count })
}

/** Removing admissions never breaks the bound for the ones that remain, so any entry can go back. */
export const remove = (log: Array<Entry>, at: number, count: number): void => {
  const index = log.findIndex((entry) => entry.at === at)
  if (index < 0) return
  const entry = log[index]!
  entry.count -= count
  if (entry.count <= 0) log.splice(index, 1)
}

export const used = (log: ReadonlyArray<Entry>): number => log.reduce((sum, entry) => sum + entry.count, 0)
