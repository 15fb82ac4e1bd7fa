/**
 * What every part of the PostgreSQL store shares: the client, the table as an identifier, the SQL
 * fragments for the store's instants, the timing margin, and how a failure becomes the library's
 * error and an operation is bounded. Built once per store; nothing in it changes after.
 *
 * The fragments that stay `sql.literal` are constants of the store, never request data: the table
 * (escaped once by the client's own identifier escaping, so statements compile as fast as before),
 * the instant sub-selects and the base instant, a number read from the server at start.
 */
import type { SqlClient } from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import type { Fragment, Statement } from "@effect/sql/Statement"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import { StoreTimeout } from "../Errors.js"
import { interruptAfter } from "../internal/detach.js"
import type { LimiterSpec } from "../LimiterSpec.js"
import type { PostgresStoreConfig } from "../Settings.js"
import type * as Errors from "./errors.js"
import type { Prepared } from "./prepared.js"

/** The version after `column`'s, wrapping before INTEGER's end. */
const nextVersionOf = (column: string) => `CASE WHEN ${column} >= 2147483646 THEN 1 ELSE ${column} + 1 END`

export const NEXT_VERSION = nextVersionOf("version")

/** The version after `version`, as NEXT_VERSION computes it. */
export const nextVersion = (version: number) => (version >= 2147483646 ? 1 : version + 1)

/** Milliseconds as whole microseconds, rounded up (stricter). */
export const ceilMicros = (ms: number) => Math.ceil(ms * 1000 - 1e-6)

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

export interface Context {
  readonly name: string
  readonly config: PostgresStoreConfig
  readonly sql: SqlClient
  /**
   * Runs a statement outside any transaction, within operation_timeout_ms (as `bounded`): named on
   * the store's own pool (prepared.ts), through `sql` on a program's client. For the statements
   * every decision sends.
   */
  readonly run: <Row extends object>(statement: Statement<Row>) => Effect.Effect<ReadonlyArray<Row>, SqlError | StoreTimeout>
  /** The table, quoted: `"schema"."table"`. */
  readonly table: string
  /** The table as a fragment. */
  readonly T: Fragment
  /** INSTANT (or INSTANT_ASYNC) as a fragment: `c.t` is the decision's instant. */
  readonly C: Fragment
  /** For the writes that read no instant before they write: a FROM item that sets ASYNC_COMMIT, when asked for. */
  readonly FROM_SETTING: Fragment
  /** The new version of the row `s` in a sub-select, where an unqualified `version` would be ambiguous. */
  readonly NEXT_S: Fragment
  /** NEXT_VERSION, unqualified. */
  readonly NEXT: Fragment
  /** `statement_timestamp()` in ms after the base instant. */
  readonly NOW: Fragment
  /** `s.last_acquisition_at` in ms after the base instant. */
  readonly AT: Fragment
  /** A column of the table in ms after the base instant (a constant column name). */
  readonly atOf: (column: "last_acquisition_at" | "updated_at") => Fragment
  /** A time of `us` microseconds after the base instant, as a timestamp. */
  readonly fromMicros: (us: unknown) => Fragment
  readonly margin: number
  /** The channel of this table's NOTIFY. */
  readonly channel: string
  readonly toError: (error: SqlError) => Errors.PostgresError
  /**
   * Every operation ends within operation_timeout_ms, lock waits and conflict retries included.
   * The statement is then interrupted in the background (the driver asks the server to cancel it; a
   * transaction rolls back): the caller does not wait for that.
   */
  readonly bounded: <A, E>(operation: Effect.Effect<A, E>) => Effect.Effect<A, E | StoreTimeout>
  /** As `bounded`, within `ms` (what is left of an operation's time). */
  readonly boundedFor: (ms: number) => <A, E>(operation: Effect.Effect<A, E>) => Effect.Effect<A, E | StoreTimeout>
  /** The failure of an operation that ran out of time. */
  readonly timedOut: () => StoreTimeout
  /** A metric tagged with the limiter and the store. */
  readonly tag: (limiter: LimiterSpec) => <Type, In, Out>(metric: Metric.Metric<Type, In, Out>) => Metric.Metric<Type, In, Out>
}

/** The table's name as the client escapes identifiers, computed once. */
export const tableName = (sql: SqlClient, config: PostgresStoreConfig): string =>
  sql`${sql(config.schema_name)}.${sql(config.table_name)}`.compile()[0]

export const make = (options: {
  readonly name: string
  readonly config: PostgresStoreConfig
  readonly sql: SqlClient
  readonly table: string
  readonly channel: string
  /** The base instant, ms since the epoch on the server's clock: times cross the wire as small floats after it. */
  readonly base: number
  readonly toError: Context["toError"]
  /** The store's own pool's named statements; undefined on a program's client. */
  readonly prepared?: Prepared | undefined
}): Context => {
  const { base, config, name, prepared, sql } = options
  const atOf = (column: string) => sql.literal(`(extract(epoch from ${column}) * 1000 - ${base})::float8`)
  // Written instants are whole microseconds, rounded up (stricter), built from text so no float rounds them.
  // (An interval of absolute scale overflows on PostgreSQL 14, so instants are the base plus a small offset.)
  const BASE_TS = sql.literal(`to_timestamp(${base} / 1000.0)`)
  const timedOut = () =>
    new StoreTimeout({
      store: name,
      engine: "postgres",
      message: `PostgreSQL did not answer within operation_timeout_ms = ${config.operation_timeout_ms} (a row lock held elsewhere, or an overloaded server)`
    })
  const bounded = <A, E>(operation: Effect.Effect<A, E>) => interruptAfter(operation, config.operation_timeout_ms, timedOut)
  return {
    name,
    config,
    sql,
    run: prepared === undefined ? bounded : (statement) => {
      const [text, params] = statement.compile()
      return prepared.run(text, params, { ms: config.operation_timeout_ms, timedOut })
    },
    table: options.table,
    T: sql.literal(options.table),
    C: sql.literal(config.synchronous_commit ? INSTANT : INSTANT_ASYNC),
    FROM_SETTING: sql.literal(config.synchronous_commit ? "" : `FROM ${ASYNC_COMMIT} AS setting`),
    NEXT_S: sql.literal(nextVersionOf("s.version")),
    NEXT: sql.literal(NEXT_VERSION),
    NOW: sql.literal(`(extract(epoch from statement_timestamp()) * 1000 - ${base})::float8`),
    AT: atOf("s.last_acquisition_at"),
    atOf,
    fromMicros: (us) => sql`(${BASE_TS} + make_interval(secs => ${us}::float8 / 1000000))`,
    margin: config.timing_margin_ms,
    channel: options.channel,
    toError: options.toError,
    bounded,
    boundedFor: (ms) => (operation) => interruptAfter(operation, ms, timedOut),
    timedOut,
    tag: (limiter) => (metric) => metric.pipe(Metric.tagged("limiter", limiter.name), Metric.tagged("store", name))
  }
}

/** The base instant: ms since the epoch, whole, on the server's clock (the local clock when it cannot be read). */
export const readBase = (sql: SqlClient) =>
  sql<{ base: string }>`SELECT floor(extract(epoch from statement_timestamp()) * 1000)::text AS base`.pipe(
    Effect.map((rows) => Number(rows[0]?.base ?? 0)),
    Effect.orElseSucceed(() => Math.floor(Date.now()))
  )
