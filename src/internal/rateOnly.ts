/**
 * An acquire without leases: one store call and at most one sleep, kept to few Effect steps, since it
 * is the hot path of most limiters.
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberRef from "effect/FiberRef"
import * as Option from "effect/Option"
import type { CostExceedsCapacity, InvalidCost, StoreError } from "../Errors.js"
import type { Permit } from "../RateLimiter.js"
import type { Admitted, RateOutcome, RateRequest } from "../Store.js"
import {
  type Bound,
  type Call,
  costError,
  counted,
  failed,
  instrument,
  pastDeadline,
  permit,
  refund,
  refused,
  untraced
} from "./call.js"
import { detached } from "./detach.js"
import { staleAfterMs, waitForSlot } from "./slot.js"

const requestOf = (call: Call<unknown>): RateRequest => ({
  limiter: call.b.spec,
  key: call.key,
  cost: call.cost,
  maxWaitMs: call.mode === "try" ? 0 : call.timeoutMs ?? Infinity
})

/** Proceeds at once: the slot is due (and not stale) and no backoff is known anywhere. */
const proceedsNow = (b: Bound, outcome: RateOutcome, nowMs: number): outcome is Admitted =>
  outcome._tag === "Admitted" && outcome.waitMs <= 0 && -outcome.waitMs <= staleAfterMs(b.spec) && !b.store.backoffs.any(nowMs)

type Restore = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>

/**
 * Runs uninterruptible but for what `restore` makes interruptible. `answered`: what the store
 * already answered without an effect (`acquireRateNow`), so it is not asked twice.
 */
const decide = <E>(
  call: Call<E>,
  answered: RateOutcome | undefined,
  started: number,
  restore: Restore,
  clock: Clock.Clock
): Effect.Effect<Permit, E | StoreError> => {
  const { b, mode, timeoutMs } = call
  const waited = () => clock.unsafeCurrentTimeMillis() - started
  const mark = b.store.backoffs.mark()
  const request = requestOf(call)
  const decided = (outcome: RateOutcome): Effect.Effect<Permit, E | StoreError> => {
    // The store's answer came late enough that the slot lies past the deadline: it goes back.
    if (outcome._tag === "Admitted" && pastDeadline(call, outcome, waited())) {
      return Effect.zipRight(refund(call, outcome), refused(call, call.late()))
    }
    if (outcome._tag === "Admitted") {
      if (proceedsNow(b, outcome, clock.unsafeCurrentTimeMillis())) {
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
  if (answered !== undefined) return decided(answered)
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
}

/**
 * A rate slot alone: nothing is held, so no scope is needed. The commonest call, a slot the process
 * can take at once with nothing to wait for and no span to make, is decided in one step.
 */
export const rateOnly = <E>(call: Call<E>): Effect.Effect<Permit, E | StoreError | CostExceedsCapacity | InvalidCost> =>
  // Uninterruptible from before the slot is taken until its caller has it, or is asleep waiting for it.
  Effect.uninterruptibleMask((restore) =>
    Effect.withFiberRuntime((fiber) => {
      const clock = Context.get(fiber.currentDefaultServices, Clock.Clock)
      const started = clock.unsafeCurrentTimeMillis()
      const now = fiber.currentTracer === untraced && costError(call.b, call.cost) === undefined
        ? call.b.store.acquireRateNow?.(requestOf(call), clock)
        : undefined
      if (now === undefined || !proceedsNow(call.b, now, started)) return instrument(call, decide(call, now, started, restore, clock))
      const granted = permit(call, now, undefined, clock.unsafeCurrentTimeMillis() - started)
      counted(call.b, granted, fiber.getFiberRef(FiberRef.currentMetricLabels))
      return Effect.succeed(granted)
    })
  )
