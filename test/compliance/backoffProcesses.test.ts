/**
 * `backoff` holds every process's waiters, on the engines that share state between processes: two
 * load processes keep 10 callers each waiting on one 10/s limiter (each has a slot reserved up to
 * 2 s ahead), then this process says "wait 1 s" as an upstream's 429 would. From the moment
 * `backoff` returned until the hold ends, neither process admits anyone; then both go on.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { describe, expect, inject, it } from "vitest"
import { RateLimiter } from "../../src/RateLimiter.js"
import * as RateSync from "../../src/RateSync.js"
import type { SettingsInput, StoreConfigInput } from "../../src/Settings.js"
import * as Stores from "../../src/Stores.js"
import { type LoadPlan, machineClock, runLoader, sleepUntil, untilReady } from "../support/loader.js"

const databaseUrl = inject("databaseUrl")
const redisUrl = inject("redisUrl")

const RATE = 10
const FIBERS = 10
const HOLD_MS = 1_000
/** How long the load processes may take to start (tsx on two busy cores) and get their first permit. */
const READY_WITHIN_MS = 20_000
/** The processes' clocks (each its own `performance.timeOrigin`) differ by well under this. */
const CLOCK_SLACK_MS = 5

const unique = () => `${process.pid}_${Date.now().toString(36)}_${Math.floor(Math.random() * 1e6).toString(36)}`

const holdsEveryProcess = async (store: StoreConfigInput) => {
  const limiter = `hold_${unique()}`
  const settings: SettingsInput = { stores: { s: store }, limiters: { [limiter]: { store: "s", rate_per_second: RATE } } }
  const dir = mkdtempSync(join(tmpdir(), "rate-sync-backoff-"))
  const stopFile = join(dir, "stop")
  const spawnedAt = machineClock()
  const plan = (name: string): LoadPlan => ({
    settings,
    limiter,
    fibers: FIBERS,
    startAt: spawnedAt,
    endAt: spawnedAt + 60_000,
    skewMs: 0,
    readyFile: join(dir, name),
    stopFile
  })
  const reports = Promise.all([runLoader(plan("a")), runLoader(plan("b"))])
  let crashed = false
  reports.catch(() => (crashed = true))
  try {
    await untilReady([join(dir, "a"), join(dir, "b")], spawnedAt, READY_WITHIN_MS, () => crashed)
    // Both lines fill up: 20 callers at 10/s reserve up to 2 s ahead.
    await sleepUntil(machineClock() + 2_500)
    const called = machineClock()
    const returned = await Effect.runPromise(
      RateLimiter.backoff(limiter, { retryAfter: HOLD_MS }).pipe(
        Effect.map(() => machineClock()),
        Effect.scoped,
        Effect.provide(RateSync.layer(settings).pipe(Layer.provide(Stores.layer)))
      )
    )
    await sleepUntil(returned + HOLD_MS + 1_500)
    writeFileSync(stopFile, "")
    const [a, b] = await reports
    const all = [...a.admitted, ...b.admitted]
    // The hold runs from when the store recorded it (after `called`) for HOLD_MS.
    const inside = all.filter((t) => t >= returned + CLOCK_SLACK_MS && t < called + HOLD_MS - CLOCK_SLACK_MS)
    return {
      before: all.filter((t) => t < called).length,
      inside: inside.map((t) => Math.round(t - returned)),
      after: [a, b].map((r) => r.admitted.filter((t) => t >= returned + HOLD_MS).length),
      failed: [...a.failed, ...b.failed].filter(([, tag]) => tag !== "AcquireTimeout")
    }
  } finally {
    writeFileSync(stopFile, "")
    await reports.catch(() => undefined)
    rmSync(dir, { recursive: true, force: true })
  }
}

const expectHeld = (result: Awaited<ReturnType<typeof holdsEveryProcess>>) => {
  expect(result.before).toBeGreaterThan(10)
  // Admissions (ms after backoff returned) that fell inside the hold: none.
  expect(result.inside).toEqual([])
  // Then both processes are served again.
  for (const after of result.after) expect(after).toBeGreaterThanOrEqual(2)
  expect(result.failed).toEqual([])
}

describe("backoff holds the waiters of every process", () => {
  it("PostgreSQL", async () => {
    expectHeld(await holdsEveryProcess({ engine: "postgres", url: databaseUrl, auto_create: true }))
  }, 90_000)

  it.skipIf(redisUrl === "")("Redis", async () => {
    expectHeld(await holdsEveryProcess({ engine: "redis", url: redisUrl, key_prefix: `rate-sync-test:${unique()}:` }))
  }, 90_000)
})
