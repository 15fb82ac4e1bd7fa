/**
 * PostgreSQL failures as `StoreUnavailable`, with the fix the seed page's troubleshooting table gives.
 */
import type { SqlError } from "@effect/sql/SqlError"
import { StoreUnavailable } from "../Errors.js"

export interface Context {
  readonly store: string
  readonly table: string
  readonly poolMaxSize: number
  readonly poolTimeoutMs: number
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

const UNREACHABLE = new Set(["ECONNREFUSED", "ECONNRESET", "ENOTFOUND", "EHOSTUNREACH", "ETIMEDOUT", "EPIPE", "57P01", "57P02", "57P03", "08000", "08001", "08003", "08006"])

export const describe = (context: Context, cause: unknown): string => {
  const code = codeOf(cause)
  const detail = messageOf(cause)
  if (code === "42P01") {
    return `table ${context.table} does not exist: create it with the "Manual Table Setup" SQL or set auto_create = true`
  }
  if (code === "42501") {
    return `permission denied on ${context.table} (${detail}): GRANT SELECT, INSERT, UPDATE ON ${context.table} TO the user of the url`
  }
  if (/timeout exceeded when trying to connect/i.test(detail)) {
    return `connection pool exhausted: all ${context.poolMaxSize} connections stayed busy for pool_timeout_ms = ${context.poolTimeoutMs}; increase pool_max_size`
  }
  if (code !== undefined && UNREACHABLE.has(code)) return `cannot reach PostgreSQL (${code}: ${detail})`
  return `PostgreSQL error${code === undefined ? "" : ` ${code}`}: ${detail}`
}

export const fromSql = (context: Context) => (error: SqlError): StoreUnavailable =>
  new StoreUnavailable({ store: context.store, engine: "postgres", message: describe(context, error.cause), cause: error.cause })
