/**
 * An acquire without leases: one store call and at most one sleep, kept to few Effect steps, since it
 * is the hot path of most limiters.
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
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

/** The longest the caller may wait for its slot. */
const maxWaitOf = (call: Call<unknown>): number => call.mode === "try" ? 0 : call.timeoutMs ?? Infinity

const requestOf = (call: Call<unknown>, maxWaitMs = maxWaitOf(call)): RateRequest => ({
  limiter: call.b.spec,
  key: call.key,
  cost: call.cost,
  maxWaitMs
})

/** Proceeds at once: the slot is due (and not stale) and no backoff is known anywhere. */
const proceedsNow = (b: Bound, outcome: Admitted, nowMs: number): boolean =>
  outcome.waitMs <= 0 && -outcome.waitMs <= staleAfterMs(b.spec) && !b.store.backoffs.any(nowMs)

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
  Effect.withFiberRuntime((fiber) => rateOnlyIn(fiber, call))

/**
 * `rateOnly` in the step of `fiber` that runs it. That step is interruptible, so the store is first
 * asked only for a slot due now (`maxWaitMs` 0), which the caller takes within the step. Anything
 * else is decided in the uninterruptible region that follows, from before a slot to wait for is
 * reserved until its caller has it, or is asleep waiting for it: a refusal holds nothing.
 */
export const rateOnlyIn = <E>(
  fiber: Fiber.RuntimeFiber<unknown, unknown>,
  call: Call<E>
): Effect.Effect<Permit, E | StoreError | CostExceedsCapacity | InvalidCost> => {
  const { b } = call
  const clock = Context.get(fiber.currentDefaultServices, Clock.Clock)
  const started = clock.unsafeCurrentTimeMillis()
  // With a span to make or a cost to refuse, the store is asked within the span.
  const answersNow = fiber.currentTracer === untraced && costError(b, call.cost) === undefined
  const maxWaitMs = maxWaitOf(call)
  const now = answersNow && !b.store.backoffs.any(started) ? b.store.acquireRateNow?.(requestOf(call, 0), clock) : undefined
  if (now?._tag === "Admitted" && proceedsNow(b, now, started)) {
    // Granted within this one synchronous step: it waited for nothing.
    const granted = permit(call, now, undefined, 0)
    counted(b, granted, fiber.getFiberRef(FiberRef.currentMetricLabels), 0)
    return Effect.succeed(granted)
  }
  return Effect.uninterruptibleMask((restore) => {
    // The first answer stands when it was to the caller's own request, or holds a slot (none of the
    // engines answers a slot due now that does not proceed: never stale). Otherwise the store is
    // asked the caller's request here, in the region (at once when it can, as the memory engine).
    const answered = now !== undefined && (now._tag === "Admitted" || maxWaitMs === 0)
      ? now
      : answersNow
      ? b.store.acquireRateNow?.(requestOf(call, maxWaitMs), clock)
      : undefined
    return instrument(call, decide(call, answered, started, restore, clock))
  })
}
