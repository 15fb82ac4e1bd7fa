/**
 * The `RateLimiter` service: binds each limiter to its store and runs its calls. The waiting, the
 * leases' renewal, the failure policy and the metrics live here once, for every engine.
 */
import type * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import * as Either from "effect/Either"
import * as Metric from "effect/Metric"
import type * as Scope from "effect/Scope"
import {
  type AcquireTimeout,
  type CostExceedsCapacity,
  type InvalidCost,
  InvalidOption,
  LeaseNeedsScope,
  LimiterNotFound,
  type RateLimitExceeded,
  type StoreError
} from "../Errors.js"
import type { LimiterSpec } from "../LimiterSpec.js"
import * as Metrics from "../Metrics.js"
import type { AcquireAllEntry, AcquireOptions, LimiterState, Permit, RateLimiter, TryAcquireOptions } from "../RateLimiter.js"
import type { Store } from "../Store.js"
import * as AcquireAll from "./acquireAll.js"
import { type Bound, type Call, TryingCall, WaitingCall } from "./call.js"
import { leased } from "./leased.js"
import * as Options from "./options.js"
import * as Orphans from "./orphans.js"
import { rateOnly, rateOnlyIn } from "./rateOnly.js"
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

/** The cost of a call: 1 when absent (checked with the rest of the call, `costError`). */
const costOf = (options: { readonly cost?: number | undefined } | undefined) => options?.cost === undefined ? 1 : options.cost

type AnyFiber = Fiber.RuntimeFiber<unknown, unknown>
type Service = Context.Tag.Service<RateLimiter>

/**
 * The calls as the accessors (`RateLimiter.consume`, ...) run them: in the step that found the
 * service, with its fiber, so that a rate-only call takes one Effect step in all (a service of
 * another implementation has none: its own methods are called).
 */
export interface InFiber {
  readonly acquire: (fiber: AnyFiber, limiter: string, options: AcquireOptions | undefined) => ReturnType<Service["acquire"]>
  readonly consume: (fiber: AnyFiber, limiter: string, options: AcquireOptions | undefined) => ReturnType<Service["consume"]>
  readonly tryAcquire: (fiber: AnyFiber, limiter: string, options: TryAcquireOptions | undefined) => ReturnType<Service["tryAcquire"]>
  readonly tryConsume: (fiber: AnyFiber, limiter: string, options: TryAcquireOptions | undefined) => ReturnType<Service["tryConsume"]>
}

export const InFiberId: unique symbol = Symbol.for("rate-sync/RateLimiter/InFiber")

/** A service, which may have calls run in the accessor's step. */
export interface WithInFiber {
  readonly [InFiberId]?: InFiber | undefined
}

const invalid = (b: Bound, problem: Options.Problem) => new InvalidOption({ limiter: b.spec.name, ...problem })

/** The key of a call, checked. */
const keyOf = (b: Bound, options: { readonly key?: string | undefined } | undefined): string | InvalidOption => {
  const key = Options.keyOf(options?.key)
  return Options.isProblem(key) ? invalid(b, key) : key
}

/** A call that waits, with its options checked (no `Either`: this runs on every acquire). */
const waiting = (b: Bound, options: AcquireOptions | undefined): Call<AcquireTimeout> | InvalidOption => {
  const key = keyOf(b, options)
  if (key instanceof InvalidOption) return key
  const timeoutMs = Options.timeoutOf(options?.timeout, b.spec.timeoutMs)
  return Options.isProblem(timeoutMs) ? invalid(b, timeoutMs) : new WaitingCall(b, key, costOf(options), timeoutMs)
}

/** A call that never waits, with its options checked. */
const trying = (b: Bound, options: TryAcquireOptions | undefined): Call<RateLimitExceeded> | InvalidOption => {
  const key = keyOf(b, options)
  return key instanceof InvalidOption ? key : new TryingCall(b, key, costOf(options))
}

const waitingAll = (m: AcquireAll.Member, timeoutMs: number | undefined) => new WaitingCall(m.b, m.key, m.cost, timeoutMs)
const tryingAll = (m: AcquireAll.Member) => new TryingCall(m.b, m.key, m.cost)

/** A call of a limiter without leases: enforced (in `fiber`'s current step, when given), or in shadow. */
const rateCall = <E>(call: Call<E>, fiber?: AnyFiber) =>
  call.b.spec.shadow === true ? shadowRate(call) : fiber === undefined ? rateOnly(call) : rateOnlyIn(fiber, call)

/** Any call; `_b`, unused, as `withCall` passes it. */
const run = <E>(call: Call<E>, _b?: Bound, fiber?: AnyFiber) =>
  call.b.spec.concurrency === undefined ? rateCall(call, fiber) : call.b.spec.shadow === true ? shadowLeased(call) : leased(call)

/** consume and tryConsume: a limiter with leases needs a scope for them. */
const unscoped = <E>(
  call: Call<E>,
  b: Bound,
  fiber?: AnyFiber
): Effect.Effect<Permit, E | StoreError | CostExceedsCapacity | InvalidCost | LeaseNeedsScope> =>
  b.spec.concurrency === undefined ? rateCall(call, fiber) : Effect.fail(new LeaseNeedsScope({ limiter: b.spec.name }))

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

    /**
     * Looks the limiter up and checks the call's options, then runs it (in `fiber`'s current step,
     * when given). `check` and `use` take what they need as arguments, so that a call allocates no
     * closures for them.
     */
    const withCall = <O, C, A, E, R>(
      limiter: string,
      options: O,
      check: (b: Bound, options: O) => C | InvalidOption,
      use: (call: C, b: Bound, fiber?: AnyFiber) => Effect.Effect<A, E, R>,
      fiber?: AnyFiber
    ): Effect.Effect<A, E | LimiterNotFound | InvalidOption, R> =>
    {
      // Decided as the effect is built (the limiters are fixed), so a call costs no steps for it.
      const b = bound.get(limiter)
      if (b === undefined) return Effect.fail(new LimiterNotFound({ limiter, known: names }))
      const checked = check(b, options)
      return checked instanceof InvalidOption ? Effect.fail(checked) : use(checked, b, fiber)
    }

    const service: Service & WithInFiber = {
      acquire: (limiter, options) => withCall(limiter, options, waiting, run),
      consume: (limiter, options) => withCall(limiter, options, waiting, unscoped),
      tryAcquire: (limiter, options) => withCall(limiter, options, trying, run),
      tryConsume: (limiter, options) => withCall(limiter, options, trying, unscoped),
      // A rate-only permit holds nothing, so it needs no scope (which costs about as much as the rest).
      withPermit: (limiter, options) => (self) =>
        withCall(limiter, options, waiting, (call, b) =>
          b.spec.concurrency === undefined
            ? Effect.zipRight(rateCall(call), self)
            : Effect.scoped(Effect.zipRight(run(call), self))),
      state: (limiter, options) =>
        withCall(limiter, options, keyOf, (key, b) =>
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
          options,
          (b, options): readonly [string, number] | InvalidOption => {
            const key = keyOf(b, options)
            if (key instanceof InvalidOption) return key
            const retryAfterMs = Options.retryAfter(options.retryAfter)
            return Either.isLeft(retryAfterMs) ? invalid(b, retryAfterMs.left) : [key, retryAfterMs.right]
          },
          ([key, retryAfterMs], b) => b.observe(b.store.backoff(b.spec, key, retryAfterMs))
        ),
      acquireAll: (entries, options) => composite(entries, options?.timeout, waitingAll),
      consumeAll: (entries, options) => composite(entries, options?.timeout, waitingAll),
      tryAcquireAll: (entries) => composite(entries, undefined, tryingAll),
      tryConsumeAll: (entries) => composite(entries, undefined, tryingAll),
      limiters: names
    }
    const inFiber: InFiber = {
      acquire: (fiber, limiter, options) => withCall(limiter, options, waiting, run, fiber),
      consume: (fiber, limiter, options) => withCall(limiter, options, waiting, unscoped, fiber),
      tryAcquire: (fiber, limiter, options) => withCall(limiter, options, trying, run, fiber),
      tryConsume: (fiber, limiter, options) => withCall(limiter, options, trying, unscoped, fiber)
    }
    // Not enumerable: a service spread into another with a method replaced (`{ ...service, consume }`)
    // must not take these along, or the accessors would bypass the replacement.
    Object.defineProperty(service, InFiberId, { value: inFiber, enumerable: false })
    return service
  })
