/**
 * A fault-injecting `Store` for tests: it wraps any store (memory, PostgreSQL, Redis) behind the same
 * interface and, following a plan, makes chosen calls fail, hang, or take effect while the caller
 * no longer listens.
 *
 * Faults are attributed to callers: `withFaults(id, script)` runs an effect (say one
 * `RateLimiter.acquire`) with a script saying which of *its own* store calls go wrong ("the second
 * `acquire` call hangs", "the first `release` fails"). Fibers forked by that effect (a lease's
 * renewal) inherit the script, and the finalizers of a scope run under the script of whoever
 * closes it. So a plan stays deterministic whatever the interleaving with other callers, and
 * shrinks well: every entry of a script is independent of the others. Calls made outside
 * `withFaults` pass through untouched. (A background fiber the limiter forks on a caller's behalf,
 * such as the one that gives back abandoned leases, runs under that caller's script too, even for
 * the work it later does for others.)
 *
 * `layer(controller)` wraps every store a `StoreFactory` builds, so a whole `RateSync` graph (the
 * public `RateLimiter` API) runs on faulty stores:
 *
 * ```ts
 * const controller = yield* FaultyStore.makeController
 * RateSync.layer(settings).pipe(Layer.provide(FaultyStore.wrapFactory(controller, Stores.layer)))
 * ```
 *
 * `controller.heal` ends the faults: later calls pass through, and every call still hanging
 * answers at once, with `StoreTimeout` (as a driver's own command timeout would).
 *
 * The controller records every call (who made it, the fault, whether the store applied it, how it
 * was answered), so a test can tell an outage from slowness, and what a failed call may have left
 * in the store. It also notices a caller that spins: hundreds of calls at one instant of its clock.
 */
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FastCheck from "effect/FastCheck"
import * as FiberId from "effect/FiberId"
import * as FiberRef from "effect/FiberRef"
import * as Layer from "effect/Layer"
import { StoreTimeout, StoreUnavailable } from "../../src/Errors.js"
import { type Store, StoreFactory } from "../../src/Store.js"

export const operations = ["acquire", "release", "renew", "refund", "backoff", "state", "releases"] as const
export type Operation = typeof operations[number]

/**
 * What happens to one store call.
 *
 * - `Fail`: fails at once with `StoreUnavailable`; the store is not touched. (For `releases`, whose
 *   type cannot fail: the subscription is dead, it never fires.)
 * - `Hang`: never answers, and the store is not touched, until the controller heals; then it fails
 *   with `StoreTimeout`, as a driver's own command timeout would (a slow store, not an outage).
 * - `Slow`: answers very late: waits `delayMs`, then performs the operation and answers.
 * - `LateReply`: performs the operation at once (it takes effect), answers `delayMs` later.
 * - `DropReply`: performs the operation at once, never answers until the controller heals; then
 *   fails with `StoreTimeout` (the reply was lost: the caller cannot tell it took effect).
 */
export type Fault =
  | { readonly _tag: "Fail" }
  | { readonly _tag: "Hang" }
  | { readonly _tag: "Slow"; readonly delayMs: number }
  | { readonly _tag: "LateReply"; readonly delayMs: number }
  | { readonly _tag: "DropReply" }

/** The `nth` call (from 0) of operation `op` made by the caller gets `fault`. */
export interface FaultEntry {
  readonly op: Operation
  readonly nth: number
  readonly fault: Fault
}

export type FaultScript = ReadonlyArray<FaultEntry>

/** One store call as the wrapper saw it. Fields marked as changing are updated as the call goes. */
export interface CallRecord {
  readonly seq: number
  readonly op: Operation
  readonly store: string
  readonly limiter: string
  readonly key: string
  /** acquire, release, renew: the lease id concerned. */
  readonly leaseId: string | undefined
  /** The `withFaults` id the call was made under, if any. */
  readonly caller: string | undefined
  readonly fault: Fault | undefined
  /** Clock time (the test clock, when there is one). */
  readonly startedAt: number
  /** Changes: the real operation was started on the store. */
  applied: boolean
  /** Changes: how the caller was answered. */
  outcome: "pending" | "success" | "failure" | "interrupted"
  /** Changes: the store itself failed the call (not an injected fault). */
  storeFailure: boolean
  /** Changes: the `_tag` of the error the caller got, injected or the store's own. */
  error: string | undefined
  /** Changes: clock time of the answer. */
  endedAt: number | undefined
}

/** A caller that made `count` store calls at one instant of its clock: it spins without time passing. */
export interface Spin {
  readonly caller: string
  readonly op: Operation
  readonly at: number
  readonly count: number
}

export interface FaultController {
  /** The same store, with this controller's faults. */
  readonly wrap: (store: Store) => Store
  /** Ends the faults: later calls pass through, hanging calls answer now (with `StoreTimeout`). */
  readonly heal: Effect.Effect<void>
  readonly isHealed: () => boolean
  /** Every call so far, in the order they were made. */
  readonly calls: () => ReadonlyArray<CallRecord>
  /** The calls not answered yet (hanging, delayed, or simply running). */
  readonly inFlight: () => ReadonlyArray<CallRecord>
  /** The stores wrapped so far, unwrapped: to look at the truth without faults. */
  readonly inner: () => ReadonlyArray<Store>
  /**
   * Callers seen spinning: more than `SPIN_CALLS` calls at one instant of the clock. (On `TestClock` a
   * loop that never lets time pass can starve the event loop, and the test with it; from then on each
   * of the caller's calls first lets the event loop turn, so the test goes on and can report it.)
   */
  readonly spins: () => ReadonlyArray<Spin>
}

export const SPIN_CALLS = 200

/** One turn of the event loop (timers included, unlike a microtask). */
const turnEventLoop: Effect.Effect<void> = Effect.async<void>((resume) => {
  const handle = setImmediate(() => resume(Effect.void))
  return Effect.sync(() => clearImmediate(handle))
})

interface Caller {
  readonly id: string
  readonly script: FaultScript
  readonly counts: Map<Operation, number>
}

const currentCaller = FiberRef.unsafeMake<Caller | undefined>(undefined)

/**
 * Runs `self` as caller `id`: its store calls (and those of the fibers it forks) are numbered per
 * operation and get the faults `script` gives those numbers.
 */
export const withFaults = (id: string, script: FaultScript) => <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.suspend(() => Effect.locally(self, currentCaller, { id, script, counts: new Map() }))

export const describeFault = (fault: Fault): string =>
  fault._tag === "Slow" || fault._tag === "LateReply" ? `${fault._tag}(${fault.delayMs}ms)` : fault._tag

export const describeScript = (script: FaultScript): string =>
  script.map((entry) => `${entry.op}#${entry.nth}:${describeFault(entry.fault)}`).join(", ")

interface CallInfo {
  readonly op: Operation
  readonly limiter: string
  readonly key: string
  readonly leaseId: string | undefined
}

export const makeController: Effect.Effect<FaultController> = Effect.sync(() => {
  const gate = Deferred.unsafeMake<void>(FiberId.none)
  const calls: Array<CallRecord> = []
  const inner: Array<Store> = []
  const spins: Array<Spin> = []
  /** Per caller: the instant of its last call and how many it made at that instant. */
  const pace = new Map<string, { at: number; count: number }>()
  let healed = false

  /** Whether this call of `caller` at `at` is one of a spin (and records the spin once). */
  const spinning = (caller: string | undefined, op: Operation, at: number): boolean => {
    if (caller === undefined) return false
    const last = pace.get(caller)
    if (last === undefined || last.at !== at) {
      pace.set(caller, { at, count: 1 })
      return false
    }
    last.count++
    if (last.count === SPIN_CALLS) spins.push({ caller, op, at, count: last.count })
    return last.count >= SPIN_CALLS
  }

  const pick = (caller: Caller | undefined, op: Operation): Fault | undefined => {
    if (caller === undefined) return undefined
    const nth = caller.counts.get(op) ?? 0
    caller.counts.set(op, nth + 1)
    if (healed) return undefined
    return caller.script.find((entry) => entry.op === op && entry.nth === nth)?.fault
  }

  /**
   * One call: `real` is the store's own operation, `failed` what the caller gets when the call fails
   * (or is given up when the controller heals).
   */
  const intercept = <A, E, R>(
    store: Store,
    info: CallInfo,
    real: Effect.Effect<A, E, R>,
    failed: (error: StoreUnavailable | StoreTimeout) => Effect.Effect<A, E, R>
  ): Effect.Effect<A, E, R> =>
    Effect.flatMap(FiberRef.get(currentCaller), (caller) =>
      Effect.flatMap(Clock.currentTimeMillis, (startedAt) => {
        const fault = pick(caller, info.op)
        const record: CallRecord = {
          seq: calls.length,
          ...info,
          store: store.name,
          caller: caller?.id,
          fault,
          startedAt,
          applied: false,
          outcome: "pending",
          storeFailure: false,
          error: undefined,
          endedAt: undefined
        }
        calls.push(record)
        const message = (what: string) =>
          `injected fault: ${what} (${info.op} call #${record.seq}${caller === undefined ? "" : ` of ${caller.id}`})`
        const unavailable = (what: string) => new StoreUnavailable({ store: store.name, engine: store.engine, message: message(what) })
        const timedOut = (what: string) => new StoreTimeout({ store: store.name, engine: store.engine, message: message(what) })
        const apply = Effect.suspend(() => {
          record.applied = true
          return real
        }).pipe(
          Effect.tapErrorCause((cause) =>
            Cause.isInterruptedOnly(cause) ? Effect.void : Effect.sync(() => (record.storeFailure = true))
          )
        )
        const untilHealed = Deferred.await(gate)
        let call: Effect.Effect<A, E, R>
        switch (fault?._tag) {
          case undefined:
            call = apply
            break
          case "Fail":
            call = failed(unavailable("failed"))
            break
          case "Hang":
            call = Effect.zipRight(untilHealed, failed(timedOut("hung, given up when the faults stopped")))
            break
          case "Slow":
            call = Effect.zipRight(Effect.sleep(Duration.millis(fault.delayMs)), apply)
            break
          case "LateReply":
            call = Effect.tap(apply, () => Effect.sleep(Duration.millis(fault.delayMs)))
            break
          case "DropReply":
            call = Effect.zipRight(apply, Effect.zipRight(untilHealed, failed(timedOut("applied, but the reply was lost"))))
            break
        }
        const paced = spinning(caller?.id, info.op, startedAt) ? Effect.zipRight(turnEventLoop, call) : call
        return paced.pipe(
          Effect.tapError((error) =>
            Effect.sync(() => {
              record.error = typeof error === "object" && error !== null && "_tag" in error ? String(error._tag) : String(error)
            })
          ),
          Effect.onExit((exit) =>
            Effect.flatMap(Clock.currentTimeMillis, (endedAt) =>
              Effect.sync(() => {
                record.endedAt = endedAt
                record.outcome = Exit.isSuccess(exit)
                  ? "success"
                  : Exit.isInterrupted(exit)
                  ? "interrupted"
                  : "failure"
              }))
          )
        )
      }))

  const fail = (error: StoreUnavailable | StoreTimeout) => Effect.fail(error)

  const wrap = (store: Store): Store => {
    inner.push(store)
    const acquireAll = store.acquireAll
    return {
      name: store.name,
      engine: store.engine,
      timingMarginMs: store.timingMarginMs,
      backoffs: store.backoffs,
      acquireRate: (request) =>
        intercept(
          store,
          { op: "acquire", limiter: request.limiter.name, key: request.key, leaseId: undefined },
          store.acquireRate(request),
          fail
        ),
      acquireLease: (request) =>
        intercept(
          store,
          { op: "acquire", limiter: request.limiter.name, key: request.key, leaseId: request.leaseId },
          store.acquireLease(request),
          fail
        ),
      // Several keys' rate slots in one call: an acquire, numbered with the others; only where the store has it.
      ...(acquireAll === undefined ? {} : {
        acquireAll: (requests, afterMs) =>
          intercept(
            store,
            {
              op: "acquire",
              limiter: requests.map((request) => request.limiter.name).join(","),
              key: requests.map((request) => request.key).join(","),
              leaseId: undefined
            },
            acquireAll(requests, afterMs),
            fail
          )
      } satisfies Pick<Store, "acquireAll">),
      release: (limiter, key, leaseId) =>
        intercept(store, { op: "release", limiter: limiter.name, key, leaseId }, store.release(limiter, key, leaseId), fail),
      renew: (limiter, key, leaseId) =>
        intercept(store, { op: "renew", limiter: limiter.name, key, leaseId }, store.renew(limiter, key, leaseId), fail),
      refund: (limiter, key, cost, reservation) =>
        intercept(
          store,
          { op: "refund", limiter: limiter.name, key, leaseId: undefined },
          store.refund(limiter, key, cost, reservation),
          fail
        ),
      backoff: (limiter, key, retryAfterMs) =>
        intercept(
          store,
          { op: "backoff", limiter: limiter.name, key, leaseId: undefined },
          store.backoff(limiter, key, retryAfterMs),
          fail
        ),
      state: (limiter, key) =>
        intercept(store, { op: "state", limiter: limiter.name, key, leaseId: undefined }, store.state(limiter, key), fail),
      // Its type cannot fail: a failed subscription is one that never fires (a lost notification).
      releases: (limiter, key) =>
        intercept(
          store,
          { op: "releases", limiter: limiter.name, key, leaseId: undefined },
          store.releases(limiter, key),
          () => Effect.succeed(Effect.never)
        )
    }
  }

  return {
    wrap,
    heal: Effect.suspend(() => {
      healed = true
      return Deferred.succeed(gate, undefined)
    }).pipe(Effect.asVoid),
    isHealed: () => healed,
    calls: () => calls,
    inFlight: () => calls.filter((call) => call.outcome === "pending"),
    inner: () => inner,
    spins: () => spins
  }
})

/** Wraps every store the `StoreFactory` below it builds. */
export const layer = (controller: FaultController): Layer.Layer<StoreFactory, never, StoreFactory> =>
  Layer.effect(
    StoreFactory,
    Effect.map(StoreFactory, (factory) =>
      StoreFactory.of({
        make: (name, config) => Effect.map(factory.make(name, config), controller.wrap)
      }))
  )

/** `base` (the production `Stores.layer`, or `MemoryStore.layer`) with faulty stores. */
export const wrapFactory = (controller: FaultController, base: Layer.Layer<StoreFactory>): Layer.Layer<StoreFactory> =>
  layer(controller).pipe(Layer.provide(base))

// ---- plans, as FastCheck arbitraries ----------------------------------------------------------

export interface FaultTiming {
  /** Delays of `Slow` and `LateReply`: choose them past the callers' deadlines. */
  readonly minDelayMs: number
  readonly maxDelayMs: number
}

const weighted = <A>(...choices: ReadonlyArray<readonly [number, A]>): FastCheck.Arbitrary<A> =>
  FastCheck.oneof(...choices.map(([weight, value]) => ({ weight, arbitrary: FastCheck.constant(value) })))

export const faultArbitrary = (timing: FaultTiming): FastCheck.Arbitrary<Fault> => {
  const delay = FastCheck.integer({ min: timing.minDelayMs, max: timing.maxDelayMs })
  return FastCheck.oneof(
    { weight: 4, arbitrary: FastCheck.constant<Fault>({ _tag: "Fail" }) },
    { weight: 2, arbitrary: FastCheck.constant<Fault>({ _tag: "Hang" }) },
    { weight: 1, arbitrary: delay.map((delayMs): Fault => ({ _tag: "Slow", delayMs })) },
    { weight: 1, arbitrary: delay.map((delayMs): Fault => ({ _tag: "LateReply", delayMs })) },
    { weight: 1, arbitrary: FastCheck.constant<Fault>({ _tag: "DropReply" }) }
  )
}

/** Which operation an entry targets: mostly `acquire` and `release`, where the waiting and leases are. */
export const operationArbitrary: FastCheck.Arbitrary<Operation> = weighted<Operation>(
  [6, "acquire"],
  [3, "release"],
  [1, "renew"],
  [1, "refund"],
  [1, "backoff"],
  [1, "state"],
  [1, "releases"]
)

/** A caller's first and second calls of an operation (a waiter's second `acquire` asks again after a wait). */
export const faultEntryArbitrary = (timing: FaultTiming): FastCheck.Arbitrary<FaultEntry> =>
  FastCheck.record({
    op: operationArbitrary,
    nth: weighted([3, 0], [3, 1], [1, 2]),
    fault: faultArbitrary(timing)
  })

/** A caller's script: none (`clean` of the time, by default half), else one or two faults. */
export const faultScriptArbitrary = (timing: FaultTiming, clean = 0.5): FastCheck.Arbitrary<FaultScript> =>
  FastCheck.oneof(
    { weight: Math.round(clean * 100), arbitrary: FastCheck.constant<FaultScript>([]) },
    { weight: Math.round((1 - clean) * 100), arbitrary: FastCheck.array(faultEntryArbitrary(timing), { minLength: 1, maxLength: 2 }) }
  )
