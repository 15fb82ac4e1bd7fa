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
 *
 * This module assembles the store from its parts, over one shared context (context.ts: client,
 * table, time fragments, margin): bucket.ts (with its pure plan, bucketPlan.ts), window.ts, composite.ts (several keys at once),
 * leases.ts over slots.ts, backoff.ts, maintenance.ts, setup.ts (table and grants), keys.ts (row ids), client.ts
 * (the pool), conflicts.ts (optimistic retries), listener.ts (LISTEN) and errors.ts.
 */
import type { SqlClient } from "@effect/sql/SqlClient"
import * as SqlClientModule from "@effect/sql/SqlClient"
import * as EffectContext from "effect/Context"
import * as Layer from "effect/Layer"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import type { ConfigurationError, StoreError, StoreTimeout } from "../Errors.js"
import { StoreUnavailable } from "../Errors.js"
import * as Coalesce from "../internal/coalesce.js"
import type { PostgresStoreConfig } from "../Settings.js"
import { admittedFree, type RateOutcome, type StateView, type Store, StoreFactory } from "../Store.js"
import * as Stores from "../Stores.js"
import { resolvePostgres } from "../Settings.js"
import * as Backoff from "./backoff.js"
import * as Bucket from "./bucket.js"
import * as Client from "./client.js"
import * as Composite from "./composite.js"
import { retrying } from "./conflicts.js"
import * as Context from "./context.js"
import type * as Errors from "./errors.js"
import { channelOf, rateId } from "./keys.js"
import * as Leases from "./leases.js"
import type * as Listener from "./listener.js"
import * as Listening from "./listening.js"
import * as Maintenance from "./maintenance.js"
import { setup, tableOf } from "./setup.js"
import * as Window from "./window.js"

export { createTableSql } from "./setup.js"

/** The most requests one write carries; a key with more waiters takes several writes. */
const MAX_BATCH = 256

export interface PostgresStore extends Store {
  readonly acquireAll: NonNullable<Store["acquireAll"]>
  /** The pool's client, for tests and tools. */
  readonly sql: SqlClient
  /** How many keys have waiters subscribed to their releases, and how many are in this process's lines (for tests and tools). */
  readonly waiters: () => { readonly subscribed: number; readonly queued: number }
  /** Whether the LISTEN connection is open and hears this store's NOTIFY (for tests and tools; see `Listener.Status`). */
  readonly listening: () => Listener.Status
  /** The token bucket's writes so far and the keys they carried: more keys than writes where several went in one (for tests and tools). */
  readonly bucketWrites: () => { readonly writes: number; readonly items: number }
  /**
   * Deletes the rows no limiter has touched for `olderThan` (at least a minute) and whose state lies
   * that far in the past: the documented cleanup, as an operation. It is the only statement of the
   * library that needs `DELETE` granted; nothing else ever deletes. Returns how many rows went.
   */
  readonly cleanup: (olderThan: Duration.DurationInput) => Effect.Effect<number, Errors.PostgresError | ConfigurationError>
}

/**
 * Builds the store. With `shared`, a `PgClient` (its `SqlClient`) the program already has, its statements run on that
 * client's pool (one pool for the program and its limiters; `pool_*` keys unused, the pool left open
 * when the store closes); LISTEN still opens its own connection, to `listen_url` or else `url`.
 */
export const make = (name: string, config: PostgresStoreConfig, shared?: SqlClient) =>
  Effect.gen(function*() {
    const errors: Errors.Context = {
      store: name,
      table: tableOf(config),
      poolMaxSize: config.pool_max_size,
      poolTimeoutMs: config.pool_timeout_ms,
      operationTimeoutMs: config.operation_timeout_ms
    }
    const { prepared, sql, toError } = yield* Client.make(config, errors, shared)
    const scope = yield* Effect.scope
    yield* setup(sql, config, errors)
    const table = Context.tableName(sql, config)
    const ctx = Context.make({ name, config, sql, table, channel: channelOf(table), base: yield* Context.readBase(sql), toError, prepared })
    const { bounded, margin } = ctx

    const closed = new StoreUnavailable({ store: name, engine: "postgres", reason: "closed", message: "the store was closed" })
    const bucket = Bucket.make(ctx, scope, closed)
    const window = Window.make(ctx)
    const composite = Composite.make(ctx, bucket.forget)
    const backoffs = yield* Backoff.make(ctx)
    const leases = Leases.make(ctx, (id, request) => {
      const rate = request.limiter.rate!
      return rate._tag === "TokenBucket" ? bucket.attempt(id, rate, [request], { useCache: false, spares: 0, inTransaction: true }) : window.attempt(id, rate, [request])
    })

    const { listen, status } = Listening.make(ctx, {
      scope,
      onNotify: (payload) => backoffs.onNotify(payload, leases.signal),
      onConnect: leases.signalAll
    })

    // ---- coalescing: one writer per key and process ---------------------------------------------

    const { submit, takeNow } = Coalesce.make({
      scope,
      maxBatch: MAX_BATCH,
      marginMs: margin,
      held: { mark: backoffs.holds.mark, since: (id, mark, nowMs) => backoffs.holds.until(id, mark, nowMs) !== undefined },
      decide: (id, requests, ahead) => {
        const batch = ahead.count === 0 ? requests : [...requests, ...Array.from({ length: ahead.count }, () => ahead.request)]
        const limiter = batch[0]!.limiter
        const rate = limiter.rate!
        const decided = rate._tag === "TokenBucket"
          ? Effect.clockWith((clock) => {
            // Bounded piece by piece within one deadline: the write's wait in the batcher needs no fiber
            // of its own (`bounded` forks one, on every call); a read or the retries after a conflict,
            // rarer, are bounded in what is left.
            const until = clock.unsafeCurrentTimeMillis() + ctx.config.operation_timeout_ms
            const left = () => until - clock.unsafeCurrentTimeMillis()
            let attempts = 0
            const attempt = Effect.suspend(() =>
              bucket.attempt(id, rate, batch, { useCache: attempts++ === 0, spares: ahead.count, inTransaction: false, left })
            )
            const boundRetries = <B, F>(retries: Effect.Effect<B, F>) => Effect.suspend(() => ctx.boundedFor(left())(retries))
            return retrying<Array<RateOutcome>, StoreError, StoreTimeout>(ctx, limiter, attempt, boundRetries)
          })
          : bounded(retrying(ctx, limiter, window.attempt(id, rate, batch)))
        // A process that waits for a slot must hear of other processes' backoffs from then on.
        return Effect.tap(decided, (outcomes) => outcomes.some((o) => o._tag === "Admitted" && o.waitMs > 0) ? listen : Effect.void)
      },
      closed
    })

    const store: PostgresStore = {
      name,
      engine: "postgres",
      timingMarginMs: margin,
      sql,
      waiters: leases.waiters,
      listening: status,
      bucketWrites: bucket.load,

      cleanup: (olderThan) => Maintenance.cleanup(ctx, olderThan, bucket.forgetAll),

      acquireRate: (request) =>
        request.limiter.rate === undefined ? Effect.succeed(admittedFree) : submit(rateId(request.limiter, request.key), request),

      acquireRateNow: (request, clock) =>
        request.limiter.rate === undefined ? admittedFree : takeNow(rateId(request.limiter, request.key), request, clock),

      acquireLease: leases.acquire,

      acquireAll: (requests, afterMs) =>
        composite.acquireAll(requests, afterMs).pipe(
          // As the coalescer's writes: a process that waits for a slot must hear of other processes' backoffs.
          Effect.tap((outcome) => outcome._tag === "Admitted" && outcome.outcomes.some((o) => o.waitMs > 0) ? listen : Effect.void)
        ),

      release: leases.release,

      renew: (limiter, _key, leaseId) => leases.renew(limiter, leaseId),

      refund: (limiter, key, cost, reservation) =>
        Effect.suspend(() => {
          const rate = limiter.rate
          if (rate?._tag !== "TokenBucket" || reservation.version === undefined) return Effect.void
          return bucket.refund(rateId(limiter, key), rate, cost, reservation).pipe(Effect.mapError(toError), bounded)
        }),

      backoff: (limiter, key, retryAfterMs) =>
        Effect.suspend(() => {
          if (limiter.rate === undefined) return Effect.void
          const id = rateId(limiter, key)
          bucket.forget(id)
          return backoffs.push(limiter, id, retryAfterMs).pipe(
            Effect.mapError(toError),
            bounded,
            Effect.zipRight(Effect.sync(() => backoffs.hold(id, retryAfterMs)))
          )
        }),

      backoffs: {
        mark: backoffs.holds.mark,
        until: (limiter, key, mark, nowMs) => backoffs.holds.until(rateId(limiter, key), mark, nowMs),
        any: backoffs.holds.any
      },

      state: (limiter, key) =>
        Effect.gen(function*() {
          const rate = limiter.rate
          const leased = yield* leases.state(limiter, key)
          const base = { leasesHeld: leased.held, maxConcurrent: limiter.concurrency?.max, waiting: leased.waiting }
          if (rate === undefined) {
            return { ...base, limit: undefined, remaining: undefined, resetAfterMs: 0, nextSlotAfterMs: 0 } satisfies StateView
          }
          if (rate._tag === "SlidingWindow") return { ...base, ...(yield* window.view(rateId(limiter, key), rate)) } satisfies StateView
          return { ...base, ...(yield* bucket.view(rateId(limiter, key), rate)) } satisfies StateView
        }).pipe(Effect.mapError(toError), bounded),

      releases: (limiter, key) => Effect.zipRight(listen, leases.subscribe(limiter, key))
    }
    return outsideTransactions(store)
  })

/**
 * The store's statements never join a transaction of the caller's: `@effect/sql` runs any client's
 * statements on the connection of a `withTransaction` the fiber is in, where a limiter's write would
 * be rolled back with the program's work (looser), hold the key's row lock until the program commits
 * (every process waits), or make the program's COMMIT asynchronous (`synchronous_commit`).
 */
const outsideTransactions = (store: PostgresStore): PostgresStore => {
  // Replacing the context is an `Effect.locally` (about fifteen steps, on every call): done only
  // inside a transaction.
  const own = <A, E>(effect: Effect.Effect<A, E>): Effect.Effect<A, E> =>
    Effect.contextWithEffect((context: EffectContext.Context<never>) =>
      Option.isNone(EffectContext.getOption(context, SqlClientModule.TransactionConnection))
        ? effect
        : Effect.mapInputContext(effect, EffectContext.omit(SqlClientModule.TransactionConnection))
    )
  return {
    ...store,
    cleanup: (olderThan) => own(store.cleanup(olderThan)),
    acquireRate: (request) => own(store.acquireRate(request)),
    acquireLease: (request) => own(store.acquireLease(request)),
    acquireAll: (requests, afterMs) => own(store.acquireAll(requests, afterMs)),
    release: (limiter, key, leaseId) => own(store.release(limiter, key, leaseId)),
    renew: (limiter, key, leaseId) => own(store.renew(limiter, key, leaseId)),
    refund: (limiter, key, cost, reservation) => own(store.refund(limiter, key, cost, reservation)),
    backoff: (limiter, key, retryAfterMs) => own(store.backoff(limiter, key, retryAfterMs)),
    state: (limiter, key) => own(store.state(limiter, key))
  }
}

/**
 * The production `StoreFactory` (`Stores.layer`), its PostgreSQL stores over the program's `PgClient`
 * (as the `SqlClient` it also provides, so these declarations need no driver types):
 * one pool for the program and its limiters. Each store runs its statements on that client (its
 * `pool_*` keys unused) and opens only its LISTEN connection itself (`listen_url`, else `url`);
 * closing the limiters leaves the client open.
 */
export const layerWith: Layer.Layer<StoreFactory, never, SqlClient> = Layer.effect(
  StoreFactory,
  Effect.map(SqlClientModule.SqlClient, (client) =>
    Stores.make({ postgres: (name, config) => Effect.flatMap(resolvePostgres(name, config), (resolved) => make(name, resolved, client)) }))
)
