/**
 * `@effect/experimental`'s `RateLimiterStore` on PostgreSQL: its fixed window and token bucket,
 * decided by one statement each on the database's clock, read after the row's lock, in rate-sync's
 * table (rows `x:fw:KEY` and `x:tb:KEY`, beside the limiters' own). A row is created on its key's
 * first call (as an empty window, a full bucket) and left to the table's cleanup once it no longer
 * differs from a fresh one: `last_acquisition_at` holds the instant it stops mattering.
 */
import { createHash } from "node:crypto"
import * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import { RateLimitStoreError, type RateLimiterStore } from "@effect/experimental/RateLimiter"
import { isWellFormed, wtf8 } from "../internal/keys.js"

export interface PostgresOptions {
  /** The table rate-sync's PostgreSQL stores use (`rate-sync migrate` creates it). */
  readonly table_name?: string | undefined
  readonly schema_name?: string | undefined
}

/**
 * A key as part of a row id: as it is when short and plain, else its SHA-256 (the table's ids are at
 * most 255 characters, and PostgreSQL text cannot hold NUL).
 */
const rowKey = (key: string): string =>
  key.length <= 200 && !key.includes("\u0000") && isWellFormed(key) ? key : `#${createHash("sha256").update(wtf8(key)).digest("hex")}`

const storeError = (error: SqlError) => new RateLimitStoreError({ message: `rate-sync (PostgreSQL): ${error.message}`, cause: error })

/** The store over `SqlClient` (a `PgClient`), in the table `options` names (rate-sync's default one otherwise). */
export const makePostgres = (options: PostgresOptions = {}) =>
  Effect.map(SqlClient.SqlClient, (sql): RateLimiterStore["Type"] => {
    const T = sql`${sql(options.schema_name ?? "public")}.${sql(options.table_name ?? "rate_limiter_state")}`
    /** Runs `decide` on the key's row, creating the row as `initial` first when there is none. */
    // Outside any transaction of the caller's (a decision rolled back with the program's work would
    // loosen the limit, and its row lock would be held until the program commits).
    const onRow = <A>(id: string, decide: Effect.Effect<ReadonlyArray<A>, SqlError>, initial: (id: string) => Effect.Effect<unknown, SqlError>) =>
      Effect.flatMap(decide, (rows) =>
        rows[0] !== undefined ? Effect.succeed(rows[0]) : Effect.zipRight(initial(id), Effect.flatMap(decide, (again) =>
          again[0] !== undefined ? Effect.succeed(again[0]) : Effect.fail(new RateLimitStoreError({ message: `rate-sync (PostgreSQL): the row ${id} is gone` }))))
      ).pipe(
        Effect.mapError((error) => error instanceof RateLimitStoreError ? error : storeError(error)),
        (effect) => Effect.mapInputContext(effect, (context: Context.Context<never>) => Context.omit(SqlClient.TransactionConnection)(context))
      )
    const create = (id: string, tokens: number) => sql`
      INSERT INTO ${T} (group_id, last_acquisition_at, version, updated_at)
      VALUES (${id}, clock_timestamp(), ${tokens}, clock_timestamp())
      ON CONFLICT (group_id) DO NOTHING`

    return {
      fixedWindow: ({ key, limit, refillRate, tokens }) => {
        const id = `x:fw:${rowKey(key)}`
        const refillMs = Duration.toMillis(refillRate) * tokens
        // The window's count and end, after the lock, at one instant; an ended window counts from 0.
        const decide = sql<{ count: number; ttl: number }>`
          WITH cur AS (
            SELECT version AS count, last_acquisition_at AS ends FROM ${T} WHERE group_id = ${id} FOR UPDATE
          ), w AS (
            SELECT x.t, CASE WHEN cur.ends <= x.t THEN 0 ELSE cur.count END AS count, GREATEST(cur.ends, x.t) AS ends
            FROM cur, LATERAL (SELECT clock_timestamp() AS t) AS x
          ), d AS (
            SELECT w.*, (${limit ?? null}::float8 IS NULL OR w.count + ${tokens} <= ${limit ?? null}::float8) AS fits FROM w
          ), u AS (
            UPDATE ${T} AS s SET version = d.count + ${tokens},
              last_acquisition_at = d.ends + ${refillMs}::float8 * interval '1 millisecond', updated_at = d.t
            FROM d WHERE s.group_id = ${id} AND d.fits
          )
          SELECT (d.count + ${tokens})::float8 AS count,
            extract(epoch FROM (CASE WHEN d.fits THEN d.ends + ${refillMs}::float8 * interval '1 millisecond' ELSE d.ends END) - d.t)::float8 * 1000 AS ttl
          FROM d`
        return Effect.map(onRow(id, decide, (id) => create(id, 0)), (row) => [row.count, row.ttl] as const)
      },

      tokenBucket: ({ allowOverflow, key, limit, refillRate, tokens }) => {
        const id = `x:tb:${rowKey(key)}`
        const r = Duration.toMillis(refillRate)
        // Whole refills since the last one (as a token bucket counts them), after the lock, at one instant.
        const decide = sql<{ remaining: number }>`
          WITH cur AS (
            SELECT version AS tokens, updated_at AS refilled FROM ${T} WHERE group_id = ${id} FOR UPDATE
          ), a AS (
            SELECT cur.tokens, cur.refilled, GREATEST(0, floor(extract(epoch FROM x.t - cur.refilled) * 1000 / ${r}::float8)) AS n
            FROM cur, LATERAL (SELECT clock_timestamp() AS t) AS x
          ), b AS (
            SELECT CASE WHEN a.n > 0 THEN LEAST(${limit}::float8, a.tokens + a.n) ELSE a.tokens END AS tokens,
              a.refilled + a.n * ${r}::float8 * interval '1 millisecond' AS refilled
            FROM a
          ), u AS (
            UPDATE ${T} AS s SET version = b.tokens - ${tokens}, updated_at = b.refilled,
              last_acquisition_at = b.refilled + (${limit}::float8 - (b.tokens - ${tokens})) * ${r}::float8 * interval '1 millisecond'
            FROM b WHERE s.group_id = ${id} AND (${allowOverflow} OR b.tokens - ${tokens} >= 0)
          )
          SELECT (b.tokens - ${tokens})::float8 AS remaining FROM b`
        return Effect.map(onRow(id, decide, (id) => create(id, limit)), (row) => row.remaining)
      }
    }
  })
