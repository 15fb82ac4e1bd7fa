/**
 * Store outages under load: two processes hammer one limiter while their store is taken down and
 * brought back (an embedded PostgreSQL with fast shutdown, a redis-server killed with SIGKILL, both
 * this test's own, so no other test loses its server). One process runs with `fail_closed = true`,
 * the other with the default. Nothing may crash; during the outage the first gets `StoreUnavailable`
 * and admits nothing, the second admits degraded; within a few seconds of the restart both are
 * admitted by the store again, and the limit held all along.
 */
import { spawnSync } from "node:child_process"
import { describe, expect, it } from "vitest"
import type { SettingsInput, StoreConfigInput } from "../src/Settings.js"
import { windowPeak } from "./compliance/bounds.js"
import { freePort, type Restartable, startEmbeddedPostgres } from "./support/embeddedPostgres.js"
import { lateness, type LoadPlan, machineClock, runLoader, sleepUntil } from "./support/loader.js"
import { startRedisServer } from "./support/redisServer.js"

const RATE = 50
const BURST = 5

const outage = async (store: StoreConfigInput, server: Restartable) => {
  const limiter = `restart_${process.pid}_${Date.now().toString(36)}`
  const settings = (failClosed: boolean): SettingsInput => ({
    stores: { s: { ...store, timing_margin_ms: 50 } },
    limiters: { [limiter]: { store: "s", rate_per_second: RATE, burst: BURST, fail_closed: failClosed } }
  })
  // Processes start, warm up, and are recorded for 10 s: 3 s before the outage, 3 s of outage, 4 s after.
  const startAt = machineClock() + 4_000
  const endAt = startAt + 10_000
  const plan = (failClosed: boolean): LoadPlan => ({ settings: settings(failClosed), limiter, fibers: 4, startAt, endAt, skewMs: 0 })
  const reports = Promise.all([runLoader(plan(true)), runLoader(plan(false))])
  await sleepUntil(startAt + 3_000)
  await server.halt()
  const downAt = machineClock()
  await sleepUntil(startAt + 6_000)
  const upAt = machineClock()
  await server.resume()
  const [closed, open] = await reports

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
  }, 90_000)

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
  }, 90_000)
})
