/**
 * Several limits at once (`RateLimiter.acquireAll` and its forms): every member admits or none is
 * consumed, on one store and across stores; the wait is for the latest slot among them; bad input
 * is a typed error that takes nothing. Memory on TestClock (examples, and properties against a model
 * and the bounds), then PostgreSQL, Redis and one call over memory, PostgreSQL and Redis, live.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FastCheck from "effect/FastCheck"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Predicate from "effect/Predicate"
import * as TestClock from "effect/TestClock"
import pg from "pg"
import { inject } from "vitest"
import * as Gcra from "../src/internal/gcra.js"
import * as WindowAlgorithm from "../src/internal/window.js"
import * as MemoryStore from "../src/memory/MemoryStore.js"
import { type Permit, RateLimiter } from "../src/RateLimiter.js"
import * as RateSync from "../src/RateSync.js"
import { slotOf } from "../src/redis/composite.js"
import type { SettingsInput, StoreConfigInput } from "../src/Settings.js"
import { type Admitted, type Store, StoreFactory } from "../src/Store.js"
import * as Stores from "../src/Stores.js"
import { type Admission, rateExcess, windowPeak } from "./compliance/bounds.js"
import * as FaultyStore from "./support/faultyStore.js"
import { installed, onNode, type RedisCluster, startRedisCluster } from "./support/redisCluster.js"

/** Two memory stores: "m1" asked before "m2". */
const memory = (limiters: SettingsInput["limiters"]) =>
  RateSync.layer({ stores: { m1: { engine: "memory" }, m2: { engine: "memory" } }, limiters }).pipe(Layer.provide(MemoryStore.layer))

const remaining = (limiter: string, key?: string) => Effect.map(RateLimiter.state(limiter, { key }), (state) => state.remaining)

const flipped = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.flip(effect)

/** Lets what runs in the background (give-backs) run. */
const settled = TestClock.adjust(Duration.zero)

/** A turn of the event loop (a waiter wakes through one), then what it let run. */
const turn = Effect.zipRight(Effect.promise(() => new Promise((resolve) => setImmediate(resolve))), settled)

describe("acquireAll on memory (TestClock)", () => {
  const limiters = {
    user: { store: "m1", rate_per_second: 10, burst: 2 },
    global: { store: "m1", rate_per_second: 1, burst: 3 },
    daily: { store: "m2", algorithm: "sliding_window", limit: 2, window_seconds: 86_400 }
  } as const

  it.effect("every member admits or none is consumed; a refusal names the member and its key", () =>
    Effect.gen(function*() {
      const permits = yield* RateLimiter.tryConsumeAll([{ limiter: "user", key: "ann" }, { limiter: "global" }, { limiter: "daily", key: "ann", cost: 2 }])
      expect(permits.map((p) => [p.limiter, p.key, p.cost])).toEqual([["user", "ann", 1], ["global", "", 1], ["daily", "ann", 2]])
      // The daily quota of ann is spent: user and global are not touched by the refusal.
      const refused = yield* flipped(RateLimiter.tryConsumeAll([{ limiter: "user", key: "ann" }, { limiter: "global" }, { limiter: "daily", key: "ann" }]))
      expect(refused).toMatchObject({ _tag: "RateLimitExceeded", limiter: "daily", key: "ann" })
      // At once: what the first store took was given back before the refusal was returned.
      expect(yield* remaining("user", "ann")).toBe(1)
      expect(yield* remaining("global")).toBe(2)
      // A refusal on the first store asked takes nothing on the second.
      const bob = yield* flipped(RateLimiter.tryConsumeAll([{ limiter: "user", key: "bob", cost: 2 }, { limiter: "global", cost: 3 }, { limiter: "daily", key: "bob" }]))
      expect(bob).toMatchObject({ _tag: "RateLimitExceeded", limiter: "global" })
      yield* settled
      expect(yield* remaining("daily", "bob")).toBe(2)
      expect(yield* remaining("user", "bob")).toBe(2)
    }).pipe(Effect.provide(memory(limiters))))

  it.effect("waits for the latest slot among the members, and places every member at it", () =>
    Effect.gen(function*() {
      // global: its one unit of burst taken, the next is a second away; user is free now.
      yield* RateLimiter.consume("global", { cost: 3 })
      const fiber = yield* Effect.fork(RateLimiter.consumeAll([{ limiter: "user", key: "ann" }, { limiter: "global" }]))
      yield* TestClock.adjust("999 millis")
      expect(fiber.unsafePoll()).toBeNull()
      yield* TestClock.adjust("1 millis")
      const permits = yield* Fiber.join(fiber)
      expect(permits.map((p) => Duration.toMillis(p.waited))).toEqual([1_000, 1_000])
      // user's unit was placed at the common instant, not a second before it: at 10/s it is back 100 ms after.
      yield* TestClock.adjust("99 millis")
      expect(yield* remaining("user", "ann")).toBe(1)
      yield* TestClock.adjust("1 millis")
      expect(yield* remaining("user", "ann")).toBe(2)
    }).pipe(Effect.provide(memory(limiters))))

  // Found by the bounds property: placed at 0 and used at 500, first's unit would share a window with the next caller's at 500.
  it.effect("a member placed before another store pushed the common slot is placed again at it, however little the push", () =>
    Effect.gen(function*() {
      yield* RateLimiter.consume("second")
      const composite = yield* Effect.fork(RateLimiter.consumeAll([{ limiter: "first" }, { limiter: "second" }]))
      yield* TestClock.adjust("1 millis")
      const single = yield* Effect.fork(RateLimiter.consume("first"))
      yield* TestClock.adjust("1 second")
      expect((yield* Fiber.join(composite)).map((p) => p.slotMs)).toEqual([500, 500])
      expect((yield* Fiber.join(single)).slotMs).toBe(1_000)
    }).pipe(Effect.provide(memory({
      first: { store: "m1", algorithm: "sliding_window", limit: 1, window_seconds: 0.5 },
      second: { store: "m2", algorithm: "sliding_window", limit: 1, window_seconds: 0.5 }
    }))))

  it.effect("one timeout for all: a member whose slot lies beyond it refuses, named in AcquireTimeout, and nothing is taken", () =>
    Effect.gen(function*() {
      yield* RateLimiter.consume("global", { cost: 3 })
      const timedOut = yield* flipped(RateLimiter.consumeAll([{ limiter: "user", key: "ann" }, { limiter: "global" }], { timeout: "500 millis" }))
      expect(timedOut).toMatchObject({ _tag: "AcquireTimeout", limiter: "global", key: "" })
      expect(timedOut._tag === "AcquireTimeout" && Duration.toMillis(timedOut.timeout)).toBe(500)
      expect(yield* remaining("user", "ann")).toBe(2)
    }).pipe(Effect.provide(memory(limiters))))

  it.effect("a caller interrupted while it waits gives every member back", () =>
    Effect.gen(function*() {
      yield* RateLimiter.consume("global", { cost: 3 })
      const fiber = yield* Effect.fork(RateLimiter.consumeAll([{ limiter: "user", key: "ann", cost: 2 }, { limiter: "global" }, { limiter: "daily", key: "ann" }]))
      yield* TestClock.adjust("100 millis")
      expect(yield* remaining("daily", "ann")).toBe(1)
      yield* Fiber.interrupt(fiber)
      yield* settled
      expect(yield* remaining("daily", "ann")).toBe(2)
      expect(yield* remaining("user", "ann")).toBe(2)
      // global's next unit is free at the second again, as before the call.
      yield* TestClock.adjust("900 millis")
      expect((yield* RateLimiter.tryConsume("global")).limiter).toBe("global")
    }).pipe(Effect.provide(memory(limiters))))

  it.effect("bad input is a typed error and takes nothing", () =>
    Effect.gen(function*() {
      const tried = (entries: unknown) => flipped(RateLimiter.tryConsumeAll(entries as never))
      expect(yield* tried([])).toMatchObject({ _tag: "InvalidOption", option: "entries" })
      expect(yield* tried("user")).toMatchObject({ _tag: "InvalidOption", option: "entries" })
      expect(yield* tried([{ limiter: "user" }, 3])).toMatchObject({ _tag: "InvalidOption", option: "entries[1]" })
      expect(yield* tried([{ limiter: "user", key: "a" }, { limiter: "user", key: "a" }])).toMatchObject({ _tag: "InvalidOption", limiter: "user", option: "entries" })
      expect(yield* tried([{ limiter: "user" }, { limiter: "nope" }])).toMatchObject({ _tag: "LimiterNotFound", limiter: "nope" })
      expect(yield* tried([{ limiter: "user", key: 7 }])).toMatchObject({ _tag: "InvalidOption", option: "key" })
      expect(yield* tried([{ limiter: "user", cost: 1.5 }])).toMatchObject({ _tag: "InvalidCost", limiter: "user" })
      expect(yield* tried([{ limiter: "user", cost: 3 }])).toMatchObject({ _tag: "CostExceedsCapacity", limiter: "user" })
      expect(yield* tried([{ limiter: "user" }, { limiter: "jobs" }])).toMatchObject({ _tag: "InvalidOption", limiter: "jobs", option: "entries" })
      const badTimeout = yield* flipped(RateLimiter.consumeAll([{ limiter: "user" }], { timeout: -1 }))
      expect(badTimeout).toMatchObject({ _tag: "InvalidOption", option: "timeout" })
      yield* settled
      expect(yield* remaining("user")).toBe(2)
    }).pipe(Effect.provide(memory({ ...limiters, jobs: { store: "m1", max_concurrent: 1 } }))))

  it.effect("a member in shadow mode never refuses and is asked once the others admitted", () =>
    Effect.gen(function*() {
      yield* RateLimiter.tryConsumeAll([{ limiter: "user" }, { limiter: "watch" }])
      const both = yield* RateLimiter.tryConsumeAll([{ limiter: "user" }, { limiter: "watch" }])
      expect(both.map((p) => p.limiter)).toEqual(["user", "watch"])
      expect(yield* flipped(RateLimiter.tryConsumeAll([{ limiter: "user" }, { limiter: "watch" }]))).toMatchObject({ limiter: "user" })
    }).pipe(Effect.provide(memory({ ...limiters, watch: { store: "m2", rate_per_second: 1, mode: "shadow" } }))))

  it.effect("acquireAll and tryAcquireAll are the same calls in a scope", () =>
    Effect.gen(function*() {
      const permits = yield* Effect.scoped(RateLimiter.acquireAll([{ limiter: "user" }, { limiter: "daily" }]))
      expect(permits).toHaveLength(2)
      yield* Effect.scoped(RateLimiter.tryAcquireAll([{ limiter: "daily" }]))
      const exit = yield* Effect.exit(Effect.scoped(RateLimiter.tryAcquireAll([{ limiter: "user" }, { limiter: "daily" }])))
      expect(Exit.isFailure(exit)).toBe(true)
      yield* settled
      expect(yield* remaining("user")).toBe(1)
    }).pipe(Effect.provide(memory(limiters))))
})

describe("acquireAll when a store fails (memory behind injected faults, TestClock)", () => {
  const faulty = (failClosed: boolean) =>
    Effect.gen(function*() {
      const controller = yield* FaultyStore.makeController
      const layer = RateSync.layer({
        stores: { m1: { engine: "memory" }, m2: { engine: "memory" } },
        limiters: {
          first: { store: "m1", rate_per_second: 1, burst: 2 },
          last: { store: "m2", rate_per_second: 1, burst: 2, fail_closed: failClosed }
        }
      }).pipe(Layer.provide(FaultyStore.wrapFactory(controller, MemoryStore.layer)))
      return { controller, layer }
    })
  const both = [{ limiter: "first" }, { limiter: "last" }] as const
  // m1 is asked first: the caller's second acquire call is m2's.
  const onLast = (fault: FaultyStore.Fault) => FaultyStore.withFaults("caller", [{ op: "acquire", nth: 1, fault }])

  it.effect("an outage of the last store under fail_closed fails the call and gives back what the first took", () =>
    Effect.gen(function*() {
      const { layer } = yield* faulty(true)
      yield* Effect.gen(function*() {
        const error = yield* flipped(RateLimiter.consumeAll(both).pipe(onLast({ _tag: "Fail" })))
        expect(error._tag).toBe("StoreUnavailable")
        yield* settled
        expect(yield* remaining("first")).toBe(2)
      }).pipe(Effect.provide(layer))
    }))

  it.effect("an outage where every member fails open gives those members degraded permits, the others real ones", () =>
    Effect.gen(function*() {
      const { layer } = yield* faulty(false)
      yield* Effect.gen(function*() {
        const permits = yield* RateLimiter.consumeAll(both).pipe(onLast({ _tag: "Fail" }))
        expect(permits.map((p) => [p.limiter, p.degraded])).toEqual([["first", false], ["last", true]])
        expect(yield* remaining("first")).toBe(1)
      }).pipe(Effect.provide(layer))
    }))

  it.effect("a store too slow for the deadline is the caller's AcquireTimeout, and what the first took goes back", () =>
    Effect.gen(function*() {
      const { controller, layer } = yield* faulty(false)
      yield* Effect.gen(function*() {
        const fiber = yield* Effect.fork(RateLimiter.consumeAll(both, { timeout: "1 second" }).pipe(onLast({ _tag: "Hang" })))
        yield* TestClock.adjust("1 second")
        expect(yield* flipped(Fiber.join(fiber))).toMatchObject({ _tag: "AcquireTimeout" })
        yield* controller.heal
        yield* settled
        expect(yield* remaining("first")).toBe(2)
      }).pipe(Effect.provide(layer))
    }))
})

describe("acquireAll on a store that places its members one by one (TestClock)", () => {
  /** Stores named "one...": the memory engine asked member by member, as a Redis Cluster is when the keys live on several nodes. */
  const oneByOne: Layer.Layer<StoreFactory> = Layer.succeed(StoreFactory, {
    make: (name) =>
      Effect.map(MemoryStore.make({ name }), (store): Store => !name.startsWith("one") ? store : ({
        ...store,
        acquireAll: (requests, afterMs) =>
          Effect.gen(function*() {
            const outcomes: Array<Admitted> = []
            for (const [index, request] of requests.entries()) {
              const decided = yield* store.acquireAll([request], afterMs)
              if (decided._tag === "Refused") return { ...decided, index }
              outcomes.push(decided.outcomes[0]!)
            }
            return { _tag: "Admitted", outcomes, refundCosts: requests.map((r) => r.cost) } as const
          })
      }))
  })

  it.effect("members placed apart by more than their staleness allowance are asked again, for the latest slot", () =>
    Effect.gen(function*() {
      yield* RateLimiter.consume("slow")
      const fiber = yield* Effect.fork(RateLimiter.consumeAll([{ limiter: "fast" }, { limiter: "slow" }]))
      yield* TestClock.adjust("1 second")
      const [fast, slow] = yield* Fiber.join(fiber)
      expect(fast!.slotMs).toBe(slow!.slotMs)
      // fast's first slot (at 0) went back: its unit is taken once, at the second.
      expect(yield* remaining("fast")).toBe(1)
    }).pipe(Effect.provide(
      RateSync.layer({
        stores: { one: { engine: "memory" } },
        limiters: { fast: { store: "one", rate_per_second: 100, burst: 2 }, slow: { store: "one", rate_per_second: 1 } }
      }).pipe(Layer.provide(oneByOne))
    )))

  it.effect("a store asked before them is placed again at that slot too", () =>
    Effect.gen(function*() {
      yield* RateLimiter.consume("slow")
      const fiber = yield* Effect.fork(RateLimiter.consumeAll([{ limiter: "first" }, { limiter: "fast" }, { limiter: "slow" }]))
      yield* TestClock.adjust("1 second")
      expect((yield* Fiber.join(fiber)).map((p) => p.slotMs)).toEqual([1_000, 1_000, 1_000])
    }).pipe(Effect.provide(
      RateSync.layer({
        stores: { atomic: { engine: "memory" }, one: { engine: "memory" } },
        limiters: {
          first: { store: "atomic", rate_per_second: 100, burst: 2 },
          fast: { store: "one", rate_per_second: 100, burst: 2 },
          slow: { store: "one", rate_per_second: 1 }
        }
      }).pipe(Layer.provide(oneByOne))
    )))
})

// ---- properties on memory, TestClock ---------------------------------------------------------

type Table =
  | { readonly store: "m1" | "m2"; readonly rate_per_second: number; readonly burst: number }
  | { readonly store: "m1" | "m2"; readonly algorithm: "sliding_window"; readonly limit: number; readonly window_seconds: number }

const tableArb: FastCheck.Arbitrary<Table> = FastCheck.oneof(
  FastCheck.record({
    store: FastCheck.constantFrom("m1" as const, "m2" as const),
    rate_per_second: FastCheck.constantFrom(1, 2, 5, 10),
    burst: FastCheck.integer({ min: 1, max: 4 })
  }),
  FastCheck.record({
    store: FastCheck.constantFrom("m1" as const, "m2" as const),
    algorithm: FastCheck.constant("sliding_window" as const),
    limit: FastCheck.integer({ min: 1, max: 4 }),
    window_seconds: FastCheck.constantFrom(0.5, 1, 2)
  })
)

const NAMES = ["l0", "l1", "l2", "l3"] as const
const KEYS = ["a", "b"] as const

/** Two to four limiters, l0..l3, each on m1 or m2. */
const tablesArb = FastCheck.array(tableArb, { minLength: 2, maxLength: 4 })

const capacityOf = (table: Table) => ("burst" in table ? table.burst : table.limit)

interface Entry {
  readonly limiter: number
  readonly key: (typeof KEYS)[number]
  /** A fraction of the limiter's capacity, made a whole cost of 1 or more with it. */
  readonly share: number
}

/** Members of distinct limiter and key pairs. */
const entriesArb = FastCheck.uniqueArray(
  // Mostly one key, so that calls meet on it.
  FastCheck.record({ limiter: FastCheck.nat(3), key: FastCheck.constantFrom<(typeof KEYS)[number]>("a", "a", "a", "b"), share: FastCheck.double({ min: 0, max: 1, noNaN: true }) }),
  { minLength: 1, maxLength: 4, selector: (e) => `${e.limiter}:${e.key}` }
)

const entriesFor = (tables: ReadonlyArray<Table>, entries: ReadonlyArray<Entry>) =>
  entries.filter((e) => e.limiter < tables.length).map((e) => {
    const table = tables[e.limiter]!
    return { limiter: NAMES[e.limiter]!, key: e.key, cost: 1 + Math.floor(e.share * (capacityOf(table) - 1)), table }
  })

const layerOf = (tables: ReadonlyArray<Table>) => memory(Object.fromEntries(tables.map((table, i) => [NAMES[i]!, table])))

/** The reference: each key's own state, a composite admitted when every member would be alone, now. */
const makeModel = () => {
  const tats = new Map<string, number>()
  const logs = new Map<string, Array<WindowAlgorithm.Entry>>()
  const policyOf = (table: Table) =>
    "burst" in table
      ? { _tag: "TokenBucket" as const, ratePerSecond: table.rate_per_second, burst: table.burst, intervalMs: 1000 / table.rate_per_second }
      : { _tag: "SlidingWindow" as const, limit: table.limit, windowMs: table.window_seconds * 1000 }
  const decide = (member: { limiter: string; key: string; cost: number; table: Table }, now: number) => {
    const id = `${member.limiter}:${member.key}`
    const policy = policyOf(member.table)
    if (policy._tag === "TokenBucket") {
      const decision = Gcra.reserve(tats.get(id) ?? -Infinity, now, policy, member.cost, 0)
      return { admitted: decision.admitted, write: () => decision.admitted && tats.set(id, decision.tatMs) }
    }
    const log = logs.get(id) ?? []
    WindowAlgorithm.prune(log, now, policy)
    logs.set(id, log)
    const decision = WindowAlgorithm.reserve(log, now, -Infinity, policy, member.cost, 0)
    return { admitted: decision.admitted, write: () => decision.admitted && WindowAlgorithm.append(log, decision.slotMs, member.cost) }
  }
  const remainingOf = (limiter: string, key: string, table: Table, now: number) => {
    const policy = policyOf(table)
    const id = `${limiter}:${key}`
    if (policy._tag === "TokenBucket") return Gcra.remaining(tats.get(id) ?? -Infinity, now, policy)
    const log = logs.get(id) ?? []
    WindowAlgorithm.prune(log, now, policy)
    return policy.limit - WindowAlgorithm.used(log)
  }
  return { decide, remainingOf }
}

type Command =
  | { readonly _tag: "All"; readonly entries: ReadonlyArray<Entry> }
  | { readonly _tag: "One"; readonly entry: Entry }
  | { readonly _tag: "Advance"; readonly ms: number }

const commandArb: FastCheck.Arbitrary<Command> = FastCheck.oneof(
  { weight: 4, arbitrary: entriesArb.map((entries): Command => ({ _tag: "All", entries })) },
  { weight: 2, arbitrary: entriesArb.map((entries): Command => ({ _tag: "One", entry: entries[0]! })) },
  { weight: 2, arbitrary: FastCheck.integer({ min: 0, max: 700 }).map((ms): Command => ({ _tag: "Advance", ms })) }
)

describe("acquireAll properties on memory (TestClock)", () => {
  it.effect.prop(
    "tryConsumeAll admits exactly when every member would alone, and a refusal of any member consumes nothing (one or two stores)",
    [tablesArb, FastCheck.array(commandArb, { minLength: 1, maxLength: 30 })],
    ([tables, commands]) =>
      Effect.gen(function*() {
        const model = makeModel()
        const touched = new Map<string, { limiter: string; key: string; table: Table }>()
        for (const command of commands) {
          const now = yield* Clock.currentTimeMillis
          if (command._tag === "Advance") {
            yield* TestClock.adjust(Duration.millis(command.ms))
            continue
          }
          const members = entriesFor(tables, command._tag === "All" ? command.entries : [command.entry])
          if (members.length === 0) continue
          for (const m of members) touched.set(`${m.limiter}:${m.key}`, m)
          const decisions = members.map((m) => model.decide(m, now))
          const expected = decisions.every((d) => d.admitted)
          const call = command._tag === "All"
            ? RateLimiter.tryConsumeAll(members.map(({ cost, key, limiter }) => ({ limiter, key, cost })))
            : Effect.map(RateLimiter.tryConsume(members[0]!.limiter, members[0]!), (permit) => [permit])
          const exit = yield* Effect.exit(call)
          expect(Exit.isSuccess(exit), `${JSON.stringify(command)} at ${now}`).toBe(expected)
          if (expected) for (const d of decisions) d.write()
          if (Exit.isFailure(exit)) {
            const error = Cause.squash(exit.cause)
            // The member named is one that refuses alone.
            const named = members.findIndex((m) => Predicate.hasProperty(error, "limiter") && error.limiter === m.limiter && Predicate.hasProperty(error, "key") && error.key === m.key)
            expect(named >= 0 && !decisions[named]!.admitted, String(error)).toBe(true)
          }
          yield* settled
          for (const m of touched.values()) {
            expect(yield* remaining(m.limiter, m.key), `${m.limiter}:${m.key} after ${JSON.stringify(command)} at ${now}`).toBe(model.remainingOf(m.limiter, m.key, m.table, now))
          }
        }
      }).pipe(Effect.provide(layerOf(tables))),
    { fastCheck: { numRuns: 80 } }
  )
})

interface Job {
  readonly startMs: number
  readonly kind: "all" | "one" | "tryAll" | "tryOne"
  readonly entries: ReadonlyArray<Entry>
  readonly timeoutMs: number | undefined
  /** Interrupted this long after it started, if it is still running. */
  readonly interruptMs: number | undefined
}

const jobArb: FastCheck.Arbitrary<Job> = FastCheck.record({
  startMs: FastCheck.integer({ min: 0, max: 1_000 }),
  kind: FastCheck.constantFrom("all" as const, "all" as const, "one" as const, "tryAll" as const, "tryOne" as const),
  entries: entriesArb,
  timeoutMs: FastCheck.option(FastCheck.integer({ min: 0, max: 3_000 }), { nil: undefined }),
  interruptMs: FastCheck.option(FastCheck.integer({ min: 0, max: 1_500 }), { nil: undefined, freq: 4 })
})

describe("acquireAll bounds on memory (TestClock)", () => {
  it.effect.prop(
    "under concurrent composite and single calls (waiting, timing out, interrupted) every member's bound holds in caller time",
    [tablesArb, FastCheck.array(jobArb, { minLength: 1, maxLength: 16 })],
    ([tables, jobs]) =>
      Effect.gen(function*() {
        const admissions = new Map<string, Array<Admission>>()
        const run = (job: Job): Effect.Effect<ReadonlyArray<Permit>, unknown, RateLimiter> => {
          const members = entriesFor(tables, job.entries).map(({ cost, key, limiter }) => ({ limiter, key, cost }))
          const one = members[0]
          if (one === undefined) return Effect.succeed([])
          const timeout = job.timeoutMs === undefined ? undefined : Duration.millis(job.timeoutMs)
          switch (job.kind) {
            case "all":
              return RateLimiter.consumeAll(members, { timeout })
            case "tryAll":
              return RateLimiter.tryConsumeAll(members)
            case "one":
              return Effect.map(RateLimiter.consume(one.limiter, { ...one, timeout }), (p) => [p])
            case "tryOne":
              return Effect.map(RateLimiter.tryConsume(one.limiter, one), (p) => [p])
          }
        }
        // What a call returned is recorded at once, where nothing can interrupt it.
        const fibers = yield* Effect.forEach(jobs, (job) =>
          Effect.fork(Effect.zipRight(
            Effect.sleep(Duration.millis(job.startMs)),
            Effect.uninterruptibleMask((restore) =>
              Effect.flatMap(Effect.exit(restore(run(job))), (exit) =>
                Effect.flatMap(Clock.currentTimeMillis, (at) =>
                  Effect.sync(() => {
                    if (Exit.isFailure(exit)) return
                    for (const p of exit.value) {
                      const id = `${p.limiter}:${p.key}`
                      admissions.set(id, [...(admissions.get(id) ?? []), { slot: at, cost: p.cost }])
                    }
                  }))))
          )))
        yield* Effect.forEach(jobs, (job, i) =>
          job.interruptMs === undefined
            ? Effect.void
            : Effect.fork(Effect.zipRight(Effect.sleep(Duration.millis(job.startMs + job.interruptMs)), Fiber.interrupt(fibers[i]!))),
          { discard: true })
        // Time goes from one sleep to the next until every call ended.
        for (let idle = 0; idle < 5 && fibers.some((f) => f.unsafePoll() === null);) {
          yield* turn
          const sleeps = Chunk.toReadonlyArray(yield* TestClock.sleeps())
          if (sleeps.length === 0) idle++
          else yield* TestClock.setTime(Math.min(...sleeps))
        }
        expect(fibers.every((f) => f.unsafePoll() !== null)).toBe(true)
        for (const [id, list] of admissions) {
          const table = tables[NAMES.indexOf(id.split(":")[0]! as (typeof NAMES)[number])]!
          if ("burst" in table) expect(rateExcess(list, table.rate_per_second, table.burst), id).toBeLessThanOrEqual(1e-6)
          else expect(windowPeak(list, table.window_seconds * 1000), id).toBeLessThanOrEqual(table.limit)
        }
      }).pipe(Effect.provide(layerOf(tables))),
    { fastCheck: { numRuns: 60 } }
  )
})

// ---- live: PostgreSQL, Redis, and all three engines in one call ---------------------------------

const databaseUrl = inject("databaseUrl")
const redisUrl = inject("redisUrl")
const clusterAvailable = await installed()
let cluster: RedisCluster | undefined
beforeAll(async () => {
  if (clusterAvailable) cluster = await startRedisCluster(3, 0)
}, 60_000)
afterAll(async () => {
  await cluster?.stop()
})
let fresh = 0
const freshName = (prefix: string) => `${prefix}_${process.pid}_${Date.now().toString(36)}_${fresh++}`

type Engine = "pg" | "redis" | "mem"

/** One store of each engine asked for, and limiters on them. */
const live = (engines: ReadonlyArray<Engine>, limiters: SettingsInput["limiters"]) => {
  const table = freshName("acquire_all")
  const stores: Record<string, StoreConfigInput> = {}
  for (const engine of engines) {
    if (engine === "pg") stores["pg"] = { engine: "postgres", url: databaseUrl, table_name: table, auto_create: true }
    if (engine === "redis") stores["redis"] = { engine: "redis", url: redisUrl, key_prefix: `${table}:` }
    if (engine === "mem") stores["mem"] = { engine: "memory" }
  }
  return { table, layer: RateSync.layer({ stores, limiters }).pipe(Layer.provide(Stores.layer)) }
}

/** Rows of the PostgreSQL table whose id starts with `prefix`. */
const rowsLike = (table: string, prefix: string) =>
  Effect.acquireUseRelease(
    Effect.sync(() => new pg.Client({ connectionString: databaseUrl })),
    (client) =>
      Effect.promise(async () => {
        await client.connect()
        const result = await client.query(`SELECT count(*)::int AS n FROM public.${table} WHERE group_id LIKE $1`, [`${prefix}%`])
        return Number(result.rows[0]?.n)
      }),
    (client) => Effect.promise(() => client.end())
  )

/** Admissions at the stores' slots, by limiter and key. */
const slotsOf = (permits: ReadonlyArray<Permit>, into: Map<string, Array<Admission>>) => {
  for (const p of permits) {
    if (p.slotMs === undefined) continue
    const id = `${p.limiter}:${p.key}`
    into.set(id, [...(into.get(id) ?? []), { slot: p.slotMs, cost: p.cost }])
  }
}

/** What the engines of one store share: refusal, the common slot, interruption, concurrency without deadlocks. */
const engineSuite = (engine: "pg" | "redis") => {
  const on = (limiters: Record<string, Record<string, unknown>>) =>
    live([engine], Object.fromEntries(Object.entries(limiters).map(([name, table]) => [name, { ...table, store: engine }])))
  const limiters = {
    a: { rate_per_second: 0.5, burst: 2 },
    b: { rate_per_second: 1, burst: 1 },
    w: { algorithm: "sliding_window", limit: 1, window_seconds: 10 }
  }

  it.live("a refusal of any member consumes nothing; the refusal names the member", () => {
    const { layer, table } = on(limiters)
    return Effect.gen(function*() {
      yield* RateLimiter.tryConsumeAll([{ limiter: "a", key: "k" }, { limiter: "b", key: "k" }, { limiter: "w", key: "k" }])
      const refused = yield* flipped(RateLimiter.tryConsumeAll([{ limiter: "a", key: "fresh" }, { limiter: "b", key: "fresh" }, { limiter: "w", key: "k" }]))
      expect(refused).toMatchObject({ _tag: "RateLimitExceeded", limiter: "w", key: "k" })
      yield* Effect.sleep("50 millis")
      expect(yield* remaining("a", "fresh")).toBe(2)
      expect(yield* remaining("b", "fresh")).toBe(1)
      // Nothing written at all: the rows a refusal locked are rolled back.
      if (engine === "pg") expect(yield* rowsLike(table, "r:a:fresh")).toBe(0)
      const byB = yield* flipped(RateLimiter.tryConsumeAll([{ limiter: "a", key: "k" }, { limiter: "b", key: "k" }]))
      expect(byB).toMatchObject({ _tag: "RateLimitExceeded", limiter: "b" })
      yield* Effect.sleep("50 millis")
      expect(yield* remaining("a", "k")).toBe(1)
    }).pipe(Effect.provide(layer))
  })

  it.live("waits for the latest slot among the members: every member at one instant", () => {
    const { layer } = on(limiters)
    return Effect.gen(function*() {
      yield* RateLimiter.consume("b")
      const permits = yield* RateLimiter.consumeAll([{ limiter: "a" }, { limiter: "b" }], { timeout: "3 seconds" })
      // b's next unit was about a second away; a waited for it too, and is placed at it.
      expect(Duration.toMillis(permits[0]!.waited)).toBeGreaterThan(800)
      expect(permits[0]!.slotMs).toBeCloseTo(permits[1]!.slotMs!, 0)
    }).pipe(Effect.provide(layer))
  })

  it.live("a caller interrupted while it waits gives every member back", () => {
    const { layer } = on(limiters)
    return Effect.gen(function*() {
      yield* RateLimiter.consume("b")
      const fiber = yield* Effect.fork(RateLimiter.consumeAll([{ limiter: "a", cost: 2 }, { limiter: "b" }]))
      yield* Effect.sleep("300 millis")
      expect(yield* remaining("a")).toBe(0)
      yield* Fiber.interrupt(fiber)
      yield* Effect.sleep("100 millis")
      expect(yield* remaining("a")).toBe(2)
    }).pipe(Effect.provide(layer))
  })

  it.live("composites with their members in opposite orders and single calls run together: no deadlock, every member's bound holds", () => {
    const { layer } = on({ x: { rate_per_second: 20, burst: 2 }, y: { rate_per_second: 20, burst: 2 }, z: { algorithm: "sliding_window", limit: 3, window_seconds: 0.5 } })
    return Effect.gen(function*() {
      const admitted = new Map<string, Array<Admission>>()
      const entries = [[{ limiter: "x" }, { limiter: "y" }, { limiter: "z" }], [{ limiter: "z" }, { limiter: "y" }, { limiter: "x" }]] as const
      yield* Effect.forEach(Array.from({ length: 24 }, (_, i) => i), (i) =>
        Effect.gen(function*() {
          const permits = i % 3 === 2
            ? [yield* RateLimiter.consume(i % 2 === 0 ? "x" : "z", { timeout: "5 seconds" })]
            : yield* RateLimiter.consumeAll(entries[i % 2]!, { timeout: "5 seconds" })
          slotsOf(permits, admitted)
        }), { concurrency: "unbounded", discard: true })
      expect(rateExcess(admitted.get("x:")!, 20, 2)).toBeLessThanOrEqual(1e-3)
      expect(rateExcess(admitted.get("y:")!, 20, 2)).toBeLessThanOrEqual(1e-3)
      expect(windowPeak(admitted.get("z:")!, 500)).toBeLessThanOrEqual(3)
    }).pipe(Effect.provide(layer))
  }, 30_000)
}

describe("acquireAll on PostgreSQL", () => engineSuite("pg"))

describe.skipIf(redisUrl === "")("acquireAll on Redis", () => engineSuite("redis"))

describe.skipIf(redisUrl === "")("acquireAll over memory, PostgreSQL and Redis in one call", () => {
  const limiters = {
    local: { store: "mem", rate_per_second: 0.5, burst: 2 },
    shared: { store: "pg", rate_per_second: 0.5, burst: 2 },
    slow: { store: "pg", rate_per_second: 1, burst: 1 },
    quota: { store: "redis", algorithm: "sliding_window", limit: 2, window_seconds: 10 },
    edge: { store: "redis", rate_per_second: 0.5, burst: 2 }
  }
  const all = (key: string) => [{ limiter: "local", key }, { limiter: "shared", key }, { limiter: "edge", key }, { limiter: "quota", key }]

  it.live("every store admits, or what the first stores took is given back when the last refuses", () => {
    const { layer } = live(["mem", "pg", "redis"], limiters)
    return Effect.gen(function*() {
      const permits = yield* RateLimiter.tryConsumeAll(all("ann"))
      expect(permits.map((p) => [p.limiter, p.degraded])).toEqual([["local", false], ["shared", false], ["edge", false], ["quota", false]])
      yield* RateLimiter.tryConsume("quota", { key: "bob", cost: 2 })
      // bob's quota is spent: Redis, asked last, refuses, and memory's and PostgreSQL's units go back.
      const refused = yield* flipped(RateLimiter.tryConsumeAll(all("bob")))
      expect(refused).toMatchObject({ _tag: "RateLimitExceeded", limiter: "quota", key: "bob" })
      yield* Effect.sleep("100 millis")
      expect([yield* remaining("local", "bob"), yield* remaining("shared", "bob"), yield* remaining("edge", "bob")]).toEqual([2, 2, 2])
    }).pipe(Effect.provide(layer))
  })

  it.live("waits for the latest slot of the three stores, and an interruption meanwhile gives every store's back", () => {
    const { layer } = live(["mem", "pg", "redis"], limiters)
    return Effect.gen(function*() {
      yield* RateLimiter.consume("slow")
      const members = [{ limiter: "local", cost: 2 }, { limiter: "slow" }, { limiter: "edge", cost: 2 }, { limiter: "quota", cost: 2 }]
      const fiber = yield* Effect.fork(RateLimiter.consumeAll(members))
      yield* Effect.sleep("300 millis")
      expect([yield* remaining("local"), yield* remaining("edge"), yield* remaining("quota")]).toEqual([0, 0, 0])
      yield* Fiber.interrupt(fiber)
      yield* Effect.sleep("100 millis")
      expect([yield* remaining("local"), yield* remaining("edge"), yield* remaining("quota")]).toEqual([2, 2, 2])
      // Not interrupted, the call waits for PostgreSQL's slot, about a second after the first.
      const permits = yield* RateLimiter.consumeAll(members, { timeout: "3 seconds" })
      expect(Duration.toMillis(permits[0]!.waited)).toBeGreaterThan(300)
      expect(permits.map((p) => p.degraded)).toEqual([false, false, false, false])
    }).pipe(Effect.provide(layer))
  })
})

describe.skipIf(!clusterAvailable)("acquireAll on a Redis Cluster (3 masters, started by the test)", () => {
  const onCluster = (prefix: string) =>
    RateSync.layer({
      stores: { c: { engine: "redis", url: cluster!.seeds, cluster: true, key_prefix: prefix } },
      limiters: {
        a: { store: "c", rate_per_second: 0.5, burst: 2 },
        b: { store: "c", rate_per_second: 1, burst: 1 },
        f: { store: "c", rate_per_second: 20, burst: 2 },
        q: { store: "c", algorithm: "sliding_window", limit: 1, window_seconds: 10 }
      }
    }).pipe(Layer.provide(Stores.layer))

  it.live("the hash slot of a key is the cluster's own", () =>
    Effect.promise(async () => {
      const keys = ["foo", "{user1000}.following", "rs:{api:ann}:s", "a{}b", "{}{x}", "pre{fix}:{api:k}:log", "{ü}:s"]
      for (const key of keys) {
        expect(slotOf(key), key).toBe(Number(await onNode(cluster!.nodes[0]!.url, (redis) => redis.cluster("KEYSLOT", key))))
      }
    }))

  // Each limiter and key is a hash tag of its own: the members live on several masters, asked one by one.
  it.live("keys on several masters: a refusal gives back what the others took, and the members are placed at one slot", () =>
    Effect.gen(function*() {
      yield* RateLimiter.tryConsumeAll([{ limiter: "a", key: "k1" }, { limiter: "q", key: "k1" }])
      const refused = yield* flipped(RateLimiter.tryConsumeAll([{ limiter: "a", key: "k2" }, { limiter: "b", key: "k2" }, { limiter: "q", key: "k1" }]))
      expect(refused).toMatchObject({ _tag: "RateLimitExceeded", limiter: "q", key: "k1" })
      yield* Effect.sleep("100 millis")
      expect([yield* remaining("a", "k2"), yield* remaining("b", "k2")]).toEqual([2, 1])
      yield* RateLimiter.consume("b", { key: "k3" })
      // f's first slot, at once, lay further from b's than f's staleness allowance (one 50 ms interval): placed again at b's.
      const permits = yield* RateLimiter.consumeAll([{ limiter: "f", key: "k3" }, { limiter: "b", key: "k3" }], { timeout: "3 seconds" })
      expect(Math.abs(permits[0]!.slotMs! - permits[1]!.slotMs!)).toBeLessThan(50)
      expect(Duration.toMillis(permits[0]!.waited)).toBeGreaterThan(800)
    }).pipe(Effect.provide(onCluster(`rsaa:${process.pid}:`))))

  // A key_prefix with a hash tag of its own puts every key of the store in one slot: one script for all.
  it.live("keys in one slot: one script decides all, and a refusal consumes nothing", () =>
    Effect.gen(function*() {
      yield* RateLimiter.tryConsumeAll([{ limiter: "a" }, { limiter: "q" }])
      expect(yield* flipped(RateLimiter.tryConsumeAll([{ limiter: "b" }, { limiter: "q" }]))).toMatchObject({ limiter: "q" })
      yield* Effect.sleep("100 millis")
      expect([yield* remaining("a"), yield* remaining("b")]).toEqual([1, 1])
    }).pipe(Effect.provide(onCluster(`{rsaa${process.pid}}:`))))
})
