/**
 * The in-process store: the reference engine. Every operation is one synchronous step, so it is
 * atomic; time comes from the Effect `Clock` it was built with, so tests run it on `TestClock`.
 */
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Composite from "../internal/acquireAllPlan.js"
import * as Gcra from "../internal/gcra.js"
import * as Holds from "../internal/holds.js"
import * as Leases from "../internal/leases.js"
import * as Wakeups from "../internal/wakeups.js"
import * as Window from "../internal/window.js"
import { capacity, type LimiterSpec, stateKey } from "../LimiterSpec.js"
import {
  type AcquireOutcome,
  type Admitted,
  type CompositeOutcome,
  type LeaseRequest,
  type RateLimited,
  type RateOutcome,
  type RateRequest,
  type Store,
  StoreFactory
} from "../Store.js"
import * as States from "./states.js"
import * as View from "./view.js"
import type { KeyState } from "./view.js"

export interface MemoryStoreOptions {
  readonly name?: string | undefined
  readonly timingMarginMs?: number | undefined
}

/** How many entries each operation inspects for staleness: keeps the map bounded at O(1) per call. */
const SWEEP_PER_OPERATION = 2

/** Operations between two walks over the keys: an iterator made on every operation (a few keys, one hot) cost a fifth of a call. */
const SWEEP_PAUSE = 16

/** Effect's live clock, whose time in ms `performance.now()` gives without a bigint per reading. */
const liveClock = Effect.runSync(Effect.clock)

/** A memory store also tells how many keys it holds, so its footprint can be checked. */
export interface MemoryStore extends Store {
  readonly acquireAll: NonNullable<Store["acquireAll"]>
  readonly size: () => number
  /** How many keys have waiters subscribed to their releases, and how many places in line are kept. */
  readonly waiters: () => { readonly subscribed: number; readonly queued: number }
}

export const make = (options: MemoryStoreOptions = {}): Effect.Effect<MemoryStore> =>
  Effect.map(Effect.clock, (clock) => unsafeMake(clock, options))

const unsafeMake = (clock: Clock.Clock, options: MemoryStoreOptions): MemoryStore => {
  // Times are kept relative to the store's creation, so float ms keep sub-microsecond precision.
  const epoch = clock === liveClock ? performance.now() : Number(clock.unsafeCurrentTimeNanos()) / 1e6
  const now = clock === liveClock ? () => performance.now() - epoch : () => Number(clock.unsafeCurrentTimeNanos()) / 1e6 - epoch
  const states = States.make()
  const margin = options.timingMarginMs ?? 0
  const holds = Holds.make()
  const wakeups = Wakeups.make()

  // Leases expired with the state: whoever waits for one may ask again.
  const dropped = (limiter: string, key: string) => wakeups.signal(stateKey(limiter, key))

  /** Walks the keys round and round, a few per operation, pausing SWEEP_PAUSE operations after each round. */
  let paused = 0
  const sweep = (at: number) => {
    if (paused > 0) return void paused--
    if (!states.sweep(SWEEP_PER_OPERATION, at, dropped)) paused = SWEEP_PAUSE
  }

  /** A key's state at `at`; `sweeping` false when the operation already holds other keys' states, which a sweep could drop. */
  const stateOf = (limiter: LimiterSpec, key: string, at: number, sweeping = true): KeyState => {
    if (sweeping) sweep(at)
    let state = states.get(limiter.name, key)
    if (state === undefined) {
      state = { tat: -Infinity, log: View.noLog, blockedUntil: -Infinity, leases: undefined, staleAt: at }
      states.set(limiter.name, key, state)
    }
    const rate = limiter.rate
    if (rate?._tag === "SlidingWindow") {
      if (state.log === View.noLog) state.log = []
      Window.prune(state.log, at, Window.span(rate, margin))
    }
    if (state.leases !== undefined) Leases.purge(state.leases, at)
    return state
  }

  const touch = (state: KeyState, limiter: LimiterSpec) => {
    const rate = limiter.rate
    const log = state.log
    // `log[-1]` of an empty log would be a property lookup by the name "-1", off V8's fast path.
    const windowEnd = rate?._tag === "SlidingWindow" && log.length > 0 ? log[log.length - 1]!.at + rate.windowMs + margin : -Infinity
    const leasesEnd = state.leases === undefined ? -Infinity : Leases.latestExpiry(state.leases)
    state.staleAt = Math.max(state.tat, windowEnd, state.blockedUntil, leasesEnd)
  }

  const expiresAt = (limiter: LimiterSpec, at: number) => at + (limiter.concurrency?.leaseTtlMs ?? 0)

  type RateDecision = Gcra.Decision | Window.Decision | undefined

  /** The rate decision, not yet written: a slot beyond the bound only moves further away. */
  const reserve = (request: RateRequest, state: KeyState, at: number): RateDecision => {
    const rate = request.limiter.rate
    if (rate?._tag === "TokenBucket") return Gcra.reserve(state.tat, at, rate, request.cost, request.maxWaitMs)
    if (rate?._tag === "SlidingWindow") {
      return Window.reserve(state.log, at, state.blockedUntil, Window.span(rate, margin), request.cost, request.maxWaitMs)
    }
    return undefined
  }

  const rateLimited = (request: RateRequest, state: KeyState, at: number, retryAfterMs: number): RateLimited => {
    touch(state, request.limiter)
    return {
      _tag: "RateLimited",
      retryAfterMs,
      limit: capacity(request.limiter.rate) ?? 0,
      remaining: View.remainingOf(state, at, request.limiter)
    }
  }

  /** Writes an admitted rate decision (none for a limiter without a rate). */
  const admit = (request: RateRequest, state: KeyState, at: number, decision: RateDecision): Admitted => {
    const { limiter } = request
    let reservation: { slotMs: number; tatMs: number } | undefined
    if (decision?.admitted === true) {
      if ("tatMs" in decision) state.tat = decision.tatMs
      else Window.append(state.log, decision.slotMs, request.cost)
      reservation = { slotMs: decision.slotMs, tatMs: "tatMs" in decision ? decision.tatMs : 0 }
    }
    touch(state, limiter)
    return {
      _tag: "Admitted",
      waitMs: decision?.admitted === true ? decision.waitMs : 0,
      reservation,
      limit: capacity(limiter.rate),
      remaining: limiter.rate === undefined ? undefined : View.remainingOf(state, at, limiter)
    }
  }

  /** One atomic decision: synchronous, so `acquireRateNow` always answers. */
  const acquireRate = (request: RateRequest): RateOutcome => {
    const at = now()
    const state = stateOf(request.limiter, request.key, at)
    const decision = reserve(request, state, at)
    return decision?.admitted === false ? rateLimited(request, state, at, decision.retryAfterMs) : admit(request, state, at, decision)
  }

  /** Every request checked against its state first, nothing written; then all written at one instant, or none. */
  const acquireAll = (requests: ReadonlyArray<RateRequest>, afterMs: number): CompositeOutcome => {
    const at = now()
    sweep(at)
    const states = requests.map((request) => stateOf(request.limiter, request.key, at, false))
    const plan = Composite.plan(requests, states, at, afterMs, margin)
    if (plan._tag === "Refused") {
      const { index, retryAfterMs } = plan
      return { _tag: "Refused", index, refusal: rateLimited(requests[index]!, states[index]!, at, retryAfterMs) }
    }
    return { _tag: "Admitted", outcomes: requests.map((request, i) => admit(request, states[i]!, at, plan.placed[i])), refundCosts: plan.refundCosts }
  }

  /** The rate first (a request refused it takes no lease, and gives up one it held), then the lease. */
  const acquireLease = (request: LeaseRequest): AcquireOutcome => {
    const { leaseId, limiter } = request
    const at = now()
    const state = stateOf(limiter, request.key, at)
    const leases = (state.leases ??= Leases.empty())
    const decision = reserve(request, state, at)
    if (decision?.admitted === false) {
      if (Leases.release(leases, leaseId)) wakeups.signal(stateKey(limiter.name, request.key))
      return rateLimited(request, state, at, decision.retryAfterMs)
    }
    const max = limiter.concurrency?.max ?? Infinity
    if (!Leases.canGrant(leases, leaseId, max)) {
      if (request.queue) Leases.enqueue(leases, leaseId, expiresAt(limiter, at))
      touch(state, limiter)
      const soonest = Leases.soonestExpiry(leases)
      return { _tag: "ConcurrencyFull", expiresInMs: soonest === undefined ? undefined : soonest - at, held: leases.holders.size, limit: max }
    }
    Leases.grant(leases, leaseId, expiresAt(limiter, at))
    return admit(request, state, at, decision)
  }

  return {
    name: options.name ?? "memory",
    engine: "memory",
    timingMarginMs: margin,

    acquireRate: (request) => Effect.sync(() => acquireRate(request)),
    acquireRateNow: acquireRate,
    acquireLease: (request) => Effect.sync(() => acquireLease(request)),
    acquireAll: (requests, afterMs) => Effect.sync(() => acquireAll(requests, afterMs)),

    release: (limiter, key, leaseId) =>
      Effect.sync(() => {
        const state = stateOf(limiter, key, now())
        if (state.leases === undefined) return
        const hadLease = Leases.release(state.leases, leaseId)
        // A waiter leaving the line can also let the next one in.
        if (hadLease || state.leases.waiting.size > 0) wakeups.signal(stateKey(limiter.name, key))
        touch(state, limiter)
      }),

    renew: (limiter, key, leaseId) =>
      Effect.sync(() => {
        const at = now()
        const state = stateOf(limiter, key, at)
        const renewed = state.leases !== undefined && Leases.renew(state.leases, leaseId, expiresAt(limiter, at))
        touch(state, limiter)
        return renewed
      }),

    refund: (limiter, key, cost, reservation) =>
      Effect.sync(() => {
        const state = stateOf(limiter, key, now())
        const rate = limiter.rate
        if (rate?._tag === "TokenBucket") {
          const tat = Gcra.refund(state.tat, reservation.tatMs, rate, cost, Gcra.floorFor(state.blockedUntil, rate))
          if (tat !== undefined) state.tat = tat
        } else if (rate?._tag === "SlidingWindow") {
          Window.remove(state.log, reservation.slotMs, cost)
        }
        touch(state, limiter)
      }),

    backoff: (limiter, key, retryAfterMs) =>
      Effect.sync(() => {
        const at = now()
        const state = stateOf(limiter, key, at)
        const rate = limiter.rate
        if (rate === undefined) return
        // Also kept for a token bucket: a refund may not bring its next slot back inside the hold.
        state.blockedUntil = Math.max(state.blockedUntil, at + retryAfterMs)
        if (rate._tag === "TokenBucket") state.tat = Gcra.backoff(state.tat, at, rate, retryAfterMs)
        touch(state, limiter)
        const wall = clock.unsafeCurrentTimeMillis()
        holds.hold(stateKey(limiter.name, key), wall + retryAfterMs, wall)
      }),

    backoffs: {
      mark: holds.mark,
      until: (limiter, key, mark, nowMs) => holds.until(stateKey(limiter.name, key), mark, nowMs),
      any: holds.any
    },

    state: (limiter, key) =>
      Effect.sync(() => {
        const at = now()
        return View.view(stateOf(limiter, key, at), at, limiter, margin)
      }),

    releases: (limiter, key) => wakeups.subscribe(stateKey(limiter.name, key)),

    size: states.size,

    waiters: () => {
      let queued = 0
      for (const state of states.values()) queued += state.leases?.waiting.size ?? 0
      return { subscribed: wakeups.size(), queued }
    }
  }
}

/** Serves every configured store from memory, whatever its engine: the test double for a whole fleet. */
export const layer: Layer.Layer<StoreFactory> = Layer.succeed(StoreFactory, {
  make: (name, config) => make({ name, timingMarginMs: config.timing_margin_ms })
})
