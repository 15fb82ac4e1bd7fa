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
import type { LimiterSpec } from "../LimiterSpec.js"
import { type Admitted, type Call, type Refusal, refund, sleepFor } from "./call.js"
import { detached } from "./detach.js"

type Restore = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>

/**
 * Lets timers and I/O run once. After a timer wakes a waiter, a backoff's message may already sit
 * unread on a socket (the event loop runs timers before it reads): reading it first lets the check
 * below see it. A store that is down can also fail a call within the same microtask chain (ioredis
 * rejects at once while disconnected): a caller that asks again straight away, as a fail-open loop
 * does, lets the event loop reach the reconnect through it.
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
    const staleAfter = staleAfterMs(b.spec)
    let outcome = first
    let since = mark
    // A slot gone stale is given up once per acquire: a process that stays late (a machine too busy
    // for its timers) then uses the next one rather than giving slots up for ever.
    let replaced = false
    for (;;) {
      let stale = false
      if (outcome.waitMs > 0) {
        const reserved = outcome
        const due = (yield* Clock.currentTimeMillis) + reserved.waitMs
        yield* restore(sleepFor(reserved.waitMs)).pipe(Effect.onInterrupt(() => refund(call, reserved)))
        yield* turnEventLoop
        const woke = yield* Clock.currentTimeMillis
        // Past the caller's deadline there is no time for another slot: this one was within it.
        stale = !replaced && woke - due > staleAfter && woke < deadline
      }
      let now = yield* Clock.currentTimeMillis
      const until = b.store.backoffs.any(now) ? b.store.backoffs.until(b.spec, key, since, now) : undefined
      if (until === undefined && !stale) return { _tag: "Slot", outcome }
      if (until !== undefined) {
        const held: Refusal = { _tag: "RateLimited", retryAfterMs: until - now, limit: outcome.limit ?? 0, remaining: 0 }
        if (call.mode === "try" || until > deadline) return { _tag: "Refused", outcome: held, overDeadlineMs: Math.max(0, until - deadline) }
        yield* restore(sleepFor(until - now))
        now = yield* Clock.currentTimeMillis
      } else {
        replaced = true
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
      // The answer came late enough that the slot lies past the deadline: it goes back.
      if ((yield* Clock.currentTimeMillis) + next.waitMs > deadline && next.waitMs > 0) {
        yield* refund(call, next)
        return { _tag: "Late" }
      }
      outcome = next
    }
  })

/** How late, at most, callers proceed after their slot: a hundredth of a second of the rate. */
const STALE_MS = 10

/**
 * How late after its slot a waiter may wake and still use it: STALE_MS, or one interval of the rate
 * when that is longer (a caller late by less than an interval cannot add an admission to any
 * window, and at slow rates a slot given up is a long time lost).
 */
const staleAfterMs = (spec: LimiterSpec): number => {
  const rate = spec.rate
  const interval = rate === undefined ? 0 : rate._tag === "TokenBucket" ? rate.intervalMs : rate.windowMs / rate.limit
  return Math.max(STALE_MS, interval)
}
