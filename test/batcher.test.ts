import { describe, expect, it } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FastCheck from "effect/FastCheck"
import * as Fiber from "effect/Fiber"
import * as Scope from "effect/Scope"
import * as TestClock from "effect/TestClock"
import * as Batcher from "../src/internal/batcher.js"

/** A batcher whose writes wait for the test to open a gate, recording each write's items. */
const setup = (maxInFlight: number, fail?: (items: ReadonlyArray<number>) => boolean) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    const writes: Array<ReadonlyArray<number>> = []
    let gate = yield* Deferred.make<void>()
    const batcher = Batcher.make<number, string, string>({
      scope,
      maxBatch: 4,
      maxInFlight,
      write: (items) =>
        Effect.suspend(() => {
          writes.push(items)
          return Effect.zipRight(
            Deferred.await(gate),
            fail?.(items) === true ? Effect.fail(`failed ${items.join(",")}`) : Effect.succeed(items.map((i) => `r${i}`))
          )
        }),
      closed: "closed",
      timedOut: () => "timed out"
    })
    /** Lets the writes under way end; the writes they start wait for the next opening. */
    const open = Effect.gen(function*() {
      const opened = gate
      gate = yield* Deferred.make<void>()
      yield* Deferred.succeed(opened, undefined)
      yield* Effect.repeatN(Effect.yieldNow(), 20)
    })
    return { scope, writes, batcher, open }
  })

const settle = Effect.repeatN(Effect.yieldNow(), 20)

describe("batcher: writes of different keys together", () => {
  it.effect("a lone item is written at once, alone; what arrives meanwhile goes in the next write, in order, up to maxBatch", () =>
    Effect.gen(function*() {
      const { batcher, open, writes } = yield* setup(1)
      const first = yield* Effect.fork(batcher.submit(0))
      yield* settle
      expect(writes).toEqual([[0]])
      const rest = yield* Effect.forEach([1, 2, 3, 4, 5, 6], (i) => Effect.fork(batcher.submit(i)))
      yield* settle
      expect(batcher.load()).toEqual({ inFlight: 1, queued: 6, writes: 1, items: 1 })
      yield* open
      expect(writes).toEqual([[0], [1, 2, 3, 4]])
      yield* open
      expect(writes).toEqual([[0], [1, 2, 3, 4], [5, 6]])
      yield* open
      expect(yield* Fiber.join(first)).toBe("r0")
      expect(yield* Effect.forEach(rest, Fiber.join)).toEqual(["r1", "r2", "r3", "r4", "r5", "r6"])
      expect(batcher.load()).toEqual({ inFlight: 0, queued: 0, writes: 3, items: 7 })
    }))

  it.effect("up to maxInFlight writes run at once; a failed write fails exactly its own items", () =>
    Effect.gen(function*() {
      const { batcher, open, writes } = yield* setup(2, (items) => items.includes(1))
      const fibers = [yield* Effect.fork(Effect.either(batcher.submit(0)))]
      yield* settle
      fibers.push(yield* Effect.fork(Effect.either(batcher.submit(1))))
      yield* settle
      for (const i of [2, 3, 4]) fibers.push(yield* Effect.fork(Effect.either(batcher.submit(i))))
      yield* settle
      expect(writes).toEqual([[0], [1]])
      expect(batcher.load()).toEqual({ inFlight: 2, queued: 3, writes: 2, items: 2 })
      yield* open
      yield* open
      const results = yield* Effect.forEach(fibers, Fiber.join)
      expect(results.map((r) => r._tag === "Right" ? r.right : r.left)).toEqual(["r0", "failed 1", "r2", "r3", "r4"])
      expect(writes).toEqual([[0], [1], [2, 3, 4]])
    }))

  it.effect("a waiter interrupted while queued is never written; a closed scope fails what is queued or being written", () =>
    Effect.gen(function*() {
      const { batcher, open, scope, writes } = yield* setup(1)
      const first = yield* Effect.fork(batcher.submit(0))
      yield* settle
      const quitter = yield* Effect.fork(batcher.submit(1))
      const stayer = yield* Effect.fork(batcher.submit(2))
      yield* settle
      yield* Fiber.interrupt(quitter)
      yield* open
      yield* open
      expect(yield* Fiber.join(first)).toBe("r0")
      expect(yield* Fiber.join(stayer)).toBe("r2")
      expect(writes).toEqual([[0], [2]])
      // The store closes while a write is under way and another item waits: both learn it is closed.
      const writing = yield* Effect.fork(Effect.either(batcher.submit(3)))
      yield* settle
      const queued = yield* Effect.fork(Effect.either(batcher.submit(4)))
      yield* settle
      expect(batcher.load()).toMatchObject({ inFlight: 1, queued: 1 })
      yield* Scope.close(scope, Exit.void)
      for (const fiber of [writing, queued]) {
        const result = yield* Fiber.join(fiber)
        expect(result._tag === "Left" ? result.left : result.right).toBe("closed")
      }
      expect(batcher.load()).toMatchObject({ inFlight: 0, queued: 0 })
    }))

  it.effect("a caller given waitMs fails with timedOut then, its item taken out if still queued; the others are not held up", () =>
    Effect.gen(function*() {
      const { batcher, open, writes } = yield* setup(1)
      // Under way when its time runs out: the caller leaves, the write goes on (bounded by `bound`).
      const writing = yield* Effect.fork(Effect.either(batcher.submit(0, 50)))
      yield* settle
      const queued = yield* Effect.fork(Effect.either(batcher.submit(1, 50)))
      const patient = yield* Effect.fork(batcher.submit(2, 500))
      yield* settle
      yield* TestClock.adjust(Duration.millis(49))
      expect(writing.unsafePoll()).toBeNull()
      yield* TestClock.adjust(Duration.millis(1))
      for (const fiber of [writing, queued]) {
        const result = yield* Fiber.join(fiber)
        expect(result._tag === "Left" ? result.left : result.right).toBe("timed out")
      }
      expect(batcher.load()).toMatchObject({ inFlight: 1, queued: 1 })
      yield* open
      yield* open
      expect(yield* Fiber.join(patient)).toBe("r2")
      expect(writes).toEqual([[0], [2]])
      // Answered in time: the result stands.
      const answered = yield* Effect.fork(batcher.submit(3, 50))
      yield* settle
      yield* open
      expect(yield* Fiber.join(answered)).toBe("r3")
      yield* TestClock.adjust(Duration.millis(100))
      expect(batcher.load()).toMatchObject({ inFlight: 0, queued: 0, writes: 3, items: 3 })
    }))

  it.effect("property: every caller gets its own item's result, whatever the arrival pattern", () =>
    Effect.gen(function*() {
      const samples = FastCheck.sample(
        FastCheck.record({
          maxInFlight: FastCheck.integer({ min: 1, max: 3 }),
          waves: FastCheck.array(FastCheck.integer({ min: 1, max: 12 }), { minLength: 1, maxLength: 6 })
        }),
        40
      )
      for (const { maxInFlight, waves } of samples) {
        const { batcher, open, writes } = yield* setup(maxInFlight)
        const fibers: Array<Fiber.RuntimeFiber<string, string>> = []
        let next = 0
        for (const size of waves) {
          for (let i = 0; i < size; i++) fibers.push(yield* Effect.fork(batcher.submit(next++)))
          yield* settle
          yield* open
        }
        while (batcher.load().inFlight > 0) yield* open
        expect(yield* Effect.forEach(fibers, Fiber.join)).toEqual(fibers.map((_, i) => `r${i}`))
        // Every item written exactly once, no write over maxBatch.
        expect(writes.flat().sort((a, b) => a - b)).toEqual(fibers.map((_, i) => i))
        expect(writes.every((w) => w.length <= 4)).toBe(true)
      }
    }))
})
