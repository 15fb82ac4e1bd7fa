/**
 * Model-based property tests of the public `RateLimiter` API on faulty stores
 * (test/support/faultyStore.ts): random sequences of acquires (with and without a timeout, some
 * bounded by the caller with `Effect.timeout`), consumes, tryAcquires, interruptions, scopes closed,
 * backoffs, state reads and clock moves, where any store call a caller makes can fail, hang, or take
 * effect while its reply comes late or never. Then the faults stop, every scope is closed, and every
 * key used is acquired afresh. After every step the contract is checked:
 *
 * - (a) the admissions the store reported (`Permit.slotMs`) keep burst + T * rate for every interval
 *   T (sliding window: at most limit in any window);
 * - (b) permits holding a lease <= max_concurrent; and whenever nothing runs (every call ended, no
 *   store call unanswered), the store's `leasesHeld` equals the leases held in open scopes and
 *   `waiting` is 0, give or take what a *release* that failed could not give back (it expires by
 *   its ttl); a lease whose renewal was faulted may be missing;
 * - (c) an acquire with a timeout ends by its deadline (exactly, on `TestClock`; within 400 ms live),
 *   whatever the store does; one interrupted (`Fiber.interrupt`, the caller's `Effect.timeout`) ends
 *   when interrupted; its outcome is a permit or an error of src/Errors.ts, a degraded permit (or,
 *   with fail_closed, `StoreUnavailable`) only when one of its store calls failed with
 *   `StoreUnavailable`, never because the store was slow; nobody spins (a caller making hundreds of
 *   store calls at one instant) and every run ends;
 * - (d) no defect, no untyped error, no unasked-for interruption reaches a caller;
 * - (e) after the faults stop (hanging calls then fail with `StoreTimeout`), everything ends, and a
 *   fresh acquire of every key used (max_concurrent of them, held together) succeeds within a couple
 *   of seconds (2.5 s past the rate's own next slot).
 *
 * One property per engine, each within about 17 s: memory on `TestClock` (many runs of up to 12
 * steps), PostgreSQL and Redis in real time (few runs of up to 5 steps, lease_ttl 1 s). Each starts
 * with a few fixed sequences (`examples`: the failure modes known to matter), then random ones. The
 * first clause a run violates is shrunk to a minimal sequence (for a few seconds at most), then the
 * search goes on for the other clauses; all are reported together, each with its sequence, its trace
 * and the line that replays it:
 *
 *   RATE_SYNC_MODEL_SEED=<seed> RATE_SYNC_MODEL_CLAUSE=<clause> RATE_SYNC_MODEL_PATH=<path> \
 *     npx vitest run test/model.test.ts -t '<engine>'
 *
 * RATE_SYNC_MODEL_SCALE=<n> searches n times as long; RATE_SYNC_MODEL_TRACE=1 streams the traces.
 */
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as FastCheck from "effect/FastCheck"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import * as TestClock from "effect/TestClock"
import * as TestContext from "effect/TestContext"
import { describe, inject, it } from "vitest"
import * as Errors from "../src/Errors.js"
import { type Permit, RateLimiter } from "../src/RateLimiter.js"
import * as RateSync from "../src/RateSync.js"
import type { LimiterConfigInput, StoreConfigInput } from "../src/Settings.js"
import * as Stores from "../src/Stores.js"
import { type Admission, rateExcess, windowPeak } from "./compliance/bounds.js"
import * as FaultyStore from "./support/faultyStore.js"

// ---- the model's vocabulary -----------------------------------------------------------------------

type Key = "a" | "b"

type RateShape =
  | { readonly algorithm: "token_bucket"; readonly ratePerSecond: number; readonly burst: number }
  | { readonly algorithm: "sliding_window"; readonly limit: number; readonly windowSeconds: number }

interface LimiterShape {
  readonly rate: RateShape | undefined
  readonly lease: { readonly max: number; readonly ttlSeconds: number } | undefined
  readonly failClosed: boolean
}

type Command =
  | {
    readonly _tag: "Acquire"
    readonly key: Key
    readonly cost: number
    /** The limiter's own `timeout` option; undefined waits as long as it takes. */
    readonly timeoutMs?: number | undefined
    /** `Effect.timeout` by the caller around the acquire (an interruption at that instant). */
    readonly callerTimeoutMs?: number | undefined
    readonly faults: FaultyStore.FaultScript
  }
  | {
    readonly _tag: "Consume"
    readonly key: Key
    readonly cost: number
    readonly timeoutMs?: number | undefined
    readonly faults: FaultyStore.FaultScript
  }
  | { readonly _tag: "TryAcquire"; readonly key: Key; readonly cost: number; readonly faults: FaultyStore.FaultScript }
  /** Interrupts the `target`-th (modulo) acquire, consume or tryAcquire still running (`Fiber.interrupt`). */
  | { readonly _tag: "Interrupt"; readonly target: number }
  /** Closes the `target`-th (modulo) open scope of a finished acquire or tryAcquire. */
  | { readonly _tag: "Close"; readonly target: number; readonly faults: FaultyStore.FaultScript }
  | { readonly _tag: "Backoff"; readonly key: Key; readonly retryAfterMs: number; readonly faults: FaultyStore.FaultScript }
  | { readonly _tag: "State"; readonly key: Key; readonly faults: FaultyStore.FaultScript }
  /** Moves the test clock, or lets real time pass. */
  | { readonly _tag: "Advance"; readonly ms: number }

interface Scenario {
  readonly limiter: LimiterShape
  readonly commands: ReadonlyArray<Command>
}

type Clause = "a" | "b-max" | "b-idle" | "c-deadline" | "c-interrupt" | "c-outcome" | "d" | "e" | "stuck"

const clauses: Record<Clause, string> = {
  a: "(a) admissions by the store's slots keep burst + T * rate (window: limit)",
  "b-max": "(b) leases held <= max_concurrent",
  "b-idle": "(b) once idle, leasesHeld = permits held in open scopes and waiting = 0",
  "c-deadline": "(c) an acquire with a timeout ends by its deadline, whatever the store does",
  "c-interrupt": "(c) an interrupted acquire (Fiber.interrupt, Effect.timeout) ends when interrupted",
  "c-outcome": "(c) a degraded permit (or StoreUnavailable) only after a store call failed, as fail_closed says",
  d: "(d) no defect or untyped error reaches the caller",
  e: "(e) after the faults stop, every key used is free again within a couple of seconds",
  stuck: "(c, e) the run itself ends: no call spins or waits for ever"
}

interface Violation {
  readonly clause: Clause
  readonly step: string
  readonly message: string
}

/** How far a run got, readable when it does not end. */
interface Progress {
  step: string
  readonly trace: Array<string>
}

interface RunReport {
  readonly violations: ReadonlyArray<Violation>
  readonly trace: ReadonlyArray<string>
}

// ---- engines --------------------------------------------------------------------------------------

interface Range {
  readonly min: number
  readonly max: number
}

interface Generation {
  readonly maxCommands: number
  readonly timeoutMs: Range
  readonly callerTimeoutMs: Range
  readonly advanceMs: Range
  readonly backoffMs: Range
  readonly delays: FaultyStore.FaultTiming
  readonly ratesPerSecond: ReadonlyArray<number>
  readonly windowSeconds: ReadonlyArray<number>
  readonly ttlSeconds: ReadonlyArray<number>
  /** How often a caller has no fault at all. */
  readonly cleanCallers: number
  /** Weights of the limiter kinds: leases only, rate and leases, rate only. */
  readonly kinds: { readonly lease: number; readonly both: number; readonly rate: number }
  /** Weight of acquires among the commands (the others: advance 5, close 3, interrupt 2, tryAcquire 2, the rest 1). */
  readonly acquireWeight: number
}

interface Engine {
  readonly name: "memory" | "postgres" | "redis"
  readonly live: boolean
  readonly store: () => StoreConfigInput
  /** How long after a deadline an acquire may still end (0 on TestClock: exactly by it). */
  readonly allowanceMs: number
  /** After the faults stop, how long everything has to end. */
  readonly drainMs: number
  /** Real time a run may take before it counts as stuck. */
  readonly runLimitMs: number
  readonly generation: Generation
}

/** "A couple of seconds": a fresh acquire after the faults stop, on top of the rate's own next slot. */
const RECOVERY_MS = 2_500

const databaseUrl = inject("databaseUrl")
const redisUrl = inject("redisUrl")
let prefixes = 0

const memory: Engine = {
  name: "memory",
  live: false,
  store: () => ({ engine: "memory" }),
  allowanceMs: 0,
  drainMs: 20_000,
  runLimitMs: 5_000,
  generation: {
    maxCommands: 12,
    timeoutMs: { min: 0, max: 3_000 },
    callerTimeoutMs: { min: 1, max: 3_000 },
    advanceMs: { min: 1, max: 2_500 },
    backoffMs: { min: 100, max: 3_000 },
    delays: { minDelayMs: 500, maxDelayMs: 5_000 },
    ratesPerSecond: [1, 2, 5, 10],
    windowSeconds: [0.5, 1],
    ttlSeconds: [1, 2],
    cleanCallers: 0.5,
    kinds: { lease: 1, both: 1, rate: 1 },
    acquireWeight: 6
  }
}

const liveGeneration: Generation = {
  maxCommands: 5,
  timeoutMs: { min: 0, max: 500 },
  callerTimeoutMs: { min: 50, max: 500 },
  advanceMs: { min: 20, max: 400 },
  backoffMs: { min: 50, max: 500 },
  // Past any deadline plus the allowance.
  delays: { minDelayMs: 1_000, maxDelayMs: 1_500 },
  ratesPerSecond: [5, 10, 20],
  windowSeconds: [0.5],
  ttlSeconds: [1],
  // Few runs: more of them with faults, leases (where the engines differ most) and acquires.
  cleanCallers: 0.35,
  kinds: { lease: 2, both: 2, rate: 1 },
  acquireWeight: 9
}

const postgres: Engine = {
  name: "postgres",
  live: true,
  store: () => ({ engine: "postgres", url: databaseUrl, auto_create: true, pool_max_size: 4, pool_min_size: 0 }),
  allowanceMs: 400,
  drainMs: 6_000,
  runLimitMs: 20_000,
  generation: liveGeneration
}

const redis: Engine = {
  name: "redis",
  live: true,
  store: () => ({ engine: "redis", url: redisUrl, key_prefix: `rate-sync-model:${process.pid}:${prefixes++}:` }),
  allowanceMs: 400,
  drainMs: 6_000,
  runLimitMs: 20_000,
  generation: liveGeneration
}

// ---- generation -----------------------------------------------------------------------------------

const integer = (range: Range) => FastCheck.integer(range)

const scenarioArbitrary = (g: Generation): FastCheck.Arbitrary<Scenario> => {
  const tokenBucket = FastCheck.record({
    algorithm: FastCheck.constant("token_bucket" as const),
    ratePerSecond: FastCheck.constantFrom(...g.ratesPerSecond),
    burst: FastCheck.integer({ min: 1, max: 3 })
  })
  const slidingWindow = FastCheck.record({
    algorithm: FastCheck.constant("sliding_window" as const),
    limit: FastCheck.integer({ min: 1, max: 3 }),
    windowSeconds: FastCheck.constantFrom(...g.windowSeconds)
  })
  const rate: FastCheck.Arbitrary<RateShape> = FastCheck.oneof({ weight: 3, arbitrary: tokenBucket }, { weight: 1, arbitrary: slidingWindow })
  const lease = FastCheck.record({
    max: FastCheck.oneof({ weight: 3, arbitrary: FastCheck.constant(1) }, { weight: 2, arbitrary: FastCheck.integer({ min: 2, max: 3 }) }),
    ttlSeconds: FastCheck.constantFrom(...g.ttlSeconds)
  })
  const limiter: FastCheck.Arbitrary<LimiterShape> = FastCheck.record({
    kind: FastCheck.oneof(
      { weight: g.kinds.lease, arbitrary: FastCheck.constant("lease" as const) },
      { weight: g.kinds.both, arbitrary: FastCheck.constant("both" as const) },
      { weight: g.kinds.rate, arbitrary: FastCheck.constant("rate" as const) }
    ),
    rate,
    lease,
    failClosed: FastCheck.boolean()
  }).map(({ failClosed, kind, lease, rate }) => ({
    rate: kind === "lease" ? undefined : rate,
    lease: kind === "rate" ? undefined : lease,
    failClosed
  }))

  // Mostly one key, so callers meet; the other shows keys do not share state.
  const key = FastCheck.oneof({ weight: 4, arbitrary: FastCheck.constant<Key>("a") }, { weight: 1, arbitrary: FastCheck.constant<Key>("b") })
  const cost = FastCheck.oneof({ weight: 5, arbitrary: FastCheck.constant(1) }, { weight: 1, arbitrary: FastCheck.constant(2) })
  const faults = FaultyStore.faultScriptArbitrary(g.delays, g.cleanCallers)
  const timeout = FastCheck.oneof(
    { weight: 3, arbitrary: integer(g.timeoutMs) },
    { weight: 1, arbitrary: FastCheck.constant(undefined) }
  )
  const callerTimeout = FastCheck.oneof(
    { weight: 3, arbitrary: FastCheck.constant(undefined) },
    { weight: 1, arbitrary: integer(g.callerTimeoutMs) }
  )
  const target = FastCheck.nat({ max: 7 })

  const command: FastCheck.Arbitrary<Command> = FastCheck.oneof(
    {
      weight: g.acquireWeight,
      arbitrary: FastCheck.record({
        _tag: FastCheck.constant("Acquire" as const),
        key,
        cost,
        timeoutMs: timeout,
        callerTimeoutMs: callerTimeout,
        faults
      })
    },
    { weight: 5, arbitrary: FastCheck.record({ _tag: FastCheck.constant("Advance" as const), ms: integer(g.advanceMs) }) },
    { weight: 3, arbitrary: FastCheck.record({ _tag: FastCheck.constant("Close" as const), target, faults }) },
    { weight: 2, arbitrary: FastCheck.record({ _tag: FastCheck.constant("Interrupt" as const), target }) },
    { weight: 2, arbitrary: FastCheck.record({ _tag: FastCheck.constant("TryAcquire" as const), key, cost, faults }) },
    {
      weight: 1,
      arbitrary: FastCheck.record({ _tag: FastCheck.constant("Consume" as const), key, cost, timeoutMs: timeout, faults })
    },
    {
      weight: 1,
      arbitrary: FastCheck.record({
        _tag: FastCheck.constant("Backoff" as const),
        key,
        retryAfterMs: integer(g.backoffMs),
        faults
      })
    },
    { weight: 1, arbitrary: FastCheck.record({ _tag: FastCheck.constant("State" as const), key, faults }) }
  )
  return FastCheck.record({ limiter, commands: FastCheck.array(command, { minLength: 1, maxLength: g.maxCommands }) })
}

/**
 * Sequences every run starts with (then the random ones): the failure modes known to matter, in the
 * engine's own units. Found violations are shrunk like any other.
 */
const examples = (g: Generation): ReadonlyArray<Scenario> => {
  const rate = g.ratesPerSecond[0]!
  const lease = (max: number) => ({ max, ttlSeconds: g.ttlSeconds[0]! })
  const leases = (max: number): LimiterShape => ({ rate: undefined, lease: lease(max), failClosed: false })
  const shortWait = Math.max(g.timeoutMs.min, 200)
  const hang: FaultyStore.Fault = { _tag: "Hang" }
  return [
    // A store that hangs: the acquire still ends by its deadline, with AcquireTimeout.
    {
      limiter: leases(1),
      commands: [{ _tag: "Acquire", key: "a", cost: 1, timeoutMs: shortWait, faults: [{ op: "acquire", nth: 0, fault: hang }] }]
    },
    // A waiter in line whose next call fails: it leaves no place behind (nor a lease held by nobody).
    {
      limiter: leases(1),
      commands: [
        { _tag: "Acquire", key: "a", cost: 1, faults: [] },
        { _tag: "Acquire", key: "a", cost: 1, timeoutMs: 2 * shortWait, faults: [{ op: "acquire", nth: 1, fault: { _tag: "Fail" } }] },
        { _tag: "Advance", ms: 2 * shortWait }
      ]
    },
    // A lease granted, then its caller interrupted while it waits for its rate slot: the lease goes back.
    {
      limiter: { rate: { algorithm: "token_bucket", ratePerSecond: rate, burst: 1 }, lease: lease(2), failClosed: false },
      commands: [
        { _tag: "Acquire", key: "a", cost: 1, faults: [] },
        { _tag: "Acquire", key: "a", cost: 1, faults: [] },
        { _tag: "Interrupt", target: 0 },
        { _tag: "Advance", ms: g.advanceMs.min }
      ]
    },
    // A wake-up subscription that hangs: the waiter still ends by its deadline.
    {
      limiter: leases(1),
      commands: [
        { _tag: "Acquire", key: "a", cost: 1, faults: [] },
        { _tag: "Acquire", key: "a", cost: 1, timeoutMs: shortWait, faults: [{ op: "releases", nth: 0, fault: hang }] }
      ]
    },
    // A slow store under fail_closed = false: the caller's Effect.timeout still ends it, and no degraded permit.
    {
      limiter: { rate: { algorithm: "token_bucket", ratePerSecond: rate, burst: 1 }, lease: undefined, failClosed: false },
      commands: [{
        _tag: "Acquire",
        key: "a",
        cost: 1,
        callerTimeoutMs: shortWait,
        faults: [{ op: "acquire", nth: 0, fault: { _tag: "Slow", delayMs: g.delays.minDelayMs } }]
      }]
    }
  ]
}

// ---- rendering ------------------------------------------------------------------------------------

const renderLimiter = (l: LimiterShape): string => {
  const parts: Array<string> = []
  if (l.rate?.algorithm === "token_bucket") parts.push(`token_bucket ${l.rate.ratePerSecond}/s burst ${l.rate.burst}`)
  if (l.rate?.algorithm === "sliding_window") parts.push(`sliding_window ${l.rate.limit} per ${l.rate.windowSeconds}s`)
  if (l.lease !== undefined) parts.push(`max_concurrent ${l.lease.max} lease_ttl ${l.lease.ttlSeconds}s`)
  parts.push(`fail_closed = ${l.failClosed}`)
  return parts.join(", ")
}

const withScript = (text: string, script: FaultyStore.FaultScript) =>
  script.length === 0 ? text : `${text} with faults [${FaultyStore.describeScript(script)}]`

const ms = (value: number | undefined) => (value === undefined ? "none" : `${value}ms`)

const renderCommand = (c: Command): string => {
  switch (c._tag) {
    case "Acquire":
      return withScript(
        `acquire(key ${c.key}, cost ${c.cost}, timeout ${ms(c.timeoutMs)}${c.callerTimeoutMs === undefined ? "" : `, Effect.timeout ${c.callerTimeoutMs}ms`})`,
        c.faults
      )
    case "Consume":
      return withScript(`consume(key ${c.key}, cost ${c.cost}, timeout ${ms(c.timeoutMs)})`, c.faults)
    case "TryAcquire":
      return withScript(`tryAcquire(key ${c.key}, cost ${c.cost})`, c.faults)
    case "Interrupt":
      return `interrupt running call #${c.target}`
    case "Close":
      return withScript(`close open scope #${c.target}`, c.faults)
    case "Backoff":
      return withScript(`backoff(key ${c.key}, ${c.retryAfterMs}ms)`, c.faults)
    case "State":
      return withScript(`state(key ${c.key})`, c.faults)
    case "Advance":
      return `advance ${c.ms}ms`
  }
}

export const renderScenario = (s: Scenario): string =>
  [`limiter: ${renderLimiter(s.limiter)}`, ...s.commands.map((c, i) => `  ${i + 1}. ${renderCommand(c)}`)].join("\n")

const renderValue = (u: unknown): string => {
  if (typeof u === "object" && u !== null && "_tag" in u) return String(u._tag)
  if (u instanceof Error) return `${u.name}: ${u.message}`
  return String(u)
}

// ---- the interpreter ------------------------------------------------------------------------------

type Api = "acquire" | "consume" | "tryAcquire" | "state" | "backoff" | "close"

type Result =
  | { readonly _tag: "Permit"; readonly permit: Permit }
  | { readonly _tag: "CallerTimeout" }
  | { readonly _tag: "Done" }

const done: Result = { _tag: "Done" }
const permitResult = (permit: Permit): Result => ({ _tag: "Permit", permit })

interface Activity {
  readonly id: string
  readonly step: string
  readonly api: Api
  readonly key: Key
  readonly startedAt: number
  /** The limiter's timeout, as an instant. */
  readonly deadline: number | undefined
  /** The caller's `Effect.timeout`, as an instant. */
  readonly callerDeadline: number | undefined
  interruptedAt: number | undefined
  fiber: Fiber.RuntimeFiber<Result, unknown> | undefined
  exit: Exit.Exit<Result, unknown> | undefined
  endedAt: number | undefined
  processed: boolean
  overdue: boolean
}

interface OpenScope {
  readonly activity: Activity
  readonly scope: Scope.CloseableScope
  permit: Permit | undefined
  closing: boolean
}

/** Every error class of src/Errors.ts: what "typed" means for (d). */
const errorClasses = Object.values(Errors).filter((value) => typeof value === "function")

const isTyped = (error: unknown): boolean =>
  typeof error === "object" && error !== null && "_tag" in error && typeof error._tag === "string" &&
  errorClasses.some((errorClass) => error instanceof errorClass)

const isTagged = (error: unknown, tag: string): boolean =>
  typeof error === "object" && error !== null && "_tag" in error && error._tag === tag

let runs = 0

/** Float noise in instants (ms): 1 ns. */
const EPSILON_MS = 1e-6

/** One turn of the event loop: every fiber that can run (on microtasks, or after `setImmediate`) does. */
const turn: Effect.Effect<void> = Effect.async<void>((resume) => {
  const handle = setImmediate(() => resume(Effect.void))
  return Effect.sync(() => clearImmediate(handle))
})

const runScenario = (engine: Engine, scenario: Scenario, progress: Progress): Effect.Effect<RunReport, never, Scope.Scope> =>
  Effect.gen(function*() {
    const live = engine.live
    const { lease, rate } = scenario.limiter
    const name = `model_${process.pid}_${runs++}_${Date.now().toString(36)}`
    const limiterConfig: LimiterConfigInput = {
      store: "s",
      fail_closed: scenario.limiter.failClosed,
      ...(rate?.algorithm === "token_bucket" ? { rate_per_second: rate.ratePerSecond, burst: rate.burst } : {}),
      ...(rate?.algorithm === "sliding_window"
        ? { algorithm: "sliding_window", limit: rate.limit, window_seconds: rate.windowSeconds }
        : {}),
      ...(lease === undefined ? {} : { max_concurrent: lease.max, lease_ttl_seconds: lease.ttlSeconds })
    }
    const controller = yield* FaultyStore.makeController
    const context = yield* Layer.build(
      RateSync.layer({ stores: { s: engine.store() }, limiters: { [name]: limiterConfig } }).pipe(
        Layer.provide(FaultyStore.wrapFactory(controller, Stores.layer))
      )
    ).pipe(Effect.orDie)
    const rl = Context.get(context, RateLimiter)

    const violations: Array<Violation> = []
    const trace = progress.trace
    // RATE_SYNC_MODEL_TRACE=1 streams every run's trace to stderr as it goes (to see where a run hangs).
    if (process.env["RATE_SYNC_MODEL_TRACE"] !== undefined) {
      const push = trace.push.bind(trace)
      trace.push = (...items: Array<string>) => {
        for (const item of items) process.stderr.write(item + "\n")
        return push(...items)
      }
    }
    const activities: Array<Activity> = []
    const scopes: Array<OpenScope> = []
    const admissions: Record<Key, Array<Admission>> = { a: [], b: [] }
    const keysUsed = new Set<Key>()
    const flagged = new Set<string>()
    let step = "setup"
    const enter = (name: string) => {
      step = name
      progress.step = name
    }
    let callers = 0

    const now = Clock.currentTimeMillis
    const origin = yield* now
    const at = (t: number) => `t=${Math.round(t - origin)}`
    const violation = (clause: Clause, message: string, once?: string) => {
      if (once !== undefined) {
        if (flagged.has(once)) return
        flagged.add(once)
      }
      violations.push({ clause, step, message })
      trace.push(`  !! ${clause}: ${message}`)
    }
    const elapse = (millis: number) =>
      millis <= 0 ? Effect.void : live ? Effect.sleep(Duration.millis(millis)) : TestClock.adjust(Duration.millis(millis))
    /** Lets the fibers run a while (a few turns of the event loop; live, 20 ms). */
    const settle = live ? Effect.sleep(Duration.millis(20)) : Effect.repeatN(turn, 3)

    const start = (
      api: Api,
      key: Key,
      script: FaultyStore.FaultScript,
      bounds: { readonly timeoutMs?: number | undefined; readonly callerTimeoutMs?: number | undefined },
      body: Effect.Effect<Result, unknown>
    ) =>
      Effect.gen(function*() {
        const startedAt = yield* now
        const activity: Activity = {
          id: `c${++callers}`,
          step,
          api,
          key,
          startedAt,
          // A timeout of 0 is answered like tryAcquire (the round trip is not a wait): held to interruption only.
          deadline: bounds.timeoutMs === undefined || bounds.timeoutMs === 0 ? undefined : startedAt + bounds.timeoutMs,
          callerDeadline: bounds.callerTimeoutMs === undefined ? undefined : startedAt + bounds.callerTimeoutMs,
          interruptedAt: undefined,
          fiber: undefined,
          exit: undefined,
          endedAt: undefined,
          processed: false,
          overdue: false
        }
        activities.push(activity)
        activity.fiber = yield* body.pipe(
          FaultyStore.withFaults(activity.id, script),
          Effect.onExit((exit) =>
            Effect.flatMap(now, (endedAt) =>
              Effect.sync(() => {
                activity.exit = exit
                activity.endedAt = endedAt
              }))
          ),
          Effect.fork
        )
        trace.push(`${at(startedAt)} ${activity.id} ${api} key ${key} started${script.length === 0 ? "" : ` [${FaultyStore.describeScript(script)}]`}`)
        return activity
      })

    // What the store was told, by caller and lease.
    const calls = () => controller.calls()
    /**
     * Whether a store call of caller `id`'s acquire path failed with `StoreUnavailable` (an outage, not
     * slowness): `acquire`, or the `renew` that confirms a grant whose reply took a third of the ttl.
     */
    const outage = (id: string) =>
      calls().some((call) => call.caller === id && (call.op === "acquire" || call.op === "renew") && call.error === "StoreUnavailable")
    const renewTroubled = (leaseId: string) =>
      calls().some((call) => call.op === "renew" && call.leaseId === leaseId && (call.fault !== undefined || call.storeFailure))
    /** Leases (or places in line) a failed call may have left in the store, to expire by their ttl. */
    const excused = (key: Key) =>
      new Set(
        calls().flatMap((call) =>
          call.key === key && call.leaseId !== undefined &&
            ((call.op === "release" && (!call.applied || call.storeFailure)) ||
              (call.op === "acquire" && call.applied && call.outcome === "failure"))
            ? [call.leaseId]
            : []
        )
      )

    /** The instant by which a running activity must have ended, and the clause that says so. */
    const boundOf = (a: Activity): { readonly at: number; readonly clause: Clause; readonly what: string } | undefined => {
      const candidates: Array<{ readonly at: number; readonly clause: Clause; readonly what: string }> = []
      if (a.deadline !== undefined) candidates.push({ at: a.deadline, clause: "c-deadline", what: "its deadline" })
      if (a.callerDeadline !== undefined) {
        candidates.push({ at: a.callerDeadline, clause: "c-interrupt", what: "its caller's Effect.timeout" })
      }
      if (a.interruptedAt !== undefined) candidates.push({ at: a.interruptedAt, clause: "c-interrupt", what: "Fiber.interrupt" })
      return candidates.sort((x, y) => x.at - y.at)[0]
    }

    const processOutcome = (a: Activity, exit: Exit.Exit<Result, unknown>) => {
      const endedAt = a.endedAt ?? 0
      const outcome = Exit.match(exit, {
        onSuccess: (result) =>
          result._tag === "Permit"
            ? `permit${result.permit.degraded ? " (degraded)" : ""}${result.permit.slotMs === undefined ? "" : ` slot ${result.permit.slotMs.toFixed(1)}`}${
              result.permit.leaseId === undefined ? "" : " lease"
            }`
            : result._tag,
        onFailure: (cause) =>
          Cause.isInterruptedOnly(cause) ? "interrupted" : Chunk.toReadonlyArray(Cause.failures(cause)).map(renderValue).join(", ") || Cause.pretty(cause)
      })
      trace.push(`${at(endedAt)} ${a.id} ${a.api} ended after ${Math.round(endedAt - a.startedAt)}ms: ${outcome}`)

      // (d) nothing but typed errors, and interruption only when asked for.
      if (Exit.isFailure(exit)) {
        for (const defect of Cause.defects(exit.cause)) {
          violation("d", `${a.id} ${a.api} ended with a defect: ${renderValue(defect)}`)
        }
        for (const error of Cause.failures(exit.cause)) {
          if (!isTyped(error)) {
            violation("d", `${a.id} ${a.api} failed with an error that is not one of src/Errors.ts: ${renderValue(error)}`)
          }
        }
        if (Cause.isInterrupted(exit.cause) && a.interruptedAt === undefined && a.api !== "close") {
          violation("d", `${a.id} ${a.api} ended interrupted, though nobody interrupted it`)
        }
        if (Cause.isInterrupted(exit.cause) && a.api === "close") violation("d", `${a.id}: closing a scope was interrupted`)
      }

      // (c) it ended in time.
      const bound = boundOf(a)
      if (bound !== undefined && endedAt > bound.at + engine.allowanceMs + EPSILON_MS) {
        violation(
          bound.clause,
          `${a.id} ${a.api} (${a.step}) ended ${Math.round(endedAt - bound.at)}ms after ${bound.what}`,
          `${a.id}:late`
        )
      }

      // (c) its outcome: a degraded permit, or StoreUnavailable, only after a failure, as fail_closed says.
      if (a.api === "acquire" || a.api === "consume" || a.api === "tryAcquire") {
        const failed = outage(a.id)
        const failClosed = scenario.limiter.failClosed
        const errors = Exit.isFailure(exit) ? Chunk.toReadonlyArray(Cause.failures(exit.cause)) : []
        if (Exit.isSuccess(exit) && exit.value._tag === "Permit" && exit.value.permit.degraded) {
          if (failClosed) violation("c-outcome", `${a.id} ${a.api} got a degraded permit although fail_closed = true`)
          else if (!failed) {
            violation("c-outcome", `${a.id} ${a.api} got a degraded permit although no store call of it failed with StoreUnavailable (the store was only slow)`)
          }
        }
        if (errors.some((e) => isTagged(e, "StoreUnavailable"))) {
          if (!failClosed) violation("c-outcome", `${a.id} ${a.api} failed with StoreUnavailable although fail_closed = false`)
          else if (!failed) {
            violation("c-outcome", `${a.id} ${a.api} failed with StoreUnavailable although no store call of it failed so (the store was only slow)`)
          }
        }
        if (a.deadline !== undefined && errors.some((e) => isTagged(e, "StoreTimeout"))) {
          violation("c-outcome", `${a.id} ${a.api} with a timeout failed with StoreTimeout: a slow store gives AcquireTimeout`)
        }
      }

      if (Exit.isSuccess(exit) && exit.value._tag === "Permit") {
        const permit = exit.value.permit
        if (!permit.degraded && permit.slotMs !== undefined) admissions[a.key].push({ slot: permit.slotMs, cost: permit.cost })
        const open = scopes.find((s) => s.activity === a)
        if (open !== undefined) open.permit = permit
      }
    }

    const held = (key: Key) =>
      scopes.filter((s) => !s.closing && s.activity.key === key && s.permit?.leaseId !== undefined && !s.permit.degraded)

    const quiescent = () => activities.every((a) => a.exit !== undefined) && controller.inFlight().length === 0

    const processEnded = () => {
      for (const a of activities) {
        if (a.exit !== undefined && !a.processed) {
          a.processed = true
          processOutcome(a, a.exit)
        }
      }
    }

    /** The running activities past their bound at `t`. */
    const overdue = (t: number) =>
      activities.flatMap((a) => {
        if (a.exit !== undefined || a.overdue) return []
        const bound = boundOf(a)
        // Past the bound by more than float noise (a timer may be set a fraction of a nanosecond after it).
        return bound !== undefined && t > bound.at + engine.allowanceMs + EPSILON_MS ? [{ a, bound }] : []
      })

    /** Each key's store state against the permits held: the mismatches, when nothing runs. */
    const idleMismatches = Effect.gen(function*() {
      const found: Array<string> = []
      if (lease === undefined || !quiescent()) return found
      for (const key of keysUsed) {
        const view = yield* rl.state(name, { key }).pipe(Effect.either)
        if (Either.isLeft(view)) continue
        const { leasesHeld, waiting } = view.right
        const holders = held(key)
        const sure = holders.filter((s) => !renewTroubled(s.permit?.leaseId ?? "")).length
        const leaked = excused(key).size
        if (leasesHeld > lease.max || leasesHeld + waiting > holders.length + leaked || leasesHeld < sure) {
          found.push(
            `key ${key} idle: leasesHeld ${leasesHeld}, waiting ${waiting}, but ${holders.length} permits are held in open scopes${
              leaked === 0 ? "" : ` (and ${leaked} leases a failed release may have left)`
            }`
          )
        }
      }
      return found
    })

    /**
     * Makes sure every fiber got to run before a violation that depends on it counts: live, a while
     * more; on TestClock, turns of the event loop and TestClock's own wait for its fibers to suspend,
     * several times (the store calls run in daemon fibers of their own, which TestClock does not wait for).
     */
    const confirm = live
      ? Effect.sleep(Duration.millis(100))
      : Effect.repeatN(Effect.zipRight(settle, TestClock.adjust(Duration.zero)), 4)

    /**
     * Checks the contract after a step. What depends on fibers having got to run (still running past a
     * bound, the idle state) is confirmed after a full settle before it counts.
     */
    const check = Effect.gen(function*() {
      processEnded()
      if (overdue(yield* now).length > 0 || (yield* idleMismatches).length > 0) {
        yield* confirm
        processEnded()
      }
      const t = yield* now
      // (c) nobody still running past its bound.
      for (const { a, bound } of overdue(t)) {
        a.overdue = true
        violation(
          bound.clause,
          `${a.id} ${a.api} (${a.step}) still running ${Math.round(t - bound.at)}ms after ${bound.what}`,
          `${a.id}:late`
        )
      }
      // (c) nobody spins: a loop of store calls with no time passing never reaches any deadline on TestClock.
      for (const spin of controller.spins()) {
        violation(
          "stuck",
          `${spin.caller} made ${spin.count} store calls (and more; then ${spin.op}) at one instant ${at(spin.at)}: it spins without time passing`,
          `spin:${spin.caller}`
        )
      }
      // (a) the rate bound, on the store's own slots.
      for (const key of ["a", "b"] as const) {
        if (rate?.algorithm === "token_bucket") {
          const excess = rateExcess(admissions[key], rate.ratePerSecond, rate.burst)
          if (excess > 1e-6) violation("a", `key ${key}: ${excess.toFixed(3)} units over burst + T * rate`, `a:${key}`)
        } else if (rate?.algorithm === "sliding_window") {
          const peak = windowPeak(admissions[key], rate.windowSeconds * 1000)
          if (peak > rate.limit) violation("a", `key ${key}: ${peak} units in one window of ${rate.windowSeconds}s`, `a:${key}`)
        }
      }
      if (lease === undefined) return
      // (b) the permits held, as their callers see them (leases whose renewal was faulted may be lost).
      for (const key of ["a", "b"] as const) {
        const sure = held(key).filter((s) => !renewTroubled(s.permit?.leaseId ?? ""))
        if (sure.length > lease.max) {
          violation("b-max", `key ${key}: ${sure.length} permits held at once, max_concurrent = ${lease.max}`, `bmax:${key}`)
        }
      }
      // (b) once idle, the store agrees with the callers.
      for (const mismatch of yield* idleMismatches) violation("b-idle", mismatch, `bidle:${mismatch}`)
    })

    const openScope = (a: Activity, scope: Scope.CloseableScope) => {
      scopes.push({ activity: a, scope, permit: undefined, closing: false })
    }

    const close = (s: OpenScope, script: FaultyStore.FaultScript) => {
      s.closing = true
      return start("close", s.activity.key, script, {}, Effect.as(Scope.close(s.scope, Exit.void), done))
    }

    const acquireOptions = (key: Key, cost: number, timeoutMs: number | undefined) => ({
      key,
      cost,
      timeout: timeoutMs === undefined ? undefined : Duration.millis(timeoutMs)
    })

    const run = (command: Command) =>
      Effect.gen(function*() {
        switch (command._tag) {
          case "Acquire": {
            keysUsed.add(command.key)
            const scope = yield* Scope.make()
            const acquire = Scope.extend(rl.acquire(name, acquireOptions(command.key, command.cost, command.timeoutMs)), scope)
            const body: Effect.Effect<Result, unknown> = command.callerTimeoutMs === undefined
              ? Effect.map(acquire, permitResult)
              : Effect.map(
                Effect.timeoutOption(acquire, Duration.millis(command.callerTimeoutMs)),
                Option.match({ onNone: (): Result => ({ _tag: "CallerTimeout" }), onSome: permitResult })
              )
            const a = yield* start("acquire", command.key, command.faults, command, body)
            openScope(a, scope)
            return
          }
          case "Consume": {
            keysUsed.add(command.key)
            yield* start(
              "consume",
              command.key,
              command.faults,
              command,
              Effect.map(rl.consume(name, acquireOptions(command.key, command.cost, command.timeoutMs)), permitResult)
            )
            return
          }
          case "TryAcquire": {
            keysUsed.add(command.key)
            const scope = yield* Scope.make()
            const body = Effect.map(Scope.extend(rl.tryAcquire(name, { key: command.key, cost: command.cost }), scope), permitResult)
            openScope(yield* start("tryAcquire", command.key, command.faults, {}, body), scope)
            return
          }
          case "Interrupt": {
            const running = activities.filter((a) =>
              (a.api === "acquire" || a.api === "consume" || a.api === "tryAcquire") && a.exit === undefined &&
              a.interruptedAt === undefined
            )
            const target = running[command.target % Math.max(1, running.length)]
            if (target?.fiber === undefined) return
            target.interruptedAt = yield* now
            trace.push(`${at(target.interruptedAt)} interrupt ${target.id}`)
            yield* Fiber.interruptFork(target.fiber)
            return
          }
          case "Close": {
            const open = scopes.filter((s) => !s.closing && s.activity.exit !== undefined)
            const target = open[command.target % Math.max(1, open.length)]
            if (target === undefined) return
            trace.push(`close the scope of ${target.activity.id}`)
            yield* close(target, command.faults)
            return
          }
          case "Backoff": {
            keysUsed.add(command.key)
            const backoff = rl.backoff(name, { key: command.key, retryAfter: Duration.millis(command.retryAfterMs) })
            yield* start("backoff", command.key, command.faults, {}, Effect.as(backoff, done))
            return
          }
          case "State": {
            keysUsed.add(command.key)
            yield* start("state", command.key, command.faults, {}, Effect.as(rl.state(name, { key: command.key }), done))
            return
          }
          case "Advance":
            yield* elapse(command.ms)
            return
        }
      })

    /** Lets time pass until `until` holds, at most `maxMs`: to the next timer on TestClock, in small sleeps live. */
    const driveUntil = (until: () => boolean, maxMs: number, each: Effect.Effect<boolean> = Effect.succeed(false)) =>
      Effect.gen(function*() {
        const begin = yield* now
        while (true) {
          yield* settle
          yield* check
          if (until()) return true
          // Something was started: let it run before any time passes.
          if (yield* each) continue
          const t = yield* now
          if (t - begin >= maxMs) return false
          if (live) {
            yield* Effect.sleep(Duration.millis(25))
            continue
          }
          const sleeps = Chunk.toReadonlyArray(yield* TestClock.sleeps())
          const next = sleeps.length === 0 ? undefined : Math.min(...sleeps)
          // Nothing is scheduled: whatever still runs waits for something that will never come.
          if (next === undefined) return false
          yield* TestClock.adjust(Duration.millis(Math.min(Math.max(next - t, 1), begin + maxMs - t)))
        }
      })

    // ---- the sequence ----
    for (const [index, command] of scenario.commands.entries()) {
      enter(`step ${index + 1}`)
      trace.push(`${at(yield* now)} ${step}: ${renderCommand(command)}`)
      yield* run(command)
      yield* settle
      yield* check
    }

    // ---- every bound that fell due: time moves to the last of them, faults still on ----
    enter("end")
    const t0 = yield* now
    const bounds = activities.filter((a) => a.exit === undefined).flatMap((a) => {
      const bound = boundOf(a)
      return bound === undefined ? [] : [bound.at]
    })
    const last = Math.max(t0, ...bounds)
    if (last > t0) {
      trace.push(`${at(t0)} wait for the last deadline (${at(last)})`)
      yield* elapse(last - t0 + (live ? engine.allowanceMs + 50 : 1))
    }
    yield* settle
    yield* check

    // ---- the faults stop: everything must end ----
    enter("after the faults stopped")
    yield* controller.heal
    const healedAt = yield* now
    trace.push(`${at(healedAt)} faults stop`)
    for (const a of activities) {
      if ((a.api === "acquire" || a.api === "consume") && a.exit === undefined && boundOf(a) === undefined && a.fiber !== undefined) {
        a.interruptedAt = healedAt
        trace.push(`${at(healedAt)} interrupt ${a.id} (waits with no timeout)`)
        yield* Fiber.interruptFork(a.fiber)
      }
    }
    // Every scope is closed as soon as its acquire has ended (a permit got late is given back too).
    const closeEnded = Effect.suspend(() => {
      const ended = scopes.filter((s) => !s.closing && s.activity.exit !== undefined)
      return Effect.as(
        Effect.forEach(
          ended,
          (s) => Effect.zipRight(Effect.sync(() => trace.push(`close the scope of ${s.activity.id}`)), close(s, [])),
          { discard: true }
        ),
        ended.length > 0
      )
    })
    const drained = yield* driveUntil(() => quiescent() && scopes.every((s) => s.closing), engine.drainMs, closeEnded)
    if (!drained) {
      const stuck = activities.filter((a) => a.exit === undefined).map((a) => `${a.id} ${a.api}`)
      const calls = controller.inFlight().map((c) => `${c.op} of ${c.caller ?? "nobody"}`)
      violation("e", `${engine.drainMs}ms after the faults stopped, still running: ${[...stuck, ...calls].join(", ") || "?"}`)
    }

    // ---- (e) every key used is free again ----
    enter("recovery")
    if (drained) {
      for (const key of keysUsed) {
        const count = lease?.max ?? 1
        for (let i = 0; i < count; i++) {
          const scope = yield* Scope.make()
          const view = yield* rl.state(name, { key }).pipe(Effect.either)
          const nextSlot = Either.isRight(view) ? Duration.toMillis(view.right.nextSlotAfter) : 0
          const timeoutMs = Math.ceil(RECOVERY_MS + nextSlot)
          const a = yield* start(
            "acquire",
            key,
            [],
            { timeoutMs },
            Effect.map(Scope.extend(rl.acquire(name, acquireOptions(key, 1, timeoutMs)), scope), permitResult)
          )
          openScope(a, scope)
          const ended = yield* driveUntil(() => a.exit !== undefined, timeoutMs + engine.allowanceMs + 100)
          const exit = a.exit
          if (!ended || exit === undefined) {
            violation("e", `key ${key}: fresh acquire ${i + 1} of ${count} still waiting after ${timeoutMs}ms`)
            break
          }
          if (Exit.isFailure(exit) || exit.value._tag !== "Permit" || exit.value.permit.degraded) {
            const got = Exit.isFailure(exit)
              ? Chunk.toReadonlyArray(Cause.failures(exit.cause)).map(renderValue).join(", ") || "interruption"
              : "a degraded permit"
            violation("e", `key ${key}: fresh acquire ${i + 1} of ${count} (timeout ${timeoutMs}ms) got ${got}`)
            break
          }
        }
        // Give them all back before the next key.
        yield* driveUntil(() => quiescent() && scopes.every((s) => s.closing), engine.drainMs, closeEnded)
      }
    }

    for (const a of activities) if (a.exit === undefined && a.fiber !== undefined) yield* Fiber.interruptFork(a.fiber)
    const perCaller = new Map<string, Map<string, number>>()
    for (const call of controller.calls()) {
      const counts = perCaller.get(call.caller ?? "-") ?? new Map<string, number>()
      counts.set(call.op, (counts.get(call.op) ?? 0) + 1)
      perCaller.set(call.caller ?? "-", counts)
    }
    trace.push(
      `store calls: ${[...perCaller].map(([caller, counts]) => `${caller} ${[...counts].map(([op, n]) => `${op} x${n}`).join(" ")}`).join("; ")}`
    )
    return { violations, trace }
  })

// ---- properties -----------------------------------------------------------------------------------

const execute = async (engine: Engine, scenario: Scenario): Promise<RunReport> => {
  const progress: Progress = { step: "setup", trace: [] }
  const program = runScenario(engine, scenario, progress).pipe(
    Effect.scoped,
    Effect.provide(Logger.remove(Logger.defaultLogger))
  )
  const controller = new AbortController()
  let timer: ReturnType<typeof setTimeout> | undefined
  const limit = new Promise<RunReport>((resolve) => {
    timer = setTimeout(() => {
      controller.abort()
      resolve({
        violations: [{
          clause: "stuck",
          step: progress.step,
          message: `the run did not end within ${engine.runLimitMs}ms of real time (a call that spins or waits for ever)`
        }],
        trace: progress.trace
      })
    }, engine.runLimitMs)
  })
  const running = Effect.runPromise(engine.live ? program : program.pipe(Effect.provide(TestContext.TestContext)), {
    signal: controller.signal
  })
  // Once the limit has answered, the aborted run's own rejection is expected.
  running.catch(() => undefined)
  try {
    return await Promise.race([running, limit])
  } finally {
    clearTimeout(timer)
  }
}

const envNumber = (name: string): number | undefined => {
  const value = process.env[name]
  return value === undefined || value === "" ? undefined : Number(value)
}

/** One seed per file run and engine (printed), or the one given to replay. */
const givenSeed = envNumber("RATE_SYNC_MODEL_SEED")
const baseSeed = givenSeed ?? (Date.now() ^ (process.pid << 10)) >>> 1
/** Each engine explores its own sequences; a given seed is used as it is. */
const seedOf = (engine: Engine) => givenSeed ?? baseSeed + ["memory", "postgres", "redis"].indexOf(engine.name)
const replayPath = process.env["RATE_SYNC_MODEL_PATH"]
const replayClause = process.env["RATE_SYNC_MODEL_CLAUSE"]

const clauseOrder: ReadonlyArray<Clause> = ["a", "b-max", "b-idle", "c-deadline", "c-interrupt", "c-outcome", "d", "e", "stuck"]
const isClause = (text: string | undefined): text is Clause => clauseOrder.some((clause) => clause === text)

interface Found {
  readonly clause: Clause
  readonly text: string
}

/**
 * Checks every clause on `engine` within `budgetMs`: generation stops at the first run that violates
 * a clause not found yet, which is then shrunk (for that clause only) to a minimal sequence; then the
 * search goes on for the other clauses, with the same seed, until no run fails or time is up. Every
 * clause found is reported with its minimal sequence and how to replay it.
 */
/** RATE_SYNC_MODEL_SCALE=4 searches four times as long (and runs as many more sequences), say in a nightly job. */
const scale = envNumber("RATE_SYNC_MODEL_SCALE") ?? 1

const checkEngine = async (title: string, engine: Engine, runs: number, budget: number, shrink: number) => {
  const seed = seedOf(engine)
  const numRuns = Math.ceil(runs * scale)
  const shrinkMs = shrink * scale
  const started = Date.now()
  const budgetEnd = started + budget * scale
  // Written at once (vitest holds console output until the test ends): a run that hangs still shows its seed.
  process.stderr.write(`model ${title}: seed ${seed}\n`)
  const found: Array<Found> = []
  let executed = 0
  let passes = 0
  const only = isClause(replayClause) ? replayClause : undefined
  // Each pass after the first generates the same runs again (same seed): those are not run twice.
  const seen = new Map<string, RunReport>()
  while (Date.now() < budgetEnd) {
    let target: Clause | undefined = only
    let shrinkEnd = Infinity
    passes++
    const property = FastCheck.asyncProperty(scenarioArbitrary(engine.generation), async (scenario) => {
      // Out of time (in all, or for shrinking this clause): no further run; the smallest counterexample so far stands.
      if (Date.now() >= Math.min(budgetEnd, shrinkEnd)) throw new FastCheck.PreconditionFailure(true)
      const id = JSON.stringify(scenario)
      const known = seen.get(id)
      const report = known ?? await execute(engine, scenario)
      if (known === undefined) {
        executed++
        seen.set(id, report)
      }
      const fresh = report.violations.filter((v) => !found.some((f) => f.clause === v.clause))
      if (target === undefined && fresh.length > 0) target = fresh[0]!.clause
      if (target !== undefined && shrinkEnd === Infinity && fresh.some((v) => v.clause === target)) {
        shrinkEnd = replayPath === undefined ? Date.now() + shrinkMs : Infinity
      }
      const hits = fresh.filter((v) => v.clause === target)
      if (hits.length === 0) return
      throw new Error(
        [
          ...hits.slice(0, 4).map((v) => `  ${v.step}: ${v.message}`),
          "  scenario:",
          ...renderScenario(scenario).split("\n").map((line) => `    ${line}`),
          "  trace:",
          ...report.trace.slice(-50).map((line) => `    ${line}`)
        ].join("\n")
      )
    })
    const details = await FastCheck.check(property, {
      seed,
      numRuns,
      examples: examples(engine.generation).map((scenario): [Scenario] => [scenario]),
      ...(replayPath === undefined ? {} : { path: replayPath }),
      endOnFailure: false
    })
    if (!details.failed || details.counterexample === null || target === undefined) break
    const message = details.errorInstance instanceof Error ? details.errorInstance.message : String(details.errorInstance)
    found.push({
      clause: target,
      text: [
        `${clauses[target]}: violated (found at run ${details.numRuns}, shrunk ${details.numShrinks} times)`,
        message,
        `  replay: RATE_SYNC_MODEL_SEED=${details.seed} RATE_SYNC_MODEL_CLAUSE=${target} RATE_SYNC_MODEL_PATH="${
          details.counterexamplePath ?? ""
        }" npx vitest run test/model.test.ts -t "${title}"`
      ].join("\n")
    })
    if (only !== undefined || replayPath !== undefined) break
  }
  const seconds = ((Date.now() - started) / 1000).toFixed(1)
  const summary = `${title}: ${executed} runs in ${seconds}s (${passes} passes), seed ${seed}`
  if (found.length === 0) {
    console.log(`${summary}: no violation`)
    return
  }
  throw new Error(
    [`${summary}: ${found.length} clause(s) violated: ${found.map((f) => f.clause).join(", ")}`, ...found.map((f) => f.text)].join(
      "\n\n"
    )
  )
}

describe("model-based properties on faulty stores", () => {
  const timeout = 60_000 * Math.max(1, scale)
  it("memory, on TestClock", () => checkEngine("memory", memory, 400, 12_000, 4_000), timeout)
  it("postgres, in real time", () => checkEngine("postgres", postgres, 40, 12_000, 6_000), timeout)
  it.skipIf(redisUrl === "")("redis, in real time", () => checkEngine("redis", redis, 40, 12_000, 6_000), timeout)
})
