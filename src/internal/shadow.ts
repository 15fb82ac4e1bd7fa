/**
 * A limiter in shadow mode (`mode = "shadow"`): every call proceeds at once, and the store decides
 * in the background what enforcing would have done, so a new limit can be watched on real traffic
 * before it is enforced. The store is asked for a slot free now only (as `tryAcquire` asks): a call
 * that finds one takes it; one that finds none takes nothing and is counted as a would-be wait (the
 * store's retry-after, when within the call's wait bound) or a would-be refusal. Reserving the
 * would-be waits' slots would let the state run ever further ahead, since shadow callers never wait
 * and so never slow down, and the limiter, once enforced, would start with that debt. It is counted
 * (`rate_sync_shadow_refusals_total`, `rate_sync_shadow_wait_ms`) and, under an installed tracer, a
 * `rate_sync.shadow` span. A lease the store grants is held until the caller's scope closes (not
 * renewed: a call held past `lease_ttl_seconds` stops counting), and a caller that would have waited
 * for a lease counts as a refusal with reason "concurrency". Nothing the store does (an outage, a
 * slow answer) reaches the caller; its failures count in `rate_sync_store_errors_total`.
 */
import { randomUUID } from "node:crypto"
import * as Effect from "effect/Effect"
import * as Scope from "effect/Scope"
import * as Duration from "effect/Duration"
import type { Permit } from "../RateLimiter.js"
import type { AcquireOutcome, RateRequest } from "../Store.js"
import { type Call, instrument, traced } from "./call.js"

/** What the store decided for a shadow call: counted, noted on the span, and a granted lease handed to `onLease`. */
const record = (
  call: Call<unknown>,
  outcome: AcquireOutcome,
  leaseId: string | undefined,
  onLease: (leaseId: string) => Effect.Effect<void>
): Effect.Effect<void> => {
  const { metrics } = call.b
  // A rate slot not free now: enforcing would have waited for it, within the call's bound, or refused.
  const wouldWait = outcome._tag === "RateLimited" && call.mode === "wait" && outcome.retryAfterMs <= (call.timeoutMs ?? Infinity)
  const waitMs = outcome._tag === "Admitted" ? 0 : wouldWait && outcome._tag === "RateLimited" ? outcome.retryAfterMs : undefined
  const noted = Effect.annotateCurrentSpan({
    "rate_sync.shadow.outcome": wouldWait ? "WouldWait" : outcome._tag,
    ...(waitMs !== undefined ? { "rate_sync.shadow.wait_ms": waitMs } : {})
  })
  if (waitMs !== undefined) metrics.shadowWait.unsafeUpdate(waitMs, [])
  switch (outcome._tag) {
    case "Admitted":
      return leaseId === undefined ? noted : Effect.zipRight(noted, onLease(leaseId))
    case "RateLimited":
      if (!wouldWait) metrics.shadowRefusedRate.unsafeUpdate(1, [])
      return noted
    case "ConcurrencyFull":
      metrics.shadowRefusedConcurrency.unsafeUpdate(1, [])
      return noted
  }
}

/** The permit a shadow call gets at once: it waited for nothing and holds nothing. */
const proceed = (call: Call<unknown>): Permit => ({
  limiter: call.b.spec.name,
  key: call.key,
  cost: call.cost,
  slotMs: undefined,
  waited: Duration.zero,
  remaining: undefined,
  leaseId: undefined,
  degraded: false
})

/**
 * Runs `call` in shadow: the store's decision in the limiter's background; `scope`, for a limiter with
 * leases, is where a granted lease is held until it closes.
 */
const decide = (call: Call<unknown>, scope: Scope.Scope | undefined): Effect.Effect<Permit> =>
  Effect.suspend(() => {
    const { b, key, cost } = call
    const leaseId = scope === undefined ? undefined : randomUUID()
    const request: RateRequest = { limiter: b.spec, key, cost, maxWaitMs: 0 }
    // Held in the caller's scope; released at once when the scope closed before the grant arrived
    // (a finalizer added to a closed scope runs at once).
    const onLease = (id: string) =>
      scope === undefined
        ? Effect.void
        : Scope.addFinalizer(scope, b.background(Effect.ignore(b.observe(b.store.release(b.spec, key, id)))))
    const asked = leaseId === undefined ? b.store.acquireRate(request) : b.store.acquireLease({ ...request, leaseId, queue: false })
    const decided = b.observe(asked).pipe(
      Effect.flatMap((outcome) => record(call, outcome, leaseId, onLease)),
      Effect.ignore,
      (effect) => traced(effect, "rate_sync.shadow", b.spec.name, cost)
    )
    return Effect.as(b.background(decided), proceed(call))
  })

/** A shadow call of a rate-only limiter: nothing is held, no scope needed. */
export const shadowRate = (call: Call<unknown>) => instrument(call, decide(call, undefined))

/** A shadow call of a limiter with leases: a lease the store grants is held until the caller's scope closes. */
export const shadowLeased = (call: Call<unknown>) => instrument(call, Effect.flatMap(Effect.scope, (scope) => decide(call, scope)))
