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
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import type * as Scope from "effect/Scope"
import type {
  AcquireTimeout,
  ConsumeError,
  CostExceedsCapacity,
  InvalidCost,
  LeaseNeedsScope,
  RateLimitExceeded,
  StoreError
} from "./Errors.js"
import { type InvalidOption, LimiterNotFound } from "./Errors.js"
import * as internal from "./internal/limiter.js"
import type { LimiterSpec } from "./LimiterSpec.js"
import type { Store } from "./Store.js"

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

/** One limit of several taken at once (`acquireAll`): a limiter, and the key and cost to take of it. */
export interface AcquireAllEntry {
  readonly limiter: string
  readonly key?: string | undefined
  readonly cost?: number | undefined
}

export interface AcquireAllOptions {
  /** The one wait bound of all the entries; by default the least of their limiters' `timeout`. */
  readonly timeout?: Duration.DurationInput | undefined
}

/** What a call of several limits can fail with, besides the refusal of one of them and its store's errors. */
type EntriesError = LimiterNotFound | InvalidOption | CostExceedsCapacity | InvalidCost

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
  /** The most units the key can take at once (`burst`, or a window's `limit`), when the limiter has a rate. */
  readonly limit?: number | undefined
  /** How long after this admission the key's token bucket is full again, as the store decided it (no `state` read needed). */
  readonly resetAfter?: Duration.Duration | undefined
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

type LookupError = LimiterNotFound | InvalidOption

type Service = Context.Tag.Service<RateLimiter>

/**
 * `f` of the calling fiber's service, in one Effect step: `Effect.flatMap(RateLimiter, f)` takes
 * three (the tag, its lookup, the continuation), a tenth of an in-memory consume. A missing service
 * is the same defect. `f` also gets the fiber and, from a service `make` built, its calls run in
 * this same step.
 */
const withService = <A, E, R>(
  f: (service: Service, fiber: Fiber.RuntimeFiber<unknown, unknown>, inFiber: internal.InFiber | undefined) => Effect.Effect<A, E, R>
): Effect.Effect<A, E, R | RateLimiter> =>
  Effect.withFiberRuntime<A, E, R | RateLimiter>((fiber) => {
    const service: Service & internal.WithInFiber = Context.unsafeGet(fiber.currentContext, RateLimiter)
    return f(service, fiber, service[internal.InFiberId])
  })

/** Each service `make` built, with the settings of its limiters (for `RateLimiter.spec`). */
const specsOf = new WeakMap<object, ReadonlyMap<string, LimiterSpec>>()

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
  /**
   * Never waits, and needs no scope: takes a rate slot free now or fails with `RateLimitExceeded`. For
   * limiters without `max_concurrent` (others fail with `LeaseNeedsScope`), as `consume` is to `acquire`.
   */
  readonly tryConsume: (
    limiter: string,
    options?: TryAcquireOptions
  ) => Effect.Effect<Permit, LookupError | RateLimitExceeded | CostExceedsCapacity | InvalidCost | StoreError | LeaseNeedsScope>
  /**
   * Several limits at once: a permit of every entry (in their order), or none consumed. The entries
   * of one store are decided in one atomic store call; what one store took is given back when
   * another refuses or fails, or the caller is interrupted (a token bucket takes back only its newest
   * reservation: one written over stays consumed, stricter). Waits for the latest slot among them,
   * within one timeout; a refusal names its limiter and key (`AcquireTimeout`). Each limiter and key
   * once; limiters with `max_concurrent` fail with `InvalidOption` (take their lease with `acquire`).
   * Its permits hold nothing: the scope is that of `acquire`, for code written the same way.
   */
  readonly acquireAll: (
    entries: ReadonlyArray<AcquireAllEntry>,
    options?: AcquireAllOptions
  ) => Effect.Effect<ReadonlyArray<Permit>, EntriesError | AcquireTimeout | StoreError, Scope.Scope>
  /** `acquireAll` with no scope. */
  readonly consumeAll: (
    entries: ReadonlyArray<AcquireAllEntry>,
    options?: AcquireAllOptions
  ) => Effect.Effect<ReadonlyArray<Permit>, EntriesError | AcquireTimeout | StoreError>
  /** Never waits: a permit of every entry free now, or `RateLimitExceeded` naming the first store's refusal, none consumed. */
  readonly tryAcquireAll: (
    entries: ReadonlyArray<AcquireAllEntry>
  ) => Effect.Effect<ReadonlyArray<Permit>, EntriesError | RateLimitExceeded | StoreError, Scope.Scope>
  /** `tryAcquireAll` with no scope. */
  readonly tryConsumeAll: (
    entries: ReadonlyArray<AcquireAllEntry>
  ) => Effect.Effect<ReadonlyArray<Permit>, EntriesError | RateLimitExceeded | StoreError>
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
    withService((service, fiber, inFiber) => inFiber?.acquire(fiber, limiter, options) ?? service.acquire(limiter, options))

  static readonly consume = (limiter: string, options?: AcquireOptions) =>
    withService((service, fiber, inFiber) => inFiber?.consume(fiber, limiter, options) ?? service.consume(limiter, options))

  static readonly tryAcquire = (limiter: string, options?: TryAcquireOptions) =>
    withService((service, fiber, inFiber) => inFiber?.tryAcquire(fiber, limiter, options) ?? service.tryAcquire(limiter, options))

  static readonly tryConsume = (limiter: string, options?: TryAcquireOptions) =>
    withService((service, fiber, inFiber) => inFiber?.tryConsume(fiber, limiter, options) ?? service.tryConsume(limiter, options))

  static readonly acquireAll = (entries: ReadonlyArray<AcquireAllEntry>, options?: AcquireAllOptions) =>
    withService((service) => service.acquireAll(entries, options))

  static readonly consumeAll = (entries: ReadonlyArray<AcquireAllEntry>, options?: AcquireAllOptions) =>
    withService((service) => service.consumeAll(entries, options))

  static readonly tryAcquireAll = (entries: ReadonlyArray<AcquireAllEntry>) =>
    withService((service) => service.tryAcquireAll(entries))

  static readonly tryConsumeAll = (entries: ReadonlyArray<AcquireAllEntry>) =>
    withService((service) => service.tryConsumeAll(entries))

  static readonly withPermit = (limiter: string, options?: AcquireOptions) =>
  <A, E, R>(self: Effect.Effect<A, E, R>) =>
    withService((service) => service.withPermit(limiter, options)(self))

  static readonly state = (limiter: string, options?: { readonly key?: string | undefined }) =>
    withService((service) => service.state(limiter, options))

  static readonly backoff = (limiter: string, options: BackoffOptions) =>
    withService((service) => service.backoff(limiter, options))

  /**
   * A limiter's validated settings (its rate or window, its concurrency bound), as configured: what
   * an HTTP layer needs to advertise the policy. Fails with `LimiterNotFound` for a name the service
   * does not know (and for every name of a service that `make` did not build).
   */
  static readonly spec = (limiter: string): Effect.Effect<LimiterSpec, LimiterNotFound, RateLimiter> =>
    Effect.flatMap(RateLimiter, (service) => {
      const spec = specsOf.get(service)?.get(limiter)
      return spec === undefined ? Effect.fail(new LimiterNotFound({ limiter, known: service.limiters })) : Effect.succeed(spec)
    })
}

/** Binds each limiter to its store; the service's implementation lives in `internal/limiter.ts`. */
export const make: (options: {
  readonly limiters: ReadonlyArray<LimiterSpec>
  readonly stores: ReadonlyMap<string, Store>
}) => Effect.Effect<Context.Tag.Service<RateLimiter>, never, Scope.Scope> = (options) =>
  Effect.tap(internal.make(options), (service) =>
    Effect.sync(() => specsOf.set(service, new Map(options.limiters.map((spec) => [spec.name, spec])))))
