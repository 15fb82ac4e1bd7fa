/**
 * Several rate slots taken together, decided as every engine decides them against one reading of
 * the members' state at one instant (`Store.acquireAll`): each member's own earliest slot is found
 * first, with nothing written; then all are placed at one instant, the latest of those (and no
 * sooner than the caller asked), or none is when that instant lies beyond a member's bound.
 *
 * One instant for all, because the caller proceeds once, at the latest slot: a member placed sooner
 * would be used late, and a slot used late can put more than the limit into a window (the caller
 * lands beside those placed after it). Placed later, a token bucket counts the member as arriving
 * then, which only leaves units unused (stricter); a window puts its entry there.
 */
import type { LimiterSpec } from "../LimiterSpec.js"
import * as Gcra from "./gcra.js"
import * as Window from "./window.js"

/** A member's rate state as read: a token bucket's theoretical arrival time, a window's log and its hold. */
export interface RateState {
  readonly tat: number
  readonly log: ReadonlyArray<Window.Entry>
  readonly blockedUntil: number
}

export interface Member {
  readonly limiter: LimiterSpec
  readonly cost: number
  readonly maxWaitMs: number
}

/** A member placed: its slot, its wait from the reading's instant, and a token bucket's new arrival time. */
export type Placed = Extract<Gcra.Decision | Window.Decision, { readonly admitted: true }>

export type Plan =
  /**
   * Every member at `waitMs` from the reading's instant (`undefined` for a member without a rate),
   * and the cost a refund of each is given to undo it (see `refundCost`).
   */
  | {
    readonly _tag: "Placed"
    readonly waitMs: number
    readonly placed: ReadonlyArray<Placed | undefined>
    readonly refundCosts: ReadonlyArray<number>
  }
  /** `index` would wait `retryAfterMs`, beyond its bound: nothing is to be written. */
  | { readonly _tag: "Refused"; readonly index: number; readonly retryAfterMs: number }

/** The member's own earliest wait from `at`; undefined without a rate. */
const ownWait = (member: Member, state: RateState, at: number, marginMs: number): number | undefined => {
  const rate = member.limiter.rate
  if (rate === undefined) return undefined
  const decision = rate._tag === "TokenBucket"
    ? Gcra.reserve(state.tat, at, rate, member.cost, Infinity)
    : Window.reserve(state.log, at, state.blockedUntil, Window.span(rate, marginMs), member.cost, Infinity)
  return decision.admitted ? decision.waitMs : decision.retryAfterMs
}

/** The member placed at `instant` (no sooner than its own earliest slot), its wait counted from `at`. */
const placeAt = (member: Member, state: RateState, at: number, instant: number, marginMs: number): Placed | undefined => {
  const rate = member.limiter.rate
  if (rate === undefined) return undefined
  if (rate._tag === "SlidingWindow") {
    const decision = Window.reserve(state.log, at, Math.max(state.blockedUntil, instant), Window.span(rate, marginMs), member.cost, Infinity)
    return decision.admitted ? decision : undefined
  }
  // As if it arrived at `instant`: its slot is that instant, every later one is spaced after it.
  const decision = Gcra.reserve(state.tat, instant, rate, member.cost, Infinity)
  return decision.admitted ? { ...decision, waitMs: Gcra.settle(decision.slotMs - at) } : undefined
}

/**
 * What a refund subtracts to undo a member: its cost; for a token bucket placed at an instant after
 * its own earliest slot, also the units its arrival time moved ahead, so that a refund brings the
 * arrival time back to where a refund of a reservation made at `at` would.
 */
const refundCost = (member: Member, state: RateState, at: number, instant: number): number => {
  const rate = member.limiter.rate
  if (rate?._tag !== "TokenBucket") return member.cost
  return member.cost + (Math.max(state.tat, instant) - Math.max(state.tat, at)) / rate.intervalMs
}

/**
 * Decides `members` against `states` (one each, read at `at`, ms of the store's clock). A refusal
 * names the member whose own wait is the longest of those the common instant lies beyond.
 */
export const plan = (
  members: ReadonlyArray<Member>,
  states: ReadonlyArray<RateState>,
  at: number,
  afterMs: number,
  marginMs: number
): Plan => {
  const waits = members.map((member, i) => ownWait(member, states[i]!, at, marginMs))
  let waitMs = Math.max(0, afterMs)
  for (const wait of waits) if (wait !== undefined) waitMs = Math.max(waitMs, wait)
  let refused = -1
  for (let i = 0; i < members.length; i++) {
    const wait = waits[i]
    if (wait !== undefined && waitMs > members[i]!.maxWaitMs && (refused < 0 || wait > waits[refused]!)) refused = i
  }
  if (refused >= 0) return { _tag: "Refused", index: refused, retryAfterMs: waitMs }
  return {
    _tag: "Placed",
    waitMs,
    placed: members.map((member, i) => placeAt(member, states[i]!, at, at + waitMs, marginMs)),
    refundCosts: members.map((member, i) => refundCost(member, states[i]!, at, at + waitMs))
  }
}
