/**
 * PostgreSQL failures as the library's errors, with the fix where one is known. Only an outage (the
 * server cannot be reached, or dropped the connection) is `StoreUnavailable`, the one error that
 * `fail_closed = false` admits through; a store too slow is `StoreTimeout`; everything the server
 * answered with (authentication, a missing database, table or grant, a statement it refused) is
 * `StoreMisconfigured`, so a mistake never switches limiting off.
 */
import type { SqlError } from "@effect/sql/SqlError"
import { StoreMisconfigured, StoreTimeout, StoreUnavailable } from "../Errors.js"

export interface Context {
  readonly store: string
  readonly table: string
  readonly poolMaxSize: number
  readonly poolTimeoutMs: number
  readonly operationTimeoutMs: number
}

/** An own property of an error-like value (pg sets `code` and `message` on the instance). */
const field = (cause: unknown, name: string): unknown =>
  typeof cause === "object" && cause !== null ? Object.getOwnPropertyDescriptor(cause, name)?.value : undefined

const codeOf = (cause: unknown): string | undefined => {
  const code = field(cause, "code")
  if (typeof code === "string") return code
  const nested = field(cause, "cause")
  return nested === undefined || nested === cause ? undefined : codeOf(nested)
}

const messageOf = (cause: unknown): string => {
  const message = field(cause, "message")
  return typeof message === "string" ? message : String(cause)
}

const UNREACHABLE = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ENOTFOUND",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ETIMEDOUT",
  "EPIPE",
  "57P01",
  "57P02",
  "57P03",
  "53300",
  "08000",
  "08001",
  "08003",
  "08004",
  "08006"
])

/** A statement cancelled by statement_timeout, a lock not had in time, or a reply that never came. */
const TIMEOUT = new Set(["57014", "55P03"])

/**
 * Server states that pass: connection failures (08), too many connections or out of resources (53),
 * shut down, crashed or restarting (57), system errors (58), and a read-only server, as after a
 * failover to a replica (25006).
 */
const OUTAGE_CLASSES = ["08", "53", "57", "58"]

/**
 * What a pooler (PgBouncer) answers with 08P01, a class that is otherwise an outage, when it is set up
 * otherwise than the library needs: retrying cannot mend them, so they are mistakes, never outages.
 */
const STARTUP_PARAMETER = /unsupported startup parameter/i
const POOLER_DATABASE = /^no such database/i
/** A lease is one transaction: statement pooling refuses it (and would otherwise admit it as an outage). */
const STATEMENT_POOLING = /not allowed in statement pooling mode/i

/** Messages pg gives without a code when the connection went away under a query. */
const DROPPED = /connection terminated|connection error|not queryable|terminating connection|socket|ECONNRESET/i

/** Connections that could not be made: refused, no route or name, no answer to the connect, the server rejecting it. */
const NO_CONNECTION = new Set(["ECONNREFUSED", "ENOTFOUND", "EHOSTUNREACH", "ENETUNREACH", "ETIMEDOUT", "EAI_AGAIN", "08001", "08004"])

/**
 * Which outage: no connection made; the server saying it cannot serve for now (too many connections or
 * out of resources, shut down, crashed or starting, system errors, read-only); else a connection lost
 * under the call (reset, terminated, dropped without a code).
 */
const outageOf = (code: string | undefined): StoreUnavailable["reason"] =>
  code === undefined
    ? "disconnected"
    : NO_CONNECTION.has(code)
    ? "unreachable"
    : ["53", "57", "58"].includes(code.slice(0, 2)) || code === "25006"
    ? "server"
    : "disconnected"

const reasonOf = (code: string): StoreMisconfigured["reason"] =>
  code.startsWith("28")
    ? "authentication"
    : code === "3D000"
    ? "database"
    : code === "42501"
    ? "permission"
    : ["42P01", "3F000", "42703"].includes(code)
    ? "schema"
    : "statement"

export const describe = (context: Context, cause: unknown): string => {
  const code = codeOf(cause)
  const detail = messageOf(cause)
  if (code === "42P01") {
    return `table ${context.table} does not exist: create it with the "Manual Table Setup" SQL or set auto_create = true`
  }
  if (STARTUP_PARAMETER.test(detail)) {
    return `the connection was refused (${code ?? "no code"}: ${detail}): a pooler such as PgBouncer takes no session settings when a connection starts. Remove them from the url (options=...) and from PGOPTIONS; synchronous_commit = false is a store key that needs none. (PgBouncer's ignore_startup_parameters would drop them silently.)`
  }
  if (STATEMENT_POOLING.test(detail)) {
    return `the pooler refused a transaction (${code ?? "no code"}: ${detail}): leases take one transaction each, which PgBouncer's pool_mode = statement forbids; use pool_mode = transaction (or session) for the url's database and user`
  }
  if (POOLER_DATABASE.test(detail)) {
    return `the pooler knows no such database (${code ?? "no code"}: ${detail}): check the database name in the url against the pooler's [databases] section`
  }
  if (code === "42501") {
    return `permission denied on ${context.table} (${detail}): GRANT SELECT, INSERT, UPDATE ON ${context.table} TO the user of the url`
  }
  if (/timeout exceeded when trying to connect/i.test(detail)) {
    return `connection pool exhausted: all ${context.poolMaxSize} connections stayed busy for pool_timeout_ms = ${context.poolTimeoutMs}; increase pool_max_size`
  }
  if (code !== undefined && TIMEOUT.has(code) || /query read timeout/i.test(detail)) {
    return `PostgreSQL did not answer within operation_timeout_ms = ${context.operationTimeoutMs} (${code ?? "no reply"}: ${detail}); a row lock held elsewhere, or an overloaded server`
  }
  if (code !== undefined && UNREACHABLE.has(code)) return `cannot reach PostgreSQL (${code}: ${detail})`
  return `PostgreSQL error${code === undefined ? "" : ` ${code}`}: ${detail}`
}

export type PostgresError = StoreUnavailable | StoreTimeout | StoreMisconfigured

/** Whether a pooler refused something of its setup (not an outage), as it closes the connection. */
export const isPoolerRefusal = (cause: unknown): boolean => {
  const detail = messageOf(cause)
  return STARTUP_PARAMETER.test(detail) || STATEMENT_POOLING.test(detail) || POOLER_DATABASE.test(detail)
}

/** Classifies a failure of the driver (or of pg itself, `cause`) by what retrying can mend. */
export const fromCause = (context: Context) => (cause: unknown): PostgresError => {
  const fields = { store: context.store, engine: "postgres", message: describe(context, cause), cause }
  const code = codeOf(cause)
  const detail = messageOf(cause)
  if (STARTUP_PARAMETER.test(detail)) return new StoreMisconfigured({ ...fields, reason: "statement" })
  if (POOLER_DATABASE.test(detail)) return new StoreMisconfigured({ ...fields, reason: "database" })
  if (STATEMENT_POOLING.test(detail)) return new StoreMisconfigured({ ...fields, reason: "statement" })
  if (/timeout exceeded when trying to connect|query read timeout/i.test(detail) || (code !== undefined && TIMEOUT.has(code))) {
    return new StoreTimeout(fields)
  }
  if (
    code === undefined || UNREACHABLE.has(code) || /^E[A-Z_]{3,}$/.test(code) || OUTAGE_CLASSES.includes(code.slice(0, 2)) ||
    code === "25006" || DROPPED.test(detail)
  ) return new StoreUnavailable({ ...fields, reason: outageOf(code) })
  return new StoreMisconfigured({ ...fields, reason: reasonOf(code) })
}

export const fromSql = (context: Context) => (error: SqlError): PostgresError => fromCause(context)(error.cause)

/** Cleanup is the one statement that needs DELETE: its refusal says so (the library and the command line both clean up). */
export const cleanupDenied = (store: string, table: string, cause: unknown): StoreMisconfigured =>
  new StoreMisconfigured({
    store,
    engine: "postgres",
    reason: "permission",
    message: `permission denied for cleanup on ${table}: it deletes idle rows, so it needs GRANT DELETE ON ${table} TO the user of the url (nothing else needs DELETE)`,
    cause
  })
