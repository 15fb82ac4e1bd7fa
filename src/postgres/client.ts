/**
 * The store's client: one `pg` pool per store, as `@effect/sql-pg`'s client, closed with the store's
 * scope, and how its failures become the library's errors. No session settings at connection start
 * (`options`): a pooler such as PgBouncer refuses them; synchronous_commit = false is set by each
 * writing statement instead (context.ts, ASYNC_COMMIT).
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import type { SqlClient } from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import { PgClient } from "@effect/sql-pg"
import * as Effect from "effect/Effect"
import pg from "pg"
import type { PostgresStoreConfig } from "../Settings.js"
import * as Errors from "./errors.js"
import * as Prepared from "./prepared.js"

/**
 * The store's client: its own pool, or `shared`, a client the program already has (used without its
 * name transforms, since the store reads its rows' own column names, and left open when the store
 * closes). With its own pool, `prepared` runs the decision writes as named statements (prepared.ts).
 */
export const make = (config: PostgresStoreConfig, context: Errors.Context, shared?: SqlClient) =>
  Effect.gen(function*() {
    if (shared !== undefined) {
      const classifyShared = Errors.fromSql(context)
      return {
        sql: shared.withoutTransforms(),
        toError: (error: SqlError): Errors.PostgresError => classifyShared(error),
        prepared: undefined
      }
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
    const pool = new pg.Pool({
      connectionString: config.url,
      max: config.pool_max_size,
      min: config.pool_min_size,
      connectionTimeoutMillis: config.pool_timeout_ms,
      // A connection whose peer vanished (no FIN, no RST) is found out instead of holding its slot.
      keepAlive: true,
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
    return { sql, toError, prepared: Prepared.make(pool) }
  })
