/**
 * Redis failures as the library's errors. Only an outage (the connection is gone, the server loading
 * or failing over, a cluster moving slots) is `StoreUnavailable`, the one error that
 * `fail_closed = false` admits through; a command not answered in time is `StoreTimeout`; what no
 * reconnect mends (a wrong password, a script error, a cluster node answering a store not configured
 * as a cluster, or the reverse) is `StoreMisconfigured`.
 */
import { StoreMisconfigured, StoreTimeout, StoreUnavailable } from "../Errors.js"

export const messageOf = (cause: unknown): string => (cause instanceof Error ? cause.message : String(cause))

/** Why a connection failed: a cluster that reached no node adds the last node's error. */
export const refusalOf = (error: unknown): string => {
  const last = typeof error === "object" && error !== null ? Object.getOwnPropertyDescriptor(error, "lastNodeError")?.value : undefined
  return last === undefined ? messageOf(error) : `${messageOf(last)} (${messageOf(error)})`
}

/** A server's reply (ioredis's ReplyError: WRONGPASS, ERR ...), not the client's own words about its connection. */
export const isReply = (error: unknown): boolean => error instanceof Error && error.name === "ReplyError"

/** A store's urls: one, or a cluster's seed nodes separated by commas. */
export const splitUrls = (url: string): Array<string> => url.split(",").map((part) => part.trim()).filter((part) => part !== "")

/** A url's path (its database number), empty when it has none or cannot be read. */
export const pathOf = (url: string): string => {
  try {
    return new URL(url).pathname
  } catch {
    return ""
  }
}

/** Where the url (or each of a cluster's seed urls) points, without its password. */
export const describeUrl = (url: string): string =>
  splitUrls(url).map((one) => {
    try {
      const parsed = new URL(one)
      return `${parsed.protocol}//${parsed.host}${parsed.pathname === "/" ? "" : parsed.pathname}`
    } catch {
      return "the configured url"
    }
  }).join(", ") || "the configured url"

/**
 * A cluster that cannot serve for now, in ioredis's words (redirections or failover retries outlasted,
 * no node answering, slots being refreshed) or a node's (CLUSTERDOWN, TRYAGAIN while a slot migrates).
 * Only an outage when the store is configured as a cluster.
 */
const CLUSTER_FLUX = /^Too many Cluster redirections|^Cluster isn't ready|^None of startup nodes is available|^Failed to refresh slots cache|^Cluster is (ended|disconnected|disconnecting)|^Node is disconnected|^(CLUSTERDOWN|TRYAGAIN)\b/

/**
 * An outage: the connection is gone (the client's own words, or an operating-system error code such as
 * ECONNREFUSED), or the server cannot serve for now (loading, failing over, out of memory). Case
 * matters: a server reply ("ERR Error compiling script") is never an outage.
 */
const OFFLINE = /Stream isn't writeable|Connection is closed|max retries|no answer within connect_timeout_ms|^(LOADING|MASTERDOWN|READONLY|OOM)\b|\b(ECONNREFUSED|ECONNRESET|ECONNABORTED|ETIMEDOUT|ENOTFOUND|EHOSTUNREACH|EHOSTDOWN|ENETUNREACH|ENETDOWN|EPIPE|EAI_AGAIN)\b/

/** Of the outages: the server says it cannot serve for now (loading, failing over, read-only, out of memory). */
const SERVER = /^(LOADING|MASTERDOWN|READONLY|OOM)\b/

/** Of the outages: no connection could be made (refused, no route or name, no answer to the connect, reconnects given up). */
const NO_CONNECTION = /max retries|no answer within connect_timeout_ms|None of startup nodes is available|Failed to refresh slots cache|\b(ECONNREFUSED|ETIMEDOUT|ENOTFOUND|EHOSTUNREACH|EHOSTDOWN|ENETUNREACH|ENETDOWN|EAI_AGAIN)\b/

/** Which outage an error that is one reports; a connection lost under the command otherwise. */
const outageOf = (detail: string): StoreUnavailable["reason"] =>
  SERVER.test(detail)
    ? "server"
    : NO_CONNECTION.test(detail)
    ? "unreachable"
    : CLUSTER_FLUX.test(detail)
    ? "server"
    : "disconnected"

/** An operating-system error code on the error itself (connection errors carry one; server replies do not). */
const systemCodeOf = (cause: unknown): string | undefined => {
  const code = typeof cause === "object" && cause !== null ? Object.getOwnPropertyDescriptor(cause, "code")?.value : undefined
  return typeof code === "string" && /^E[A-Z_]+$/.test(code) && code !== "ERR" ? code : undefined
}

/** Slow, not down: a command not answered in time, or a long script keeping the server busy. */
const SLOW = /^Command timed out|^BUSY\b/

/**
 * Replies no reconnect or retry mends, by what they say is wrong. A store not configured as a cluster
 * that hears a cluster node (redirected, or told the cluster is down) is pointed at one; a store
 * configured as one whose server has cluster support disabled is pointed at a standalone server.
 */
const permanence = (detail: string, cluster: boolean): StoreMisconfigured["reason"] | undefined =>
  /^(WRONGPASS|NOAUTH)|invalid password|invalid username/i.test(detail)
    ? "authentication"
    : /^NOPERM/.test(detail)
    ? "permission"
    : /^CROSSSLOT\b/.test(detail)
    ? "statement"
    : cluster
    ? /cluster support disabled/.test(detail) ? "redirect" : undefined
    : /^(MOVED|ASK|CLUSTERDOWN|TRYAGAIN)\b/.test(detail)
    ? "redirect"
    : /DB index is out of range/.test(detail)
    ? "database"
    : undefined

const FIXES: Record<StoreMisconfigured["reason"], string> = {
  authentication: "check the user and password in the url",
  permission: "grant the url's user EVALSHA, EVAL, SCRIPT, PUBLISH and SUBSCRIBE on the key prefix",
  redirect:
    "set cluster = true (with the cluster's nodes in url, comma-separated) for a Redis Cluster, cluster = false for a standalone server",
  database: "check the database number in the url",
  schema: "check the key_prefix and the server's configuration",
  statement: "a rate-sync bug: please report it with this message"
}

export interface Context {
  readonly store: string
  /** The url without its password. */
  readonly where: string
  readonly commandTimeoutMs: number
  /** The store is configured as a Redis Cluster (ioredis follows its redirections). */
  readonly cluster?: boolean
}

/** Classifies a failure; `refusal` is why the client last failed to connect, when it is not connected. */
export const classify = (
  context: Context,
  cause: unknown,
  refusal: string | undefined
): StoreUnavailable | StoreTimeout | StoreMisconfigured => {
  const { store, where } = context
  const cluster = context.cluster === true
  const detail = messageOf(cause)
  const reason = permanence(detail, cluster) ?? (refusal === undefined ? undefined : permanence(refusal, cluster))
  if (reason !== undefined) {
    return new StoreMisconfigured({
      store,
      engine: "redis",
      reason,
      message: `Redis at ${where} refused: ${permanence(detail, cluster) === undefined ? refusal : detail}; ${FIXES[reason]}`,
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
  if (OFFLINE.test(detail) || (cluster && CLUSTER_FLUX.test(detail)) || code !== undefined) {
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
