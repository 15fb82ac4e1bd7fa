import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as Duration from "effect/Duration"
import { afterAll, describe, expect, it } from "vitest"
import * as RateSync from "../src/promise.js"

afterAll(() => RateSync.close())

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

  it("rejects with the typed errors: RateLimitExceeded carries retryAfter, limit and remaining", async () => {
    await RateSync.configureLimiter("slow", { store: "mem", rate_per_second: 0.5, burst: 2 })
    await RateSync.tryAcquire("slow")
    await RateSync.tryAcquire("slow")
    const error = await RateSync.tryAcquire("slow").then(() => undefined, (e: unknown) => e)
    expect(error).toBeInstanceOf(RateSync.RateLimitExceeded)
    if (!(error instanceof RateSync.RateLimitExceeded)) return
    expect(error.limit).toBe(2)
    expect(error.remaining).toBe(0)
    // 0.5 per second: the next unit is about 2 s away.
    expect(Duration.toMillis(error.retryAfter)).toBeGreaterThan(1_500)
    expect(Duration.toMillis(error.retryAfter)).toBeLessThanOrEqual(2_000)
    await expect(RateSync.acquire("missing")).rejects.toBeInstanceOf(RateSync.LimiterNotFound)
    await expect(RateSync.acquire("slow", { timeout: 10 })).rejects.toBeInstanceOf(RateSync.AcquireTimeout)
  })

  it("consume takes a rate slot with nothing to release, and rejects a limiter with leases", async () => {
    await RateSync.configureLimiter("calls", { store: "mem", rate_per_second: 0.5, burst: 1 })
    const permit = await RateSync.consume("calls")
    expect(permit.limiter).toBe("calls")
    await expect(RateSync.tryAcquire("calls")).rejects.toBeInstanceOf(RateSync.RateLimitExceeded)
    await expect(RateSync.consume("calls", { timeout: 10 })).rejects.toBeInstanceOf(RateSync.AcquireTimeout)
    await expect(RateSync.consume("jobs")).rejects.toBeInstanceOf(RateSync.LeaseNeedsScope)
  })

  it("values plain JavaScript may pass (a numeric key, a NaN, negative or unparsable timeout) reject with InvalidOption naming the option", async () => {
    await RateSync.configureLimiter("js", { store: "mem", rate_per_second: 0.5, burst: 1 })
    // As JavaScript calls it: no type checks on the options.
    const untyped = (options: Record<string, unknown>): Promise<unknown> => Reflect.apply(RateSync.acquire, undefined, ["js", options])
    for (const [options, option] of [
      [{ key: 42 }, "key"],
      [{ timeout: Number.NaN }, "timeout"],
      [{ timeout: -5 }, "timeout"],
      [{ timeout: "abc" }, "timeout"]
    ] as const) {
      const error = await untyped(options).then(() => undefined, (e: unknown) => e)
      expect(error).toBeInstanceOf(RateSync.InvalidOption)
      expect(error instanceof RateSync.InvalidOption && error.option).toBe(option)
    }
    // None took the limiter's one slot, and a refusal is the usual RateLimitExceeded.
    await (await RateSync.tryAcquire("js")).release()
    await expect(RateSync.tryAcquire("js")).rejects.toBeInstanceOf(RateSync.RateLimitExceeded)
  })

  it("a configuration mistake throws where it is made", async () => {
    const error = await RateSync.configureLimiter("bad", { store: "nowhere", rate_per_second: 1 }).then(() => undefined, (e: unknown) => e)
    expect(error).toBeInstanceOf(RateSync.ConfigurationError)
    expect(String((error as Error).message)).toContain(`limiters.bad.store: Expected the name of a configured store`)
    // The rejected change left the working configuration in place.
    await RateSync.tryAcquire("jobs").then((p) => p.release())
  })

  it("an AbortSignal stops a waiter and gives its place back", async () => {
    await RateSync.configureLimiter("one", { store: "mem", max_concurrent: 1 })
    const holder = await RateSync.acquire("one")
    const controller = new AbortController()
    const waiting = RateSync.acquire("one", { signal: controller.signal })
    await new Promise((resolve) => setTimeout(resolve, 20))
    controller.abort()
    await expect(waiting).rejects.toBeDefined()
    expect((await RateSync.state("one")).waiting).toBe(0)
    await holder.release()
    await holder.release()
    await (await RateSync.tryAcquire("one")).release()
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
