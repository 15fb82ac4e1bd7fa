/**
 * What the command line verifies on a PostgreSQL store, and the one connection its tools use:
 * the server's version, the table (its columns, the index on `updated_at`) and the grants the
 * library needs, each problem with the statement that fixes it. Read from the catalogs only, so a
 * role without USAGE on the schema is told so instead of failing.
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import type { SqlClient } from "@effect/sql/SqlClient"
import { PgClient } from "@effect/sql-pg"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import type { PostgresStoreConfig } from "../Settings.js"
import * as Errors from "./errors.js"
import { createTableSql, grantSql, privileges, quoteIdent, tableOf } from "./setup.js"

export { createTableSql, grantSql, privileges, quoteIdent, tableOf }

/** The oldest PostgreSQL the engine supports, as `server_version_num`, and the newest it was tested on. */
export const minimumVersion = 140000
export const testedUpTo = 18

/** The columns of the documented table. */
export const columns = ["group_id", "last_acquisition_at", "version", "current_concurrent", "created_at", "updated_at"] as const

export const contextOf = (name: string, config: PostgresStoreConfig): Errors.Context => ({
  store: name,
  table: tableOf(config),
  poolMaxSize: 1,
  poolTimeoutMs: config.pool_timeout_ms,
  operationTimeoutMs: config.operation_timeout_ms
})

/** One connection to the store's database (closed with the scope); failures classified as the store's. */
export const connect = (
  name: string,
  config: PostgresStoreConfig
): Effect.Effect<SqlClient, Errors.PostgresError, Scope.Scope> =>
  PgClient.make({
    url: Redacted.make(config.url),
    maxConnections: 1,
    connectTimeout: Duration.millis(config.pool_timeout_ms),
    applicationName: "rate-sync-cli"
  }).pipe(Effect.provide(Reactivity.layer), Effect.mapError(Errors.fromSql(contextOf(name, config))))

export interface Problem {
  readonly message: string
  /** SQL or a command that mends it. */
  readonly fix: ReadonlyArray<string>
}

export interface Report {
  readonly version: string
  readonly user: string
  readonly problems: ReadonlyArray<Problem>
  readonly notes: ReadonlyArray<string>
}

interface Row {
  readonly version_num: number
  readonly version: string
  readonly user: string
  readonly has_schema: boolean
  readonly schema_usage: boolean | null
  readonly found: boolean
  readonly columns: ReadonlyArray<string> | null
  readonly has_index: boolean | null
  readonly can_select: boolean | null
  readonly can_insert: boolean | null
  readonly can_update: boolean | null
  readonly can_delete: boolean | null
}

const inspect = (sql: SqlClient, config: PostgresStoreConfig) =>
  sql<Row>`
    WITH n AS (SELECT oid FROM pg_namespace WHERE nspname = ${config.schema_name}),
    t AS (SELECT c.oid FROM pg_class c JOIN n ON c.relnamespace = n.oid WHERE c.relname = ${config.table_name} AND c.relkind IN ('r', 'p'))
    SELECT current_setting('server_version_num')::int AS version_num, current_setting('server_version') AS version,
      current_user::text AS "user",
      EXISTS (SELECT 1 FROM n) AS has_schema,
      (SELECT has_schema_privilege(oid, 'USAGE') FROM n) AS schema_usage,
      EXISTS (SELECT 1 FROM t) AS found,
      (SELECT array_agg(attname::text) FROM pg_attribute WHERE attrelid = (SELECT oid FROM t) AND attnum > 0 AND NOT attisdropped) AS columns,
      (SELECT EXISTS (
        SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = t.oid AND a.attname = 'updated_at') FROM t) AS has_index,
      (SELECT has_table_privilege(oid, 'SELECT') FROM t) AS can_select,
      (SELECT has_table_privilege(oid, 'INSERT') FROM t) AS can_insert,
      (SELECT has_table_privilege(oid, 'UPDATE') FROM t) AS can_update,
      (SELECT has_table_privilege(oid, 'DELETE') FROM t) AS can_delete`

const versionProblems = (row: Row): Array<Problem> =>
  row.version_num < minimumVersion
    ? [{ message: `PostgreSQL ${row.version}: rate-sync needs PostgreSQL 14 or later`, fix: ["upgrade the server"] }]
    : []

/** A statement as it is run by hand. */
const statement = (sql: string): string => `${sql};`

const tableProblems = (row: Row, config: PostgresStoreConfig): Array<Problem> => {
  const table = tableOf(config)
  const [createTable, createIndex] = createTableSql(config).map(statement)
  const grants = grantSql(config, row.user).map(statement)
  if (!row.has_schema) {
    return [{
      message: `schema ${quoteIdent(config.schema_name)} does not exist`,
      fix: [statement(`CREATE SCHEMA ${quoteIdent(config.schema_name)}`), createTable!, createIndex!, ...grants]
    }]
  }
  if (row.schema_usage !== true) {
    return [{ message: `${row.user} has no USAGE on schema ${quoteIdent(config.schema_name)}`, fix: grants }]
  }
  if (!row.found) {
    return [{ message: `table ${table} does not exist`, fix: ["rate-sync migrate --apply, or:", createTable!, createIndex!, ...grants] }]
  }
  const problems: Array<Problem> = []
  const missingColumns = columns.filter((column) => !(row.columns ?? []).includes(column))
  if (missingColumns.length > 0) {
    problems.push({
      message: `table ${table} lacks the columns ${missingColumns.join(", ")}: it is not rate-sync's table`,
      fix: ["set table_name to a table of its own, or drop this one and run rate-sync migrate --apply"]
    })
  }
  if (row.has_index !== true) problems.push({ message: `no index on ${table}(updated_at)`, fix: [createIndex!] })
  const missing = privileges.filter((p) =>
    (p === "SELECT" ? row.can_select : p === "INSERT" ? row.can_insert : row.can_update) !== true
  )
  if (missing.length > 0) {
    problems.push({
      message: `${row.user} lacks ${missing.join(", ")} on ${table}`,
      fix: [statement(grantSql(config, row.user, missing).at(-1)!)]
    })
  }
  return problems
}

/** Checks the store's database as its url's user sees it. */
export const check = (name: string, config: PostgresStoreConfig): Effect.Effect<Report, Errors.PostgresError, Scope.Scope> =>
  Effect.gen(function*() {
    const sql = yield* connect(name, config)
    const rows = yield* inspect(sql, config).pipe(Effect.mapError(Errors.fromSql(contextOf(name, config))))
    const row = rows[0]!
    const notes: Array<string> = []
    const major = Math.floor(row.version_num / 10000)
    if (major > testedUpTo) notes.push(`tested on PostgreSQL 14 to ${testedUpTo}`)
    if (row.found && row.can_delete !== true) {
      notes.push(`no DELETE on ${tableOf(config)}: only rate-sync cleanup needs it (${grantSql(config, row.user, ["DELETE"]).at(-1)})`)
    }
    return {
      version: row.version,
      user: row.user,
      problems: [...versionProblems(row), ...tableProblems(row, config)],
      notes
    }
  })

/** Classifies a failed statement of the tools as the store's error. */
export const classify = (name: string, config: PostgresStoreConfig) => Errors.fromSql(contextOf(name, config))

const codeOf = (cause: unknown): unknown =>
  typeof cause === "object" && cause !== null ? Object.getOwnPropertyDescriptor(cause, "code")?.value : undefined

/**
 * Deletes up to `limit` rows idle for `ageMs` (the condition of `PostgresStore.cleanup`), skipping
 * rows locked by a writer; returns how many went. Rows are locked before they are deleted, and a
 * row a writer touched meanwhile no longer matches.
 */
export const deleteIdle = (sql: SqlClient, name: string, config: PostgresStoreConfig, ageMs: number, limit: number) => {
  const table = tableOf(config)
  const T = sql`${sql(config.schema_name)}.${sql(config.table_name)}`
  return sql<{ deleted: string }>`
    WITH d AS (
      DELETE FROM ${T} WHERE group_id IN (
        SELECT group_id FROM ${T}
        WHERE last_acquisition_at < statement_timestamp() - ${ageMs}::float8 * interval '1 millisecond'
          AND updated_at < statement_timestamp() - ${ageMs}::float8 * interval '1 millisecond'
        LIMIT ${limit} FOR UPDATE SKIP LOCKED)
      RETURNING 1
    )
    SELECT count(*)::text AS deleted FROM d`.pipe(
    Effect.map((rows) => Number(rows[0]?.deleted ?? 0)),
    Effect.mapError((error) =>
      codeOf(error.cause) === "42501"
        ? Errors.cleanupDenied(name, table, error.cause)
        : classify(name, config)(error)
    )
  )
}
