/**
 * The memory engine's state of one limiter and key, and what `state` shows of it.
 */
import * as Gcra from "../internal/gcra.js"
import type * as Leases from "../internal/leases.js"
import * as Window from "../internal/window.js"
import type { LimiterSpec } from "../LimiterSpec.js"
import type { StateView } from "../Store.js"

export interface KeyState {
  tat: number
  /** A window's log; `noLog` until a sliding window writes to it (most keys are token buckets, made on every call of a fresh key). */
  log: Array<Window.Entry>
  blockedUntil: number
  leases: Leases.LeaseTable | undefined
  /** After this instant nothing in the state differs from a fresh one, so it can be dropped. */
  staleAt: number
}

/** The log of every state no window has used: shared, so never written (`stateOf` gives a window its own first). */
export const noLog: Array<Window.Entry> = []

/** Units free now: a window's log is pruned already. */
export const remainingOf = (state: KeyState, at: number, limiter: LimiterSpec): number => {
  const rate = limiter.rate
  if (rate === undefined) return 0
  if (rate._tag === "TokenBucket") return Gcra.remaining(state.tat, at, rate)
  return Math.max(0, rate.limit - Window.used(state.log))
}

/** What `state` shows of a key at `at`; `margin` lengthens a window, as every decision does. */
export const view = (state: KeyState, at: number, limiter: LimiterSpec, margin: number): StateView => {
  const rate = limiter.rate
  const leases = state.leases
  const base = { leasesHeld: leases?.holders.size ?? 0, maxConcurrent: limiter.concurrency?.max, waiting: leases?.waiting.size ?? 0 }
  if (rate === undefined) return { ...base, limit: undefined, remaining: undefined, resetAfterMs: 0, nextSlotAfterMs: 0 }
  if (rate._tag === "TokenBucket") {
    return {
      ...base,
      limit: rate.burst,
      remaining: Gcra.remaining(state.tat, at, rate),
      resetAfterMs: Gcra.resetAfter(state.tat, at),
      nextSlotAfterMs: Gcra.nextSlotAfter(state.tat, at, rate)
    }
  }
  const last = state.log.length === 0 ? undefined : state.log[state.log.length - 1]
  return {
    ...base,
    limit: rate.limit,
    remaining: remainingOf(state, at, limiter),
    resetAfterMs: Math.max(0, last === undefined ? 0 : last.at + rate.windowMs + margin - at, state.blockedUntil - at),
    nextSlotAfterMs: Window.earliestSlot(state.log, Math.max(at, state.blockedUntil), Window.span(rate, margin), 1) - at
  }
}
