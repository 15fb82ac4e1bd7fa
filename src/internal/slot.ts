/**
 * Waiting for a rate slot the store reserved: sleep until it, then make sure no upstream backoff has
 * since put the key on hold. A slot reserved before a backoff (in this process or any other) must
 * not be used inside it: its caller waits for the hold to end and reserves a slot again, which the
 * store places after the hold. The old slot is not given back; the backoff made it unusable.
 */
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import type { StoreError } from "../Errors.js"
import { type Admitted, type Call, type Refusal, refund, sleepFor } from "./call.js"
import { detached } from "./detach.js"

type Restore = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>

/**
 * Lets timers and I/O run once. After a timer wakes a waiter, a backoff's message may already sit
 * unread on a socket (the event loop runs timers before it reads): reading it first lets the check
 * below see it.
 */
export const turnEventLoop: Effect.Effect<void> = Effect.async<void>((resume) => {
  const handle = setImmediate(() => resume(Effect.void))
  return Effect.sync(() => clearImmediate(handle))
})

/** The caller's wait and the slot it ended with: admitted, refused by the store, or past its deadline. */
export type Waited =
  | { readonly _tag: "Slot"; readonly outcome: Admitted }
  | { readonly _tag: "Refused"; readonly outcome: Refusal; readonly overDeadlineMs: number }
  | { readonly _tag: "Late" }

/**
 * Waits for `outcome`'s slot. `mark` is the store's backoff mark taken before the call that
 * reserved it, `deadline` the caller's (local ms, Infinity for none). An interruption while asleep
 * gives the slot back.
 */
export const waitForSlot = <E>(
  call: Call<E>,
  first: Admitted,
  mark: number,
  deadline: number,
  restore: Restore
): Effect.Effect<Waited, StoreError> =>
  Effect.gen(function*() {
    const { b, key } = call
    let outcome = first
    let since = mark
    for (;;) {
      const slept = outcome.waitMs > 0
      if (slept) {
        const reserved = outcome
        yield* restore(sleepFor(reserved.waitMs)).pipe(Effect.onInterrupt(() => refund(call, reserved)))
        yield* turnEventLoop
      }
      if (!b.store.backoffs.any()) return { _tag: "Slot", outcome }
      const now = yield* Clock.currentTimeMillis
      const until = b.store.backoffs.until(b.spec, key, since, now)
      if (until === undefined) return { _tag: "Slot", outcome }
      const held: Refusal = { _tag: "RateLimited", retryAfterMs: until - now, limit: outcome.limit ?? 0, remaining: 0 }
      if (call.mode === "try" || until > deadline) return { _tag: "Refused", outcome: held, overDeadlineMs: Math.max(0, until - deadline) }
      yield* restore(sleepFor(until - now))
      since = b.store.backoffs.mark()
      const left = deadline - (yield* Clock.currentTimeMillis)
      const request = { limiter: b.spec, key, cost: call.cost, leaseId: undefined, maxWaitMs: Math.max(0, left), queue: false }
      const ask = b.observe(b.store.acquire(request))
      const answer = Number.isFinite(left)
        ? yield* restore(detached(ask, left, Exit.match({ onFailure: () => Effect.void, onSuccess: (late) => refund(call, late) })))
        : Option.some(yield* restore(ask))
      if (Option.isNone(answer)) return { _tag: "Late" }
      const next = answer.value
      if (next._tag !== "Admitted") {
        return { _tag: "Refused", outcome: next, overDeadlineMs: next._tag === "RateLimited" ? Math.max(0, next.retryAfterMs - left) : 0 }
      }
      outcome = next
    }
  })
