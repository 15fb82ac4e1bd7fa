/**
 * An acquire with a concurrency lease (and a rate slot, when the limiter has both). The lease is
 * held in a scope of its own inside the caller's, renewed while it is open and released when it
 * closes, or as soon as the caller is interrupted before the permit is handed over.
 *
 * Whatever the store may have granted to a call whose caller is gone (deadline, interruption) or
 * whose reply never came (a failure) is released by the limiter's orphans, after the call ended, so
 * no lease or place in line is left held by nobody.
 */
import { randomUUID } from "node:crypto"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import type { AcquireOutcome } from "../Store.js"
import { type Admitted, type Call, failed, instrument, pastDeadline, permit, refund, refused } from "./call.js"
import { detached } from "./detach.js"
import { waitForSlot } from "./slot.js"

/** The slowest a waiter for a lease re-checks, as a safety net for lost wake-ups. */
const RECHECK_MS = 1_000

type Restore = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>

/** What every step of one acquire shares. */
interface Attempt<E> {
  readonly call: Call<E>
  readonly leaseId: string
  readonly started: number
  /** When the caller stops waiting (`Infinity` for never). */
  readonly deadline: number
  readonly restore: Restore
  /** The caller's scope, where a granted lease is held. */
  readonly scope: Scope.Scope
}

/** Gives the lease (or place in line) back now; if the store cannot take it now, in the background. */
const releaseNow = (call: Call<unknown>, leaseId: string) =>
  call.b.observe(call.b.store.release(call.b.spec, call.key, leaseId)).pipe(
    Effect.catchAll(() => call.b.orphans.add(call.key, leaseId))
  )

/** Renews every third of the ttl until the store says the lease is gone; a failed renewal is tried again next time. */
const renewal = (call: Call<unknown>, leaseId: string): Effect.Effect<void> => {
  const { b, key } = call
  const period = Duration.millis((b.spec.concurrency?.leaseTtlMs ?? 0) / 3)
  const renew = Effect.orElseSucceed(b.observe(b.store.renew(b.spec, key, leaseId)), () => true)
  const lost = Metric.increment(b.metrics.leasesLost).pipe(
    Effect.zipRight(Effect.logWarning(`rate-sync: limiter "${b.spec.name}" lost an expired lease`))
  )
  return Effect.sleep(period).pipe(
    Effect.zipRight(Effect.repeat(renew, Schedule.spaced(period).pipe(Schedule.whileInput((renewed: boolean) => renewed)))),
    Effect.zipRight(lost)
  )
}

/** Holds a granted lease in a scope of its own inside `parent`: renewed while open, released when closed. */
const holdLease = (call: Call<unknown>, leaseId: string, parent: Scope.Scope) =>
  Effect.gen(function*() {
    const lease = yield* Scope.fork(parent, ExecutionStrategy.sequential)
    yield* Scope.addFinalizer(lease, releaseNow(call, leaseId))
    // Forked from an uninterruptible region: made interruptible so closing the scope stops it.
    yield* Effect.forkIn(Effect.interruptible(renewal(call, leaseId)), lease)
    return lease
  })

/**
 * After the store granted the lease: hold it, then wait for the rate slot (placed again after a
 * backoff learned of meanwhile), giving both back (without waiting for the store) if interrupted.
 */
const admitted = <E>({ call, leaseId, restore, scope, started, ...attempt }: Attempt<E>, outcome: Admitted, mark: number) =>
  Effect.gen(function*() {
    // A tryAcquire does not wait for its slot.
    const deadline = call.mode === "try" ? started : attempt.deadline
    const lease = yield* holdLease(call, leaseId, scope)
    const closeLease = call.b.background(Scope.close(lease, Exit.void))
    const waited = yield* Effect.either(waitForSlot(call, outcome, mark, deadline, restore, yield* Effect.clock).pipe(Effect.onInterrupt(() => closeLease)))
    // A store call that placed the slot again failed: the lease goes back and the failure policy decides.
    if (Either.isLeft(waited)) return yield* Effect.zipRight(closeLease, failed(call, waited.left, (yield* Clock.currentTimeMillis) - started))
    const slot = waited.right
    if (slot._tag === "Late") return yield* Effect.zipRight(closeLease, refused(call, call.late()))
    if (slot._tag === "Refused") return yield* Effect.zipRight(closeLease, refused(call, call.refuse(slot.outcome, slot.overDeadlineMs)))
    return permit(call, slot.outcome, leaseId, (yield* Clock.currentTimeMillis) - started)
  })

/**
 * One ask of the store. "again": the caller waited for a release and asks again; "late": its deadline
 * passed while the store was deciding.
 */
const ask = <E>({ call, deadline, leaseId, restore }: Attempt<E>, first: boolean) =>
  Effect.scoped(Effect.gen(function*() {
    const { b, cost, key, mode } = call
    const giveBack = b.orphans.add(key, leaseId)
    const left = deadline - (yield* Clock.currentTimeMillis)
    // Woken at its deadline (within a millisecond: a sleep shorter than that is no sleep on every
    // clock): its place in line goes back without keeping the caller.
    if (!first && left < 1) return yield* Effect.as(giveBack, "late" as const)
    // Without a wait to bound (tryAcquire, a timeout of 0), the round trip is bounded by the store's own timeout.
    const bound = mode === "try" || left <= 0 ? Infinity : left
    // Subscribed before asking, so a release between the refusal and the wait is not missed.
    // A place in line kept from an earlier ask goes back if the caller leaves here.
    const subscribed = yield* restore(b.store.releases(b.spec, key)).pipe(
      Number.isFinite(bound) ? Effect.timeoutOption(bound) : Effect.asSome,
      Effect.onInterrupt(() => giveBack)
    )
    if (Option.isNone(subscribed)) return yield* Effect.as(giveBack, "late" as const)
    const released = subscribed.value
    // What is left once subscribed, which may itself have taken a while.
    const leftToAsk = deadline - (yield* Clock.currentTimeMillis)
    if (Number.isFinite(bound) && leftToAsk <= 0) return yield* Effect.as(giveBack, "late" as const)
    const request = { limiter: b.spec, key, cost, leaseId, maxWaitMs: mode === "try" ? 0 : Math.max(0, leftToAsk), queue: mode === "wait" }
    const answer = yield* restore(detached(b.observe(b.store.acquireLease(request)), Number.isFinite(bound) ? leftToAsk : Infinity, () => giveBack)).pipe(
      // A failed call leaves no trace: whatever it may have been granted before its reply was lost goes
      // back (a defect included; an interrupted caller's is given back by `detached`).
      Effect.tapErrorCause((cause) => Cause.isInterruptedOnly(cause) ? Effect.void : giveBack)
    )
    if (Option.isNone(answer)) return "late" as const
    const outcome: AcquireOutcome = answer.value
    if (outcome._tag !== "ConcurrencyFull" || mode === "try") return outcome
    if (left <= 0) {
      yield* releaseNow(call, leaseId)
      return outcome
    }
    // The time left after the store answered, which may have taken most of it.
    const leftNow = deadline - (yield* Clock.currentTimeMillis)
    const recheck = Math.min(
      Math.max(0, leftNow),
      RECHECK_MS,
      (b.spec.concurrency?.leaseTtlMs ?? RECHECK_MS) / 3,
      outcome.expiresInMs === undefined ? Infinity : Math.max(1, outcome.expiresInMs + 1)
    )
    yield* restore(Effect.race(released, Effect.sleep(Duration.millis(recheck)))).pipe(
      Effect.onInterrupt(() => giveBack)
    )
    return "again" as const
  }))

/**
 * A lease whose grant took a third of its ttl or more to reach the caller (a slow reply) is renewed
 * before it is handed over: renewal runs every third of the ttl from here, and the lease may already
 * have expired. False when it had: it is not held, and must not be used.
 */
const confirm = <E>({ call, deadline, leaseId, restore }: Attempt<E>, replyMs: number) =>
  Effect.gen(function*() {
    if (replyMs < (call.b.spec.concurrency?.leaseTtlMs ?? Infinity) / 3) return true
    const giveBack = call.b.orphans.add(call.key, leaseId)
    // Bounded by the caller's deadline like every store call of a waiting caller; given back if it is not met.
    const bound = call.mode === "try" || call.timeoutMs === 0 ? Infinity : deadline - (yield* Clock.currentTimeMillis)
    const renewed = yield* restore(detached(call.b.observe(call.b.store.renew(call.b.spec, call.key, leaseId)), bound, () => giveBack)).pipe(
      Effect.tapErrorCause((cause) => Cause.isInterruptedOnly(cause) ? Effect.void : giveBack)
    )
    if (Option.isNone(renewed)) return yield* Effect.as(giveBack, "late" as const)
    return renewed.value
  })

const decide = <E>(call: Call<E>) =>
  Effect.gen(function*() {
    const scope = yield* Effect.scope
    const started = yield* Clock.currentTimeMillis
    const deadline = call.timeoutMs === undefined ? Infinity : started + call.timeoutMs
    const leaseId = randomUUID()
    return yield* Effect.uninterruptibleMask((restore) =>
      Effect.gen(function*() {
        const attempt: Attempt<E> = { call, leaseId, started, deadline, restore, scope }
        for (let first = true;; first = false) {
          const askedAt = yield* Clock.currentTimeMillis
          const mark = call.b.store.backoffs.mark()
          const step = yield* Effect.either(ask(attempt, first))
          const at = yield* Clock.currentTimeMillis
          if (Either.isLeft(step)) return yield* failed(call, step.left, at - started)
          const outcome = step.right
          if (outcome === "again") continue
          if (outcome === "late") return yield* refused(call, call.late())
          if (outcome._tag === "Admitted") {
            // The store's answer came late enough that the slot lies past the deadline: both go back.
            if (pastDeadline(call, outcome, at - started)) {
              yield* Effect.zipRight(refund(call, outcome), call.b.orphans.add(call.key, leaseId))
              return yield* refused(call, call.late())
            }
            const confirmed = yield* Effect.either(confirm(attempt, at - askedAt))
            if (Either.isLeft(confirmed)) return yield* failed(call, confirmed.left, at - started)
            if (confirmed.right === "late") {
              yield* refund(call, outcome)
              return yield* refused(call, call.late())
            }
            if (!confirmed.right) {
              // Granted so long ago that it expired before it reached the caller: never handed over.
              yield* refund(call, outcome)
              if (call.mode === "wait") continue
              const max = call.b.spec.concurrency?.max ?? 0
              return yield* refused(call, call.refuse({ _tag: "ConcurrencyFull", expiresInMs: undefined, held: max, limit: max }, 0))
            }
            return yield* admitted(attempt, outcome, mark)
          }
          const overDeadline = outcome._tag === "RateLimited" ? outcome.retryAfterMs - (deadline - at) : 0
          return yield* refused(call, call.refuse(outcome, Math.max(0, overDeadline)))
        }
      })
    )
  })

export const leased = <E>(call: Call<E>) => instrument(call, decide(call))
