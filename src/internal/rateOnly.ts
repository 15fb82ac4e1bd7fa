/**
 * An acquire without leases: one store call and at most one sleep, kept to few Effect steps, since it
 * is the hot path of most limiters.
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import type { StoreError } from "../Errors.js"
import type { Permit } from "../RateLimiter.js"
import type { RateOutcome } from "../Store.js"
import { type Call, failed, instrument, pastDeadline, permit, refund, refused } from "./call.js"
import { detached } from "./detach.js"
import { staleAfterMs, waitForSlot } from "./slot.js"

const decide = <E>(call: Call<E>): Effect.Effect<Permit, E | StoreError> =>
  Effect.uninterruptibleMask((restore) =>
    Effect.clockWith((clock) => {
      const { b, cost, key, mode, timeoutMs } = call
      const started = clock.unsafeCurrentTimeMillis()
      const waited = () => clock.unsafeCurrentTimeMillis() - started
      const mark = b.store.backoffs.mark()
      const request = { limiter: b.spec, key, cost, maxWaitMs: mode === "try" ? 0 : timeoutMs ?? Infinity }
      const decided = (outcome: RateOutcome): Effect.Effect<Permit, E | StoreError> => {
        // The store's answer came late enough that the slot lies past the deadline: it goes back.
        if (outcome._tag === "Admitted" && pastDeadline(call, outcome, waited())) {
          return Effect.zipRight(refund(call, outcome), refused(call, call.late()))
        }
        if (outcome._tag === "Admitted") {
          // The hot path: no wait and no backoff known anywhere.
          if (outcome.waitMs <= 0 && -outcome.waitMs <= staleAfterMs(b.spec) && !b.store.backoffs.any(clock.unsafeCurrentTimeMillis())) {
            return Effect.sync(() => permit(call, outcome, undefined, waited()))
          }
          const deadline = mode === "try" ? started : timeoutMs === undefined ? Infinity : started + timeoutMs
          return Effect.matchEffect(waitForSlot(call, outcome, mark, deadline, restore, clock), {
            onFailure: (error) => failed(call, error, waited()),
            onSuccess: (slot) =>
              slot._tag === "Slot"
                ? Effect.sync(() => permit(call, slot.outcome, undefined, waited()))
                : slot._tag === "Late"
                ? refused(call, call.late())
                : refused(call, call.refuse(slot.outcome, slot.overDeadlineMs))
          })
        }
        const overDeadline = outcome._tag === "RateLimited" && timeoutMs !== undefined
          ? Math.max(0, outcome.retryAfterMs - (timeoutMs - waited()))
          : 0
        return refused(call, call.refuse(outcome, overDeadline))
      }
      const onFailure = (error: StoreError) => failed(call, error, waited())
      // Answered at once (a slot reserved ahead, the memory engine): no store call to bound.
      const now = b.store.acquireRateNow?.(request, clock)
      if (now !== undefined) return decided(now)
      const ask = b.observe(b.store.acquireRate(request))
      // Without a wait to bound (tryAcquire, a timeout of 0, none at all) the round trip is bounded by the
      // store's own timeout; the caller can still be interrupted, and a slot decided for it then is not
      // given back (stricter, never looser).
      if (timeoutMs === undefined || timeoutMs === 0 || mode === "try") return Effect.matchEffect(restore(ask), { onFailure, onSuccess: decided })
      // A caller with a deadline stops waiting for a slow store at it; a slot granted after that is given back.
      const bounded = detached(ask, timeoutMs, Exit.match({ onFailure: () => Effect.void, onSuccess: (outcome) => refund(call, outcome) }))
      return Effect.matchEffect(restore(bounded), {
        onFailure,
        onSuccess: Option.match({ onNone: () => refused(call, call.late()), onSome: decided })
      })
    })
  )

/** A rate slot alone: nothing is held, so no scope is needed. */
export const rateOnly = <E>(call: Call<E>) => instrument(call, decide(call))
