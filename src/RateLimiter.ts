/**
 * The `RateLimiter` service: permits from named limiters, each bound to a store.
 *
 * ```ts
 * Effect.scoped(Effect.gen(function* () {
 *   yield* RateLimiter.acquire("api")
 *   return yield* callUpstream
 * }))
 * ```
 */
import { randomUUID } from "node:crypto"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import * as Scope from "effect/Scope"
import {
  AcquireTimeout,
  type ConsumeError,
  CostExceedsCapacity,
  InvalidCost,
  LeaseNeedsScope,
  LimiterNotFound,
  RateLimitExceeded,
  type StoreError,
  type StoreUnavailable
} from "./Errors.js"
import { capacity, type LimiterSpec } from "./LimiterSpec.js"
import * as Metrics from "./Metrics.js"
import type { AcquireOutcome, Reservation, Store } from "./Store.js"

export interface AcquireOptions {
  /** Applies the limiter's settings to this key's own state (per user, per tenant...). */
  readonly key?: string | undefined
  /** Units of rate to take at once; an expensive call can count more. Default 1. */
  readonly cost?: number | undefined
  /** Overrides the limiter's `timeout`. */
  readonly timeout?: Duration.DurationInput | undefined
}

export interface TryAcquireOptions {
  readonly key?: string | undefined
  readonly cost?: number | undefined
}

export interface Permit {
  readonly limiter: string
  readonly key: string
  readonly cost: number
  /** The admission slot in the store's own time base, in ms, when a rate was reserved. */
  readonly slotMs: number | undefined
  /** How long the caller waited for the permit. */
  readonly waited: Duration.Duration
  /** Units still free right after this admission, when the limiter has a rate. */
  readonly remaining: number | undefined
  readonly leaseId: string | undefined
  /** Granted without the store, which was unavailable (`fail_closed = false`). */
  readonly degraded: boolean
}

export interface LimiterState {
  readonly limiter: string
  readonly key: string
  readonly limit: number | undefined
  readonly remaining: number | undefined
  readonly resetAfter: Duration.Duration
  readonly nextSlotAfter: Duration.Duration
  readonly leasesHeld: number
  readonly maxConcurrent: number | undefined
  readonly waiting: number
}

export interface BackoffOptions {
  readonly key?: string | undefined
  readonly retryAfter: Duration.DurationInput
}

type LookupError = LimiterNotFound

export class RateLimiter extends Context.Tag("rate-sync/RateLimiter")<RateLimiter, {
  /** Waits for a rate slot and a concurrency lease; the lease is released when the scope closes. */
  readonly acquire: (
    limiter: string,
    options?: AcquireOptions
  ) => Effect.Effect<Permit, LookupError | AcquireTimeout | CostExceedsCapacity | InvalidCost | StoreError, Scope.Scope>
  /**
   * Waits for a rate slot and takes it, with no scope: for limiters without `max_concurrent`, whose
   * permits hold nothing to give back (as `consume` in other rate limiters). A limiter with leases
   * fails with `LeaseNeedsScope`.
   */
  readonly consume: (limiter: string, options?: AcquireOptions) => Effect.Effect<Permit, ConsumeError>
  /** Never waits: fails with `RateLimitExceeded` when no permit is free now. */
  readonly tryAcquire: (
    limiter: string,
    options?: TryAcquireOptions
  ) => Effect.Effect<Permit, LookupError | RateLimitExceeded | CostExceedsCapacity | InvalidCost | StoreError, Scope.Scope>
  /** Runs an effect holding a permit. */
  readonly withPermit: (
    limiter: string,
    options?: AcquireOptions
  ) => <A, E, R>(
    self: Effect.Effect<A, E, R>
  ) => Effect.Effect<A, E | LookupError | AcquireTimeout | CostExceedsCapacity | InvalidCost | StoreError, R>
  /** A read-only view of a key's state. */
  readonly state: (
    limiter: string,
    options?: { readonly key?: string | undefined }
  ) => Effect.Effect<LimiterState, LookupError | StoreError>
  /** Pushes the next free rate slot out by `retryAfter` for every caller (an upstream 429). */
  readonly backoff: (limiter: string, options: BackoffOptions) => Effect.Effect<void, LookupError | StoreError>
  readonly limiters: ReadonlyArray<string>
}>() {
  static readonly acquire = (limiter: string, options?: AcquireOptions) =>
    Effect.flatMap(RateLimiter, (service) => service.acquire(limiter, options))

  static readonly consume = (limiter: string, options?: AcquireOptions) =>
    Effect.flatMap(RateLimiter, (service) => service.consume(limiter, options))

  static readonly tryAcquire = (limiter: string, options?: TryAcquireOptions) =>
    Effect.flatMap(RateLimiter, (service) => service.tryAcquire(limiter, options))

  static readonly withPermit = (limiter: string, options?: AcquireOptions) =>
  <A, E, R>(self: Effect.Effect<A, E, R>) =>
    Effect.flatMap(RateLimiter, (service) => service.withPermit(limiter, options)(self))

  static readonly state = (limiter: string, options?: { readonly key?: string | undefined }) =>
    Effect.flatMap(RateLimiter, (service) => service.state(limiter, options))

  static readonly backoff = (limiter: string, options: BackoffOptions) =>
    Effect.flatMap(RateLimiter, (service) => service.backoff(limiter, options))
}

interface Bound {
  readonly spec: LimiterSpec
  readonly store: Store
  readonly metrics: Metrics.LimiterMetrics
}

/** The slowest a waiter for a lease re-checks, as a safety net for lost wake-ups. */
const RECHECK_MS = 1_000

/**
 * Effect's built-in tracer, which exports spans nowhere. Under it an acquire makes no span: building
 * one costs about a third of an in-memory acquire. Any installed tracer (OpenTelemetry, say) gets them.
 */
const untraced = Effect.runSync(Effect.tracer)

/**
 * Lets timers and I/O run once. A store that is down can fail a call within the same microtask
 * chain (ioredis rejects at once while disconnected); a caller that asks again straight away, as a
 * fail-open loop does without knowing, would then never let the event loop reach the reconnect.
 */
const turnEventLoop: Effect.Effect<void> = Effect.async<void>((resume) => {
  const handle = setImmediate(() => resume(Effect.void))
  return Effect.sync(() => clearImmediate(handle))
})

export const make = (options: {
  readonly limiters: ReadonlyArray<LimiterSpec>
  readonly stores: ReadonlyMap<string, Store>
}): Effect.Effect<Context.Tag.Service<RateLimiter>> =>
  Effect.sync(() => {
    const bound = new Map<string, Bound>()
    for (const spec of options.limiters) {
      const store = options.stores.get(spec.store)
      if (store === undefined) throw new Error(`rate-sync: limiter "${spec.name}" names unknown store "${spec.store}"`)
      bound.set(spec.name, { spec, store, metrics: Metrics.forLimiter(spec.name, store.name) })
    }
    const names = [...bound.keys()]
    // Stores in an outage, so the warning is logged once per outage rather than per call.
    const outages = new Set<string>()

    const lookup = (limiter: string): Effect.Effect<Bound, LimiterNotFound> => {
      const found = bound.get(limiter)
      return found === undefined ? Effect.fail(new LimiterNotFound({ limiter, known: names })) : Effect.succeed(found)
    }

    const observe = <A>(b: Bound, effect: Effect.Effect<A, StoreError>): Effect.Effect<A, StoreError> =>
      effect.pipe(
        Effect.tapBoth({
          onFailure: (error) =>
            Effect.zipRight(
              Metric.increment(b.metrics.storeErrors),
              error._tag !== "StoreUnavailable"
                ? Effect.void
                : outages.has(b.store.name)
                ? turnEventLoop
                : Effect.sync(() => outages.add(b.store.name)).pipe(
                  Effect.zipRight(Effect.logWarning(`rate-sync: store "${b.store.name}" is unavailable: ${error.message}`)),
                  Effect.zipRight(turnEventLoop)
                )
            ),
          onSuccess: () =>
            outages.has(b.store.name)
              ? Effect.sync(() => outages.delete(b.store.name)).pipe(
                Effect.zipRight(Effect.logInfo(`rate-sync: store "${b.store.name}" is available again`))
              )
              : Effect.void
        })
      )

    const costError = (b: Bound, cost: number): CostExceedsCapacity | InvalidCost | undefined => {
      if (!Number.isInteger(cost) || cost < 1) return new InvalidCost({ limiter: b.spec.name, cost })
      const max = capacity(b.spec.rate)
      return max !== undefined && cost > max ? new CostExceedsCapacity({ limiter: b.spec.name, cost, capacity: max }) : undefined
    }

    const now = Clock.currentTimeMillis

    /** Holds a granted lease for the scope: renewed while open, released when it closes. */
    const holdLease = (b: Bound, key: string, leaseId: string, scope: Scope.Scope) => {
      const ttl = b.spec.concurrency?.leaseTtlMs ?? 0
      const renewal: Effect.Effect<void> = Effect.sleep(Duration.millis(ttl / 3)).pipe(
        Effect.zipRight(observe(b, b.store.renew(b.spec, key, leaseId))),
        Effect.flatMap((renewed) =>
          renewed
            ? renewal
            : Metric.increment(b.metrics.leasesLost).pipe(
              Effect.zipRight(Effect.logWarning(`rate-sync: limiter "${b.spec.name}" lost an expired lease`))
            )
        ),
        Effect.catchAll(() => renewal)
      )
      return Scope.addFinalizer(
        scope,
        observe(b, b.store.release(b.spec, key, leaseId)).pipe(Effect.ignore)
        // Forked from an uninterruptible region: made interruptible so closing the scope stops it.
      ).pipe(Effect.zipRight(Effect.forkIn(Effect.interruptible(renewal), scope)))
    }

    const admitDegraded = (b: Bound, key: string, cost: number, error: StoreUnavailable, started: number) =>
      b.spec.failClosed
        ? Effect.fail(error)
        : Effect.map(now, (at): Permit => ({
          limiter: b.spec.name,
          key,
          cost,
          slotMs: undefined,
          waited: Duration.millis(at - started),
          remaining: undefined,
          leaseId: undefined,
          degraded: true
        })).pipe(Effect.tap(() => Metric.increment(b.metrics.failOpen)))

    type Refusal = Exclude<AcquireOutcome, { _tag: "Admitted" }>

    /** One acquire or tryAcquire; `refuse` turns a refusal into the caller's error. */
    interface Call<E> {
      readonly b: Bound
      readonly key: string
      readonly cost: number
      readonly timeoutMs: number | undefined
      readonly mode: "wait" | "try"
      readonly refuse: (outcome: Refusal, overDeadlineMs: number) => E
    }

    /**
     * Without leases an acquire is one store call and at most one sleep: kept to few Effect steps,
     * since it is the hot path of most limiters.
     */
    const rateOnly = <E>({ b, cost, key, mode, refuse, timeoutMs }: Call<E>) =>
      Effect.uninterruptibleMask((restore) =>
        Effect.clockWith((clock) => {
          const started = clock.unsafeCurrentTimeMillis()
          const maxWaitMs = mode === "try" ? 0 : timeoutMs === undefined ? Infinity : Math.max(0, timeoutMs)
          const permit = (outcome: Extract<AcquireOutcome, { _tag: "Admitted" }>): Permit => ({
            limiter: b.spec.name,
            key,
            cost,
            slotMs: outcome.reservation?.slotMs,
            waited: Duration.millis(Math.max(0, clock.unsafeCurrentTimeMillis() - started)),
            remaining: outcome.remaining,
            leaseId: undefined,
            degraded: false
          })
          return observe(b, b.store.acquire({ limiter: b.spec, key, cost, leaseId: undefined, maxWaitMs, queue: false })).pipe(
            Effect.matchEffect({
              onFailure: (error): Effect.Effect<Permit, E | StoreError> =>
                error._tag === "StoreUnavailable" ? admitDegraded(b, key, cost, error, started) : Effect.fail(error),
              onSuccess: (outcome): Effect.Effect<Permit, E> => {
                if (outcome._tag === "Admitted") {
                  const reservation = outcome.reservation
                  return outcome.waitMs <= 0 ? Effect.sync(() => permit(outcome)) : restore(Effect.sleep(Duration.millis(outcome.waitMs))).pipe(
                    Effect.onInterrupt(() =>
                      reservation === undefined
                        ? Effect.void
                        : observe(b, b.store.refund(b.spec, key, cost, reservation)).pipe(Effect.ignore)
                    ),
                    Effect.map(() => permit(outcome))
                  )
                }
                const overDeadline = outcome._tag === "RateLimited" && timeoutMs !== undefined
                  ? Math.max(0, outcome.retryAfterMs - (timeoutMs - (clock.unsafeCurrentTimeMillis() - started)))
                  : 0
                return Metric.increment(mode === "wait" ? b.metrics.timeouts : b.metrics.rejections).pipe(
                  Effect.zipRight(Effect.fail(refuse(outcome, overDeadline)))
                )
              }
            })
          )
        })
      )

    /** Counts a granted permit and, under an installed tracer, wraps the call in a span. */
    const instrument = <E, R>(b: Bound, mode: "wait" | "try", cost: number, decided: Effect.Effect<Permit, E, R>) =>
      decided.pipe(
        Effect.tap((permit) =>
          Effect.zipRight(
            Metric.increment(b.metrics.acquisitions),
            Metric.update(b.metrics.waitTime, Duration.toMillis(permit.waited))
          )
        ),
        (traced) =>
          Effect.tracerWith((tracer) =>
            tracer === untraced
              ? traced
              : Effect.withSpan(traced, mode === "wait" ? "rate_sync.acquire" : "rate_sync.try_acquire", {
                attributes: { "rate_sync.limiter": b.spec.name, "rate_sync.cost": cost },
                // A stack trace per permit costs more than the rest of an in-memory acquire.
                captureStackTrace: false
              })
          )
      )

    /** A rate slot alone: nothing is held, so no scope is needed. */
    const runRateOnly = <E>(call: Call<E>) => {
      const invalid = costError(call.b, call.cost)
      const decided: Effect.Effect<Permit, E | StoreError | CostExceedsCapacity | InvalidCost> = invalid !== undefined
        ? Effect.fail(invalid)
        : rateOnly(call)
      return instrument(call.b, call.mode, call.cost, decided)
    }

    const run = <E>(call: Call<E>) => {
      const { b, cost, key, mode, refuse, timeoutMs } = call
      if (b.spec.concurrency === undefined) return runRateOnly(call)
      const invalid = costError(b, cost)
      const leased = Effect.gen(function*() {
        const scope = yield* Effect.scope
        const started = yield* now
        const deadline = timeoutMs === undefined ? Infinity : started + timeoutMs
        const leaseId = randomUUID()

        return yield* Effect.uninterruptibleMask((restore) =>
          Effect.gen(function*() {
            while (true) {
              const attempt = yield* Effect.scoped(Effect.gen(function*() {
                const released = yield* b.store.releases(b.spec, key)
                const at = yield* now
                const left = deadline - at
                const maxWaitMs = mode === "try" ? 0 : Math.max(0, left)
                const outcome: AcquireOutcome = yield* observe(
                  b,
                  b.store.acquire({ limiter: b.spec, key, cost, leaseId, maxWaitMs, queue: mode === "wait" })
                )
                if (outcome._tag !== "ConcurrencyFull" || mode === "try") return outcome
                if (left <= 0) {
                  yield* observe(b, b.store.release(b.spec, key, leaseId)).pipe(Effect.ignore)
                  return outcome
                }
                const recheck = Math.min(
                  left,
                  RECHECK_MS,
                  (b.spec.concurrency?.leaseTtlMs ?? RECHECK_MS) / 3,
                  outcome.expiresInMs === undefined ? Infinity : Math.max(1, outcome.expiresInMs + 1)
                )
                yield* restore(Effect.race(released, Effect.sleep(Duration.millis(recheck)))).pipe(
                  Effect.onInterrupt(() => observe(b, b.store.release(b.spec, key, leaseId)).pipe(Effect.ignore))
                )
                return undefined
              })).pipe(
                Effect.catchTag("StoreUnavailable", (error) => admitDegraded(b, key, cost, error, started))
              )
              if (attempt === undefined) continue
              if ("degraded" in attempt) return attempt
              if (attempt._tag === "Admitted") {
                return yield* admitted(b, key, cost, leaseId, attempt, scope, restore, started)
              }
              const at = yield* now
              const overDeadline = attempt._tag === "RateLimited" ? attempt.retryAfterMs - (deadline - at) : 0
              yield* Metric.increment(mode === "wait" ? b.metrics.timeouts : b.metrics.rejections)
              return yield* Effect.fail(refuse(attempt, Math.max(0, overDeadline)))
            }
          })
        )
      })
      const decided: Effect.Effect<Permit, E | StoreError | CostExceedsCapacity | InvalidCost, Scope.Scope> = invalid !== undefined
        ? Effect.fail(invalid)
        : leased
      return instrument(b, mode, cost, decided)
    }

    const admitted = (
      b: Bound,
      key: string,
      cost: number,
      leaseId: string,
      outcome: Extract<AcquireOutcome, { _tag: "Admitted" }>,
      scope: Scope.Scope,
      restore: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>,
      started: number
    ) =>
      Effect.gen(function*() {
        yield* holdLease(b, key, leaseId, scope)
        if (outcome.waitMs > 0) {
          const reservation: Reservation | undefined = outcome.reservation
          yield* restore(Effect.sleep(Duration.millis(outcome.waitMs))).pipe(
            Effect.onInterrupt(() =>
              reservation === undefined
                ? Effect.void
                : observe(b, b.store.refund(b.spec, key, cost, reservation)).pipe(Effect.ignore)
            )
          )
        }
        const at = yield* now
        return {
          limiter: b.spec.name,
          key,
          cost,
          slotMs: outcome.reservation?.slotMs,
          waited: Duration.millis(Math.max(0, at - started)),
          remaining: outcome.remaining,
          leaseId,
          degraded: false
        } satisfies Permit
      })

    const waiting = (b: Bound, options?: AcquireOptions): Call<AcquireTimeout> => {
      const key = options?.key ?? ""
      const timeoutMs = options?.timeout === undefined ? b.spec.timeoutMs : Duration.toMillis(Duration.decode(options.timeout))
      return { b, key, cost: options?.cost ?? 1, timeoutMs, mode: "wait", refuse: (refusal, overDeadlineMs) =>
        new AcquireTimeout({
          limiter: b.spec.name,
          key,
          timeout: Duration.millis(timeoutMs ?? 0),
          retryAfter: refusal._tag === "RateLimited" ? Duration.millis(overDeadlineMs) : undefined
        }) }
    }

    const acquire = (limiter: string, options?: AcquireOptions) => Effect.flatMap(lookup(limiter), (b) => run(waiting(b, options)))

    const consume = (limiter: string, options?: AcquireOptions) =>
      Effect.flatMap(lookup(limiter), (b): Effect.Effect<Permit, ConsumeError> =>
        b.spec.concurrency === undefined
          ? runRateOnly(waiting(b, options))
          : Effect.fail(new LeaseNeedsScope({ limiter: b.spec.name })))

    const tryAcquire = (limiter: string, options?: TryAcquireOptions) =>
      Effect.flatMap(lookup(limiter), (b) => {
        const key = options?.key ?? ""
        return run({ b, key, cost: options?.cost ?? 1, timeoutMs: 0, mode: "try", refuse: (refusal) =>
          refusal._tag === "RateLimited"
            ? new RateLimitExceeded({
              limiter: b.spec.name,
              key,
              retryAfter: Duration.millis(refusal.retryAfterMs),
              limit: refusal.limit,
              remaining: refusal.remaining
            })
            : new RateLimitExceeded({
              limiter: b.spec.name,
              key,
              // Only a release frees a lease; the expiry of the soonest one is the latest it can take.
              retryAfter: Duration.millis(Math.max(0, refusal.expiresInMs ?? 0)),
              limit: refusal.limit,
              remaining: 0
            }) })
      })

    return RateLimiter.of({
      acquire,
      consume,
      tryAcquire,
      // A rate-only permit holds nothing, so it needs no scope (which costs about as much as the rest).
      withPermit: (limiter, options) => (self) =>
        Effect.flatMap(lookup(limiter), (b) =>
          b.spec.concurrency === undefined
            ? Effect.zipRight(runRateOnly(waiting(b, options)), self)
            : Effect.scoped(Effect.zipRight(run(waiting(b, options)), self))),
      state: (limiter, options) =>
        Effect.flatMap(lookup(limiter), (b) => {
          const key = options?.key ?? ""
          return Effect.map(observe(b, b.store.state(b.spec, key)), (view): LimiterState => ({
            limiter,
            key,
            limit: view.limit,
            remaining: view.remaining,
            resetAfter: Duration.millis(view.resetAfterMs),
            nextSlotAfter: Duration.millis(view.nextSlotAfterMs),
            leasesHeld: view.leasesHeld,
            maxConcurrent: view.maxConcurrent,
            waiting: view.waiting
          }))
        }),
      backoff: (limiter, options) =>
        Effect.flatMap(
          lookup(limiter),
          (b) =>
            observe(b, b.store.backoff(b.spec, options.key ?? "", Duration.toMillis(Duration.decode(options.retryAfter))))
        ),
      limiters: names
    })
  })
