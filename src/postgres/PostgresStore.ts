/**
 * The PostgreSQL store, on `@effect/sql-pg` with one pool per store, in exactly the documented
 * table and needing only SELECT, INSERT and UPDATE on it:
 *
 * - token bucket: one row per key; `last_acquisition_at` is GCRA's theoretical arrival time.
 * - sliding window: a header row (the lock, and `last_acquisition_at` = blocked until) and up to
 *   `limit` ring rows, each holding one admission's time; ring rows are reused, never deleted.
 * - concurrency: `max_concurrent` slot rows; `last_acquisition_at` is the lease's expiry and
 *   `version` its holder's token. A slot whose expiry passed is free again, so a crashed holder's
 *   slot comes back by itself.
 *
 * Every change is an optimistic write on `version` (for the token bucket: or on the row still being
 * within what the batch's plan allows), retried under the limiter's `Schedule`.
 * Time is the database's: every decision is made against `clock_timestamp()` read after the lock of
 * the row it changes, so a statement that queued behind another transaction decides at the time it
 * got the row, not at its start (`statement_timestamp()`, earlier by the wait). That is why writes
 * that may wait are upserts: `ON CONFLICT ... DO UPDATE` locks the existing row before it evaluates
 * its condition and new values, where a plain UPDATE may compute them before it waits. The instant a
 * decision used is written to `updated_at` and returned as its `now`; a lease that also takes a rate
 * slot runs its ttl from after the rate's write. Reads, which wait for no row lock, the cleanup and a
 * refund (which decides nothing by the time) use `statement_timestamp()`.
 * Requests of one process on one key are coalesced into one batch, so in-process contention costs
 * no conflicts and, under load, less than one round trip per admission.
 */
import { randomInt, randomUUID } from "node:crypto"
import * as Reactivity from "@effect/experimental/Reactivity"
import type { SqlClient } from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import { PgClient } from "@effect/sql-pg"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import pg from "pg"
import {
  ConfigIssue,
  ConfigurationError,
  ConflictRetriesExhausted,
  type StoreError,
  StoreMisconfigured,
  StoreTimeout,
  StoreUnavailable
} from "../Errors.js"
import * as Coalesce from "../internal/coalesce.js"
import { interruptAfter } from "../internal/detach.js"
import * as Holds from "../internal/holds.js"
import { digest, wtf8 } from "../internal/keys.js"
import * as Gcra from "../internal/gcra.js"
import * as Wakeups from "../internal/wakeups.js"
import * as Window from "../internal/window.js"
import { capacity, type LimiterSpec, type SlidingWindow, stateKey, type TokenBucket } from "../LimiterSpec.js"
import * as Metrics from "../Metrics.js"
import * as Retry from "../Retry.js"
import type { PostgresStoreConfig } from "../Settings.js"
import type { AcquireOutcome, AcquireRequest, Reservation, StateView, Store } from "../Store.js"
import * as Errors from "./errors.js"
import * as Listener from "./listener.js"

/** The documented table (README, "Manual Table Setup"), in the configured schema. */
export const createTableSql = (config: PostgresStoreConfig): ReadonlyArray<string> => {
  const table = `"${config.schema_name}"."${config.table_name}"`
  return [
    `CREATE ${config.unlogged ? "UNLOGGED " : ""}TABLE IF NOT EXISTS ${table} (
    group_id VARCHAR(255) PRIMARY KEY,
    last_acquisition_at TIMESTAMPTZ NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    current_concurrent INTEGER NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
)`,
    `CREATE INDEX IF NOT EXISTS "idx_${config.table_name}_updated" ON ${table}(updated_at)`
  ]
}

/** Keys that can stand in a group_id as they are; anything else is hashed (long, unicode, '#'). */
const PLAIN = /^[\x20-\x22\x24-\x7e]{0,150}$/

/**
 * The most a limiter and key may take of a group_id (VARCHAR(255)) as they are: room is left for the
 * "r:" prefix and a "#" row suffix of up to 9 digits. A longer pair hashes its key.
 */
const MAX_PLAIN_PART = 240

const ceilMicros = (ms: number) => Math.ceil(ms * 1000 - 1e-6)

const keyPart = (limiter: string, key: string) =>
  `${limiter}:${PLAIN.test(key) && limiter.length + 1 + key.length <= MAX_PLAIN_PART ? key : `#${digest(wtf8(key))}`}`

/**
 * How long a probe NOTIFY, once committed, may take to reach the LISTEN connection before it is said
 * to hear nothing: milliseconds when it works, so seconds only on a machine far overloaded.
 */
const PROBE_TIMEOUT_MS = 3_000

/** The most requests one write carries; a key with more waiters takes several writes. */
const MAX_BATCH = 256

/** Bounds the per-key cache of the last row written, which saves the read before a write. */
const MAX_CACHED = 10_000

const NEXT_VERSION = "CASE WHEN version >= 2147483646 THEN 1 ELSE version + 1 END"

/** The version after `version`, as NEXT_VERSION computes it. */
const nextVersion = (version: number) => (version >= 2147483646 ? 1 : version + 1)

/**
 * One reading of the clock as `c.t`, for the FROM of a sub-select in an upsert's `SET (...) = (SELECT ...)`:
 * it is evaluated there, after the row's lock, once for all the columns it sets.
 */
const INSTANT = "(SELECT clock_timestamp() AS t) AS c"

/**
 * `synchronous_commit = false`, as a setting of the one transaction that runs it: a pooler in
 * transaction mode (PgBouncer) refuses settings at connection start and hands the server session to
 * other clients between transactions, so neither a startup `options` nor a session `SET` can carry it.
 * `set_config(..., true)` is `SET LOCAL` as a function: called inside a statement it costs no round
 * trip, holds until that statement's (or transaction's) commit, which is when it is read, and is gone
 * after it. As a FROM item it runs whenever the statement produces a row, and so before any write.
 */
const ASYNC_COMMIT = "set_config('synchronous_commit', 'off', true)"

/** INSTANT, also setting ASYNC_COMMIT: every decision's write reads its instant this way. */
const INSTANT_ASYNC = `(SELECT clock_timestamp() AS t FROM ${ASYNC_COMMIT} AS setting) AS c`

class Conflict {
  readonly _tag = "Conflict"
}

interface Cached {
  readonly tat: number
  readonly version: number
  /** Server time (store base) of the statement that wrote it, and the local clock on receipt. */
  readonly serverMs: number
  readonly localMs: number
}


interface Held {
  readonly slot: string
  readonly token: number
}

/** Why a lease transaction rolled back. */
type Rollback =
  | { readonly _tag: "Full"; readonly held: number; readonly expiresInMs: number | undefined }
  | { readonly _tag: "Refused"; readonly retryAfterMs: number; readonly remaining: number }

export interface PostgresStore extends Store {
  /** The pool's client, for tests and tools. */
  readonly sql: SqlClient
  /** How many keys have waiters subscribed to their releases, and how many are in this process's lines (for tests and tools). */
  readonly waiters: () => { readonly subscribed: number; readonly queued: number }
  /** Whether the LISTEN connection is open and hears this store's NOTIFY (for tests and tools; see `Listener.Status`). */
  readonly listening: () => Listener.Status
  /**
   * Deletes the rows no limiter has touched for `olderThan` (at least a minute) and whose state lies
   * that far in the past: the documented cleanup, as an operation. It is the only statement of the
   * library that needs `DELETE` granted; nothing else ever deletes. Returns how many rows went.
   */
  readonly cleanup: (olderThan: Duration.DurationInput) => Effect.Effect<number, Errors.PostgresError | ConfigurationError>
}

export const make = (name: string, config: PostgresStoreConfig) =>
  Effect.gen(function*() {
    const table = `"${config.schema_name}"."${config.table_name}"`
    const context: Errors.Context = {
      store: name,
      table,
      poolMaxSize: config.pool_max_size,
      poolTimeoutMs: config.pool_timeout_ms,
      operationTimeoutMs: config.operation_timeout_ms
    }
    /**
     * The last refusal a pooler sent as it closed one of the pool's connections: PgBouncer's statement
     * pooling lets a lease's BEGIN through and then closes the connection, so the statement under way
     * sees only a dropped connection, which must not pass for an outage (fail_closed = false would admit).
     */
    let refused: { readonly cause: unknown; readonly at: number } | undefined
    const classify = Errors.fromSql(context)
    const toError = (error: SqlError): Errors.PostgresError => {
      const classified = classify(error)
      return classified._tag === "StoreUnavailable" && refused !== undefined && performance.now() - refused.at < 1_000
        ? Errors.fromCause(context)(refused.cause)
        : classified
    }
    const margin = config.timing_margin_ms
    /**
     * Every operation ends within operation_timeout_ms, lock waits and conflict retries included.
     * The statement is then interrupted in the background (the driver asks the server to cancel it; a
     * transaction rolls back): the caller does not wait for that.
     */
    const bounded = <A, E>(operation: Effect.Effect<A, E>): Effect.Effect<A, E | StoreTimeout> =>
      interruptAfter(operation, config.operation_timeout_ms, () =>
        new StoreTimeout({
          store: name,
          engine: "postgres",
          message: `PostgreSQL did not answer within operation_timeout_ms = ${config.operation_timeout_ms} (a row lock held elsewhere, or an overloaded server)`
        }))

    // No session settings at connection start (`options`): a pooler such as PgBouncer refuses them;
    // synchronous_commit = false is set by each writing statement instead (ASYNC_COMMIT).
    const pool = new pg.Pool({
      connectionString: config.url,
      max: config.pool_max_size,
      min: config.pool_min_size,
      connectionTimeoutMillis: config.pool_timeout_ms,
      application_name: "rate-sync"
    })
    // An idle connection that dies is dropped from the pool; the next query opens a new one.
    pool.on("error", () => {})
    // Every error the server (or a pooler) sends, as it arrives: the transaction that a refusal ends
    // reports only the failed ROLLBACK on the closed connection.
    pool.on("connect", (client) => {
      if (!(client instanceof pg.Client)) return
      client.connection.on("errorMessage", (cause: unknown) => {
        if (Errors.isPoolerRefusal(cause)) refused = { cause, at: performance.now() }
      })
    })
    const sql = yield* PgClient.fromPool({
      acquire: Effect.acquireRelease(Effect.succeed(pool), (p) => Effect.promise(() => p.end()))
    }).pipe(Effect.provide(Reactivity.layer), Effect.mapError(toError))
    const T = sql.literal(table)
    const C = sql.literal(config.synchronous_commit ? INSTANT : INSTANT_ASYNC)
    /** For the writes that read no instant before they write: a FROM item that sets ASYNC_COMMIT, when asked for. */
    const FROM_SETTING = sql.literal(config.synchronous_commit ? "" : `FROM ${ASYNC_COMMIT} AS setting`)
    /** The new version of the row `s` in a sub-select, where an unqualified `version` would be ambiguous. */
    const NEXT_S = sql.literal(NEXT_VERSION.replaceAll("version", "s.version"))
    const scope = yield* Effect.scope

    yield* setup(sql, config, context)

    // Times cross the wire relative to a base instant, as small floats that keep microseconds.
    const base = yield* sql<{ base: string }>`SELECT floor(extract(epoch from statement_timestamp()) * 1000)::text AS base`.pipe(
      Effect.map((rows) => Number(rows[0]?.base ?? 0)),
      Effect.orElseSucceed(() => Math.floor(Date.now()))
    )
    const NOW = sql.literal(`(extract(epoch from statement_timestamp()) * 1000 - ${base})::float8`)
    const atOf = (column: string) => sql.literal(`(extract(epoch from ${column}) * 1000 - ${base})::float8`)
    const AT = atOf("s.last_acquisition_at")

    // Written instants are whole microseconds, rounded up (stricter), built from text so no float rounds them.
    // (An interval of absolute scale overflows on PostgreSQL 14, so instants are the base plus a small offset.)
    const BASE_TS = sql.literal(`to_timestamp(${base} / 1000.0)`)
    const fromMicros = (us: unknown) => sql`(${BASE_TS} + make_interval(secs => ${us}::float8 / 1000000))`

    const channel = `rate_sync_${digest(table).slice(0, 20).replace(/[^A-Za-z0-9]/g, "_")}`
    const tag = (limiter: LimiterSpec) => <Type, In, Out>(metric: Metric.Metric<Type, In, Out>) =>
      metric.pipe(Metric.tagged("limiter", limiter.name), Metric.tagged("store", name))

    /**
     * Retries conflicts under the limiter's schedule, counting each; other failures pass through. The
     * first attempt runs bare (a retry's schedule costs as much as the rest of a store call, and most
     * calls have no conflict); after a conflict, the retry replays it first, so the schedule's
     * attempts and delays are exactly those of a retry from the start.
     */
    const retrying = <A, E>(limiter: LimiterSpec, attempt: Effect.Effect<A, E | Conflict | SqlError>) => {
      let conflicts = 0
      const counted = attempt.pipe(
        Effect.tapError((error) =>
          error instanceof Conflict
            ? Effect.zipRight(Effect.sync(() => conflicts++), Metric.increment(tag(limiter)(Metrics.conflicts)))
            : Effect.void
        )
      )
      const isConflict = (error: unknown): error is Conflict => error instanceof Conflict
      return counted.pipe(
        Effect.catchIf(isConflict, (first) => {
          let replayed = false
          const again = Effect.suspend(() => replayed ? counted : ((replayed = true), Effect.fail(first)))
          return Effect.retry(again, { schedule: Retry.schedule(limiter.retry), while: isConflict }).pipe(
            Effect.catchIf(isConflict, () =>
              Effect.fail(new ConflictRetriesExhausted({ store: name, limiter: limiter.name, attempts: conflicts })))
          )
        }),
        Effect.catchIf(isSqlError, (error) => Effect.fail(toError(error)))
      )
    }

    // ---- token bucket -------------------------------------------------------------------------

    const cache = new Map<string, Cached>()
    /** Keys where another process wrote since our cached write: reading first is cheaper there. */
    const contendedUntil = new Map<string, number>()
    const remember = (id: string, entry: Cached) => {
      cache.delete(id)
      cache.set(id, entry)
      if (cache.size > MAX_CACHED) cache.delete(cache.keys().next().value!)
    }

    const readBucket = (id: string) =>
      Effect.gen(function*() {
        const rows = yield* sql<{ tat: number | null; version: number | null; now: number }>`
          SELECT ${AT} AS tat, s.version, ${NOW} AS now FROM (SELECT 1) AS one LEFT JOIN ${T} s ON s.group_id = ${id}`
        const row = rows[0]!
        return { tat: row.tat ?? -Infinity, version: row.version, now: row.now }
      })

    /** Decides a batch in order against one read of the row, then writes it in one conditional upsert. */
    const bucketAttempt = (
      id: string,
      rate: TokenBucket,
      batch: ReadonlyArray<AcquireRequest>,
      useCache: boolean,
      spares: number
    ): Effect.Effect<Array<AcquireOutcome>, Conflict | SqlError> =>
      Effect.gen(function*() {
        const uncontended = useCache && (contendedUntil.get(id) ?? 0) < performance.now()
        const cached = uncontended ? cache.get(id) : undefined
        // A key this process knows nothing of is most likely idle: plan as if it were and write in one
        // upsert, on the condition that the row (if any) lets the plan hold; else read and retry.
        const blind = uncontended && cached === undefined
        // A cached row is as of its write; the server clock has run at least as long as ours since.
        const state = blind
          ? { tat: -Infinity, version: null, now: 0 }
          : cached === undefined
          ? yield* readBucket(id)
          : { tat: cached.tat, version: cached.version, now: cached.serverMs + (performance.now() - cached.localMs) }
        const tolerance = Gcra.tolerance(rate)
        const start = Math.max(state.tat, state.now)
        let units = 0
        const plan = batch.map((request, i) => {
          const ahead = start + (units + request.cost) * rate.intervalMs - tolerance - state.now
          const wait = Gcra.settle(ahead)
          // The free burst is for callers at once: spent ahead only where a rate it refills within the
          // margin leaves at least half of it free after the slot.
          const spendsBurst = i >= batch.length - spares && wait <= 0 && (rate.intervalMs > margin || ahead > -tolerance / 2)
          if (wait > request.maxWaitMs || spendsBurst) return { admitted: false as const, wait }
          units += request.cost
          return { admitted: true as const, through: units }
        })
        const remaining = (tat: number, now: number) => Gcra.remaining(tat, now, rate)
        if (units === 0 && blind) return yield* bucketAttempt(id, rate, batch, false, spares)
        if (units === 0) {
          return plan.map((step): AcquireOutcome => ({
            _tag: "RateLimited",
            retryAfterMs: step.admitted ? 0 : step.wait,
            limit: rate.burst,
            remaining: remaining(state.tat, state.now)
          }))
        }
        const micros = ceilMicros(units * rate.intervalMs)
        // The plan also holds if another process wrote meanwhile, as long as the debt it finds still
        // lets every admitted request start within its own bound.
        const slack = plan.reduce(
          (least, step, i) =>
            step.admitted ? Math.min(least, batch[i]!.maxWaitMs + tolerance - step.through * rate.intervalMs) : least,
          Infinity
        )
        // Read after the row's lock, a moment before the SET's instant: a debt within the slack then
        // is within it at the write too.
        const stillValid = Number.isFinite(slack)
          ? sql`s.last_acquisition_at <= clock_timestamp() + ${slack}::float8 * interval '1 millisecond'`
          : sql.literal("TRUE")
        const added = sql`${micros}::float8 * interval '1 microsecond'`
        // A row created here is written as the version after the one the plan expected, as if created
        // empty and then written, so that another writer's plan against no row does not match it.
        const expected = state.version ?? 1
        const rows = yield* sql<{ tat: number; version: number; now: number }>`
          INSERT INTO ${T} AS s (group_id, last_acquisition_at, version, updated_at)
          SELECT ${id}, c.t + ${added}, ${nextVersion(expected)}, c.t FROM ${C}
          ON CONFLICT (group_id) DO UPDATE SET (last_acquisition_at, version, updated_at) = (
            SELECT GREATEST(s.last_acquisition_at, c.t) + ${added}, ${NEXT_S}, c.t FROM ${C})
          WHERE ${blind ? stillValid : sql`(s.version = ${expected} OR ${stillValid})`}
          RETURNING ${atOf("last_acquisition_at")} AS tat, version, ${atOf("updated_at")} AS now`
        const row = rows[0]
        if (row === undefined) {
          cache.delete(id)
          if (cached !== undefined || blind) {
            contendedUntil.delete(id)
            contendedUntil.set(id, performance.now() + 1_000)
            if (contendedUntil.size > MAX_CACHED) contendedUntil.delete(contendedUntil.keys().next().value!)
          }
          return yield* Effect.fail(new Conflict())
        }
        remember(id, { tat: row.tat, version: row.version, serverMs: row.now, localMs: performance.now() })
        // The same instant the database used: the batch started at max(old tat, now).
        const began = row.tat - micros / 1000
        const newest = plan.reduce((last, step, index) => (step.admitted ? index : last), -1)
        return plan.map((step, index): AcquireOutcome => {
          if (!step.admitted) {
            return { _tag: "RateLimited", retryAfterMs: step.wait, limit: rate.burst, remaining: 0 }
          }
          const slot = Math.max(row.now, began + step.through * rate.intervalMs - tolerance)
          const last = newest === index
          return {
            _tag: "Admitted",
            waitMs: slot - row.now,
            // Only the newest reservation can be given back, and only while nobody wrote after it.
            reservation: { slotMs: slot, tatMs: began + step.through * rate.intervalMs, version: last ? row.version : undefined },
            limit: rate.burst,
            remaining: remaining(row.tat, slot)
          }
        })
      })

    // ---- sliding window -----------------------------------------------------------------------

    const ringIds = (header: string, limit: number) => Array.from({ length: limit }, (_, i) => `${header}#${i}`)

    const readWindow = (header: string, limit: number) =>
      Effect.gen(function*() {
        const ids = ringIds(header, limit)
        const rows = yield* sql<{ group_id: string | null; at: number | null; version: number | null; now: number }>`
          SELECT s.group_id, ${AT} AS at, s.version, ${NOW} AS now
          FROM (SELECT 1) AS one LEFT JOIN ${T} s ON s.group_id = ANY(${[header, ...ids]})`
        const now = rows[0]!.now
        const byId = new Map(rows.flatMap((r) => (r.group_id === null ? [] : [[r.group_id, r] as const])))
        const head = byId.get(header)
        const ring = ids.map((id) => ({ id, at: byId.get(id)?.at ?? -Infinity }))
        return { now, version: head?.version ?? null, blockedUntil: head?.at ?? -Infinity, ring }
      })

    const logOf = (ring: ReadonlyArray<{ at: number }>): Array<Window.Entry> =>
      ring.filter((r) => r.at > -Infinity).map((r) => ({ at: r.at, count: 1 })).sort((a, b) => a.at - b.at)

    const windowAttempt = (header: string, policy: SlidingWindow, batch: ReadonlyArray<AcquireRequest>) =>
      Effect.gen(function*() {
        const state = yield* readWindow(header, policy.limit)
        const spanned = Window.span(policy, margin)
        const ring = state.ring.map((r) => ({ ...r }))
        const written = new Map<string, number>()
        const plan = batch.map((request) => {
          const decision = Window.reserve(logOf(ring), state.now, state.blockedUntil, spanned, request.cost, request.maxWaitMs)
          if (!decision.admitted) return decision
          // The oldest entries no longer count at the new slot: their rows take it.
          const oldest = [...ring].sort((a, b) => a.at - b.at).slice(0, request.cost)
          for (const row of oldest) {
            row.at = decision.slotMs
            written.set(row.id, decision.slotMs)
          }
          return decision
        })
        const used = (now: number) => logOf(ring).filter((e) => e.at > now - spanned.windowMs).length
        if (written.size === 0) {
          return plan.map((step): AcquireOutcome => ({
            _tag: "RateLimited",
            retryAfterMs: step.admitted ? 0 : step.retryAfterMs,
            limit: policy.limit,
            remaining: Math.max(0, policy.limit - used(state.now))
          }))
        }
        // The header's upsert takes its lock (a header created here is written as the version after the
        // expected one, as if created empty and then written) and returns the instant it decided at;
        // the entries are written from that instant, and it is what the statement returns.
        const expected = state.version ?? 1
        const rows = yield* sql<{ now: number }>`
          WITH h AS (
            INSERT INTO ${T} AS s (group_id, last_acquisition_at, version, updated_at)
            SELECT ${header}, '-infinity', ${nextVersion(expected)}, c.t FROM ${C}
            ON CONFLICT (group_id) DO UPDATE SET (version, updated_at) = (SELECT ${NEXT_S}, c.t FROM ${C})
            WHERE s.version = ${expected}
            RETURNING updated_at AS t
          )
          INSERT INTO ${T} AS s (group_id, last_acquisition_at, version, updated_at)
          SELECT u.id, ${fromMicros(sql.literal("u.at"))} + GREATEST(interval '0', h.t - ${fromMicros(ceilMicros(state.now))}), 1, h.t
          FROM h, unnest(${[...written.keys()]}::text[], ${[...written.values()].map(ceilMicros)}::bigint[]) AS u(id, at)
          ON CONFLICT (group_id) DO UPDATE SET last_acquisition_at = EXCLUDED.last_acquisition_at, updated_at = EXCLUDED.updated_at
          RETURNING ${atOf("updated_at")} AS now`
        const row = rows[0]
        if (row === undefined) return yield* Effect.fail(new Conflict())
        // The batch was planned at the read's time and written at the header's instant: every entry
        // moved by the same amount, so the entries keep their spacing and none lies before the write.
        const shift = Math.max(0, row.now - state.now)
        return plan.map((step): AcquireOutcome =>
          step.admitted
            ? {
              _tag: "Admitted",
              waitMs: step.waitMs,
              reservation: { slotMs: step.slotMs + shift, tatMs: 0, version: undefined },
              limit: policy.limit,
              remaining: Math.max(0, policy.limit - used(row.now))
            }
            : { _tag: "RateLimited", retryAfterMs: step.retryAfterMs, limit: policy.limit, remaining: 0 }
        )
      })

    // ---- coalescing: one writer per key and process ---------------------------------------------

    /** Backoffs of every process, by rate id; heard of through the LISTEN connection once this process waits. */
    const holds = Holds.make()
    /** Tells this store's own backoff messages from others'. */
    const origin = randomUUID().slice(0, 8)
    const clock = yield* Effect.clock
    const hold = (id: string, retryAfterMs: number) => {
      const now = clock.unsafeCurrentTimeMillis()
      holds.hold(id, now + retryAfterMs, now)
    }

    const { submit, takeNow } = Coalesce.make({
      scope,
      maxBatch: MAX_BATCH,
      marginMs: margin,
      held: { mark: holds.mark, since: (id, mark, nowMs) => holds.until(id, mark, nowMs) !== undefined },
      decide: (id, requests, ahead) => {
        const batch = ahead.count === 0 ? requests : [...requests, ...Array.from({ length: ahead.count }, () => ahead.request)]
        const limiter = batch[0]!.limiter
        const rate = limiter.rate!
        let attempts = 0
        const attempt = Effect.suspend(() =>
          rate._tag === "TokenBucket" ? bucketAttempt(id, rate, batch, attempts++ === 0, ahead.count) : windowAttempt(id, rate, batch)
        )
        return bounded(retrying(limiter, attempt)).pipe(
          // A process that waits for a slot must hear of other processes' backoffs from then on.
          Effect.tap((outcomes) => outcomes.some((o) => o._tag === "Admitted" && o.waitMs > 0) ? listen : Effect.void)
        )
      },
      closed: new StoreUnavailable({ store: name, engine: "postgres", message: "the store was closed" })
    })

    const rateId = (limiter: LimiterSpec, key: string) =>
      `${limiter.rate?._tag === "SlidingWindow" ? "w" : "r"}:${keyPart(limiter.name, key)}`

    // ---- concurrency leases -------------------------------------------------------------------

    const held = new Map<string, Held>()
    /** Waiters of this process for a lease, per key, in the order they asked. */
    const lines = new Map<string, Array<string>>()
    const wakeups = Wakeups.make()
    const signal = wakeups.signal
    let listener: Listener.Listener | undefined

    const slotIds = (limiter: LimiterSpec, key: string) =>
      Array.from({ length: limiter.concurrency?.max ?? 0 }, (_, i) => `c:${keyPart(limiter.name, key)}#${i}`)

    const notifyKey = (limiter: LimiterSpec, key: string) => digest(wtf8(stateKey(limiter.name, key))).slice(0, 32)

    const leaveLine = (key: string, leaseId: string) => {
      const line = lines.get(key)
      if (line === undefined) return false
      const index = line.indexOf(leaseId)
      if (index < 0) return false
      line.splice(index, 1)
      if (line.length === 0) lines.delete(key)
      return true
    }

    const ttlMicros = (limiter: LimiterSpec) => Math.round((limiter.concurrency?.leaseTtlMs ?? 0) * 1000)
    const ttlOf = (limiter: LimiterSpec) => sql`${ttlMicros(limiter)}::float8 * interval '1 microsecond'`

    // The slot's lock comes from SKIP LOCKED, which never waits: the instant is read once it is held.
    const claim = (limiter: LimiterSpec, slots: ReadonlyArray<string>, token: number) =>
      sql<{ group_id: string }>`
        UPDATE ${T} SET (version, last_acquisition_at, updated_at) = (SELECT ${token}::int, c.t + ${ttlOf(limiter)}, c.t FROM ${C})
        WHERE group_id = (
          SELECT group_id FROM ${T} WHERE group_id = ANY(${slots}) AND last_acquisition_at <= clock_timestamp()
          ORDER BY group_id LIMIT 1 FOR UPDATE SKIP LOCKED
        ) AND last_acquisition_at <= clock_timestamp()
        RETURNING group_id`

    /**
     * Sets the lease on `slot` to run its ttl from now, if `token` still holds it: in the upsert, the
     * row is locked before the time is read. The insert is there only for its conflict: a slot row that
     * is gone is not created.
     */
    const extend = (limiter: LimiterSpec, slot: string, token: number) =>
      sql<{ version: number }>`
        INSERT INTO ${T} AS s (group_id, last_acquisition_at, version)
        SELECT ${slot}, '-infinity', 0 ${FROM_SETTING} WHERE EXISTS (SELECT 1 FROM ${T} WHERE group_id = ${slot})
        ON CONFLICT (group_id) DO UPDATE SET (last_acquisition_at, updated_at) = (SELECT c.t + ${ttlOf(limiter)}, c.t FROM ${C})
        WHERE s.version = ${token} AND s.last_acquisition_at > clock_timestamp()
        RETURNING version`.pipe(Effect.map((rows) => rows.some((row) => row.version === token)))

    const slotInfo = (slots: ReadonlyArray<string>) =>
      Effect.map(
        sql<{ total: number; held: number; soonest: number | null; now: number }>`
          SELECT count(*)::int AS total,
            count(*) FILTER (WHERE s.last_acquisition_at > statement_timestamp())::int AS held,
            min(${AT}) FILTER (WHERE s.last_acquisition_at > statement_timestamp()) AS soonest,
            ${NOW} AS now
          FROM ${T} s WHERE s.group_id = ANY(${slots})`,
        (rows) => rows[0]!
      )

    // It commits only after a write that read the instant C (the claim's, or the rate's and the ttl's),
    // so with synchronous_commit = false ASYNC_COMMIT holds at its COMMIT; every other end rolls back.
    const leaseAttempt = (request: AcquireRequest, leaseId: string) =>
      sql.withTransaction(Effect.gen(function*() {
        const { key, limiter } = request
        const slots = slotIds(limiter, key)
        const token = randomInt(1, 2_147_483_647)
        let claimed = yield* claim(limiter, slots, token)
        if (claimed.length === 0) {
          const info = yield* slotInfo(slots)
          if (info.total < slots.length) {
            yield* sql`INSERT INTO ${T} (group_id, last_acquisition_at, version)
              SELECT id, '-infinity', 0 FROM unnest(${slots}::text[]) AS id ON CONFLICT (group_id) DO NOTHING`
            claimed = yield* claim(limiter, slots, token)
          }
          if (claimed.length === 0) {
            return yield* Effect.fail<Rollback>({
              _tag: "Full",
              held: info.held,
              expiresInMs: info.soonest === null ? undefined : info.soonest - info.now
            })
          }
        }
        let outcome: AcquireOutcome = { _tag: "Admitted", waitMs: 0, reservation: undefined, limit: undefined, remaining: undefined }
        const rate = limiter.rate
        if (rate !== undefined) {
          const id = rateId(limiter, key)
          const [decided] = rate._tag === "TokenBucket"
            ? yield* bucketAttempt(id, rate, [request], false, 0)
            : yield* windowAttempt(id, rate, [request])
          if (decided?._tag === "RateLimited") {
            return yield* Effect.fail<Rollback>({ _tag: "Refused", retryAfterMs: decided.retryAfterMs, remaining: decided.remaining })
          }
          outcome = decided!
          // The rate's write may have waited on its row's lock: the lease runs its ttl from the time
          // after that, not from the claim. The slot is locked by this transaction, so this waits for nothing.
          yield* sql`UPDATE ${T} SET (last_acquisition_at, updated_at) = (SELECT c.t + ${ttlOf(limiter)}, c.t FROM ${C})
            WHERE group_id = ${claimed[0]!.group_id} AND version = ${token}`
        }
        held.set(leaseId, { slot: claimed[0]!.group_id, token })
        return outcome
      })).pipe(
        // A COMMIT or ROLLBACK that fails (the connection died) is a defect of the driver's: it is an
        // ordinary failure here, and whether the lease was granted is settled by releasing it.
        Effect.catchAllDefect((defect) => isSqlError(defect) ? Effect.fail(defect) : Effect.die(defect))
      )

    const acquireLease = (request: AcquireRequest, leaseId: string): Effect.Effect<AcquireOutcome, StoreError> => {
      const { key, limiter } = request
      const local = stateKey(limiter.name, key)
      const max = limiter.concurrency?.max ?? 0
      const line = lines.get(local)
      // Waiters of this process go in the order they asked; only the first in line asks the database.
      if (line !== undefined && line[0] !== leaseId && !held.has(leaseId)) {
        if (request.queue && !line.includes(leaseId)) line.push(leaseId)
        return Effect.succeed({ _tag: "ConcurrencyFull", expiresInMs: undefined, held: max, limit: max })
      }
      return retrying(limiter, leaseAttempt(request, leaseId)).pipe(
        bounded,
        Effect.map((outcome) => {
          if (leaveLine(local, leaseId) && lines.has(local)) signal(notifyKey(limiter, key))
          return outcome
        }),
        Effect.catchIf(isRollback, (rollback): Effect.Effect<AcquireOutcome> => {
          if (rollback._tag === "Refused") {
            leaveLine(local, leaseId)
            return Effect.succeed({
              _tag: "RateLimited",
              retryAfterMs: rollback.retryAfterMs,
              limit: capacity(limiter.rate) ?? 0,
              remaining: rollback.remaining
            })
          }
          if (request.queue) {
            const waiting = lines.get(local) ?? []
            if (!waiting.includes(leaseId)) waiting.push(leaseId)
            lines.set(local, waiting)
          }
          return Effect.succeed({ _tag: "ConcurrencyFull", expiresInMs: rollback.expiresInMs, held: rollback.held, limit: max })
        }),
        // A failed call keeps no place in this process's line: the next in line asks instead.
        Effect.tapError(() =>
          Effect.sync(() => {
            if (leaveLine(local, leaseId) && lines.has(local)) signal(notifyKey(limiter, key))
          })
        )
      )
    }

    /** Where LISTEN connects: listen_url (a direct connection past a transaction pooler), else the url. */
    const listenUrl = Redacted.make(config.listen_url ?? config.url)
    const listenKey = config.listen_url === undefined ? "url" : "listen_url"
    /** Started when a lease or a rate slot is first waited for: a program that never waits opens no LISTEN connection. */
    const listen = Effect.suspend(() => {
      if (listener !== undefined) return Effect.void
      listener = { status: () => "connecting" }
      return Listener.start({
        connectionString: listenUrl,
        channel,
        connectTimeoutMs: config.pool_timeout_ms,
        // Checked after every (re)connect: a LISTEN through a pooler in transaction mode succeeds and hears nothing.
        probe: {
          publish: (payload) => sql`SELECT pg_notify(${channel}, ${payload})`.pipe(Effect.mapError(toError), bounded),
          timeoutMs: PROBE_TIMEOUT_MS,
          warning:
            `rate-sync: store "${name}": the LISTEN connection (${listenKey}) heard nothing of a NOTIFY sent through the url within ${PROBE_TIMEOUT_MS} ms, so lease waiters in this process wake only at their re-check (up to a second late). Through a pooler in transaction mode (PgBouncer pool_mode = transaction) LISTEN cannot hold: set listen_url to a direct connection to the same database as the url (or one through a session-mode pool).`
        },
        onNotify: (payload) => {
          // "b:<ms>:<origin>:<rate id>" is a backoff (this store's own were recorded when made);
          // anything else a release's key digest (never with a colon).
          const first = payload.startsWith("b:") ? payload.indexOf(":", 2) : -1
          const second = first < 0 ? -1 : payload.indexOf(":", first + 1)
          if (second < 0) return signal(payload)
          if (payload.slice(first + 1, second) !== origin) hold(payload.slice(second + 1), Number(payload.slice(2, first)))
        },
        onConnect: wakeups.signalAll
      }).pipe(
        Scope.extend(scope),
        Effect.map((started) => {
          listener = started
        })
      )
    })

    const release = (limiter: LimiterSpec, key: string, leaseId: string) =>
      Effect.suspend(() => {
        const local = stateKey(limiter.name, key)
        const hash = notifyKey(limiter, key)
        const left = leaveLine(local, leaseId)
        const lease = held.get(leaseId)
        if (lease === undefined) {
          if (left) signal(hash)
          return Effect.void
        }
        // As in `extend`: an upsert, so whether the lease is still held is read after the slot's lock.
        return sql`
          WITH r AS (
            INSERT INTO ${T} AS s (group_id, last_acquisition_at, version)
            SELECT ${lease.slot}, '-infinity', 0 ${FROM_SETTING} WHERE EXISTS (SELECT 1 FROM ${T} WHERE group_id = ${lease.slot})
            ON CONFLICT (group_id) DO UPDATE SET last_acquisition_at = '-infinity', updated_at = clock_timestamp()
            WHERE s.version = ${lease.token} AND s.last_acquisition_at > clock_timestamp()
            RETURNING version
          )
          SELECT pg_notify(${channel}, ${hash}) FROM r WHERE r.version = ${lease.token}`.pipe(
          // Forgotten only once the database took it: a release that failed can be tried again.
          Effect.zipRight(Effect.sync(() => {
            held.delete(leaseId)
            signal(hash)
          })),
          Effect.mapError(toError),
          bounded,
          Effect.asVoid
        )
      })

    const store: PostgresStore = {
      name,
      engine: "postgres",
      timingMarginMs: margin,
      sql,
      waiters: () => ({ subscribed: wakeups.size(), queued: lines.size }),
      listening: () => listener?.status() ?? "off",

      cleanup: (olderThan) =>
        Effect.suspend((): Effect.Effect<number, Errors.PostgresError | ConfigurationError> => {
          const ms = Duration.toMillis(Duration.decode(olderThan))
          if (!(ms >= 60_000)) {
            return Effect.fail(
              new ConfigurationError({
                issues: [new ConfigIssue({ path: "cleanup.older_than", message: `Expected at least one minute, found ${ms} ms` })]
              })
            )
          }
          // A row can be in a writer's read-modify-write only while it is recent: after a minute untouched it is not.
          return sql<{ deleted: string }>`
            WITH d AS (
              DELETE FROM ${T}
              WHERE last_acquisition_at < statement_timestamp() - ${ms}::float8 * interval '1 millisecond'
                AND updated_at < statement_timestamp() - ${ms}::float8 * interval '1 millisecond'
              RETURNING 1
            )
            SELECT count(*)::text AS deleted FROM d`.pipe(
            Effect.map((rows) => Number(rows[0]?.deleted ?? 0)),
            Effect.tap(() => Effect.sync(() => cache.clear())),
            Effect.mapError((error) =>
              codeOf(error) === "42501"
                ? Errors.cleanupDenied(name, table, error.cause)
                : toError(error)
            )
          )
        }),

      acquire: (request) =>
        request.limiter.concurrency !== undefined && request.leaseId !== undefined
          ? acquireLease(request, request.leaseId)
          : request.limiter.rate === undefined
          ? Effect.succeed({ _tag: "Admitted", waitMs: 0, reservation: undefined, limit: undefined, remaining: undefined })
          : submit(rateId(request.limiter, request.key), request),

      acquireNow: (request, clock) =>
        request.leaseId === undefined && request.limiter.rate !== undefined
          ? takeNow(rateId(request.limiter, request.key), request, clock)
          : undefined,

      release,

      renew: (limiter, _key, leaseId) =>
        Effect.suspend(() => {
          const lease = held.get(leaseId)
          if (lease === undefined) return Effect.succeed(false)
          return extend(limiter, lease.slot, lease.token).pipe(
            Effect.map((renewed) => {
              if (!renewed) held.delete(leaseId)
              return renewed
            }),
            Effect.mapError(toError),
            bounded
          )
        }),

      refund: (limiter, key, cost, reservation: Reservation) =>
        Effect.suspend(() => {
          const rate = limiter.rate
          if (rate?._tag !== "TokenBucket" || reservation.version === undefined) return Effect.void
          const id = rateId(limiter, key)
          cache.delete(id)
          const micros = ceilMicros(cost * rate.intervalMs)
          return sql`
            UPDATE ${T} SET last_acquisition_at = last_acquisition_at - ${micros}::float8 * interval '1 microsecond',
              version = ${sql.literal(NEXT_VERSION)}, updated_at = statement_timestamp()
            ${FROM_SETTING} WHERE group_id = ${id} AND version = ${reservation.version}`.pipe(Effect.asVoid, Effect.mapError(toError), bounded)
        }),

      backoff: (limiter, key, retryAfterMs) =>
        Effect.suspend(() => {
          const rate = limiter.rate
          if (rate === undefined) return Effect.void
          const id = rateId(limiter, key)
          cache.delete(id)
          // Token bucket: the next slot is no earlier than now + retryAfter. Window: blocked until then.
          const pushMs = rate._tag === "TokenBucket" ? Gcra.floorFor(retryAfterMs, rate) : retryAfterMs
          const push = sql`${pushMs}::float8 * interval '1 millisecond'`
          // Measured from the time after the row's lock, like every decision; a row created here is
          // written, like the rate's, as a version no plan against a missing row expects.
          // Every process hears of it ("b:", retry after ms, the key's id), so slots its waiters reserved
          // earlier are not used inside it; this one's need not wait for the message.
          return sql`
            WITH b AS (
              INSERT INTO ${T} AS s (group_id, last_acquisition_at, version, updated_at)
              SELECT ${id}, c.t + ${push}, ${nextVersion(1)}, c.t FROM ${C}
              ON CONFLICT (group_id) DO UPDATE SET (last_acquisition_at, version, updated_at) = (
                SELECT GREATEST(s.last_acquisition_at, c.t + ${push}), ${NEXT_S}, c.t FROM ${C})
              RETURNING 1
            )
            SELECT pg_notify(${channel}, ${`b:${retryAfterMs}:${origin}:${id}`}) FROM b`.pipe(
            Effect.mapError(toError),
            bounded,
            Effect.zipRight(Effect.sync(() => hold(id, retryAfterMs)))
          )
        }),

      backoffs: {
        mark: holds.mark,
        until: (limiter, key, mark, nowMs) => holds.until(rateId(limiter, key), mark, nowMs),
        any: holds.any
      },

      state: (limiter, key) =>
        Effect.gen(function*() {
          const rate = limiter.rate
          const concurrency = limiter.concurrency
          const leases = concurrency === undefined
            ? { held: 0 }
            : yield* slotInfo(slotIds(limiter, key))
          const waiting = lines.get(stateKey(limiter.name, key))?.length ?? 0
          const base = { leasesHeld: leases.held, maxConcurrent: concurrency?.max, waiting }
          if (rate === undefined) {
            return { ...base, limit: undefined, remaining: undefined, resetAfterMs: 0, nextSlotAfterMs: 0 } satisfies StateView
          }
          if (rate._tag === "TokenBucket") {
            const row = yield* readBucket(rateId(limiter, key))
            return {
              ...base,
              limit: rate.burst,
              remaining: Gcra.remaining(row.tat, row.now, rate),
              resetAfterMs: Gcra.resetAfter(row.tat, row.now),
              nextSlotAfterMs: Gcra.nextSlotAfter(row.tat, row.now, rate)
            } satisfies StateView
          }
          const window = yield* readWindow(rateId(limiter, key), rate.limit)
          const spanned = Window.span(rate, margin)
          const log = logOf(window.ring).filter((e) => e.at > window.now - spanned.windowMs)
          const last = log[log.length - 1]
          return {
            ...base,
            limit: rate.limit,
            remaining: Math.max(0, rate.limit - log.length),
            resetAfterMs: Math.max(0, last === undefined ? 0 : last.at + spanned.windowMs - window.now, window.blockedUntil - window.now),
            nextSlotAfterMs: Window.earliestSlot(log, Math.max(window.now, window.blockedUntil), spanned, 1) - window.now
          } satisfies StateView
        }).pipe(Effect.mapError(toError), bounded),

      releases: (limiter, key) => Effect.zipRight(listen, wakeups.subscribe(notifyKey(limiter, key)))
    }
    return store
  })

const isSqlError = (u: unknown): u is SqlError =>
  typeof u === "object" && u !== null && "_tag" in u && u._tag === "SqlError"

const isRollback = (u: unknown): u is Rollback =>
  typeof u === "object" && u !== null && "_tag" in u && (u._tag === "Full" || u._tag === "Refused")

/**
 * Creates the table when `auto_create` is set, then checks it exists with SELECT, INSERT and
 * UPDATE granted. A missing table or grant fails the layer with the fix; an unreachable database
 * only warns, so the limiters start and follow `fail_closed` until it is back.
 */
const setup = (sql: SqlClient, config: PostgresStoreConfig, context: Errors.Context) =>
  Effect.gen(function*() {
    const toError = Errors.fromSql(context)
    const misconfigured = (reason: "schema" | "permission", message: string) =>
      new StoreMisconfigured({ store: context.store, engine: "postgres", reason, message })
    if (config.auto_create) {
      // Only what is missing: even CREATE INDEX IF NOT EXISTS takes a lock that stalls every writer.
      const [present] = yield* sql<{ has_table: boolean; has_index: boolean }>`
        SELECT to_regclass(${context.table}) IS NOT NULL AS has_table,
          to_regclass(${`"${config.schema_name}"."idx_${config.table_name}_updated"`}) IS NOT NULL AS has_index`.pipe(
        Effect.mapError(toError)
      )
      const [createTable, createIndex] = createTableSql(config)
      const missing = [
        ...(present?.has_table === true ? [] : [createTable!]),
        ...(present?.has_index === true ? [] : [createIndex!])
      ]
      for (const statement of missing) {
        yield* sql.unsafe(statement).pipe(
          // Several processes creating the table at once: the losers see it exist.
          Effect.catchIf((error) => ["23505", "42P07"].includes(codeOf(error)), () => Effect.void),
          Effect.mapError(toError)
        )
      }
    }
    const rows = yield* sql<{ found: boolean; can_select: boolean | null; can_insert: boolean | null; can_update: boolean | null }>`
      SELECT to_regclass(${context.table}) IS NOT NULL AS found,
        has_table_privilege(to_regclass(${context.table}), 'SELECT') AS can_select,
        has_table_privilege(to_regclass(${context.table}), 'INSERT') AS can_insert,
        has_table_privilege(to_regclass(${context.table}), 'UPDATE') AS can_update`.pipe(Effect.mapError(toError))
    const row = rows[0]!
    if (!row.found) {
      return yield* Effect.fail(misconfigured("schema", Errors.describe(context, { code: "42P01", message: "" })))
    }
    const missing = (["SELECT", "INSERT", "UPDATE"] as const).filter((p) =>
      !(p === "SELECT" ? row.can_select : p === "INSERT" ? row.can_insert : row.can_update)
    )
    if (missing.length > 0) {
      return yield* Effect.fail(
        misconfigured("permission", Errors.describe(context, { code: "42501", message: `${missing.join(", ")} not granted` }))
      )
    }
  }).pipe(
    // An outage at start is not a mistake: the limiters start and follow fail_closed until it ends.
    Effect.catchIf(
      (error) => error._tag === "StoreUnavailable" || error._tag === "StoreTimeout",
      (error) => Effect.logWarning(`rate-sync: store "${context.store}" starts without its database: ${error.message}`)
    )
  )

const codeOf = (error: SqlError): string => {
  const cause: unknown = error.cause
  return typeof cause === "object" && cause !== null ? String(Object.getOwnPropertyDescriptor(cause, "code")?.value ?? "") : ""
}
