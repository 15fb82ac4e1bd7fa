/**
 * One writer per key and process: requests for a key that arrive while its batch is being decided
 * queue up and are decided together by the next call, so the waiters of a process cost one store
 * round trip per batch instead of one each (and, under optimistic locking, no conflicts among
 * themselves). Requests are decided in the order they arrived.
 *
 * Token-bucket keys in demand also reserve slots ahead, so that a busy key's callers neither wait
 * for a round trip each nor let the store's schedule run dry between them (with a burst of 1 at a
 * high rate, a moment when no process holds a reservation is capacity lost for good). A batch tops
 * this process's pool (spares.ts) up to its target, asking only for slots due within the margin
 * and beyond the bucket's free burst (a burst is for callers at once: spent ahead only where one
 * interval is within the margin and at least half of it stays free); once half the pool is gone, a
 * refill is asked for in the background. At tight rates, where slots lie further apart than the
 * margin, no slot is ever reserved ahead. Every answer's waits are put on this process's clock
 * (storeClock.ts) before anyone sees them.
 *
 * A backoff learned of (`held`) empties the key's pool: its slots may lie inside the hold.
 */
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as Scope from "effect/Scope"
import type { StoreError } from "../Errors.js"
import type { Admitted, RateOutcome, RateRequest } from "../Store.js"
import * as Handoff from "./handoff.js"
import * as RoundRobin from "./roundRobin.js"
import * as Spares from "./spares.js"
import * as StoreClock from "./storeClock.js"


interface Pending {
  readonly request: RateRequest
  readonly done: Handoff.Handoff<RateOutcome, StoreError>
}

interface KeyState {
  queue: Array<Pending> | undefined
  readonly spares: Spares.Spares
}

export interface Options {
  /** Where the per-key drains run: closing it ends them. */
  readonly scope: Scope.Scope
  readonly maxBatch: number
  /** The store's timing margin: how far ahead spares are reserved (0: none). */
  readonly marginMs: number
  /** Backoffs learned of, by key: a pool reserved before one is dropped. */
  readonly held?: {
    readonly mark: () => number
    readonly since: (id: string, mark: number, nowMs: number) => boolean
  } | undefined
  /**
   * Decides a batch of requests for one key (all of the same limiter), one outcome per request, in
   * order; then reserves up to `ahead.count` unit slots like `ahead.request`, whose outcomes follow
   * (only the admitted ones need be returned).
   */
  readonly decide: (
    id: string,
    batch: ReadonlyArray<RateRequest>,
    ahead: { readonly request: RateRequest; readonly count: number }
  ) => Effect.Effect<ReadonlyArray<RateOutcome>, StoreError>
  /** What the requests still waiting learn when the store is closed under them. */
  readonly closed: StoreError
  /** The most keys whose pools are remembered (idle ones beyond it are forgotten); 100,000 unless set. */
  readonly maxKeys?: number
}

/** Bounds the keys whose pools are remembered. */
const MAX_KEYS = 100_000

/** The most keys looked at for an idle one to evict, per key added. */
const EVICT_TRIES = 4

export const make = (options: Options) => {
  const keys = new Map<string, KeyState>()
  const nextKey = RoundRobin.make(keys)
  const maxKeys = options.maxKeys ?? MAX_KEYS
  const held = options.held
  const storeClock = StoreClock.make()

  const stateOf = (id: string): KeyState => {
    let state = keys.get(id)
    if (state === undefined) {
      state = { queue: undefined, spares: Spares.make(options.marginMs) }
      keys.set(id, state)
      // Evicts an idle key (its spare slots are lost: stricter, never looser), looking at a few at most.
      for (let i = 0; keys.size > maxKeys && i < EVICT_TRIES; i++) {
        const entry = nextKey()
        if (entry !== undefined && entry[1].queue === undefined && entry[1] !== state) keys.delete(entry[0])
      }
    }
    return state
  }

  const reservesAhead = (request: RateRequest) =>
    options.marginMs > 0 && request.cost === 1 && request.limiter.rate?._tag === "TokenBucket"

  /** A spare slot for `request` at local time `now` (wall clock `wallMs`), unless a backoff since it was reserved empties the pool. */
  const takeSpare = (id: string, state: KeyState, request: RateRequest, now: number, wallMs: number): Admitted | undefined =>
    state.spares.take(request, now, held === undefined ? undefined : (mark) => held.since(id, mark, wallMs))

  /**
   * The outcomes with their waits counted from `at`, when the answer was read, on the store's clock
   * mapped onto this process's (see storeClock.ts): an answer that came back slowly has its slots
   * sooner, below 0 for a slot already past.
   */
  const onLocalClock = (outcomes: ReadonlyArray<RateOutcome>, sentAt: number, at: number): ReadonlyArray<RateOutcome> => {
    const decided = outcomes.find((o): o is Admitted => o._tag === "Admitted" && o.reservation !== undefined)
    if (decided?.reservation === undefined) return outcomes
    // Never sooner than this call's own round trip allows: the store decided after the request was
    // sent, so its slot lies at least `waitMs` after `sentAt`, whatever the estimate says (a store
    // clock that stepped back, a test clock moved during the call).
    const correction = Math.max(storeClock.correction(decided.reservation.slotMs - decided.waitMs, at), sentAt - at)
    if (!(correction < 0)) return outcomes
    return outcomes.map((o) => (o._tag === "Admitted" ? { ...o, waitMs: o.waitMs + correction } : o))
  }

  /**
   * Nobody is deciding `id` any more. A key with no pool and none planned is forgotten at once: a
   * process asking for many keys keeps state only for those in demand.
   */
  const settled = (id: string, state: KeyState) => {
    state.queue = undefined
    if (state.spares.idle() && keys.get(id) === state) keys.delete(id)
  }

  /**
   * A batch's store call for `requests` (possibly none) on `id`, with slots reserved ahead as the
   * key's demand warrants, and `absorb`, which turns its answer into the requests' outcomes: keeps
   * the slots reserved ahead as spares and serves from them whoever queued meanwhile. Undefined
   * when there is nothing to ask.
   */
  const prepare = (id: string, state: KeyState, requests: ReadonlyArray<RateRequest>, template: RateRequest, queue: Array<Pending>, clock: Clock.Clock) => {
    const first = requests[0] ?? template
    const ahead = reservesAhead(first) ? state.spares.plan(requests.length) : 0
    if (requests.length === 0 && ahead === 0) return undefined
    const spare: RateRequest = { limiter: first.limiter, key: first.key, cost: 1, maxWaitMs: options.marginMs }
    const mark = held?.mark() ?? 0
    const sentAt = Number(clock.unsafeCurrentTimeNanos()) / 1e6
    const absorb = (answered: Exit.Exit<ReadonlyArray<RateOutcome>, StoreError>): Exit.Exit<ReadonlyArray<RateOutcome>, StoreError> => {
      const at = Number(clock.unsafeCurrentTimeNanos()) / 1e6
      const wall = clock.unsafeCurrentTimeMillis()
      const exit = Exit.isSuccess(answered) ? Exit.succeed(onLocalClock(answered.value, sentAt, at)) : answered
      if (Exit.isSuccess(exit)) state.spares.add(exit.value.slice(requests.length), at, mark)
      for (let i = 0; i < queue.length; i++) {
        const outcome = reservesAhead(queue[i]!.request) ? takeSpare(id, state, queue[i]!.request, at, wall) : undefined
        if (outcome !== undefined) {
          queue[i]!.done.done(Exit.succeed(outcome))
          queue.splice(i--, 1)
        }
      }
      return exit
    }
    return { call: options.decide(id, requests, { request: spare, count: ahead }), absorb }
  }

  /** Decides `requests` (possibly none) for `id`: the store call and what `prepare` makes of its answer. */
  const decideBatch = (
    id: string,
    state: KeyState,
    requests: ReadonlyArray<RateRequest>,
    template: RateRequest,
    queue: Array<Pending>,
    clock: Clock.Clock
  ): Effect.Effect<Exit.Exit<ReadonlyArray<RateOutcome>, StoreError>> =>
    Effect.suspend(() => {
      const prepared = prepare(id, state, requests, template, queue, clock)
      return prepared === undefined ? Effect.succeed(Exit.succeed([])) : Effect.map(Effect.exit(prepared.call), prepared.absorb)
    })

  /**
   * Decides what is queued for `id`, batch after batch, until nothing is. The first batch may be
   * empty: a refill of the spares, reserved like `template`.
   */
  const drain = (id: string, state: KeyState, queue: Array<Pending>, clock: Clock.Clock, template: RateRequest): Effect.Effect<void> => {
    let batch: Array<Pending> = []
    return Effect.gen(function*() {
      do {
        // Let the other fibers of this process that are about to ask join this batch.
        yield* Effect.yieldNow()
        batch = queue.splice(0, options.maxBatch)
        const exit = yield* decideBatch(id, state, batch.map((p) => p.request), template, queue, clock)
        batch.forEach((pending, i) => pending.done.done(Exit.map(exit, (outcomes) => outcomes[i]!)))
        batch = []
      } while (queue.length > 0)
      settled(id, state)
    }).pipe(
      Effect.interruptible,
      Effect.onInterrupt(() =>
        Effect.sync(() => {
          state.queue = undefined
          for (const pending of [...batch, ...queue.splice(0)]) pending.done.done(Exit.fail(options.closed))
        })
      )
    )
  }

  /**
   * Decides `request` with whatever else is waiting for the key `id` in this process. A key's queue is
   * set and its hand-off installed in one uninterruptible step (an interruption between them would
   * leave the key queued for ever); only the waiting is interruptible.
   */
  const submit = (id: string, request: RateRequest): Effect.Effect<RateOutcome, StoreError> =>
    Effect.uninterruptibleMask((restore) => Effect.clockWith((clock) => {
      const state = stateOf(id)
      if (reservesAhead(request)) {
        const now = Number(clock.unsafeCurrentTimeNanos()) / 1e6
        state.spares.asked(now)
        const spare = takeSpare(id, state, request, now, clock.unsafeCurrentTimeMillis())
        if (spare !== undefined) {
          if (state.queue !== undefined || !state.spares.refillDue()) return Effect.succeed(spare)
          // Half the pool is gone: refill it in the background while the rest is handed out.
          state.queue = []
          return Effect.as(Effect.forkIn(drain(id, state, state.queue, clock, request), options.scope), spare)
        }
      }
      if (state.queue !== undefined) {
        const done = Handoff.make<RateOutcome, StoreError>()
        state.queue.push({ request, done })
        return restore(done.await)
      }
      // Nobody is deciding this key: the caller decides it in its own fiber (no fork, no hand-off).
      // Whoever asks meanwhile queues, and a drain forked afterwards decides them together: however the
      // caller's part ends (interrupted included, when its caller gives up), exactly once.
      const queue: Array<Pending> = []
      state.queue = queue
      /** The caller's outcome, after the key is handed to a drain when others queued meanwhile. */
      const handOff = (exit: Exit.Exit<RateOutcome, StoreError>): Effect.Effect<RateOutcome, StoreError> => {
        if (queue.length === 0) {
          settled(id, state)
          return exit
        }
        return Effect.zipRight(Effect.forkIn(drain(id, state, queue, clock, request), options.scope), exit)
      }
      const { call, absorb } = prepare(id, state, [request], request, queue, clock)!
      // One match, in the uninterruptible region: it runs however the call ends, interrupted included.
      return Effect.matchCauseEffect(restore(call), {
        onFailure: (cause) => handOff(Exit.map(absorb(Exit.failCause(cause)), (outcomes) => outcomes[0]!)),
        onSuccess: (outcomes) => handOff(Exit.map(absorb(Exit.succeed(outcomes)), (answered) => answered[0]!))
      })
    }))

  /**
   * A slot reserved ahead for `request`, taken at once without an effect, or undefined: none is
   * ready, or the pool is due a refill, which `submit` starts.
   */
  const takeNow = (id: string, request: RateRequest, clock: Clock.Clock): Admitted | undefined => {
    if (!reservesAhead(request)) return undefined
    const state = keys.get(id)
    if (state === undefined || (state.queue === undefined && state.spares.refillDue())) return undefined
    const now = Number(clock.unsafeCurrentTimeNanos()) / 1e6
    const spare = takeSpare(id, state, request, now, clock.unsafeCurrentTimeMillis())
    if (spare !== undefined) state.spares.asked(now)
    return spare
  }

  /** How many keys are remembered (for tests and tools). */
  const size = () => keys.size

  return { submit, takeNow, size }
}
