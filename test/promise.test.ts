import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as FastCheck from "effect/FastCheck"
import * as Predicate from "effect/Predicate"
import { afterAll, describe, expect, it } from "vitest"
import * as Errors from "../src/Errors.js"
import { liveGenerations } from "../src/internal/promiseRuntime.js"
import * as RateSync from "../src/promise.js"

afterAll(() => RateSync.close())

const rejection = (promise: Promise<unknown>): Promise<unknown> => promise.then(() => undefined, (e: unknown) => e)

/** Calls an entry point as JavaScript may: with no type checks on its arguments. */
const js = (fn: (...args: never) => Promise<unknown>, ...args: ReadonlyArray<unknown>): Promise<unknown> =>
  Reflect.apply(fn, undefined, args)

/** Gives back what a call resolved with, if it holds anything. */
const settle = async (result: unknown): Promise<void> => {
  if (Predicate.hasProperty(result, "release") && Predicate.isFunction(result.release)) await result.release()
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

describe("rate-sync/promise", () => {
  it("configures, acquires with await using, and releases at the end of the block", async () => {
    await RateSync.configureStore("mem", { engine: "memory" })
    await RateSync.configureLimiter("jobs", { store: "mem", rate_per_second: 1000, max_concurrent: 2 })
    {
      await using permit = await RateSync.acquire("jobs")
      expect(permit.limiter).toBe("jobs")
      expect((await RateSync.state("jobs")).leasesHeld).toBe(1)
    }
    expect((await RateSync.state("jobs")).leasesHeld).toBe(0)
    expect(await RateSync.withPermit("jobs", async () => "done")).toBe("done")
    await expect(RateSync.withPermit("jobs", () => Promise.reject(new Error("upstream failed")))).rejects.toThrow("upstream failed")
    expect((await RateSync.state("jobs")).leasesHeld).toBe(0)
  })

  it("withPermit holds a lease while fn runs, hands fn the permit, and checks fn before taking anything", async () => {
    const seen = await RateSync.withPermit("jobs", async (permit) => {
      expect((await RateSync.state("jobs")).leasesHeld).toBe(1)
      return permit
    }, { key: "", timeout: 1_000 })
    expect(seen.limiter).toBe("jobs")
    expect(typeof seen.waited).toBe("number")
    expect((await RateSync.state("jobs")).leasesHeld).toBe(0)
    const error = await rejection(js(RateSync.withPermit, "jobs", "not a function"))
    expect(error).toBeInstanceOf(RateSync.InvalidOption)
    expect(error instanceof RateSync.InvalidOption && error.option).toBe("fn")
    expect((await RateSync.state("jobs")).leasesHeld).toBe(0)
  })

  it("rejects with the typed errors: RateLimitExceeded carries retryAfter in ms, limit and remaining", async () => {
    await RateSync.configureLimiter("slow", { store: "mem", rate_per_second: 0.5, burst: 2 })
    await RateSync.tryAcquire("slow")
    await RateSync.tryAcquire("slow")
    const error = await rejection(RateSync.tryAcquire("slow"))
    expect(error).toBeInstanceOf(RateSync.RateLimitExceeded)
    if (!(error instanceof RateSync.RateLimitExceeded)) return
    expect(error._tag).toBe("RateLimitExceeded")
    expect(error.name).toBe("RateLimitExceeded")
    expect(error).toBeInstanceOf(Error)
    expect(error.limit).toBe(2)
    expect(error.remaining).toBe(0)
    // 0.5 per second: the next unit is about 2 s away, as a plain number of ms.
    expect(typeof error.retryAfter).toBe("number")
    expect(error.retryAfter).toBeGreaterThan(1_500)
    expect(error.retryAfter).toBeLessThanOrEqual(2_000)
    expect(error.message).toMatch(/retry after \d+ ms$/)
    expect(JSON.parse(JSON.stringify(error))).toMatchObject({ _tag: "RateLimitExceeded", retryAfter: error.retryAfter })
    await expect(RateSync.acquire("missing")).rejects.toBeInstanceOf(RateSync.LimiterNotFound)
    const timedOut = await rejection(RateSync.acquire("slow", { timeout: 10 }))
    expect(timedOut).toBeInstanceOf(RateSync.AcquireTimeout)
    if (!(timedOut instanceof RateSync.AcquireTimeout)) return
    expect(timedOut._tag).toBe("AcquireTimeout")
    expect(timedOut.timeout).toBe(10)
    // The slot was about 2 s away; the deadline 10 ms: it would have been free about 2 s after it.
    expect(typeof timedOut.retryAfter).toBe("number")
    expect(timedOut.retryAfter).toBeGreaterThan(1_400)
    // These two are the Promise API's own classes, not the Effect API's (whose durations are Durations).
    expect(error).not.toBeInstanceOf(Errors.RateLimitExceeded)
    expect(timedOut).not.toBeInstanceOf(Errors.AcquireTimeout)
  })

  it("state() and permits give their durations as numbers of milliseconds", async () => {
    await RateSync.configureLimiter("ms", { store: "mem", rate_per_second: 2, burst: 1 })
    const fresh = await RateSync.state("ms")
    expect(fresh.resetAfter).toBe(0)
    expect(fresh.nextSlotAfter).toBe(0)
    const first = await RateSync.consume("ms")
    expect(first.waited).toBeGreaterThanOrEqual(0)
    const drained = await RateSync.state("ms")
    expect(typeof drained.resetAfter).toBe("number")
    expect(typeof drained.nextSlotAfter).toBe("number")
    // 2 per second: the next unit about 500 ms away.
    expect(drained.nextSlotAfter).toBeGreaterThan(300)
    expect(drained.nextSlotAfter).toBeLessThanOrEqual(500)
    expect(drained.resetAfter).toBeLessThanOrEqual(500)
    // A plain object: it prints and serialises as numbers.
    expect(JSON.parse(JSON.stringify(drained))).toEqual({ ...drained, maxConcurrent: undefined, limit: 1, remaining: 0 })
    const waitedFor = await RateSync.acquire("ms", { timeout: 2_000 })
    expect(typeof waitedFor.waited).toBe("number")
    expect(waitedFor.waited).toBeGreaterThan(200)
    await sleep(520)
    const tried = await RateSync.tryAcquire("ms")
    expect(typeof tried.waited).toBe("number")
  })

  it("consume takes a rate slot with nothing to release, and rejects a limiter with leases", async () => {
    await RateSync.configureLimiter("calls", { store: "mem", rate_per_second: 0.5, burst: 1 })
    const permit = await RateSync.consume("calls")
    expect(permit.limiter).toBe("calls")
    await expect(RateSync.tryAcquire("calls")).rejects.toBeInstanceOf(RateSync.RateLimitExceeded)
    await expect(RateSync.consume("calls", { timeout: 10 })).rejects.toBeInstanceOf(RateSync.AcquireTimeout)
    await expect(RateSync.consume("jobs")).rejects.toBeInstanceOf(RateSync.LeaseNeedsScope)
  })

  it("tryConsume never waits: a rate slot with nothing to release, RateLimitExceeded in ms, LeaseNeedsScope with leases", async () => {
    await RateSync.configureLimiter("once", { store: "mem", rate_per_second: 0.5, burst: 1 })
    const started = Date.now()
    const permit = await RateSync.tryConsume("once", { key: "user-1" })
    expect(permit).toMatchObject({ limiter: "once", key: "user-1", cost: 1, leaseId: undefined, remaining: 0 })
    expect(typeof permit.waited).toBe("number")
    expect("release" in permit).toBe(false)
    const refused = await rejection(RateSync.tryConsume("once", { key: "user-1" }))
    expect(Date.now() - started).toBeLessThan(1_000)
    expect(refused).toBeInstanceOf(RateSync.RateLimitExceeded)
    expect(refused instanceof RateSync.RateLimitExceeded && refused.retryAfter).toBeGreaterThan(1_500)
    // Another key has its own slot.
    await RateSync.tryConsume("once", { key: "user-2" })
    await expect(RateSync.tryConsume("once", { cost: 2 })).rejects.toBeInstanceOf(RateSync.CostExceedsCapacity)
    // A limiter with leases refuses as consume does, and holds nothing afterwards.
    await expect(RateSync.tryConsume("jobs")).rejects.toBeInstanceOf(RateSync.LeaseNeedsScope)
    const badKey = await rejection(js(RateSync.tryConsume, "jobs", { key: 7 }))
    expect(badKey instanceof RateSync.InvalidOption && badKey.option).toBe("key")
    expect(await rejection(js(RateSync.consume, "jobs", { key: 7 }))).toEqual(badKey)
    expect((await RateSync.state("jobs")).leasesHeld).toBe(0)
    await expect(RateSync.tryConsume("missing")).rejects.toBeInstanceOf(RateSync.LimiterNotFound)
  })

  it("values plain JavaScript may pass (a numeric key, a NaN, negative or unparsable timeout) reject with InvalidOption naming the option", async () => {
    await RateSync.configureLimiter("js", { store: "mem", rate_per_second: 0.5, burst: 1 })
    for (const [options, option] of [
      [{ key: 42 }, "key"],
      [{ timeout: Number.NaN }, "timeout"],
      [{ timeout: -5 }, "timeout"],
      [{ timeout: "abc" }, "timeout"],
      [null, "options"],
      [5, "options"],
      [{ signal: "stop" }, "signal"]
    ] as const) {
      const error = await rejection(js(RateSync.acquire, "js", options))
      expect(error).toBeInstanceOf(RateSync.InvalidOption)
      expect(error instanceof RateSync.InvalidOption && error.option).toBe(option)
    }
    await expect(js(RateSync.acquire, "js", { cost: "2" })).rejects.toBeInstanceOf(RateSync.InvalidCost)
    // None took the limiter's one slot, and a refusal is the usual RateLimitExceeded.
    await (await RateSync.tryAcquire("js")).release()
    await expect(RateSync.tryAcquire("js")).rejects.toBeInstanceOf(RateSync.RateLimitExceeded)
  })

  describe("options checked as JavaScript passes them (properties)", () => {
    /** A value with whether the call accepts it. */
    type Graded = readonly [value: unknown, valid: boolean]
    const graded = (valid: FastCheck.Arbitrary<unknown>, invalid: FastCheck.Arbitrary<unknown>): FastCheck.Arbitrary<Graded> =>
      FastCheck.oneof(
        FastCheck.constant<Graded>([undefined, true]),
        valid.map((value): Graded => [value, true]),
        invalid.map((value): Graded => [value, false])
      )
    const notUndefined = (value: unknown) => value !== undefined
    const keys = graded(
      FastCheck.string({ maxLength: 6 }),
      FastCheck.anything().filter((value) => typeof value !== "string" && notUndefined(value))
    )
    const timeouts = graded(
      // Never a few ms: a free permit can take that long on a busy machine, and time out.
      FastCheck.oneof(FastCheck.integer({ min: 1_000, max: 60_000 }), FastCheck.constantFrom(0, "2 seconds", Number.POSITIVE_INFINITY)),
      FastCheck.oneof(
        FastCheck.constant(Number.NaN),
        FastCheck.double({ max: -Number.MIN_VALUE, noNaN: true }),
        FastCheck.constantFrom("abc", "", "soon", null, true, {}, [])
      )
    )
    const costs = graded(
      FastCheck.integer({ min: 1, max: 3 }),
      FastCheck.oneof(
        FastCheck.integer({ max: 0 }),
        FastCheck.double({ noNaN: true }).filter((cost) => !Number.isInteger(cost)),
        FastCheck.constantFrom(Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY),
        FastCheck.anything().filter((cost) => typeof cost !== "number" && notUndefined(cost))
      )
    )
    const signals = graded(
      FastCheck.constant(null).map(() => new AbortController().signal),
      FastCheck.anything().filter(notUndefined)
    )

    interface EntryPoint {
      readonly name: string
      readonly call: (limiter: unknown, options: unknown) => Promise<unknown>
      /** The options it reads, in the order it checks them. */
      readonly reads: ReadonlyArray<"signal" | "key" | "timeout" | "cost">
      /** Whether it takes rate units; `state` only reads. */
      readonly takes: boolean
      readonly leases: boolean
    }
    const waits = ["signal", "key", "timeout", "cost"] as const
    const tries = ["key", "cost"] as const
    const entryPoints: ReadonlyArray<EntryPoint> = [
      { name: "acquire", call: (l, o) => js(RateSync.acquire, l, o), reads: waits, takes: true, leases: true },
      { name: "acquire", call: (l, o) => js(RateSync.acquire, l, o), reads: waits, takes: true, leases: false },
      { name: "withPermit", call: (l, o) => js(RateSync.withPermit, l, async () => "done", o), reads: waits, takes: true, leases: true },
      { name: "consume", call: (l, o) => js(RateSync.consume, l, o), reads: waits, takes: true, leases: false },
      { name: "tryAcquire", call: (l, o) => js(RateSync.tryAcquire, l, o), reads: tries, takes: true, leases: true },
      { name: "tryAcquire", call: (l, o) => js(RateSync.tryAcquire, l, o), reads: tries, takes: true, leases: false },
      { name: "tryConsume", call: (l, o) => js(RateSync.tryConsume, l, o), reads: tries, takes: true, leases: false },
      { name: "state", call: (l, o) => js(RateSync.state, l, o), reads: ["key"], takes: false, leases: true }
    ]
    const allEntryPoints: ReadonlyArray<(limiter: unknown, options: unknown) => Promise<unknown>> = [
      ...entryPoints.map((entry) => entry.call),
      (l, o) => js(RateSync.backoff, l, o)
    ]

    // Room for every run: the rate refills a unit in 1,000 s, so `remaining` moves only by what calls take.
    const prepare = async () => {
      await RateSync.configureLimiter("roomy", { store: "mem", rate_per_second: 0.001, burst: 1_000_000 })
      await RateSync.configureLimiter("roomyLeases", { store: "mem", rate_per_second: 0.001, burst: 1_000_000, max_concurrent: 50 })
    }

    it("any options object: a typed rejection naming the first bad option, and nothing taken; else a permit", async () => {
      await prepare()
      await FastCheck.assert(
        FastCheck.asyncProperty(
          FastCheck.constantFrom(...entryPoints),
          FastCheck.record({ key: keys, timeout: timeouts, cost: costs, signal: signals }),
          async (entry, picked) => {
            const options = Object.fromEntries(
              Object.entries(picked).filter(([, [value]]) => value !== undefined).map(([name, [value]]) => [name, value])
            )
            const limiter = entry.leases ? "roomyLeases" : "roomy"
            const key = picked.key[1] && typeof picked.key[0] === "string" ? picked.key[0] : ""
            const before = await RateSync.state(limiter, { key })
            const error = await entry.call(limiter, options).then(async (result) => {
              await settle(result)
              return undefined
            }, (e: unknown) => e)
            const after = await RateSync.state(limiter, { key })
            const bad = entry.reads.find((option) => !picked[option][1])
            if (bad === undefined) {
              expect(error).toBeUndefined()
              const cost = picked.cost[0] === undefined ? 1 : picked.cost[0]
              const remaining = before.remaining ?? 0
              expect(after.remaining).toBe(entry.takes && typeof cost === "number" ? remaining - cost : remaining)
            } else {
              if (bad === "cost") {
                expect(error).toBeInstanceOf(RateSync.InvalidCost)
              } else {
                expect(error).toBeInstanceOf(RateSync.InvalidOption)
                expect(error instanceof RateSync.InvalidOption && [error.option, error.limiter]).toEqual([bad, limiter])
              }
              expect(after.remaining).toBe(before.remaining)
            }
            expect(after.leasesHeld).toBe(0)
            expect(after.waiting).toBe(0)
          }
        ),
        { numRuns: 400 }
      )
    })

    it("options that are not an object, and a limiter name that is not a string, reject with InvalidOption", async () => {
      await prepare()
      const notObjects = FastCheck.oneof(
        FastCheck.constant(null),
        FastCheck.string(),
        FastCheck.double(),
        FastCheck.boolean(),
        FastCheck.bigInt(),
        FastCheck.constant(Symbol("options")),
        FastCheck.array(FastCheck.anything(), { maxLength: 3 }),
        FastCheck.func(FastCheck.anything())
      )
      await FastCheck.assert(
        FastCheck.asyncProperty(FastCheck.constantFrom(...allEntryPoints), notObjects, async (call, options) => {
          const error = await rejection(call("roomyLeases", options))
          expect(error).toBeInstanceOf(RateSync.InvalidOption)
          expect(error instanceof RateSync.InvalidOption && [error.option, error.limiter]).toEqual(["options", "roomyLeases"])
        }),
        { numRuns: 200 }
      )
      await FastCheck.assert(
        FastCheck.asyncProperty(
          FastCheck.constantFrom(...allEntryPoints),
          FastCheck.anything().filter((name) => typeof name !== "string"),
          async (call, limiter) => {
            const error = await rejection(call(limiter, { retryAfter: 1 }))
            expect(error).toBeInstanceOf(RateSync.InvalidOption)
            expect(error instanceof RateSync.InvalidOption && [error.option, error.limiter]).toEqual(["limiter", ""])
          }
        ),
        { numRuns: 200 }
      )
      expect((await RateSync.state("roomyLeases")).leasesHeld).toBe(0)
    })

    it("configuration calls reject anything they cannot use with ConfigurationError, keeping the working configuration", async () => {
      await prepare()
      await FastCheck.assert(
        FastCheck.asyncProperty(
          FastCheck.constantFrom(RateSync.configureStore, RateSync.configureLimiter),
          FastCheck.anything(),
          FastCheck.anything(),
          async (configure, name, config) => {
            const error = await rejection(js(configure, name, config))
            expect(error).toBeInstanceOf(RateSync.ConfigurationError)
          }
        ),
        { numRuns: 200 }
      )
      // A name that is not a string, even with a valid table (a number would be coerced, a symbol dropped).
      await FastCheck.assert(
        FastCheck.asyncProperty(
          FastCheck.constantFrom(
            (name: unknown) => js(RateSync.configureStore, name, { engine: "memory" }),
            (name: unknown) => js(RateSync.configureLimiter, name, { store: "mem", rate_per_second: 1 })
          ),
          FastCheck.anything().filter((name) => typeof name !== "string"),
          async (configure, name) => {
            await expect(configure(name)).rejects.toBeInstanceOf(RateSync.ConfigurationError)
          }
        ),
        { numRuns: 100 }
      )
      await FastCheck.assert(
        FastCheck.asyncProperty(FastCheck.anything().filter((path) => typeof path !== "string" && notUndefined(path)), async (path) => {
          await expect(js(RateSync.loadConfig, path)).rejects.toBeInstanceOf(RateSync.ConfigurationError)
        }),
        { numRuns: 50 }
      )
      await RateSync.tryConsume("roomy")
    })
  })

  it("a configuration mistake throws where it is made", async () => {
    const error = await rejection(RateSync.configureLimiter("bad", { store: "nowhere", rate_per_second: 1 }))
    expect(error).toBeInstanceOf(RateSync.ConfigurationError)
    expect(error instanceof RateSync.ConfigurationError && error.message).toContain(`limiters.bad.store: Expected the name of a configured store`)
    // The rejected change left the working configuration in place.
    await RateSync.tryAcquire("jobs").then((p) => p.release())
  })

  describe("AbortSignal", () => {
    it("aborting a waiter for a lease rejects with an AbortError carrying the reason, and gives its place back", async () => {
      await RateSync.configureLimiter("one", { store: "mem", max_concurrent: 1 })
      const holder = await RateSync.acquire("one")
      const controller = new AbortController()
      const waiting = rejection(RateSync.acquire("one", { signal: controller.signal }))
      await sleep(20)
      expect((await RateSync.state("one")).waiting).toBe(1)
      const reason = new Error("the client went away")
      controller.abort(reason)
      const error = await waiting
      expect(error).toBeInstanceOf(RateSync.AbortError)
      expect(error).toBeInstanceOf(Error)
      expect(error instanceof RateSync.AbortError && [error.name, error._tag, error.cause, error.code]).toEqual([
        "AbortError",
        "AbortError",
        reason,
        "ABORT_ERR"
      ])
      expect((await RateSync.state("one")).waiting).toBe(0)
      expect((await RateSync.state("one")).leasesHeld).toBe(1)
      await holder.release()
      await holder.release()
      await (await RateSync.tryAcquire("one")).release()
      expect((await RateSync.state("one")).leasesHeld).toBe(0)
    })

    it("aborting a waiter for a rate slot gives the reserved slot back", async () => {
      await RateSync.configureLimiter("paced", { store: "mem", rate_per_second: 2, burst: 1 })
      await RateSync.consume("paced")
      const controller = new AbortController()
      const waiting = rejection(RateSync.consume("paced", { signal: controller.signal }))
      await sleep(30)
      // The waiter holds the next slot: the one after it is about 1 s away.
      const reserved = (await RateSync.state("paced")).nextSlotAfter
      expect(reserved).toBeGreaterThan(500)
      controller.abort()
      const error = await waiting
      expect(error).toBeInstanceOf(RateSync.AbortError)
      expect(error instanceof RateSync.AbortError && error.cause).toBe(controller.signal.reason)
      // Given back: the next slot is the waiter's again, half a second nearer.
      const given = (await RateSync.state("paced")).nextSlotAfter
      expect(given).toBeLessThanOrEqual(500)
      expect(given).toBeLessThan(reserved - 400)
    })

    it("an already-aborted signal rejects at once and takes nothing", async () => {
      await RateSync.configureLimiter("spare", { store: "mem", rate_per_second: 0.5, burst: 1 })
      const reason = "shutting down"
      const signal = AbortSignal.abort(reason)
      let ran = false
      for (
        const call of [
          () => RateSync.acquire("spare", { signal }),
          () => RateSync.consume("spare", { signal }),
          () => RateSync.withPermit("spare", async () => (ran = true), { signal }),
          () => RateSync.acquire("jobs", { signal })
        ]
      ) {
        const error = await rejection(call())
        expect(error).toBeInstanceOf(RateSync.AbortError)
        expect(error instanceof RateSync.AbortError && error.cause).toBe(reason)
      }
      expect(ran).toBe(false)
      expect((await RateSync.state("spare")).remaining).toBe(1)
      expect((await RateSync.state("jobs")).leasesHeld).toBe(0)
      await RateSync.tryConsume("spare")
    })
  })

  describe("what keeps a configuration's runtime alive: calls running and leases held, nothing else", () => {
    it("a call waiting through a configuration change completes on the runtime it started on", async () => {
      await RateSync.configureLimiter("paced5", { store: "mem", rate_per_second: 5, burst: 1 })
      const baseline = liveGenerations()
      await RateSync.consume("paced5")
      const waiting = Promise.all([RateSync.acquire("paced5", { timeout: 2_000 }), RateSync.state("paced5")])
      await sleep(20)
      await RateSync.configureLimiter("paced5", { store: "mem", rate_per_second: 5, burst: 1 })
      expect(liveGenerations()).toBe(baseline + 1)
      const [permit] = await waiting
      expect(permit.waited).toBeGreaterThan(100)
      expect(liveGenerations()).toBe(baseline)
    })

    it("never released, they keep no runtime alive: a configuration change disposes the old one at once", async () => {
      await RateSync.configureLimiter("free", { store: "mem", rate_per_second: 1000, burst: 10 })
      const baseline = liveGenerations()
      const acquired = await RateSync.acquire("free")
      const tried = await RateSync.tryAcquire("free")
      const consumed = await RateSync.consume("free")
      expect([acquired.leaseId, tried.leaseId, consumed.leaseId]).toEqual([undefined, undefined, undefined])
      expect(liveGenerations()).toBe(baseline + 1)
      // None of them released: the configuration change disposes the runtime that granted them.
      await RateSync.configureLimiter("free", { store: "mem", rate_per_second: 1000, burst: 10 })
      expect(liveGenerations()).toBe(baseline)
      // Releasing anyway does nothing, however often.
      await acquired.release()
      await acquired.release()
      await tried[Symbol.asyncDispose]()
      expect(liveGenerations()).toBe(baseline)
      {
        await using permit = await RateSync.acquire("free")
        expect(permit.limiter).toBe("free")
      }
    })

    it("a lease refused, timed out or aborted leaves nothing counted", async () => {
      await RateSync.configureLimiter("single", { store: "mem", max_concurrent: 1 })
      const baseline = liveGenerations()
      const holder = await RateSync.acquire("single")
      await expect(RateSync.tryAcquire("single")).rejects.toBeInstanceOf(RateSync.RateLimitExceeded)
      await expect(RateSync.acquire("single", { timeout: 5 })).rejects.toBeInstanceOf(RateSync.AcquireTimeout)
      const controller = new AbortController()
      const aborted = rejection(RateSync.acquire("single", { signal: controller.signal }))
      await sleep(10)
      controller.abort()
      expect(await aborted).toBeInstanceOf(RateSync.AbortError)
      await holder.release()
      // Only the released holder counted: the configuration change disposes the runtime at once.
      await RateSync.configureLimiter("single", { store: "mem", max_concurrent: 1 })
      expect(liveGenerations()).toBe(baseline)
    })

    it("a held lease keeps its runtime until it is released, once", async () => {
      await RateSync.configureLimiter("free", { store: "mem", rate_per_second: 1000, burst: 10 })
      const baseline = liveGenerations()
      const lease = await RateSync.acquire("jobs")
      expect(lease.leaseId).toBeDefined()
      await RateSync.configureLimiter("free", { store: "mem", rate_per_second: 1000, burst: 10 })
      expect(liveGenerations()).toBe(baseline + 1)
      await lease.release()
      expect(liveGenerations()).toBe(baseline)
      await lease.release()
      expect(liveGenerations()).toBe(baseline)
    })
  })

  it("loadConfig reads a TOML file, and permits from the old configuration still release", async () => {
    const held = await RateSync.acquire("jobs")
    const dir = mkdtempSync(join(tmpdir(), "rate-sync-promise-"))
    const path = join(dir, "rate-sync.toml")
    writeFileSync(path, `[stores.m]\nengine = "memory"\n[limiters.api]\nstore = "m"\nrate_per_second = 5\nburst = 1\n`)
    await RateSync.loadConfig(path)
    await (await RateSync.tryAcquire("api")).release()
    await expect(RateSync.tryAcquire("api")).rejects.toBeInstanceOf(RateSync.RateLimitExceeded)
    await expect(RateSync.acquire("jobs")).rejects.toBeInstanceOf(RateSync.LimiterNotFound)
    await held.release()
  })
})

describe("rate-sync/promise: several limits at once", () => {
  const setUp = async () => {
    await RateSync.configureStore("all1", { engine: "memory" })
    await RateSync.configureStore("all2", { engine: "memory" })
    await RateSync.configureLimiter("allUser", { store: "all1", rate_per_second: 0.5, burst: 2 })
    await RateSync.configureLimiter("allSlow", { store: "all1", rate_per_second: 1, burst: 1 })
    await RateSync.configureLimiter("allDaily", { store: "all2", algorithm: "sliding_window", limit: 1, window_seconds: 86_400 })
  }

  it("tryConsumeAll, consumeAll and acquireAll: every limit or none; a refusal in ms names the limiter and key", async () => {
    await setUp()
    const permits = await RateSync.tryConsumeAll([{ limiter: "allUser", key: "u1" }, { limiter: "allDaily", key: "u1" }])
    expect(permits.map((p) => [p.limiter, p.key])).toEqual([["allUser", "u1"], ["allDaily", "u1"]])
    expect(typeof permits[0]!.waited).toBe("number")
    const refused = await rejection(RateSync.tryConsumeAll([{ limiter: "allUser", key: "u1" }, { limiter: "allDaily", key: "u1" }]))
    expect(refused).toBeInstanceOf(RateSync.RateLimitExceeded)
    expect(refused).toMatchObject({ limiter: "allDaily", key: "u1" })
    expect(refused instanceof RateSync.RateLimitExceeded && typeof refused.retryAfter).toBe("number")
    await sleep(10)
    // The refusal took nothing of allUser: one of its two units is still free.
    expect((await RateSync.state("allUser", { key: "u1" })).remaining).toBe(1)
    const held = await RateSync.acquireAll([{ limiter: "allUser", key: "u2" }, { limiter: "allDaily", key: "u2" }], { timeout: 1_000 })
    await Promise.all(held.map((permit) => permit.release()))
    expect((await RateSync.state("allDaily", { key: "u2" })).remaining).toBe(0)
    await RateSync.consume("allSlow")
    const timedOut = await rejection(RateSync.consumeAll([{ limiter: "allUser", key: "u3" }, { limiter: "allSlow" }], { timeout: 10 }))
    expect(timedOut).toBeInstanceOf(RateSync.AcquireTimeout)
    expect(timedOut).toMatchObject({ limiter: "allSlow", timeout: 10 })
  })

  it("an aborted signal stops the wait with AbortError and gives back what every store took", async () => {
    await setUp()
    await RateSync.consume("allSlow", { key: "s" })
    const controller = new AbortController()
    const waiting = rejection(RateSync.consumeAll([{ limiter: "allUser", key: "s", cost: 2 }, { limiter: "allDaily", key: "s" }, { limiter: "allSlow", key: "s" }], { signal: controller.signal }))
    await sleep(100)
    expect((await RateSync.state("allDaily", { key: "s" })).remaining).toBe(0)
    controller.abort(new Error("user left"))
    const error = await waiting
    expect(error).toBeInstanceOf(RateSync.AbortError)
    await sleep(10)
    expect((await RateSync.state("allDaily", { key: "s" })).remaining).toBe(1)
    expect((await RateSync.state("allUser", { key: "s" })).remaining).toBe(2)
    const already = new AbortController()
    already.abort()
    expect(await rejection(RateSync.consumeAll([{ limiter: "allUser" }], { signal: already.signal }))).toBeInstanceOf(RateSync.AbortError)
  })

  it("bad input rejects with a typed error and takes nothing", async () => {
    await setUp()
    expect(await rejection(js(RateSync.consumeAll, []))).toMatchObject({ _tag: "InvalidOption", option: "entries" })
    expect(await rejection(js(RateSync.tryConsumeAll, "allUser"))).toMatchObject({ _tag: "InvalidOption", option: "entries" })
    expect(await rejection(js(RateSync.consumeAll, [{ limiter: "allUser" }], "fast"))).toMatchObject({ _tag: "InvalidOption", option: "options" })
    expect(await rejection(js(RateSync.acquireAll, [{ limiter: "allUser" }], { signal: "stop" }))).toMatchObject({ _tag: "InvalidOption", option: "signal" })
    expect(await rejection(RateSync.consumeAll([{ limiter: "allUser", key: "b" }, { limiter: "allUser", key: "b" }]))).toMatchObject({ _tag: "InvalidOption", limiter: "allUser" })
    expect(await rejection(RateSync.tryConsumeAll([{ limiter: "allUser", key: "b" }, { limiter: "missing" }]))).toBeInstanceOf(RateSync.LimiterNotFound)
    expect((await RateSync.state("allUser", { key: "b" })).remaining).toBe(2)
  })
})
