/**
 * The table and its grants: the documented DDL (README, "Manual Table Setup"), the GRANT statements,
 * and the store's start-up: create what is missing when `auto_create` is set, then check the table
 * exists with SELECT, INSERT and UPDATE granted.
 *
 * The DDL and grants are text, not fragments: the command line prints them (`rate-sync migrate`) and
 * the store runs the same text. Identifiers are quoted by `quoteIdent`; the configuration admits only
 * plain identifiers, so the text is `"schema"."table"` as the README shows it.
 */
import type { SqlClient } from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"
import { StoreMisconfigured } from "../Errors.js"
import type { PostgresStoreConfig } from "../Settings.js"
import * as Errors from "./errors.js"

/** What the library needs on its table; DELETE only for the cleanup. */
export const privileges = ["SELECT", "INSERT", "UPDATE"] as const

export const quoteIdent = (name: string): string => `"${name.replaceAll("\"", "\"\"")}"`

export const tableOf = (config: PostgresStoreConfig): string => `${quoteIdent(config.schema_name)}.${quoteIdent(config.table_name)}`

const indexOf = (config: PostgresStoreConfig): string => quoteIdent(`idx_${config.table_name}_updated`)

/** The documented table (README, "Manual Table Setup"), in the configured schema. */
export const createTableSql = (config: PostgresStoreConfig): ReadonlyArray<string> => {
  const table = tableOf(config)
  return [
    `CREATE ${config.unlogged ? "UNLOGGED " : ""}TABLE IF NOT EXISTS ${table} (
    group_id VARCHAR(255) PRIMARY KEY,
    last_acquisition_at TIMESTAMPTZ NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    current_concurrent INTEGER NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
)`,
    `CREATE INDEX IF NOT EXISTS ${indexOf(config)} ON ${table}(updated_at)`
  ]
}

/** The GRANT statements that give `role` what the library needs on the store's table. */
export const grantSql = (config: PostgresStoreConfig, role: string, only: ReadonlyArray<string> = privileges): ReadonlyArray<string> => [
  ...(config.schema_name === "public" ? [] : [`GRANT USAGE ON SCHEMA ${quoteIdent(config.schema_name)} TO ${quoteIdent(role)}`]),
  `GRANT ${only.join(", ")} ON ${tableOf(config)} TO ${quoteIdent(role)}`
]

/** The SQLSTATE of a failed statement ("" when it has none). */
export const codeOf = (error: SqlError): string => {
  const cause: unknown = error.cause
  return typeof cause === "object" && cause !== null ? String(Object.getOwnPropertyDescriptor(cause, "code")?.value ?? "") : ""
}

/** What the start-up reads, decoded (once per store, so checking the shape costs nothing that matters). */
const Present = Schema.Struct({ has_table: Schema.Boolean, has_index: Schema.Boolean })
const Grants = Schema.Struct({
  found: Schema.Boolean,
  can_select: Schema.NullOr(Schema.Boolean),
  can_insert: Schema.NullOr(Schema.Boolean),
  can_update: Schema.NullOr(Schema.Boolean)
})

/** The one row a catalog query returns, decoded: another shape is a defect of this module, not the store's. */
const decodeRow = <A, I>(schema: Schema.Schema<A, I>) => (rows: ReadonlyArray<unknown>) =>
  Effect.orDie(Schema.decodeUnknown(schema)(rows[0]))

/** Creates what is missing of the table and its index: even CREATE INDEX IF NOT EXISTS takes a lock that stalls every writer. */
const create = (sql: SqlClient, config: PostgresStoreConfig, context: Errors.Context) =>
  Effect.gen(function*() {
    const toError = Errors.fromSql(context)
    const present = yield* sql`
      SELECT to_regclass(${context.table}) IS NOT NULL AS has_table,
        to_regclass(${`${quoteIdent(config.schema_name)}.${indexOf(config)}`}) IS NOT NULL AS has_index`.pipe(
      Effect.mapError(toError),
      Effect.flatMap(decodeRow(Present))
    )
    const [createTable, createIndex] = createTableSql(config)
    const missing = [
      ...(present.has_table ? [] : [createTable!]),
      ...(present.has_index ? [] : [createIndex!])
    ]
    for (const statement of missing) {
      yield* sql.unsafe(statement).pipe(
        // Several processes creating the table at once: the losers see it exist.
        Effect.catchIf((error) => ["23505", "42P07"].includes(codeOf(error)), () => Effect.void),
        Effect.mapError(toError)
      )
    }
  })

/** Fails with the fix when the table is missing or a privilege the library needs is not granted. */
const check = (sql: SqlClient, context: Errors.Context) =>
  Effect.gen(function*() {
    const misconfigured = (reason: "schema" | "permission", message: string) =>
      new StoreMisconfigured({ store: context.store, engine: "postgres", reason, message })
    const row = yield* sql`
      SELECT to_regclass(${context.table}) IS NOT NULL AS found,
        has_table_privilege(to_regclass(${context.table}), 'SELECT') AS can_select,
        has_table_privilege(to_regclass(${context.table}), 'INSERT') AS can_insert,
        has_table_privilege(to_regclass(${context.table}), 'UPDATE') AS can_update`.pipe(
      Effect.mapError(Errors.fromSql(context)),
      Effect.flatMap(decodeRow(Grants))
    )
    if (!row.found) {
      return yield* Effect.fail(misconfigured("schema", Errors.describe(context, { code: "42P01", message: "" })))
    }
    const missing = privileges.filter((p) => !(p === "SELECT" ? row.can_select : p === "INSERT" ? row.can_insert : row.can_update))
    if (missing.length > 0) {
      return yield* Effect.fail(
        misconfigured("permission", Errors.describe(context, { code: "42501", message: `${missing.join(", ")} not granted` }))
      )
    }
  })

/**
 * Creates the table when `auto_create` is set, then checks it exists with SELECT, INSERT and
 * UPDATE granted. A missing table or grant fails the layer with the fix; an unreachable database
 * only warns, so the limiters start and follow `fail_closed` until it is back.
 */
export const setup = (sql: SqlClient, config: PostgresStoreConfig, context: Errors.Context) =>
  (config.auto_create ? Effect.zipRight(create(sql, config, context), check(sql, context)) : check(sql, context)).pipe(
    // An outage at start is not a mistake: the limiters start and follow fail_closed until it ends.
    Effect.catchIf(
      (error) => error._tag === "StoreUnavailable" || error._tag === "StoreTimeout",
      (error) => Effect.logWarning(`rate-sync: store "${context.store}" starts without its database: ${error.message}`)
    )
  )
