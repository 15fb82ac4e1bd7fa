/**
 * The `RateLimiter` service: binds each limiter to its store and runs its calls. The waiting, the
 * leases' renewal, the failure policy and the metrics live here once, for every engine.
 */
import type * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Metric from "effect/Metric"
import type * as Scope from "effect/Scope"
import {
  AcquireTimeout,
  type ConsumeError,
  type CostExceedsCapacity,
  type InvalidCost,
  InvalidOption,
  LeaseNeedsScope,
  LimiterNotFound,
  RateLimitExceeded,
  type StoreError,
  type StoreUnavailable
} from "../Errors.js"
import type { LimiterSpec } from "../LimiterSpec.js"
import * as Metrics from "../Metrics.js"
import type { AcquireAllEntry, AcquireOptions, LimiterState, Permit, RateLimiter, TryAcquireOptions } from "../RateLimiter.js"
import type { Store } from "../Store.js"
import * as AcquireAll from "./acquireAll.js"
import type { Bound, Call } from "./call.js"
import { leased } from "./leased.js"
import * as Options from "./options.js"
import * as Orphans from "./orphans.js"
import { rateOnly } from "./rateOnly.js"
import { shadowLeased, shadowRate } from "./shadow.js"
import { turnEventLoop } from "./timer.js"

/** Counts store failures and logs an outage once, when it starts and when it ends. */
const observer = () => {
  // Stores in an outage, so the warning is logged once per outage rather than per call.
  const outages = new Set<string>()
  return (store: Store, metrics: Metrics.LimiterMetrics) =>
  <A>(effect: Effect.Effect<A, StoreError>): Effect.Effect<A, StoreError> =>
    effect.pipe(
      Effect.tapBoth({
        onFailure: (error) =>
          Effect.zipRight(
            Metric.increment(metrics.storeErrors),
            error._tag !== "StoreUnavailable"
              ? Effect.void
              : outages.has(store.name)
              ? turnEventLoop
              : Effect.sync(() => outages.add(store.name)).pipe(
                Effect.zipRight(Effect.logWarning(`rate-sync: store "${store.name}" is unavailable: ${error.message}`)),
                Effect.zipRight(turnEventLoop)
              )
          ),
        onSuccess: () =>
          outages.has(store.name)
            ? Effect.sync(() => outages.delete(store.name)).pipe(
              Effect.zipRight(Effect.logInfo(`rate-sync: store "${store.name}" is available again`))
            )
            : Effect.void
      })
    )
}

const bind = (spec: LimiterSpec, store: Store, observe: ReturnType<typeof observer>, scope: Scope.Scope): Bound => {
  const metrics = Metrics.forLimiter(spec.name, store.name)
  // Forked from uninterruptible regions: made interruptible so closing the layer stops them.
  const background = (effect: Effect.Effect<void>) => Effect.asVoid(Effect.forkIn(Effect.interruptible(effect), scope))
  return {
    spec,
    store,
    metrics,
    observe: observe(store, metrics),
    background,
    orphans: Orphans.make({
      release: (key, leaseId) => store.release(spec, key, leaseId),
      fork: background
    })
  }
}

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

export const make = (options: {
  readonly limiters: ReadonlyArray<LimiterSpec>
  readonly stores: ReadonlyMap<string, Store>
}): Effect.Effect<Context.Tag.Service<RateLimiter>, never, Scope.Scope> =>
  Effect.map(Effect.scope, (scope) => {
    const observe = observer()
    const bound = new Map<string, Bound>()
    for (const spec of options.limiters) {
      const store = options.stores.get(spec.store)
      if (store === undefined) throw new Error(`rate-sync: limiter "${spec.name}" names unknown store "${spec.store}"`)
      bound.set(spec.name, bind(spec, store, observe, scope))
    }
    const names = [...bound.keys()]

    const invalid = (b: Bound) => (problem: Options.Problem) => new InvalidOption({ limiter: b.spec.name, ...problem })

    const admitDegraded = (b: Bound, key: string, cost: number, error: StoreUnavailable, waitedMs: number) =>
      b.spec.failClosed
        ? Effect.fail(error)
        : Effect.as(Metric.increment(b.metrics.failOpen), degraded(b, key, cost, waitedMs))

    /** A call that waits (acquire, consume). */
    const waitingCall = (b: Bound, key: string, cost: number, timeoutMs: number | undefined): Call<AcquireTimeout> => {
      const timedOut = (retryAfterMs: number | undefined) =>
        new AcquireTimeout({
          limiter: b.spec.name,
          key,
          timeout: Duration.millis(timeoutMs ?? 0),
          retryAfter: retryAfterMs === undefined ? undefined : Duration.millis(retryAfterMs)
        })
      return {
        b,
        key,
        cost,
        timeoutMs,
        mode: "wait",
        degrade: admitDegraded,
        refuse: (refusal, overDeadlineMs) => timedOut(refusal._tag === "RateLimited" ? overDeadlineMs : undefined),
        late: () => timedOut(undefined)
      }
    }

    /** A call that waits, with its options checked. */
    const waiting = (b: Bound, options: AcquireOptions | undefined): Either.Either<Call<AcquireTimeout>, InvalidOption> =>
      Either.all([Options.key(options?.key), Options.timeout(options?.timeout, b.spec.timeoutMs)]).pipe(
        Either.mapLeft(invalid(b)),
        Either.map(([key, timeoutMs]) => waitingCall(b, key, options?.cost === undefined ? 1 : options.cost, timeoutMs))
      )

    /** A call that never waits (tryAcquire, tryConsume). */
    const tryingCall = (b: Bound, key: string, cost: number): Call<RateLimitExceeded> => ({
      b,
      key,
      cost,
      timeoutMs: 0,
      mode: "try",
      degrade: admitDegraded,
      refuse: (refusal) =>
        new RateLimitExceeded({
          limiter: b.spec.name,
          key,
          // Only a release frees a lease; the expiry of the soonest one is the latest it can take.
          retryAfter: Duration.millis(
            refusal._tag === "RateLimited" ? refusal.retryAfterMs : Math.max(0, refusal.expiresInMs ?? 0)
          ),
          limit: refusal.limit,
          remaining: refusal._tag === "RateLimited" ? refusal.remaining : 0
        }),
      late: () => new RateLimitExceeded({ limiter: b.spec.name, key, retryAfter: Duration.zero, limit: 0, remaining: 0 })
    })

    const trying = (b: Bound, options: TryAcquireOptions | undefined): Either.Either<Call<RateLimitExceeded>, InvalidOption> =>
      Either.map(Either.mapLeft(Options.key(options?.key), invalid(b)), (key) => tryingCall(b, key, options?.cost === undefined ? 1 : options.cost))

    /** Several limits at once: the entries and the one timeout checked, then one call per entry. */
    const composite = <E>(
      entries: ReadonlyArray<AcquireAllEntry>,
      timeout: unknown,
      call: (member: AcquireAll.Member, timeoutMs: number | undefined) => Call<E>
    ): Effect.Effect<ReadonlyArray<Permit>, E | AcquireAll.EntryError | StoreError> =>
      Effect.suspend((): Effect.Effect<ReadonlyArray<Permit>, E | AcquireAll.EntryError | StoreError> => {
        const checked = Either.flatMap(AcquireAll.check(entries, (name) => bound.get(name), names), (members) =>
          Either.map(AcquireAll.timeoutOf(members, timeout), (timeoutMs) => members.map((member) => call(member, timeoutMs))))
        return Either.isLeft(checked) ? Effect.fail(checked.left) : AcquireAll.run(checked.right)
      })
    const waitingAll = (m: AcquireAll.Member, timeoutMs: number | undefined) => waitingCall(m.b, m.key, m.cost, timeoutMs)
    const tryingAll = (m: AcquireAll.Member) => tryingCall(m.b, m.key, m.cost)

    /** Looks the limiter up and checks the call's options, then runs it. */
    const withCall = <C, A, E, R>(
      limiter: string,
      check: (b: Bound) => Either.Either<C, InvalidOption>,
      use: (call: C, b: Bound) => Effect.Effect<A, E, R>
    ): Effect.Effect<A, E | LimiterNotFound | InvalidOption, R> =>
    {
      // Decided as the effect is built (the limiters are fixed), so a call costs no steps for it.
      const b = bound.get(limiter)
      if (b === undefined) return Effect.fail(new LimiterNotFound({ limiter, known: names }))
      const checked = check(b)
      return Either.isLeft(checked) ? Effect.fail(checked.left) : use(checked.right, b)
    }

    /** A call of a limiter without leases: enforced, or in shadow. */
    const rateCall = <E>(call: Call<E>) => call.b.spec.shadow === true ? shadowRate(call) : rateOnly(call)

    const consume = (limiter: string, options?: AcquireOptions) =>
      withCall(limiter, (b) => waiting(b, options), (call, b): Effect.Effect<Permit, ConsumeError> =>
        b.spec.concurrency === undefined ? rateCall(call) : Effect.fail(new LeaseNeedsScope({ limiter: b.spec.name })))

    const run = <E>(call: Call<E>) =>
      call.b.spec.concurrency === undefined ? rateCall(call) : call.b.spec.shadow === true ? shadowLeased(call) : leased(call)

    const keyOf = (b: Bound, options: { readonly key?: string | undefined } | undefined) =>
      Either.mapLeft(Options.key(options?.key), invalid(b))

    const service: Context.Tag.Service<RateLimiter> = {
      acquire: (limiter, options) => withCall(limiter, (b) => waiting(b, options), run),
      consume,
      tryAcquire: (limiter, options) => withCall(limiter, (b) => trying(b, options), run),
      tryConsume: (limiter, options) =>
        withCall(limiter, (b) => trying(b, options), (call, b): Effect.Effect<Permit, RateLimitExceeded | CostExceedsCapacity | InvalidCost | StoreError | LeaseNeedsScope> =>
          b.spec.concurrency === undefined ? rateCall(call) : Effect.fail(new LeaseNeedsScope({ limiter: b.spec.name }))),
      // A rate-only permit holds nothing, so it needs no scope (which costs about as much as the rest).
      withPermit: (limiter, options) => (self) =>
        withCall(limiter, (b) => waiting(b, options), (call, b) =>
          b.spec.concurrency === undefined
            ? Effect.zipRight(rateCall(call), self)
            : Effect.scoped(Effect.zipRight(run(call), self))),
      state: (limiter, options) =>
        withCall(limiter, (b) => keyOf(b, options), (key, b) =>
          Effect.map(b.observe(b.store.state(b.spec, key)), (view): LimiterState => ({
            limiter,
            key,
            limit: view.limit,
            remaining: view.remaining,
            resetAfter: Duration.millis(view.resetAfterMs),
            nextSlotAfter: Duration.millis(view.nextSlotAfterMs),
            leasesHeld: view.leasesHeld,
            maxConcurrent: view.maxConcurrent,
            waiting: view.waiting
          }))),
      backoff: (limiter, options) =>
        withCall(
          limiter,
          (b) => Either.all([keyOf(b, options), Either.mapLeft(Options.retryAfter(options?.retryAfter), invalid(b))]),
          ([key, retryAfterMs], b) => b.observe(b.store.backoff(b.spec, key, retryAfterMs))
        ),
      acquireAll: (entries, options) => composite(entries, options?.timeout, waitingAll),
      consumeAll: (entries, options) => composite(entries, options?.timeout, waitingAll),
      tryAcquireAll: (entries) => composite(entries, undefined, tryingAll),
      tryConsumeAll: (entries) => composite(entries, undefined, tryingAll),
      limiters: names
    }
    return service
  })
