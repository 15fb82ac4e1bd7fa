/**
 * The store's connections killed under load, with leased limiters (`max_concurrent`, and a rate).
 *
 * Two load processes share one limiter, one with `fail_closed = true` and one with the default.
 * Once both are served (however long they took to start), their pace is measured for two seconds,
 * then this test kills their connections three times, a second apart: PostgreSQL backends with
 * `pg_terminate_backend` (in a database of this test's own, so other tests' sessions live on),
 * Redis clients with `CLIENT KILL ID` (only the clients named after this test's store). The
 * server stays up: only the connections die, as when a proxy, a failover or an idle-timeout cuts
 * them. Nothing may crash; the only failures are typed (`StoreUnavailable` for the fail_closed
 * process around a kill, a few `AcquireTimeout`), never an untyped error or a defect; never more
 * than `max_concurrent` permits are held at once; and from two seconds after the last kill, for
 * three seconds, each process is admitted at least half as fast as before the first. Leases last
 * 20 s, longer than the run, so a lease or a place in line that a kill orphaned shows as a stall.
 *
 * A last test kills a busy in-process limiter's backends in a tight loop, so that statements,
 * COMMITs and ROLLBACKs of its lease transactions fail, and checks every failed acquire is typed.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as Cause from "effect/Cause"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import { Redis } from "ioredis"
import pg from "pg"
import { describe, expect, inject, it } from "vitest"
import { RateLimiter } from "../src/RateLimiter.js"
import * as RateSync from "../src/RateSync.js"
import type { SettingsInput, StoreConfigInput } from "../src/Settings.js"
import * as Stores from "../src/Stores.js"
import { peakHeld } from "./compliance/bounds.js"
import { defectTag, type LoadPlan, type LoadReport, machineClock, runLoader, sleepUntil, untilReady } from "./support/loader.js"

const databaseUrl = inject("databaseUrl")
const redisUrl = inject("redisUrl")

const MAX_CONCURRENT = 4
/** Far above what 4 leases held 30 ms each can pass (~130/s): the rate path runs but never binds. */
const RATE = 1_000
const FIBERS = 4
const HOLD_MS = 30
/** Longer than the run, so a lease or a place in line lost to a kill would stay lost until the end. */
const LEASE_TTL_SECONDS = 20
/** How long the load processes may take to start (tsx on two busy cores) and get their first permit. */
const READY_WITHIN_MS = 20_000
/** Once both have, they run this long before the baseline is measured (the JIT warms up)... */
const WARM_MS = 1_000
/** ...then the baseline is measured for this long, up to the first kill. */
const BEFORE_MS = 2_000
const KILL_EVERY_MS = 1_000
const KILLS = 3
/** A kill's failures (fail_closed) and degraded admissions (fail open) may land this long after it. */
const KILL_EFFECT_MS = 1_000
/** Service is measured from this long after the last kill... */
const SETTLE_MS = 2_000
/** ...for this long, and then the processes are stopped. */
const AFTER_MS = 3_000
/** The share of its own pace before the first kill each process must get back. */
const RESUMED_SHARE = 0.5
/** The baseline must be at least this (admissions per second) for the comparison to mean anything. */
const MIN_BASELINE = 5
/** The share of a process's acquires that may time out over the whole run. */
const TIMEOUT_SHARE = 0.05
/** Hold intervals are shrunk by this at each end for the processes' clocks and timer jitter. */
const CLOCK_SLACK_MS = 3

const unique = () => `${process.pid}_${Date.now().toString(36)}_${Math.floor(Math.random() * 1e6).toString(36)}`

interface Kill {
  readonly from: number
  readonly to: number
  /** How many connections it killed. */
  readonly killed: number
}

interface Run {
  readonly closed: LoadReport
  readonly open: LoadReport
  readonly kills: ReadonlyArray<Kill>
  /** The baseline is [measuredFrom, first kill); the resumed service [resumedFrom, stoppedAt). */
  readonly measuredFrom: number
  readonly resumedFrom: number
  readonly stoppedAt: number
}

/**
 * Two load processes on one leased limiter of store `storeName`; once both are served, a baseline,
 * then `kill` KILLS times a second apart, then the resumed service, then they are stopped.
 */
const underKills = async (storeName: string, store: StoreConfigInput, kill: () => Promise<number>): Promise<Run> => {
  const limiter = `kill_${unique()}`
  const dir = mkdtempSync(join(tmpdir(), "rate-sync-kill-"))
  const stopFile = join(dir, "stop")
  const readyFile = (failClosed: boolean) => join(dir, failClosed ? "closed-ready" : "open-ready")
  const settings = (failClosed: boolean): SettingsInput => ({
    stores: { [storeName]: store },
    limiters: {
      [limiter]: {
        store: storeName,
        max_concurrent: MAX_CONCURRENT,
        lease_ttl_seconds: LEASE_TTL_SECONDS,
        rate_per_second: RATE,
        burst: 50,
        // The other process keeps the default (fail open).
        ...(failClosed ? { fail_closed: true } : {})
      }
    }
  })
  const spawnedAt = machineClock()
  const plan = (failClosed: boolean): LoadPlan => ({
    settings: settings(failClosed),
    limiter,
    fibers: FIBERS,
    // Everything is recorded; the processes run until the stop file, or a cap if this test died.
    startAt: spawnedAt,
    endAt: spawnedAt + 60_000,
    skewMs: 0,
    holdMs: HOLD_MS,
    recordDefects: true,
    readyFile: readyFile(failClosed),
    stopFile
  })
  const reports = Promise.all([runLoader(plan(true)), runLoader(plan(false))])
  // A loader that crashes must not leave this test waiting or killing connections for nothing.
  let crashed = false
  reports.catch(() => (crashed = true))
  try {
    await untilReady([readyFile(true), readyFile(false)], spawnedAt, READY_WITHIN_MS, () => crashed)
    const measuredFrom = machineClock() + WARM_MS
    const kills: Array<Kill> = []
    for (let i = 0; i < KILLS && !crashed; i++) {
      await sleepUntil(measuredFrom + BEFORE_MS + i * KILL_EVERY_MS)
      const from = machineClock()
      const killed = await kill()
      kills.push({ from, to: machineClock(), killed })
    }
    const resumedFrom = (kills[kills.length - 1]?.to ?? machineClock()) + SETTLE_MS
    const stoppedAt = resumedFrom + AFTER_MS
    if (!crashed) await sleepUntil(stoppedAt)
    writeFileSync(stopFile, "")
    const [closed, open] = await reports
    return { closed, open, kills, measuredFrom, resumedFrom, stoppedAt }
  } finally {
    writeFileSync(stopFile, "")
    await reports.catch(() => undefined)
    rmSync(dir, { recursive: true, force: true })
  }
}

/** Non-degraded admissions per second in [from, to). */
const pace = (report: LoadReport, from: number, to: number) =>
  report.admitted.filter((t) => t >= from && t < to).length / ((to - from) / 1000)

/** Counts, with admissions in each whole second from `from` to `to` and where the failures fell (seconds from `from`). */
const summary = (report: LoadReport, from: number, to: number) => {
  const tags: Record<string, Array<number>> = {}
  for (const [t, tag] of report.failed) (tags[tag] ??= []).push(Math.round((t - from) / 100) / 10)
  const perSecond = Array.from({ length: Math.floor((to - from) / 1000) }, (_, i) => pace(report, from + i * 1000, from + (i + 1) * 1000))
  return { admitted: report.admitted.length, degraded: report.degraded.length, perSecond: perSecond.map(Math.round), failed: tags }
}

const check = (engine: string, { closed, kills, measuredFrom, open, resumedFrom, stoppedAt }: Run) => {
  const firstKill = kills[0]?.from ?? Infinity
  const nearKill = (t: number) => kills.some((k) => t >= k.from && t <= k.to + KILL_EFFECT_MS)
  const paces = (report: LoadReport) => ({
    before: Math.round(pace(report, measuredFrom, firstKill)),
    after: Math.round(pace(report, resumedFrom, stoppedAt))
  })
  const processes = [["fail_closed", closed], ["default", open]] as const
  const degraded = new Set(open.degraded)
  const held = [...closed.holds, ...open.holds.filter(([at]) => !degraded.has(at))]
    .map(([start, end]) => [start + CLOCK_SLACK_MS, end - CLOCK_SLACK_MS] as const)
    .filter(([start, end]) => end > start)
  const seconds = (t: number) => Math.round((t - measuredFrom) / 100) / 10
  console.log(`${engine} connection kills (seconds from the baseline's start): ${JSON.stringify({
    kills: kills.map((k) => ({ at: seconds(k.from), killed: k.killed })),
    resumed: [seconds(resumedFrom), seconds(stoppedAt)],
    closed: { ...summary(closed, measuredFrom, stoppedAt), pace: paces(closed) },
    open: { ...summary(open, measuredFrom, stoppedAt), pace: paces(open) },
    peakHeld: peakHeld(held)
  })}`)

  // Every check is soft, so that a failing run reports all it broke. The kills took place, and each
  // cut connections of this test's processes.
  expect(kills.length).toBe(KILLS)
  for (const k of kills) expect.soft(k.killed, "connections killed").toBeGreaterThanOrEqual(1)
  // Only typed failures, and no defect (recorded as "Die:<tag>"): fail_closed gets StoreUnavailable
  // (or StoreTimeout) around the kills only; the default admits degraded there instead, and never
  // fails but by timeout.
  const tags = (report: LoadReport) => report.failed.map(([, tag]) => tag)
  const storeFailure = (tag: string) => tag === "StoreUnavailable" || tag === "StoreTimeout"
  expect.soft(tags(closed).filter((tag) => !storeFailure(tag) && tag !== "AcquireTimeout"), "fail_closed: other failures").toEqual([])
  expect.soft(tags(open).filter((tag) => tag !== "AcquireTimeout"), "default: other failures").toEqual([])
  expect.soft(closed.failed.filter(([t, tag]) => storeFailure(tag) && !nearKill(t)), "fail_closed: store failures away from a kill")
    .toEqual([])
  expect.soft(open.degraded.filter((t) => !nearKill(t)), "default: degraded away from a kill").toEqual([])
  for (const [who, report] of processes) {
    const timeouts = tags(report).filter((tag) => tag === "AcquireTimeout").length
    const attempts = report.admitted.length + report.degraded.length + report.failed.length
    expect.soft(timeouts, `${who}: AcquireTimeouts of ${attempts} acquires`).toBeLessThanOrEqual(TIMEOUT_SHARE * attempts)
  }
  // The store's permits were never held by more than max_concurrent callers at once.
  expect.soft(peakHeld(held), "permits held at once").toBeLessThanOrEqual(MAX_CONCURRENT)
  // Both were served before the first kill (else the comparison below means nothing), and from
  // SETTLE_MS after the last both are served again at least half as fast.
  for (const [who, report] of processes) {
    const { after, before } = paces(report)
    expect.soft(before, `${who}: admitted per second before the first kill`).toBeGreaterThanOrEqual(MIN_BASELINE)
    expect.soft(after, `${who}: admitted per second from ${SETTLE_MS} ms after the last kill (${before} before)`)
      .toBeGreaterThanOrEqual(RESUMED_SHARE * before)
  }
}

// ---- PostgreSQL -------------------------------------------------------------------------------

/** A database of this test's own on the test server, so its backends can be killed alone. */
const ownDatabase = async () => {
  const name = `rate_sync_kill_${unique()}`
  const admin = new pg.Client({ connectionString: databaseUrl })
  await admin.connect()
  await admin.query(`CREATE DATABASE "${name}" TEMPLATE template0`)
  const url = new URL(databaseUrl)
  url.pathname = `/${name}`
  return {
    url: url.toString(),
    /** Terminates every session on the database but the admin's; returns how many. */
    kill: async () => {
      const result = await admin.query<{ killed: number }>(
        `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))::int AS killed
         FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`,
        [name]
      )
      return result.rows[0]?.killed ?? 0
    },
    drop: async () => {
      try {
        await admin.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`)
      } finally {
        await admin.end()
      }
    }
  }
}

// ---- Redis --------------------------------------------------------------------------------------

/** Kills the clients of store `store` (every process's: named `rate-sync:<store>:<pid>`); returns how many. */
const redisKiller = (url: string, store: string) => {
  const admin = new Redis(url, { maxRetriesPerRequest: 1 })
  admin.on("error", () => {})
  const prefix = `rate-sync:${store}:`
  return {
    kill: async () => {
      const list = String(await admin.call("CLIENT", "LIST"))
      const ids = list.split("\n").flatMap((line) => {
        const id = /(?:^|\s)id=(\d+)/.exec(line)?.[1]
        const name = /(?:^|\s)name=(\S*)/.exec(line)?.[1]
        return id !== undefined && name?.startsWith(prefix) === true ? [id] : []
      })
      const killed = await Promise.all(ids.map((id) => admin.call("CLIENT", "KILL", "ID", id)))
      return killed.reduce((sum: number, n) => sum + Number(n), 0)
    },
    close: () => admin.disconnect()
  }
}

describe("connections killed under load, leased limiter", () => {
  it("postgres: no crash, only typed failures, max_concurrent holds and both processes are served again", async () => {
    const db = await ownDatabase()
    try {
      const run = await underKills(
        "s",
        { engine: "postgres", url: db.url, auto_create: true, pool_timeout_ms: 1_000 },
        db.kill
      )
      check("postgres", run)
    } finally {
      await db.drop()
    }
  }, 40_000)

  it.skipIf(redisUrl === "")("redis: no crash, only typed failures, max_concurrent holds and both processes are served again", async () => {
    // The store's name is in its connections' names, which is how they are told from other tests'.
    const store = `kill_${unique()}`
    const killer = redisKiller(redisUrl, store)
    try {
      const run = await underKills(
        store,
        { engine: "redis", url: redisUrl, key_prefix: `rate-sync-kill:${unique()}:`, command_timeout_ms: 1_000 },
        killer.kill
      )
      check("redis", run)
    } finally {
      killer.close()
    }
  }, 40_000)
})

describe("a connection killed mid-transaction", () => {
  // The typed errors of an acquire (src/Errors.ts) that a dying connection may honestly cause; not
  // StoreMisconfigured, which would wrongly refuse for good what a reconnect mends.
  const TYPED = new Set(["StoreUnavailable", "StoreTimeout", "AcquireTimeout", "ConflictRetriesExhausted"])

  it("postgres: every failed acquire is typed, never an untyped SqlError or a defect, while backends are killed in a tight loop", async () => {
    const db = await ownDatabase()
    try {
      const limiter = `midtx_${unique()}`
      const settings: SettingsInput = {
        stores: { s: { engine: "postgres", url: db.url, auto_create: true, pool_max_size: 4, pool_min_size: 0, pool_timeout_ms: 1_000 } },
        limiters: {
          [limiter]: { store: "s", max_concurrent: 2, lease_ttl_seconds: LEASE_TTL_SECONDS, rate_per_second: RATE, burst: 50, fail_closed: true }
        }
      }
      // Several keys, so that one key that stopped asking the database does not stop the transactions.
      const keys = Array.from({ length: 8 }, (_, i) => `k${i}`)
      let admitted = 0
      const failed = new Map<string, number>()
      /** The first of each kind, for the log. */
      const samples = new Map<string, string>()
      const record = (exit: Exit.Exit<unknown, { readonly _tag: string }>) => {
        if (Exit.isSuccess(exit)) return void admitted++
        const error = Cause.failureOption(exit.cause)
        const defect = Cause.dieOption(exit.cause)
        const tag = Option.isSome(error)
          ? error.value._tag
          : Option.isSome(defect)
          ? defectTag(defect.value)
          : "Interrupted"
        failed.set(tag, (failed.get(tag) ?? 0) + 1)
        if (!samples.has(tag)) samples.set(tag, Cause.pretty(exit.cause).split("\n").slice(0, 3).join(" | "))
      }
      const KILLING_MS = 3_000
      let startKilling = () => {}
      const started = new Promise<void>((resolve) => (startKilling = resolve))
      let endAt = Infinity
      const worker = (key: string) =>
        Effect.gen(function*() {
          while (machineClock() < endAt) {
            const exit = yield* Effect.exit(Effect.scoped(
              Effect.zipRight(RateLimiter.acquire(limiter, { key, timeout: Duration.millis(500) }), Effect.sleep("2 millis"))
            ))
            record(exit)
            if (Exit.isFailure(exit)) yield* Effect.sleep("5 millis")
          }
        })
      const program = Effect.gen(function*() {
        // The store is up and the table made before the kills start.
        yield* Effect.scoped(RateLimiter.acquire(limiter, { key: "warm-up" }))
        endAt = machineClock() + KILLING_MS + 500
        yield* Effect.sync(startKilling)
        yield* Effect.all(keys.flatMap((key) => [worker(key), worker(key), worker(key)]), { concurrency: "unbounded", discard: true })
      }).pipe(
        Effect.provide(RateSync.layer(settings).pipe(Layer.provide(Stores.layer))),
        // The store's outage warnings, a few hundred of them here, are not what is looked at.
        Logger.withMinimumLogLevel(LogLevel.Error)
      )

      let kills = 0
      let hits = 0
      const killing = started.then(async () => {
        while (machineClock() < endAt - 500) {
          const killed = await db.kill()
          kills++
          if (killed > 0) hits++
          await new Promise((resolve) => setTimeout(resolve, 5 + Math.random() * 20))
        }
      })
      await Promise.all([Effect.runPromise(program), killing])
      console.log(`postgres mid-transaction kills: ${JSON.stringify({ kills, hits, admitted, failed: Object.fromEntries(failed) })}`)
      for (const [tag, sample] of samples) console.log(`  ${tag}: ${sample}`)

      // Every failure is one of the typed errors of an acquire: no SqlError, no defect ("Die:...").
      expect.soft([...failed.keys()].filter((tag) => !TYPED.has(tag)), "untyped failures and defects").toEqual([])
      // The loop cut the store's connections many times while it was busy.
      expect.soft(hits, "kills that cut a connection").toBeGreaterThanOrEqual(20)
      expect.soft(admitted, "admitted").toBeGreaterThan(0)
    } finally {
      await db.drop()
    }
  }, 30_000)
})
