/**
 * Waiting for a rate slot the store reserved: sleep until it, then make sure no upstream backoff has
 * since put the key on hold, and that the caller did not wake too late. A slot reserved before a
 * backoff (in this process or any other) must not be used inside it: its caller waits for the hold
 * to end and reserves a slot again, which the store places after the hold. A slot woken up to long
 * after it was due is not used either: the caller reserves the next free one. The old slot is not
 * given back (stricter, never looser).
 */
import type * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import type { StoreError } from "../Errors.js"
import type { LimiterSpec } from "../LimiterSpec.js"
import { type Admitted, type Call, type Refusal, refund } from "./call.js"
import { detached } from "./detach.js"
import { sleepFor, sleepThenTurn } from "./timer.js"

type Restore = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>

/** The caller's wait and the slot it ended with: admitted, refused by the store, or past its deadline. */
export type Waited =
  | { readonly _tag: "Slot"; readonly outcome: Admitted }
  | { readonly _tag: "Refused"; readonly outcome: Refusal; readonly overDeadlineMs: number }
  | { readonly _tag: "Late" }

/**
 * Waits for `first`'s slot. `mark` is the store's backoff mark taken before the call that reserved
 * it, `deadline` the caller's (ms of `clock`, Infinity for none). An interruption while asleep gives
 * the slot back.
 */
export const waitForSlot = <E>(
  call: Call<E>,
  first: Admitted,
  mark: number,
  deadline: number,
  restore: Restore,
  clock: Clock.Clock
): Effect.Effect<Waited, StoreError> => {
  const { b, key } = call
  const staleAfter = staleAfterMs(b.spec)
  /**
   * Sleeps until `outcome`'s slot, then checks it. A slot gone stale is given up once per acquire
   * (`replaced`): a process that stays late (a machine too busy for its timers) then uses the next
   * one rather than giving slots up for ever.
   */
  const sleepUntil = (outcome: Admitted, since: number, replaced: boolean): Effect.Effect<Waited, StoreError> => {
    // A slot already past (an answer that came back slowly) is stale as one woken up late.
    if (outcome.waitMs <= 0) return check(outcome, since, replaced, !replaced && -outcome.waitMs > staleAfter && clock.unsafeCurrentTimeMillis() < deadline)
    const due = clock.unsafeCurrentTimeMillis() + outcome.waitMs
    // The refund sits outside `restore`, so that an interruption already pending when the sleep starts gives the slot back too.
    const slept = restore(sleepThenTurn(clock, outcome.waitMs)).pipe(Effect.onInterrupt(() => refund(call, outcome)))
    return Effect.flatMap(slept, () => {
      const woke = clock.unsafeCurrentTimeMillis()
      // Past the caller's deadline there is no time for another slot: this one was within it.
      return check(outcome, since, replaced, !replaced && woke - due > staleAfter && woke < deadline)
    })
  }
  const check = (outcome: Admitted, since: number, replaced: boolean, stale: boolean): Effect.Effect<Waited, StoreError> => {
    const now = clock.unsafeCurrentTimeMillis()
    const until = b.store.backoffs.any(now) ? b.store.backoffs.until(b.spec, key, since, now) : undefined
    if (until === undefined && !stale) return Effect.succeed({ _tag: "Slot", outcome })
    if (until === undefined) return Effect.zipRight(Metric.increment(b.metrics.slotsGivenUp), placeAgain(true))
    const held: Refusal = { _tag: "RateLimited", retryAfterMs: until - now, limit: outcome.limit ?? 0, remaining: 0 }
    if (call.mode === "try" || until > deadline) {
      return Effect.succeed({ _tag: "Refused", outcome: held, overDeadlineMs: Math.max(0, until - deadline) })
    }
    return Effect.zipRight(restore(sleepFor(until - now)), Effect.suspend(() => placeAgain(replaced)))
  }
  /** Placed again: after the hold, or, for a slot gone stale, at the next one free. */
  const placeAgain = (replaced: boolean): Effect.Effect<Waited, StoreError> => {
    const since = b.store.backoffs.mark()
    const left = deadline - clock.unsafeCurrentTimeMillis()
    const request = { limiter: b.spec, key, cost: call.cost, maxWaitMs: call.mode === "try" ? 0 : Math.max(0, left) }
    const ask = b.observe(b.store.acquireRate(request))
    const answer = Number.isFinite(left)
      ? restore(detached(ask, left, Exit.match({ onFailure: () => Effect.void, onSuccess: (late) => refund(call, late) })))
      : Effect.asSome(restore(ask))
    return Effect.flatMap(answer, (answered): Effect.Effect<Waited, StoreError> => {
      if (Option.isNone(answered)) return Effect.succeed({ _tag: "Late" })
      const next = answered.value
      if (next._tag !== "Admitted") {
        return Effect.succeed({ _tag: "Refused", outcome: next, overDeadlineMs: next._tag === "RateLimited" ? Math.max(0, next.retryAfterMs - left) : 0 })
      }
      // The answer came late enough that the slot lies past the deadline: it goes back.
      if (clock.unsafeCurrentTimeMillis() + next.waitMs > deadline && next.waitMs > 0) {
        return Effect.as(refund(call, next), { _tag: "Late" as const })
      }
      return sleepUntil(next, since, replaced)
    })
  }
  return sleepUntil(first, mark, false)
}

/**
 * How late, at most, callers proceed after their slot: under a hundredth of a second, so that the
 * callers of all processes together proceed within 1% of a second of their slots, with 2 ms left
 * for how late the store's slots are mapped onto this process's clock (storeClock.ts).
 */
const STALE_MS = 8

/**
 * How late after its slot a waiter may wake and still use it: STALE_MS, or one interval of the rate
 * when that is longer (a caller late by less than an interval cannot add an admission to any
 * window, and at slow rates a slot given up is a long time lost).
 */
export const staleAfterMs = (spec: LimiterSpec): number => {
  const rate = spec.rate
  const interval = rate === undefined ? 0 : rate._tag === "TokenBucket" ? rate.intervalMs : rate.windowMs / rate.limit
  return Math.max(STALE_MS, interval)
}
