/**
 * A limiter in shadow mode (`mode = "shadow"`): every call proceeds at once, and the store decides
 * in the background what enforcing would have done, so a new limit can be watched on real traffic
 * before it is enforced. The decision is the one an enforcing call makes (the same request, with the
 * caller's wait bound), so the shadow state follows what enforcing would have admitted: a would-be
 * refusal takes nothing, a would-be wait reserves its slot. It is counted
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
import type { AcquireOutcome, AcquireRequest } from "../Store.js"
import { type Call, instrument, traced } from "./call.js"

/** What the store decided for a shadow call: counted, noted on the span, and a granted lease handed to `onLease`. */
const record = (
  call: Call<unknown>,
  outcome: AcquireOutcome,
  leaseId: string | undefined,
  onLease: (leaseId: string) => Effect.Effect<void>
): Effect.Effect<void> => {
  const { metrics } = call.b
  const noted = Effect.annotateCurrentSpan({
    "rate_sync.shadow.outcome": outcome._tag,
    ...(outcome._tag === "Admitted" ? { "rate_sync.shadow.wait_ms": Math.max(0, outcome.waitMs) } : {})
  })
  switch (outcome._tag) {
    case "Admitted":
      metrics.shadowWait.unsafeUpdate(Math.max(0, outcome.waitMs), [])
      return leaseId === undefined ? noted : Effect.zipRight(noted, onLease(leaseId))
    case "RateLimited":
      metrics.shadowRefusedRate.unsafeUpdate(1, [])
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
    const request: AcquireRequest = {
      limiter: b.spec,
      key,
      cost,
      leaseId,
      maxWaitMs: call.mode === "try" ? 0 : call.timeoutMs ?? Infinity,
      queue: false
    }
    // Held in the caller's scope; released at once when the scope closed before the grant arrived
    // (a finalizer added to a closed scope runs at once).
    const onLease = (id: string) =>
      scope === undefined
        ? Effect.void
        : Scope.addFinalizer(scope, b.background(Effect.ignore(b.observe(b.store.release(b.spec, key, id)))))
    const decided = b.observe(b.store.acquire(request)).pipe(
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
