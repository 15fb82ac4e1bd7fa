/**
 * Redis failures as the library's errors. Only an outage (the connection is gone, the server loading
 * or failing over) is `StoreUnavailable`, the one error that `fail_closed = false` admits through; a
 * command not answered in time is `StoreTimeout`; what no reconnect mends (a wrong password, a
 * cluster node redirecting the key, a script error) is `StoreMisconfigured`.
 */
import { StoreMisconfigured, StoreTimeout, StoreUnavailable } from "../Errors.js"

export const messageOf = (cause: unknown): string => (cause instanceof Error ? cause.message : String(cause))

/** Where the url points, without its password. */
export const describeUrl = (url: string): string => {
  try {
    const parsed = new URL(url)
    return `${parsed.protocol}//${parsed.host}${parsed.pathname === "/" ? "" : parsed.pathname}`
  } catch {
    return "the configured url"
  }
}

/**
 * An outage: the connection is gone (the client's own words, or an operating-system error code such as
 * ECONNREFUSED), or the server cannot serve for now (loading, failing over, out of memory). Case
 * matters: a server reply ("ERR Error compiling script") is never an outage.
 */
const OFFLINE = /Stream isn't writeable|Connection is closed|max retries|no answer within connect_timeout_ms|^(LOADING|MASTERDOWN|CLUSTERDOWN|TRYAGAIN|READONLY|OOM)\b|\b(ECONNREFUSED|ECONNRESET|ECONNABORTED|ETIMEDOUT|ENOTFOUND|EHOSTUNREACH|EHOSTDOWN|ENETUNREACH|ENETDOWN|EPIPE|EAI_AGAIN)\b/

/** Of the outages: the server says it cannot serve for now (loading, failing over, read-only, out of memory). */
const SERVER = /^(LOADING|MASTERDOWN|CLUSTERDOWN|TRYAGAIN|READONLY|OOM)\b/

/** Of the outages: no connection could be made (refused, no route or name, no answer to the connect, reconnects given up). */
const NO_CONNECTION = /max retries|no answer within connect_timeout_ms|\b(ECONNREFUSED|ETIMEDOUT|ENOTFOUND|EHOSTUNREACH|EHOSTDOWN|ENETUNREACH|ENETDOWN|EAI_AGAIN)\b/

/** Which outage an error that is one reports; a connection lost under the command otherwise. */
const outageOf = (detail: string): StoreUnavailable["reason"] =>
  SERVER.test(detail) ? "server" : NO_CONNECTION.test(detail) ? "unreachable" : "disconnected"

/** An operating-system error code on the error itself (connection errors carry one; server replies do not). */
const systemCodeOf = (cause: unknown): string | undefined => {
  const code = typeof cause === "object" && cause !== null ? Object.getOwnPropertyDescriptor(cause, "code")?.value : undefined
  return typeof code === "string" && /^E[A-Z_]+$/.test(code) && code !== "ERR" ? code : undefined
}

/** Slow, not down: a command not answered in time, or a long script keeping the server busy. */
const SLOW = /^Command timed out|^BUSY\b/

/** Replies no reconnect or retry mends, by what they say is wrong. */
const permanence = (detail: string): StoreMisconfigured["reason"] | undefined =>
  /^(WRONGPASS|NOAUTH)|invalid password|invalid username/i.test(detail)
    ? "authentication"
    : /^NOPERM/.test(detail)
    ? "permission"
    : /^(MOVED|ASK|CROSSSLOT)\b/.test(detail)
    ? "redirect"
    : /DB index is out of range/.test(detail)
    ? "database"
    : undefined

const FIXES: Record<StoreMisconfigured["reason"], string> = {
  authentication: "check the user and password in the url",
  permission: "grant the url's user EVALSHA, EVAL, SCRIPT, PUBLISH and SUBSCRIBE on the key prefix",
  redirect: "this is a Redis Cluster node: the redis engine needs a standalone server (or a primary of its own)",
  database: "check the database number in the url",
  schema: "check the key_prefix and the server's configuration",
  statement: "a rate-sync bug: please report it with this message"
}

export interface Context {
  readonly store: string
  /** The url without its password. */
  readonly where: string
  readonly commandTimeoutMs: number
}

/** Classifies a failure; `refusal` is why the client last failed to connect, when it is not connected. */
export const classify = (
  context: Context,
  cause: unknown,
  refusal: string | undefined
): StoreUnavailable | StoreTimeout | StoreMisconfigured => {
  const { store, where } = context
  const detail = messageOf(cause)
  const reason = permanence(detail) ?? (refusal === undefined ? undefined : permanence(refusal))
  if (reason !== undefined) {
    return new StoreMisconfigured({
      store,
      engine: "redis",
      reason,
      message: `Redis at ${where} refused: ${permanence(detail) === undefined ? refusal : detail}; ${FIXES[reason]}`,
      cause
    })
  }
  if (SLOW.test(detail)) {
    return new StoreTimeout({
      store,
      engine: "redis",
      message: `Redis at ${where} did not answer within command_timeout_ms = ${context.commandTimeoutMs} (${detail})`,
      cause
    })
  }
  const code = systemCodeOf(cause)
  if (OFFLINE.test(detail) || code !== undefined) {
    return new StoreUnavailable({
      store,
      engine: "redis",
      // A client that is not connected says why in its last connection error (refused, no such host).
      reason: outageOf([detail, code, refusal].filter((part) => part !== undefined).join(" ")),
      message: `cannot reach Redis at ${where} (${detail}); it reconnects by itself, limiters follow fail_closed meanwhile`,
      cause
    })
  }
  return new StoreMisconfigured({ store, engine: "redis", reason: "statement", message: `Redis error at ${where}: ${detail}; ${FIXES.statement}`, cause })
}
