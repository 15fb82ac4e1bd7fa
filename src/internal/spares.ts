/**
 * A key's pool of slots reserved ahead, in one process: spares in slot order, taken by the process's
 * next callers without a round trip. Its size follows demand: the target doubles while callers
 * find the pool empty and shrinks by a quarter when slots went stale unused, so it settles at what
 * this process takes in time, even while other processes take most of the rate (its slots lie
 * together in the store's schedule but are handed out at this process's pace). A slot is used at
 * most LATE_MS (or one interval, when longer) after it was due, never more than half the margin,
 * and dropped otherwise: that bounds how late callers proceed. A key quiet for QUIET_MS starts
 * from no pool.
 */
import * as Metrics from "../Metrics.js"
import type { Admitted, RateOutcome, RateRequest } from "../Store.js"


/** The most spare slots a key's pool holds. */
const MAX_SPARES = 512

/** The latest (ms) a slot reserved ahead is used after it was due. */
const LATE_MS = 5

/** A key not asked for this long (ms) has no pool: its next callers start from none. */
const QUIET_MS = 100

interface Spare {
  /** When the slot is due, in ms of the local clock. */
  readonly dueAt: number
  readonly outcome: Admitted
  /** The backoff mark taken before the call that reserved it. */
  readonly mark: number
}

export interface Spares {
  /**
   * A spare for `request` at local time `now`, with its wait from then (below 0: due that long
   * ago); stale ones are dropped and counted. `heldSince(mark)` tells a backoff learned of since a
   * spare was reserved: then the whole pool is dropped.
   */
  readonly take: (request: RateRequest, now: number, heldSince: ((mark: number) => boolean) | undefined) => Admitted | undefined
  /** Adds the admitted `outcomes` of a batch answered at local time `at`, reserved after backoff mark `mark`. */
  readonly add: (outcomes: ReadonlyArray<RateOutcome>, at: number, mark: number) => void
  /** Half the last batch's spares are gone: time to refill. */
  readonly refillDue: () => boolean
  /** Holds no slot and plans none: forgetting the key loses nothing. */
  readonly idle: () => boolean
  /** Notes that the key was asked for at `now`; after a quiet spell, the pool starts from none. */
  readonly asked: (now: number) => void
  /**
   * How many slots the next batch (of `requests` callers who queued, so found the pool empty)
   * reserves ahead, the target adjusted by what happened since the last batch.
   */
  readonly plan: (requests: number) => number
}

export const make = (marginMs: number): Spares => {
  /** Reserved ahead, in slot order, from `head` on (a head index, since shifting a long array is linear). */
  const spares: Array<Spare> = []
  let head = 0
  /** How many spares the last batch left in the pool. */
  let pooled = 0
  let target = 0
  /** Since the last batch: slots taken from the pool, and slots dropped unused. */
  let served = 0
  let dropped = 0
  let lastAt = -Infinity
  const left = () => spares.length - head
  /** How late a spare may still be used: lateness under an interval adds no admission to any window. */
  const lateFor = (request: RateRequest): number => {
    const rate = request.limiter.rate
    return Math.min(marginMs / 2, Math.max(LATE_MS, rate?._tag === "TokenBucket" ? rate.intervalMs : 0))
  }
  return {
    take: (request, now, heldSince) => {
      const lateMs = lateFor(request)
      const before = head
      while (head < spares.length && spares[head]!.dueAt + lateMs < now) head++
      if (head > before) {
        dropped += head - before
        Metrics.slotsGivenUpOf(request.limiter.name, request.limiter.store).unsafeUpdate(head - before, [])
      }
      const spare = spares[head]
      if (spare === undefined || spare.dueAt - now > request.maxWaitMs) return undefined
      if (heldSince !== undefined && heldSince(spare.mark)) {
        head = spares.length
        return undefined
      }
      head++
      served++
      return { ...spare.outcome, waitMs: spare.dueAt - now }
    },
    add: (outcomes, at, mark) => {
      if (head > 0) {
        spares.splice(0, head)
        head = 0
      }
      for (const outcome of outcomes) {
        if (outcome._tag === "Admitted") spares.push({ dueAt: at + outcome.waitMs, outcome, mark })
      }
      pooled = spares.length
    },
    refillDue: () => left() * 2 < pooled,
    idle: () => left() === 0 && target === 0,
    asked: (now) => {
      if (now - lastAt > QUIET_MS) target = 0
      lastAt = now
    },
    plan: (requests) => {
      // It grows while callers find it empty (they queued, and the key is in demand: several asked,
      // or the pool served some) and shrinks when slots went stale unused.
      if (dropped > 0) target = Math.floor((target * 3) / 4)
      else if (requests > 1 || (requests > 0 && served > 0)) target = Math.min(MAX_SPARES, Math.max(2, target * 2))
      served = 0
      dropped = 0
      return Math.max(0, target - left())
    }
  }
}
