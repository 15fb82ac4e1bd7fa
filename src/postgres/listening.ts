/**
 * When the store starts listening: the LISTEN connection (listener.ts) is opened the first time a
 * lease or a rate slot is waited for, so a program that never waits opens none. Through it come
 * releases (which wake lease waiters) and other processes' backoffs; every (re)connect wakes every
 * waiter, since releases published meanwhile were missed.
 */
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import type { Context } from "./context.js"
import * as Listener from "./listener.js"

/**
 * How long a probe NOTIFY, once committed, may take to reach the LISTEN connection before it is said
 * to hear nothing: milliseconds when it works, so seconds only on a machine far overloaded.
 */
const PROBE_TIMEOUT_MS = 3_000

export const make = (ctx: Context, options: {
  /** Where the LISTEN connection lives: closed with it. */
  readonly scope: Scope.Scope
  readonly onNotify: (payload: string) => void
  readonly onConnect: () => void
}) => {
  const { bounded, channel, config, name, sql, toError } = ctx
  let listener: Listener.Listener | undefined
  /** Where LISTEN connects: listen_url (a direct connection past a transaction pooler), else the url. */
  const listenUrl = Redacted.make(config.listen_url ?? config.url)
  const listenKey = config.listen_url === undefined ? "url" : "listen_url"
  const listen = Effect.suspend(() => {
    if (listener !== undefined) return Effect.void
    listener = { status: () => "connecting" }
    return Listener.start({
      connectionString: listenUrl,
      channel,
      connectTimeoutMs: config.pool_timeout_ms,
      // Checked after every (re)connect: a LISTEN through a pooler in transaction mode succeeds and hears nothing.
      probe: {
        publish: (payload) => sql`SELECT pg_notify(${channel}, ${payload})`.pipe(Effect.mapError(toError), bounded),
        timeoutMs: PROBE_TIMEOUT_MS,
        warning:
          `rate-sync: store "${name}": the LISTEN connection (${listenKey}) heard nothing of a NOTIFY sent through the url within ${PROBE_TIMEOUT_MS} ms, so lease waiters in this process wake only at their re-check (up to a second late). Through a pooler in transaction mode (PgBouncer pool_mode = transaction) LISTEN cannot hold: set listen_url to a direct connection to the same database as the url (or one through a session-mode pool).`
      },
      onNotify: options.onNotify,
      onConnect: options.onConnect
    }).pipe(
      Scope.extend(options.scope),
      Effect.map((started) => {
        listener = started
      })
    )
  })
  return {
    /** Starts listening, once. */
    listen,
    status: (): Listener.Status => listener?.status() ?? "off"
  }
}
