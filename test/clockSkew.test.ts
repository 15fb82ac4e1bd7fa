/**
 * Hosts whose clocks are wrong: processes whose own clocks (Effect's `Clock` and `Date.now`) run five
 * minutes fast and five minutes slow share one limiter. The engines keep time on the store's clock,
 * so together they keep the bound and the full rate; an engine that trusted a client's clock would
 * admit a whole burst per process or stall one of them for minutes.
 */
import { describe, expect, it } from "vitest"
import { inject } from "vitest"
import type { StoreConfigInput } from "../src/Settings.js"
import { peakHeld, windowPeak } from "./compliance/bounds.js"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { lateness, type LoadPlan, type LoadReport, machineClock, runLoader, sleepUntil, untilReady } from "./support/loader.js"

const databaseUrl = inject("databaseUrl")
const redisUrl = inject("redisUrl")

const SKEWS = [5 * 60_000, -5 * 60_000]
const RATE = 50
const BURST = 5
const MAX_CONCURRENT = 2
/** How long the load processes may take to start (tsx on two busy cores) and get their first permit. */
const READY_WITHIN_MS = 40_000

const stores: ReadonlyArray<readonly [string, StoreConfigInput, boolean]> = [
  ["postgres", { engine: "postgres", url: databaseUrl, auto_create: true, timing_margin_ms: 50 }, true],
  ["redis", { engine: "redis", url: redisUrl, key_prefix: `rate-sync-skew:${process.pid}:`, timing_margin_ms: 50 }, redisUrl !== ""]
]

describe("processes whose clocks differ by ten minutes share one limit", () => {
  for (const [engine, store, available] of stores) {
    it.skipIf(!available)(`${engine}: rate and concurrency bounds hold, and the full rate is reached`, async () => {
      const id = `${process.pid}_${Date.now().toString(36)}`
      const settings = {
        stores: { s: store },
        limiters: {
          [`rate_${id}`]: { store: "s", rate_per_second: RATE, burst: BURST },
          [`leases_${id}`]: { store: "s", max_concurrent: MAX_CONCURRENT, lease_ttl_seconds: 2 }
        }
      }
      // Measured once every process had its first permit (four load processes compiling at once on
      // 2 busy cores can take many seconds to start: a fixed delay measured nothing on a slow day).
      const dir = mkdtempSync(join(tmpdir(), "rate-sync-skew-"))
      const stopFile = join(dir, "stop")
      const spawnedAt = machineClock()
      const plans = (limiter: string, holdMs?: number) =>
        SKEWS.map((skewMs, i): LoadPlan => ({
          settings,
          limiter,
          fibers: 4,
          startAt: spawnedAt,
          endAt: spawnedAt + 120_000,
          skewMs,
          readyFile: join(dir, `${limiter}-${i}`),
          stopFile,
          ...(holdMs === undefined ? {} : { holdMs })
        }))
      const all = [...plans(`rate_${id}`), ...plans(`leases_${id}`, 20)]
      const reports = Promise.all(all.map(runLoader))
      let crashed = false
      reports.catch(() => (crashed = true))
      let startAt = 0
      let endAt = 0
      let finished: Array<LoadReport>
      try {
        await untilReady(all.map((plan) => plan.readyFile!), spawnedAt, READY_WITHIN_MS, () => crashed)
        startAt = machineClock() + 1_000
        endAt = startAt + 4_000
        await sleepUntil(endAt)
      } finally {
        writeFileSync(stopFile, "")
        finished = await reports
        rmSync(dir, { recursive: true, force: true })
      }
      const within = (report: LoadReport): LoadReport => ({
        ...report,
        admitted: report.admitted.filter((t) => t >= startAt && t < endAt),
        holds: report.holds.filter(([t]) => t >= startAt && t < endAt)
      })
      const rate = finished.slice(0, 2).map(within)
      const leases = finished.slice(2).map(within)
      // The bound holds at every moment, start-up included.
      expect(windowPeak(finished.slice(0, 2).flatMap((r) => r.admitted).map((slot) => ({ slot, cost: 1 })), 1_000))
        .toBeLessThanOrEqual(BURST + RATE + lateness(RATE))

      // The processes did run on clocks ten minutes apart.
      for (const [i, report] of [...rate, ...leases].entries()) {
        expect(Math.abs(report.skewSeen.effectClock - SKEWS[i % 2]!)).toBeLessThan(1_000)
        expect(Math.abs(report.skewSeen.dateNow - SKEWS[i % 2]!)).toBeLessThan(1_000)
      }
      const admitted = rate.flatMap((r) => r.admitted).sort((a, b) => a - b)
      expect(rate.flatMap((r) => r.failed)).toEqual([])
      expect(windowPeak(admitted.map((slot) => ({ slot, cost: 1 })), 1_000)).toBeLessThanOrEqual(BURST + RATE + lateness(RATE))
      expect(admitted.length).toBeGreaterThanOrEqual(0.9 * RATE * 4)
      // Each process gets a share: neither is stalled by the other's clock.
      for (const report of rate) expect(report.admitted.length).toBeGreaterThan(RATE * 4 * 0.2)

      expect(leases.flatMap((r) => r.failed)).toEqual([])
      expect(peakHeld(leases.flatMap((r) => r.holds))).toBeLessThanOrEqual(MAX_CONCURRENT)
      for (const report of leases) expect(report.holds.length).toBeGreaterThan(10)
    }, 90_000)
  }
})
