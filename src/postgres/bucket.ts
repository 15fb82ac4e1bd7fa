/**
 * The token bucket: one row per key; `last_acquisition_at` is GCRA's theoretical arrival time. A
 * batch is planned (bucketPlan.ts) against one reading of the row and written in one conditional
 * upsert: on the version it read, or on the row still lying within the plan's slack. A per-key cache
 * of the last row written saves the read before a write while no other process writes the key.
 */
import type { SqlError } from "@effect/sql/SqlError"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import type { StoreError } from "../Errors.js"
import * as Gcra from "../internal/gcra.js"
import * as RoundRobin from "../internal/roundRobin.js"
import type { TokenBucket } from "../LimiterSpec.js"
import type { RateOutcome, RateRequest, Reservation } from "../Store.js"
import * as Plan from "./bucketPlan.js"
import * as Writes from "./bucketWrites.js"
import { Conflict } from "./conflicts.js"
import { ceilMicros, type Context } from "./context.js"

/**
 * Bounds the per-key cache of the last row written, which saves the read before a write (as many keys
 * as the coalescer keeps; an entry is about a hundred bytes).
 */
const MAX_CACHED = 100_000

interface Cached {
  readonly tat: number
  readonly version: number
  /** Server time (store base) of the statement that wrote it, and the local clock on receipt. */
  readonly serverMs: number
  readonly localMs: number
}

export interface Attempt {
  /** Plan on the row this process last wrote, when no other process is known to write the key. */
  readonly useCache: boolean
  /** Slots to reserve ahead, after the batch. */
  readonly spares: number
  /**
   * Inside a transaction of the caller's (a lease's): written on its connection, alone. Otherwise
   * the write may go with other keys' in one statement.
   */
  readonly inTransaction: boolean
  /**
   * What is left of the operation's time (ms), when the caller bounds it this way: the write then
   * waits at most that long, with no fiber of its own (and a read, rare, within it).
   */
  readonly left?: () => number
}

export interface Bucket {
  /** The row as it is: tat (-Infinity when none), version, and the server's now. */
  readonly read: (id: string) => Effect.Effect<{ readonly tat: number; readonly version: number | null; readonly now: number }, SqlError>
  /** Decides a batch in order against one read of the row (or the cache), then writes it in one conditional upsert. */
  readonly attempt: (
    id: string,
    rate: TokenBucket,
    batch: ReadonlyArray<RateRequest>,
    options: Attempt
  ) => Effect.Effect<Array<RateOutcome>, Conflict | SqlError | StoreError>
  /** What `state` shows of the bucket. */
  readonly view: (id: string, rate: TokenBucket) => Effect.Effect<
    { readonly limit: number; readonly remaining: number; readonly resetAfterMs: number; readonly nextSlotAfterMs: number },
    SqlError
  >
  /** Gives back `cost` units of the newest reservation, if nobody wrote after it. */
  readonly refund: (id: string, rate: TokenBucket, cost: number, reservation: Reservation) => Effect.Effect<void, SqlError>
  /** The writes so far, and the keys they carried (several keys go in one statement under load). */
  readonly load: () => { readonly writes: number; readonly items: number }
  /** Forgets what the cache holds of `id` (written elsewhere), or of every key. */
  readonly forget: (id: string) => void
  readonly forgetAll: () => void
}

/**
 * Sets `id` in a map bounded at MAX_CACHED, the entry set longest ago going first: an entry set again
 * moves to the end, and eviction keeps one iterator going round, since a fresh one from the front
 * skips every entry deleted since the map last compacted (a full cache would pay in proportion to
 * the entries held, on every write).
 */
const bounded = <V>(map: Map<string, V>) => {
  const next = RoundRobin.make(map)
  return (id: string, value: V) => {
    map.delete(id)
    map.set(id, value)
    if (map.size <= MAX_CACHED) return
    const oldest = next()!
    map.delete(oldest[0] === id ? next()![0] : oldest[0])
  }
}

/** `closed`: what writes still queued learn when the store closes under them. */
export const make = (ctx: Context, scope: Scope.Scope, closed: StoreError): Bucket => {
  const { NEXT, T, AT, NOW, FROM_SETTING, margin, sql } = ctx
  const writer = Writes.make(ctx, scope, closed)
  const cache = new Map<string, Cached>()
  /** Keys where another process wrote since our cached write: reading first is cheaper there. */
  const contendedUntil = new Map<string, number>()
  const remember = bounded(cache)
  const contended = bounded(contendedUntil)

  const read = (id: string) =>
    Effect.gen(function*() {
      const rows = yield* sql<{ tat: number | null; version: number | null; now: number }>`
        SELECT ${AT} AS tat, s.version, ${NOW} AS now FROM (SELECT 1) AS one LEFT JOIN ${T} s ON s.group_id = ${id}`
      const row = rows[0]!
      return { tat: row.tat ?? -Infinity, version: row.version, now: row.now }
    })

  const attempt: Bucket["attempt"] = (id, rate, batch, options) =>
    Effect.gen(function*() {
      const { spares, useCache } = options
      const uncontended = useCache && (contendedUntil.get(id) ?? 0) < performance.now()
      const cached = uncontended ? cache.get(id) : undefined
      // A key this process knows nothing of is most likely idle: plan as if it were and write in one
      // upsert, on the condition that the row (if any) lets the plan hold; else read and retry.
      const blind = uncontended && cached === undefined
      // A cached row is as of its write; the server clock has run at least as long as ours since.
      const state = blind
        ? { tat: -Infinity, version: null, now: 0 }
        : cached === undefined
        ? yield* (options.left === undefined ? read(id) : ctx.boundedFor(options.left())(read(id)))
        : { tat: cached.tat, version: cached.version, now: cached.serverMs + (performance.now() - cached.localMs) }
      const tolerance = Gcra.tolerance(rate)
      const plan = Plan.plan(rate, margin, state.tat, state.now, batch, spares)
      const newest = Plan.newest(plan)
      const units = newest < 0 ? 0 : Plan.units(plan)
      if (units === 0 && blind) return yield* attempt(id, rate, batch, { ...options, useCache: false })
      if (units === 0) {
        const remaining = Gcra.remaining(state.tat, state.now, rate)
        return plan.map((step): RateOutcome => ({
          _tag: "RateLimited",
          retryAfterMs: step.admitted ? 0 : step.wait,
          limit: rate.burst,
          remaining
        }))
      }
      const micros = ceilMicros(units * rate.intervalMs)
      // The plan also holds if another process wrote meanwhile, as long as the debt it finds still
      // lets every admitted request start within its own bound.
      const slack = Plan.slack(rate, plan, batch)
      const write = { id, micros, expected: state.version ?? 1, blind, slack }
      const row = yield* (options.inTransaction ? writer.alone(write) : writer.submit(write, options.left?.()))
      if (row === undefined) {
        cache.delete(id)
        if (cached !== undefined || blind) contended(id, performance.now() + 1_000)
        return yield* new Conflict()
      }
      remember(id, { tat: row.tat, version: row.version, serverMs: row.now, localMs: performance.now() })
      // The same instant the database used: the batch started at max(old tat, now).
      const began = row.tat - micros / 1000
      return plan.map((step, index): RateOutcome => {
        if (!step.admitted) {
          return { _tag: "RateLimited", retryAfterMs: step.wait, limit: rate.burst, remaining: 0 }
        }
        const slot = Math.max(row.now, began + step.through * rate.intervalMs - tolerance)
        return {
          _tag: "Admitted",
          waitMs: slot - row.now,
          // Only the newest reservation can be given back, and only while nobody wrote after it.
          reservation: { slotMs: slot, tatMs: began + step.through * rate.intervalMs, version: newest === index ? row.version : undefined },
          limit: rate.burst,
          remaining: Gcra.remaining(row.tat, slot, rate)
        }
      })
    })

  const refund: Bucket["refund"] = (id, rate, cost, reservation) =>
    Effect.suspend(() => {
      cache.delete(id)
      const micros = ceilMicros(cost * rate.intervalMs)
      return sql`
        UPDATE ${T} SET last_acquisition_at = last_acquisition_at - ${micros}::float8 * interval '1 microsecond',
          version = ${NEXT}, updated_at = statement_timestamp()
        ${FROM_SETTING} WHERE group_id = ${id} AND version = ${reservation.version}`.pipe(Effect.asVoid)
    })

  const view: Bucket["view"] = (id, rate) =>
    Effect.map(read(id), (row) => ({
      limit: rate.burst,
      remaining: Gcra.remaining(row.tat, row.now, rate),
      resetAfterMs: Gcra.resetAfter(row.tat, row.now),
      nextSlotAfterMs: Gcra.nextSlotAfter(row.tat, row.now, rate)
    }))

  return {
    read,
    view,
    attempt,
    refund,
    load: writer.load,
    forget: (id) => {
      cache.delete(id)
    },
    forgetAll: () => cache.clear()
  }
}
