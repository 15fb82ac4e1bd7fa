/**
 * Store outages under load: two processes hammer one limiter while their store is taken down and
 * brought back (an embedded PostgreSQL with fast shutdown, a redis-server killed with SIGKILL, both
 * this test's own, so no other test loses its server). One process runs with `fail_closed = true`,
 * the other with the default. Nothing may crash; during the outage the first gets `StoreUnavailable`
 * and admits nothing, the second admits degraded; within a few seconds of the restart both are
 * admitted by the store again, and the limit held all along.
 */
import { spawnSync } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import type { SettingsInput, StoreConfigInput } from "../src/Settings.js"
import { windowPeak } from "./compliance/bounds.js"
import { freePort, type Restartable, startEmbeddedPostgres } from "./support/embeddedPostgres.js"
import { lateness, type LoadPlan, type LoadReport, machineClock, runLoader, sleepUntil, untilReady } from "./support/loader.js"
import { startRedisServer } from "./support/redisServer.js"

const RATE = 50
const BURST = 5
/** How long the load processes may take to start (tsx on two busy cores) and get their first permit. */
const READY_WITHIN_MS = 40_000

const outage = async (store: StoreConfigInput, server: Restartable) => {
  const limiter = `restart_${process.pid}_${Date.now().toString(36)}`
  const settings = (failClosed: boolean): SettingsInput => ({
    stores: { s: { ...store, timing_margin_ms: 50 } },
    limiters: { [limiter]: { store: "s", rate_per_second: RATE, burst: BURST, fail_closed: failClosed } }
  })
  // Processes start and warm up (a fixed delay measured nothing on a slow day: two tsx processes can
  // take many seconds to start on 2 busy cores); once both have a permit they are recorded for 10 s:
  // 3 s before the outage, 3 s of outage, 4 s after.
  const dir = mkdtempSync(join(tmpdir(), "rate-sync-restart-"))
  const stopFile = join(dir, "stop")
  const spawnedAt = machineClock()
  const plan = (failClosed: boolean): LoadPlan => ({
    settings: settings(failClosed),
    limiter,
    fibers: 4,
    startAt: spawnedAt,
    endAt: spawnedAt + 120_000,
    skewMs: 0,
    readyFile: join(dir, failClosed ? "closed" : "open"),
    stopFile
  })
  const reports = Promise.all([runLoader(plan(true)), runLoader(plan(false))])
  let crashed = false
  reports.catch(() => (crashed = true))
  let startAt = 0
  let endAt = 0
  let downAt = 0
  let upAt = 0
  let closed: LoadReport
  let open: LoadReport
  try {
    await untilReady([join(dir, "closed"), join(dir, "open")], spawnedAt, READY_WITHIN_MS, () => crashed)
    startAt = machineClock() + 1_000
    endAt = startAt + 10_000
    await sleepUntil(startAt + 3_000)
    await server.halt()
    downAt = machineClock()
    await sleepUntil(startAt + 6_000)
    upAt = machineClock()
    await server.resume()
    await sleepUntil(endAt)
  } finally {
    writeFileSync(stopFile, "")
    ;[closed, open] = await reports
    rmSync(dir, { recursive: true, force: true })
  }
  const inRun = (t: number) => t >= startAt && t < endAt
  closed = { ...closed, admitted: closed.admitted.filter(inRun), failed: closed.failed.filter(([t]) => inRun(t)) }
  open = { ...open, admitted: open.admitted.filter(inRun), degraded: open.degraded.filter(inRun) }

  // Nothing crashed (runLoader rejects otherwise). Before the outage both were served by the store.
  const admitted = [...closed.admitted, ...open.admitted].sort((a, b) => a - b)
  expect(admitted.filter((t) => t < downAt).length).toBeGreaterThan(RATE * 2)
  // During the outage: fail_closed fails with StoreUnavailable and admits nothing but the slots the
  // store granted before it went down (a waiter sleeps until its slot: 8 callers at 50/s, at most
  // 160 ms ahead); the default admits, marked degraded.
  const during = (t: number) => t > downAt + 500 && t < upAt
  expect(closed.admitted.filter(during)).toEqual([])
  expect(closed.failed.filter(([t]) => during(t)).length).toBeGreaterThan(0)
  expect(new Set(closed.failed.filter(([t]) => during(t)).map(([, tag]) => tag))).toEqual(new Set(["StoreUnavailable"]))
  expect(open.admitted.filter(during)).toEqual([])
  expect(open.degraded.filter(during).length).toBeGreaterThan(0)
  expect(open.failed).toEqual([])
  // From 2 s after the restart, both are admitted by the store again at the configured rate.
  const recovered = admitted.filter((t) => t >= upAt + 2_000)
  expect(recovered.length).toBeGreaterThanOrEqual(0.8 * RATE * ((endAt - upAt - 2_000) / 1000))
  expect(open.degraded.filter((t) => t >= upAt + 2_000)).toEqual([])
  expect(closed.failed.filter(([t]) => t >= upAt + 2_000)).toEqual([])
  // The limit held throughout: at most burst + rate in any second, however the outage fell.
  expect(windowPeak(admitted.map((slot) => ({ slot, cost: 1 })), 1_000)).toBeLessThanOrEqual(BURST + RATE + lateness(RATE))
}

describe("a store restarted under load", () => {
  it("postgres: no crash, fail_closed honoured during the outage, the limit holds and service resumes", async () => {
    const server = await startEmbeddedPostgres()
    try {
      await outage({ engine: "postgres", url: server.url, auto_create: true, pool_timeout_ms: 1_000 }, server)
    } finally {
      await server.stop()
    }
  }, 120_000)

  const installed = spawnSync("redis-server", ["--version"]).status === 0
  it.skipIf(!installed)("redis: no crash, fail_closed honoured during the outage, the limit holds and service resumes", async () => {
    const port = await freePort()
    let redis = await startRedisServer(port)
    if (redis === undefined) throw new Error(`redis-server did not start on port ${port}`)
    const server: Restartable = {
      url: redis.url,
      stop: async () => redis?.stop(),
      halt: async () => redis?.stop(),
      resume: async () => {
        redis = await startRedisServer(port)
      }
    }
    try {
      await outage({ engine: "redis", url: server.url, key_prefix: "restart:", command_timeout_ms: 1_000 }, server)
    } finally {
      await server.stop()
    }
  }, 120_000)
})
