/**
 * Decisions that waited on a row lock held by another session (a lease transaction, a slow writer)
 * are made and written at the time after the wait, not at their statement's start: otherwise the
 * state written is older than the admission, and the limit refills early by the length of the wait.
 *
 * Each case holds the rows' lock from a session of its own, in an open transaction, while a store
 * call queues behind it, and compares what was written with the instant the lock went (the holder's
 * clock_timestamp() just before its COMMIT, so no later than the release). A second store stands
 * for another process and asks right after the release: it may only get in as far as the time since
 * then allows, which holds however slow the machine is.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import pg from "pg"
import { scopedClient } from "./support/admin.js"
import { inject } from "vitest"
import type { LimiterSpec } from "../src/LimiterSpec.js"
import * as PostgresStore from "../src/postgres/PostgresStore.js"
import { decodeSettings } from "../src/Settings.js"
import type { LeaseRequest, RateRequest } from "../src/Store.js"

const url = inject("databaseUrl")
let n = 0
const fresh = (prefix: string) => `${prefix}_${process.pid}_${n++}`

/** Long enough for the stale start time to cross a whole interval of the limits below. */
const LONG_HOLD_MS = 1_200
/** Enough to tell a written instant from one read before the wait. */
const SHORT_HOLD_MS = 300

const storeOn = (table: string) =>
  Effect.flatMap(
    decodeSettings({
      stores: {
        db: { engine: "postgres", url, table_name: table, auto_create: true, timing_margin_ms: 0, operation_timeout_ms: 20_000 }
      }
    }),
    (settings) => {
      const config = settings.stores["db"]
      return config?.engine === "postgres" ? PostgresStore.make("db", config) : Effect.die("not a postgres store")
    }
  )

const spec = (name: string, rate: LimiterSpec["rate"], concurrency?: LimiterSpec["concurrency"]): LimiterSpec => ({
  name,
  store: "db",
  rate,
  concurrency,
  timeoutMs: undefined,
  failClosed: true,
  retry: { maxAttempts: 5, baseDelayMs: 1, maxDelayMs: 5 }
})

const bucket = spec("tb", { _tag: "TokenBucket", ratePerSecond: 1, burst: 3, intervalMs: 1_000 })
const window = spec("win", { _tag: "SlidingWindow", limit: 3, windowMs: 1_000 })
const leased = spec("lease", { _tag: "TokenBucket", ratePerSecond: 1, burst: 3, intervalMs: 1_000 }, { max: 1, leaseTtlMs: 2_000 })

const request = (limiter: LimiterSpec, cost: number, maxWaitMs: number): RateRequest => ({ limiter, key: "k", cost, maxWaitMs })
const leaseRequest = (limiter: LimiterSpec, leaseId: string): LeaseRequest => ({ ...request(limiter, 1, 0), leaseId, queue: false })

const sql = <Row extends pg.QueryResultRow = Record<string, unknown>>(statement: string, values: ReadonlyArray<unknown> = []) =>
  Effect.promise(async () => {
    const client = new pg.Client({ connectionString: url })
    await client.connect()
    try {
      return (await client.query<Row>(statement, [...values])).rows
    } finally {
      await client.end()
    }
  })

/** How far (ms) a row's column lies after `instant`. */
const msAfter = (table: string, id: string, column: "last_acquisition_at" | "updated_at", instant: string) =>
  Effect.map(
    sql<{ ms: number }>(`SELECT (extract(epoch from ${column} - $1::timestamptz) * 1000)::float8 AS ms FROM ${table} WHERE group_id = $2`, [instant, id]),
    (rows) => {
      const ms = rows[0]?.ms
      if (ms === undefined) throw new Error(`no row ${id}`)
      return ms
    }
  )

/** Waits until some session waits on a lock in a statement on `table`. */
const untilWaiting = (table: string) =>
  Effect.promise(async () => {
    const observer = new pg.Client({ connectionString: url })
    await observer.connect()
    try {
      for (let i = 0; i < 1_000; i++) {
        const { rows } = await observer.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM pg_stat_activity
           WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid() AND query LIKE $1`,
          [`%${table}%`]
        )
        if ((rows[0]?.n ?? 0) > 0) return
        await new Promise((resolve) => setTimeout(resolve, 10))
      }
      throw new Error("no statement queued behind the lock")
    } finally {
      await observer.end()
    }
  })

type HolderKind = "lock" | "update"

/**
 * Runs `call` while another session holds the lock of the row `id` (only locked, or also updated)
 * for `holdMs` after the call started waiting. Returns what the call returned, the holder's clock
 * just before it committed, and the local clock before the commit was sent.
 */
const behindLock = <A, E>(table: string, id: string, how: HolderKind, holdMs: number, call: Effect.Effect<A, E>) =>
  Effect.gen(function*() {
    const holder = yield* scopedClient(url)
    yield* Effect.promise(async () => {
      await holder.query("BEGIN")
      const locked = await holder.query(
        how === "lock"
          ? `SELECT group_id FROM ${table} WHERE group_id = $1 FOR UPDATE`
          : `UPDATE ${table} SET updated_at = now() WHERE group_id = $1 RETURNING group_id`,
        [id]
      )
      if (locked.rowCount !== 1) throw new Error(`no row ${id} to lock`)
    })
    const fiber = yield* Effect.fork(call)
    yield* untilWaiting(table)
    yield* Effect.sleep(holdMs)
    const { releasedAt, localBefore } = yield* Effect.promise(async () => {
      const { rows } = await holder.query<{ at: string }>("SELECT clock_timestamp()::text AS at")
      const localBefore = performance.now()
      await holder.query("COMMIT")
      const releasedAt = rows[0]?.at
      if (releasedAt === undefined) throw new Error("no clock")
      return { releasedAt, localBefore }
    })
    const result = yield* Fiber.join(fiber)
    return { result, releasedAt, localBefore }
  })

describe("PostgreSQL engine: decisions that waited on a row lock", () => {
  for (const how of ["lock", "update"] as const) {
    for (const path of ["blind upsert", "versioned write"] as const) {
      it.live(`token bucket (${path}), lock holder that ${how === "lock" ? "only locks" : "updates"}: written at the time after the wait`, () =>
        Effect.gen(function*() {
          const table = fresh("lockwait_tb")
          const store = yield* storeOn(table)
          const other = yield* storeOn(table)
          const id = "r:tb:k"
          if (path === "versioned write") {
            // One write first, so the store's next write is the versioned one against its cached row.
            expect((yield* store.acquireRate(request(bucket, 1, 0)))._tag).toBe("Admitted")
          } else {
            yield* sql(`INSERT INTO ${table} (group_id, last_acquisition_at) VALUES ($1, '-infinity')`, [id])
          }
          // A full bucket (the version stays, so the cached row still matches).
          yield* sql(`UPDATE ${table} SET last_acquisition_at = '-infinity' WHERE group_id = $1`, [id])

          const { result, releasedAt, localBefore } = yield* behindLock(table, id, how, LONG_HOLD_MS, store.acquireRate(request(bucket, 3, 5_000)))
          expect(result._tag).toBe("Admitted")
          // Admitted at the decision's instant: no wait; the answer's wait is put on this process's clock
          // (below 0 by however much slower it came back than the fastest answer), never the hold's length.
          const waitMs = result._tag === "Admitted" ? result.waitMs : Infinity
          expect(waitMs).toBeLessThanOrEqual(1e-6)
          expect(waitMs).toBeGreaterThan(-LONG_HOLD_MS / 2)
          // The whole burst, taken after the lock went: the tat lies three intervals after that.
          expect(yield* msAfter(table, id, "last_acquisition_at", releasedAt)).toBeGreaterThanOrEqual(3_000)
          expect(yield* msAfter(table, id, "updated_at", releasedAt)).toBeGreaterThanOrEqual(0)

          // Another process right away: beyond the burst, only what the time since the release earned.
          const next = yield* other.acquireRate(request(bucket, 1, 0))
          const elapsedMs = performance.now() - localBefore
          const admitted = 3 + (next._tag === "Admitted" ? 1 : 0)
          expect(admitted).toBeLessThanOrEqual(3 + Math.floor(elapsedMs / 1_000))
        }).pipe(Effect.scoped))
    }

    it.live(`sliding window, lock holder that ${how === "lock" ? "only locks" : "updates"} the header: entries written at the time after the wait`, () =>
      Effect.gen(function*() {
        const table = fresh("lockwait_win")
        const store = yield* storeOn(table)
        const other = yield* storeOn(table)
        const header = "w:win:k"
        yield* sql(`INSERT INTO ${table} (group_id, last_acquisition_at) VALUES ($1, '-infinity')`, [header])

        const { result, releasedAt, localBefore } = yield* behindLock(table, header, how, LONG_HOLD_MS, store.acquireRate(request(window, 3, 0)))
        expect(result._tag).toBe("Admitted")
        expect(yield* msAfter(table, header, "updated_at", releasedAt)).toBeGreaterThanOrEqual(0)
        for (const entry of [0, 1, 2]) {
          expect(yield* msAfter(table, `${header}#${entry}`, "last_acquisition_at", releasedAt)).toBeGreaterThanOrEqual(0)
        }
        // The reservation's slot is the instant written, in the store's time base.
        const [written] = yield* sql<{ ms: number }>(
          `SELECT (extract(epoch from h.updated_at - r.last_acquisition_at) * 1000)::float8 AS ms
           FROM ${table} h, ${table} r WHERE h.group_id = $1 AND r.group_id = $2`,
          [header, `${header}#0`]
        )
        expect(written?.ms).toBe(0)

        const next = yield* other.acquireRate(request(window, 1, 0))
        const elapsedMs = performance.now() - localBefore
        // At most the limit within a window's length of the release.
        expect(next._tag === "Admitted" ? elapsedMs : Infinity).toBeGreaterThanOrEqual(1_000)
      }).pipe(Effect.scoped))
  }

  it.live("a lease granted after waiting on its rate row's lock expires the ttl after the wait: nobody else gets it before", () =>
    Effect.gen(function*() {
      const table = fresh("lockwait_lease")
      const store = yield* storeOn(table)
      const other = yield* storeOn(table)
      const rateRow = "r:lease:k"
      yield* sql(`INSERT INTO ${table} (group_id, last_acquisition_at) VALUES ($1, '-infinity')`, [rateRow])

      const { result, releasedAt, localBefore } = yield* behindLock(table, rateRow, "lock", LONG_HOLD_MS, store.acquireLease(leaseRequest(leased, "one")))
      expect(result._tag).toBe("Admitted")
      expect(yield* msAfter(table, "c:lease:k#0", "last_acquisition_at", releasedAt)).toBeGreaterThanOrEqual(2_000)
      expect(yield* msAfter(table, rateRow, "last_acquisition_at", releasedAt)).toBeGreaterThanOrEqual(1_000)

      // Another process asks a second after the release: the only lease is still held.
      yield* Effect.sleep(Math.max(0, 1_000 - (performance.now() - localBefore)))
      const second = yield* other.acquireLease(leaseRequest(leased, "two"))
      const elapsedMs = performance.now() - localBefore
      expect(second._tag === "Admitted" ? elapsedMs : Infinity).toBeGreaterThanOrEqual(2_000)
    }).pipe(Effect.scoped))

  it.live("a free lease slot that another session only has locked (a release in flight) is waited for, not answered as full", () =>
    Effect.gen(function*() {
      const table = fresh("lockwait_claim")
      const store = yield* storeOn(table)
      const onlyLeases = spec("lease", undefined, { max: 1, leaseTtlMs: 2_000 })
      // The slot row exists and is free; the holder session locks it (as a release's upsert does until it commits).
      yield* sql(`INSERT INTO ${table} (group_id, last_acquisition_at, version) VALUES ($1, '-infinity', 0)`, ["c:lease:k#0"])
      const { result } = yield* behindLock(table, "c:lease:k#0", "lock", 300, store.acquireLease(leaseRequest(onlyLeases, "one")))
      expect(result._tag).toBe("Admitted")
      expect((yield* store.state(onlyLeases, "k")).leasesHeld).toBe(1)
    }).pipe(Effect.scoped))

  it.live("a renewal that waited on the slot's lock extends the lease from the time after the wait", () =>
    Effect.gen(function*() {
      const table = fresh("lockwait_renew")
      const store = yield* storeOn(table)
      expect((yield* store.acquireLease(leaseRequest(leased, "one")))._tag).toBe("Admitted")
      const slot = "c:lease:k#0"
      const { result, releasedAt } = yield* behindLock(table, slot, "lock", SHORT_HOLD_MS, store.renew(leased, "k", "one"))
      expect(result).toBe(true)
      expect(yield* msAfter(table, slot, "last_acquisition_at", releasedAt)).toBeGreaterThanOrEqual(2_000)
      expect(yield* msAfter(table, slot, "updated_at", releasedAt)).toBeGreaterThanOrEqual(0)
    }).pipe(Effect.scoped))

  it.live("a backoff that waited on the row's lock blocks from the time after the wait", () =>
    Effect.gen(function*() {
      const table = fresh("lockwait_backoff")
      const store = yield* storeOn(table)
      const header = "w:win:k"
      yield* sql(`INSERT INTO ${table} (group_id, last_acquisition_at) VALUES ($1, '-infinity')`, [header])
      const { releasedAt } = yield* behindLock(table, header, "update", SHORT_HOLD_MS, store.backoff(window, "k", 1_500))
      expect(yield* msAfter(table, header, "last_acquisition_at", releasedAt)).toBeGreaterThanOrEqual(1_500)
    }).pipe(Effect.scoped))
})
