/**
 * What one call of a limiter carries through the acquire paths (`rateOnly.ts`, `leased.ts`), and
 * what they share: the cost check, the permit, the metrics and the span; the calls that wait and
 * those that never do.
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as FiberRef from "effect/FiberRef"
import * as Metric from "effect/Metric"
import type * as MetricLabel from "effect/MetricLabel"
import { AcquireTimeout, CostExceedsCapacity, InvalidCost, RateLimitExceeded, type StoreError, type StoreUnavailable } from "../Errors.js"
import { capacity, type LimiterSpec } from "../LimiterSpec.js"
import type * as Metrics from "../Metrics.js"
import type { Permit } from "../RateLimiter.js"
import type { AcquireOutcome, Admitted, Store } from "../Store.js"

export type { Admitted }
import type { Orphans } from "./orphans.js"

/** A limiter bound to its store. */
export interface Bound {
  readonly spec: LimiterSpec
  readonly store: Store
  readonly metrics: Metrics.LimiterMetrics
  /** Counts a store call's failure and logs outages. */
  readonly observe: <A>(effect: Effect.Effect<A, StoreError>) => Effect.Effect<A, StoreError>
  /** Leases nobody will release, given back in the background. */
  readonly orphans: Orphans
  /** Runs a give-back in the limiter's scope, so a caller interrupted does not wait for the store. */
  readonly background: (effect: Effect.Effect<void>) => Effect.Effect<void>
}

export type Refusal = Exclude<AcquireOutcome, { _tag: "Admitted" }>

/** One acquire, consume or tryAcquire, its options checked. */
export interface Call<E> {
  readonly b: Bound
  readonly key: string
  readonly cost: number
  /** The caller's wait bound; undefined for none. */
  readonly timeoutMs: number | undefined
  readonly mode: "wait" | "try"
  /** Turns a refusal into the caller's error. */
  readonly refuse: (outcome: Refusal, overDeadlineMs: number) => E
  /** The caller's error when its deadline passed while the store was still deciding. */
  readonly late: () => E
  /** What an outage gives: a degraded permit, or the error under `fail_closed`. */
  readonly degrade: (
    b: Bound,
    key: string,
    cost: number,
    error: StoreUnavailable,
    waitedMs: number
  ) => Effect.Effect<Permit, StoreUnavailable>
}

export const costError = (b: Bound, cost: number): CostExceedsCapacity | InvalidCost | undefined => {
  if (typeof cost !== "number" || !Number.isInteger(cost) || cost < 1) {
    return new InvalidCost({ limiter: b.spec.name, cost: typeof cost === "number" ? cost : Number.NaN })
  }
  const max = capacity(b.spec.rate)
  return max !== undefined && cost > max ? new CostExceedsCapacity({ limiter: b.spec.name, cost, capacity: max }) : undefined
}

export const permit = (call: Call<unknown>, outcome: Admitted, leaseId: string | undefined, waitedMs: number): Permit => ({
  limiter: call.b.spec.name,
  key: call.key,
  cost: call.cost,
  slotMs: outcome.reservation?.slotMs,
  // Most permits waited for nothing: one Duration for all of them.
  waited: waitedMs > 0 ? Duration.millis(waitedMs) : Duration.zero,
  remaining: outcome.remaining,
  limit: outcome.limit,
  // A token bucket is full again once the time reaches the arrival time this admission wrote.
  resetAfter: call.b.spec.rate?._tag === "TokenBucket" && outcome.reservation !== undefined
    ? Duration.millis(Math.max(0, outcome.reservation.tatMs - outcome.reservation.slotMs))
    : undefined,
  leaseId,
  degraded: false
})

/**
 * Gives a rate reservation back where the engine can, in the background: a caller that is
 * interrupted or out of time does not wait for the store. A failure only costs a slot.
 */
export const refund = (call: Call<unknown>, outcome: AcquireOutcome): Effect.Effect<void> =>
  outcome._tag !== "Admitted" || outcome.reservation === undefined
    ? Effect.void
    : call.b.background(Effect.ignore(call.b.observe(call.b.store.refund(call.b.spec, call.key, call.cost, outcome.reservation))))

/**
 * Effect's built-in tracer, which exports spans nowhere. Under it an acquire makes no span: building
 * one costs about a third of an in-memory acquire. Any installed tracer (OpenTelemetry, say) gets them.
 */
export const untraced = Effect.runSync(Effect.tracer)

/**
 * Counts a granted permit, with the labels the caller's fiber adds (`Effect.tagMetrics`). `waitedMs`:
 * its wait, when the caller knows it as a number.
 */
export const counted = (
  b: Bound,
  granted: Permit,
  labels: ReadonlyArray<MetricLabel.MetricLabel>,
  waitedMs = Duration.toMillis(granted.waited)
) => {
  b.metrics.acquisitions.unsafeUpdate(1, labels)
  b.metrics.waitTime.unsafeUpdate(waitedMs, labels)
}

/** Checks the cost, then counts a granted permit and, under an installed tracer, wraps the call in a span. */
export const instrument = <E, R>(call: Call<unknown>, decide: Effect.Effect<Permit, E, R>) => {
  const { b, cost, mode } = call
  const invalid = costError(b, cost)
  const decided: Effect.Effect<Permit, E | CostExceedsCapacity | InvalidCost, R> = invalid === undefined
    ? decide
    : Effect.fail(invalid)
  return decided.pipe(
    // Both metrics in one step.
    Effect.flatMap((granted) =>
      Effect.withFiberRuntime<Permit>((fiber) => {
        counted(b, granted, fiber.getFiberRef(FiberRef.currentMetricLabels))
        return Effect.succeed(granted)
      })
    ),
    (effect) => traced(effect, mode === "wait" ? "rate_sync.acquire" : "rate_sync.try_acquire", b.spec.name, cost)
  )
}

/** `effect` in a span named `name`, under an installed tracer only. */
export const traced = <A, E, R>(effect: Effect.Effect<A, E, R>, name: string, limiter: string, cost: number): Effect.Effect<A, E, R> =>
  Effect.tracerWith((tracer) =>
    tracer === untraced
      ? effect
      : Effect.withSpan(effect, name, {
        attributes: { "rate_sync.limiter": limiter, "rate_sync.cost": cost },
        // A stack trace per permit costs more than the rest of an in-memory acquire.
        captureStackTrace: false
      })
  )

/** Counts a refusal and fails with the caller's error. */
export const refused = <E>(call: Call<E>, error: E) =>
  Effect.zipRight(Metric.increment(call.mode === "wait" ? call.b.metrics.timeouts : call.b.metrics.rejections), Effect.fail(error))

/**
 * A store call that failed: an outage follows the limiter's `fail_closed`; a store too slow for the
 * caller's deadline is the caller's timeout; anything else (a misconfigured store, a timeout with no
 * deadline of the caller's) is the caller's error. Nothing but an outage ever admits.
 */
export const failed = <E>(call: Call<E>, error: StoreError, waitedMs: number): Effect.Effect<Permit, E | StoreError> =>
  error._tag === "StoreUnavailable"
    ? call.degrade(call.b, call.key, call.cost, error, waitedMs)
    : error._tag === "StoreTimeout" && call.mode === "wait" && call.timeoutMs !== undefined
    ? refused(call, call.late())
    : Effect.fail(error)

/**
 * Whether a slot granted after `waitedMs` lies past the caller's deadline (the store answered late).
 * Only for a caller with a wait to bound: tryAcquire and a timeout of 0 get what the store granted.
 */
export const pastDeadline = (call: Call<unknown>, outcome: Admitted, waitedMs: number): boolean =>
  call.mode === "wait" && call.timeoutMs !== undefined && call.timeoutMs > 0 && outcome.waitMs > 0 &&
  waitedMs + outcome.waitMs > call.timeoutMs

/** The permit of a call the store could not serve, when `fail_closed = false`. */
const degraded = (b: Bound, key: string, cost: number, waited: number): Permit => ({
  limiter: b.spec.name,
  key,
  cost,
  slotMs: undefined,
  waited: Duration.millis(waited),
  remaining: undefined,
  leaseId: undefined,
  degraded: true
})

const admitDegraded = (b: Bound, key: string, cost: number, error: StoreUnavailable, waitedMs: number) =>
  b.spec.failClosed
    ? Effect.fail(error)
    : Effect.as(Metric.increment(b.metrics.failOpen), degraded(b, key, cost, waitedMs))

/**
 * A call that waits (acquire, consume). A class, so that the errors it may end with cost no closures
 * until they are made: a call is built on every acquire.
 */
export class WaitingCall implements Call<AcquireTimeout> {
  readonly mode = "wait"
  constructor(readonly b: Bound, readonly key: string, readonly cost: number, readonly timeoutMs: number | undefined) {}
  degrade(b: Bound, key: string, cost: number, error: StoreUnavailable, waitedMs: number) {
    return admitDegraded(b, key, cost, error, waitedMs)
  }
  refuse(refusal: Refusal, overDeadlineMs: number) {
    return this.timedOut(refusal._tag === "RateLimited" ? overDeadlineMs : undefined)
  }
  late() {
    return this.timedOut(undefined)
  }
  private timedOut(retryAfterMs: number | undefined) {
    return new AcquireTimeout({
      limiter: this.b.spec.name,
      key: this.key,
      timeout: Duration.millis(this.timeoutMs ?? 0),
      retryAfter: retryAfterMs === undefined ? undefined : Duration.millis(retryAfterMs)
    })
  }
}

/** A call that never waits (tryAcquire, tryConsume). */
export class TryingCall implements Call<RateLimitExceeded> {
  readonly mode = "try"
  readonly timeoutMs = 0
  constructor(readonly b: Bound, readonly key: string, readonly cost: number) {}
  degrade(b: Bound, key: string, cost: number, error: StoreUnavailable, waitedMs: number) {
    return admitDegraded(b, key, cost, error, waitedMs)
  }
  refuse(refusal: Refusal) {
    return new RateLimitExceeded({
      limiter: this.b.spec.name,
      key: this.key,
      // Only a release frees a lease; the expiry of the soonest one is the latest it can take.
      retryAfter: Duration.millis(
        refusal._tag === "RateLimited" ? refusal.retryAfterMs : Math.max(0, refusal.expiresInMs ?? 0)
      ),
      limit: refusal.limit,
      remaining: refusal._tag === "RateLimited" ? refusal.remaining : 0
    })
  }
  late() {
    return new RateLimitExceeded({ limiter: this.b.spec.name, key: this.key, retryAfter: Duration.zero, limit: 0, remaining: 0 })
  }
}
