/**
 * The interface every store engine implements. Engines keep shared state and apply the
 * algorithms in `internal/` atomically against their own clock; the waiting, leases'
 * renewal, metrics and failure policy live once in `RateLimiter`.
 */
import type * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import type * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import type { BuildError, StoreError } from "./Errors.js"
import type { LimiterSpec } from "./LimiterSpec.js"
import type { DeferredStoreConfig } from "./Settings.js"

/** A request for a rate slot alone (a limiter without leases). */
export interface RateRequest {
  readonly limiter: LimiterSpec
  readonly key: string
  readonly cost: number
  /** The rate slot may lie at most this far ahead (store time); `Infinity` for no bound. */
  readonly maxWaitMs: number
}

/** A request for a concurrency lease, and the limiter's rate slot with it when it has a rate. */
export interface LeaseRequest extends RateRequest {
  /** The id of the lease to grant. */
  readonly leaseId: string
  /** When concurrency is full, keep (or refresh) this lease id's place in line. */
  readonly queue: boolean
}

/** What an admitted request reserved, so an interrupted waiter can give it back. */
export interface Reservation {
  /** The admission slot, in ms of the store's own time base (only differences are meaningful). */
  readonly slotMs: number
  /** Token bucket: the theoretical arrival time this reservation wrote. */
  readonly tatMs: number
  /** Engines with optimistic locking: the row version this reservation wrote, when it can be given back. */
  readonly version?: number | undefined
}

export interface Admitted {
  readonly _tag: "Admitted"
  /** How long to wait, from the moment the store decided, until the slot. */
  readonly waitMs: number
  readonly reservation: Reservation | undefined
  readonly limit: number | undefined
  readonly remaining: number | undefined
}

/** The rate slot lies beyond `maxWaitMs`. Nothing was written, and no lease granted. */
export interface RateLimited {
  readonly _tag: "RateLimited"
  readonly retryAfterMs: number
  readonly limit: number
  readonly remaining: number
}

/** Every lease is held. With `queue`, the request keeps its place in line. */
export interface ConcurrencyFull {
  readonly _tag: "ConcurrencyFull"
  /** Until the soonest held lease expires unless renewed, when known. */
  readonly expiresInMs: number | undefined
  readonly held: number
  readonly limit: number
}

/** What a store answers for a rate slot. */
export type RateOutcome = Admitted | RateLimited

/** What a store answers for a lease (with its rate slot). */
export type AcquireOutcome = Admitted | RateLimited | ConcurrencyFull

/**
 * What a store answers for several rate slots taken together (`acquireAll`): every one, in the
 * requests' order, or the request that refused, with nothing written.
 */
export type CompositeOutcome =
  | {
    readonly _tag: "Admitted"
    readonly outcomes: ReadonlyArray<Admitted>
    /**
     * Per request, the cost `refund` is given to undo it: its cost, and for a token bucket placed
     * after its own earliest slot also the units by which its arrival time moved ahead.
     */
    readonly refundCosts: ReadonlyArray<number>
  }
  | { readonly _tag: "Refused"; readonly index: number; readonly refusal: RateLimited }

/** A limiter without a rate policy: every rate request is admitted at once, with nothing written. */
export const admittedFree: Admitted = { _tag: "Admitted", waitMs: 0, reservation: undefined, limit: undefined, remaining: undefined }

export interface StateView {
  readonly limit: number | undefined
  readonly remaining: number | undefined
  /** Until the rate state is fully replenished (as if idle). */
  readonly resetAfterMs: number
  /** Until a request of cost 1 could be admitted by the rate policy. */
  readonly nextSlotAfterMs: number
  readonly leasesHeld: number
  readonly maxConcurrent: number | undefined
  readonly waiting: number
}

/** Upstream backoffs a store's process has learned of, from itself and every other process (`internal/holds.ts`). */
export interface Backoffs {
  /** Taken before a call that may reserve a slot. */
  readonly mark: () => number
  /** The end (local ms) of a backoff on the key learned of after `mark`, while it lasts past `nowMs`. */
  readonly until: (limiter: LimiterSpec, key: string, mark: number, nowMs: number) => number | undefined
  /** Whether any backoff known lasts past `nowMs`: the common answer, no, costs no lookup. */
  readonly any: (nowMs: number) => boolean
}

export interface Store {
  readonly name: string
  readonly engine: string
  /**
   * Added to a sliding window's length (stricter), and how late a caller may proceed after its slot
   * before the slot is given up and the next free one reserved (0: never). It never enters a token
   * bucket's arithmetic: the burst and the interval are exactly the configured ones.
   */
  readonly timingMarginMs: number
  /** Reserves a rate slot for a limiter without leases. */
  readonly acquireRate: (request: RateRequest) => Effect.Effect<RateOutcome, StoreError>
  /**
   * What `acquireRate` would answer, when the process can answer without the store and without an
   * effect (a slot reserved ahead; the memory engine always); undefined otherwise. The hot path of
   * a busy key, where an effect's cost is most of the call's.
   */
  readonly acquireRateNow?: (request: RateRequest, clock: Clock.Clock) => RateOutcome | undefined
  /**
   * Reserves the rate slots of several requests (of distinct limiter and key pairs) in one atomic
   * decision: all at one instant, the latest of the requests' own earliest slots and no sooner than
   * `afterMs` after the store decides; or, when that instant lies beyond a request's `maxWaitMs`,
   * none, with nothing written. A store that cannot decide them in one step (a Redis Cluster, keys
   * on several nodes) may place each at its own slot no sooner than `afterMs`, giving back what it
   * took when a later one refuses; the caller then asks again for the latest. Optional: without it a
   * caller asks request by request and gives back what a later refusal leaves taken
   * (`internal/acquireAllStores.ts`).
   */
  readonly acquireAll?: (requests: ReadonlyArray<RateRequest>, afterMs: number) => Effect.Effect<CompositeOutcome, StoreError>
  /**
   * Grants a lease of a limiter with `max_concurrent`, and its rate slot in the same decision when it
   * has a rate: the rate is decided first (a slot beyond the bound is refused whatever the leases),
   * and neither is taken unless both are.
   */
  readonly acquireLease: (request: LeaseRequest) => Effect.Effect<AcquireOutcome, StoreError>
  /** Gives a lease (or a place in line) back. Unknown or expired ids change nothing. */
  readonly release: (limiter: LimiterSpec, key: string, leaseId: string) => Effect.Effect<void, StoreError>
  /** Extends a held lease; false when it had already expired or was released. */
  readonly renew: (limiter: LimiterSpec, key: string, leaseId: string) => Effect.Effect<boolean, StoreError>
  /** Gives back a rate reservation whose slot was not used, where that cannot loosen the limit. */
  readonly refund: (
    limiter: LimiterSpec,
    key: string,
    cost: number,
    reservation: Reservation
  ) => Effect.Effect<void, StoreError>
  /**
   * No rate slot is granted before `retryAfterMs` from now, for every process: the store records it,
   * refunds cannot undo it, and every process learns of it (`backoffs`) so that slots its waiters
   * reserved before it are not used inside it.
   */
  readonly backoff: (limiter: LimiterSpec, key: string, retryAfterMs: number) => Effect.Effect<void, StoreError>
  readonly backoffs: Backoffs
  readonly state: (limiter: LimiterSpec, key: string) => Effect.Effect<StateView, StoreError>
  /**
   * Subscribes to lease releases on a key. The returned effect completes at the first release
   * after the subscription was taken, so a release between a failed attempt and the wait is not lost.
   */
  readonly releases: (limiter: LimiterSpec, key: string) => Effect.Effect<Effect.Effect<void>, never, Scope.Scope>
}

/** Builds the named stores of a configuration. Swapping it swaps every store at once. */
export class StoreFactory extends Context.Tag("rate-sync/StoreFactory")<StoreFactory, {
  readonly make: (
    name: string,
    /** A server store's url may still be to read: `Settings.resolveUrl` reads it (see `Settings.StoreUrl`). */
    config: DeferredStoreConfig
  ) => Effect.Effect<Store, BuildError, Scope.Scope>
}>() {}
