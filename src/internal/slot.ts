/**
 * Waiting for a rate slot the store reserved: sleep until it, then make sure no upstream backoff has
 * since put the key on hold, and that the caller did not wake too late. A slot reserved before a
 * backoff (in this process or any other) must not be used inside it: its caller waits for the hold
 * to end and reserves a slot again, which the store places after the hold. A slot woken up to long
 * after it was due is not used either: the caller reserves the next free one. The old slot is not
 * given back (stricter, never looser).
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
    // A slot woken up to more than this late (a process stalled: a pause for garbage collection, a
    // busy machine) is not used: callers who all proceed late at once would bunch up where they
    // proceed. The store's margin bounds it; the memory engine, with none, never drops one.
    const lateMs = b.store.timingMarginMs
    let outcome = first
    let since = mark
    for (;;) {
      const slept = outcome.waitMs > 0
      let stale = false
      if (slept) {
        const reserved = outcome
        const due = (yield* Clock.currentTimeMillis) + reserved.waitMs
        yield* restore(sleepFor(reserved.waitMs)).pipe(Effect.onInterrupt(() => refund(call, reserved)))
        yield* turnEventLoop
        stale = lateMs > 0 && (yield* Clock.currentTimeMillis) - due > lateMs
      }
      let now = yield* Clock.currentTimeMillis
      const until = b.store.backoffs.any() ? b.store.backoffs.until(b.spec, key, since, now) : undefined
      if (until === undefined && !stale) return { _tag: "Slot", outcome }
      if (until !== undefined) {
        const held: Refusal = { _tag: "RateLimited", retryAfterMs: until - now, limit: outcome.limit ?? 0, remaining: 0 }
        if (call.mode === "try" || until > deadline) return { _tag: "Refused", outcome: held, overDeadlineMs: Math.max(0, until - deadline) }
        yield* restore(sleepFor(until - now))
        now = yield* Clock.currentTimeMillis
      }
      // Placed again: after the hold, or, for a slot gone stale, at the next one free.
      since = b.store.backoffs.mark()
      const left = deadline - now
      const request = { limiter: b.spec, key, cost: call.cost, leaseId: undefined, maxWaitMs: call.mode === "try" ? 0 : Math.max(0, left), queue: false }
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
