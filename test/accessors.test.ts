/**
 * The accessors (`RateLimiter.consume`, `acquire`, `tryConsume`, `tryAcquire`) run the call of a
 * service `make` built in the step that finds the service (internal/limiter.ts `InFiber`), and the
 * rate-only call first asks the store for a slot due now only (internal/rateOnly.ts). Both are the
 * service's methods by another route, so:
 *
 * 1. Every call answers through the accessor as through the method: the same permit or the same
 *    error, on a limiter that admits at once, makes callers wait or time out, and refuses options.
 * 2. A service of another making (spread from a built one, a method replaced) is called through
 *    its methods.
 *
 * Mutations: the accessors' consume run as a tryConsume (`trying` for `waiting`) fails 1; the in-step
 * calls enumerable on the service fails 2. (The first ask for a slot due now is checked elsewhere: one
 * that reserves a slot to wait for fails hotpath.test.ts's interruption at clock reading 1, and one
 * whose slot is asked for again fails rateLimiter.test.ts.)
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as FastCheck from "effect/FastCheck"
import * as Fiber from "effect/Fiber"
import * as TestClock from "effect/TestClock"
import type { LimiterSpec } from "../src/LimiterSpec.js"
import * as MemoryStore from "../src/memory/MemoryStore.js"
import * as RateLimiter from "../src/RateLimiter.js"

const { RateLimiter: Limiter } = RateLimiter

/** 100 per second, burst 2, a 50 ms timeout unless the call sets one: calls are admitted at once, wait, or time out. */
const spec: LimiterSpec = {
  name: "api",
  store: "m",
  rate: { _tag: "TokenBucket", ratePerSecond: 100, burst: 2, intervalMs: 10 },
  concurrency: undefined,
  timeoutMs: 50,
  failClosed: false,
  retry: { maxAttempts: 3, baseDelayMs: 1, maxDelayMs: 10 }
}

type Kind = "consume" | "acquire" | "tryConsume" | "tryAcquire"

interface Op {
  readonly kind: Kind
  readonly key: unknown
  readonly cost: unknown
  readonly timeout: unknown
}

const opArb: FastCheck.Arbitrary<Op> = FastCheck.record({
  kind: FastCheck.constantFrom<Kind>("consume", "acquire", "tryConsume", "tryAcquire"),
  key: FastCheck.constantFrom(undefined, "a", "b", 7),
  cost: FastCheck.constantFrom(undefined, 1, 2, 0, 1.5, 100),
  timeout: FastCheck.constantFrom(undefined, 0, "10 millis", -5)
})

type Service = Effect.Effect.Success<typeof Limiter>

/** JavaScript callers can pass anything: the options as they come. */
const optionsOf = (op: Op): RateLimiter.AcquireOptions => Object.fromEntries(Object.entries(op).filter(([name]) => name !== "kind"))

const byAccessor = (op: Op): Effect.Effect<RateLimiter.Permit, unknown, RateLimiter.RateLimiter> => {
  const options = optionsOf(op)
  switch (op.kind) {
    case "consume":
      return Limiter.consume("api", options)
    case "acquire":
      return Effect.scoped(Limiter.acquire("api", options))
    case "tryConsume":
      return Limiter.tryConsume("api", options)
    case "tryAcquire":
      return Effect.scoped(Limiter.tryAcquire("api", options))
  }
}

const byMethod = (service: Service, op: Op): Effect.Effect<RateLimiter.Permit, unknown> => {
  const options = optionsOf(op)
  switch (op.kind) {
    case "consume":
      return service.consume("api", options)
    case "acquire":
      return Effect.scoped(service.acquire("api", options))
    case "tryConsume":
      return service.tryConsume("api", options)
    case "tryAcquire":
      return Effect.scoped(service.tryAcquire("api", options))
  }
}

/** Each call in turn on a fresh store, with 60 ms for it to end (waiting, or timing out) before the next. */
const outcomes = (ops: ReadonlyArray<Op>, viaAccessor: boolean) =>
  Effect.gen(function*() {
    const store = yield* MemoryStore.make({ name: "m" })
    const service = yield* RateLimiter.make({ stores: new Map([["m", store]]), limiters: [spec] })
    const results: Array<unknown> = []
    for (const op of ops) {
      const call = viaAccessor ? byAccessor(op) : byMethod(service, op)
      const fiber = yield* Effect.fork(Effect.either(Effect.provideService(call, Limiter, service)))
      yield* TestClock.adjust("60 millis")
      const result = yield* Fiber.join(fiber)
      // An error's fields (a stack trace differs between the two).
      results.push(Either.mapLeft(result, (error) => (typeof error === "object" && error !== null ? { ...error } : error)))
    }
    return results
  }).pipe(Effect.scoped)

describe("RateLimiter accessors", () => {
  it.effect.prop(
    "answer every call as the service's methods do: the same permit or the same error",
    [FastCheck.array(opArb, { minLength: 1, maxLength: 12 })],
    ([ops]) =>
      Effect.gen(function*() {
        const viaMethods = yield* outcomes(ops, false)
        const viaAccessors = yield* outcomes(ops, true)
        expect(viaAccessors).toStrictEqual(viaMethods)
      }),
    { fastCheck: { numRuns: 60 } }
  )

  it.effect("call the methods of a service spread from a built one with its methods replaced", () =>
    Effect.gen(function*() {
      const store = yield* MemoryStore.make({ name: "m" })
      const built = yield* RateLimiter.make({ stores: new Map([["m", store]]), limiters: [spec] })
      const calls: Array<string> = []
      const decorated: Service = {
        ...built,
        consume: (limiter, options) => Effect.zipRight(Effect.sync(() => calls.push("consume")), built.consume(limiter, options)),
        acquire: (limiter, options) => Effect.zipRight(Effect.sync(() => calls.push("acquire")), built.acquire(limiter, options)),
        tryConsume: (limiter, options) =>
          Effect.zipRight(Effect.sync(() => calls.push("tryConsume")), built.tryConsume(limiter, options)),
        tryAcquire: (limiter, options) =>
          Effect.zipRight(Effect.sync(() => calls.push("tryAcquire")), built.tryAcquire(limiter, options))
      }
      yield* Effect.gen(function*() {
        yield* Limiter.consume("api")
        yield* Effect.scoped(Limiter.acquire("api"))
        yield* TestClock.adjust("20 millis")
        yield* Limiter.tryConsume("api")
        yield* Effect.scoped(Limiter.tryAcquire("api"))
      }).pipe(Effect.provideService(Limiter, decorated))
      expect(calls).toEqual(["consume", "acquire", "tryConsume", "tryAcquire"])
    }).pipe(Effect.scoped))
})
