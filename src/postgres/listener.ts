/**
 * The LISTEN side of lease wake-ups: a connection of its own, outside the pool, because a pooled
 * LISTEN that loses its connection dies silently and never wakes anyone again. This one reconnects
 * after any error (backing off, with TCP keepalive so a connection dropped by the network is noticed),
 * and on every (re)connect tells its owner, who wakes every waiter: releases published while it was
 * away were missed.
 *
 * A LISTEN can also succeed and still hear nothing: through a pooler in transaction mode (PgBouncer's
 * `pool_mode = transaction`) the server session that ran it goes back to the pool at once, and
 * notifications reach whoever holds it next, if anyone. So after every (re)connect the owner publishes
 * a probe on the channel through another connection; a probe not heard in time is said (`onDeaf`),
 * since waiters then only have their re-check.
 */
import { randomUUID } from "node:crypto"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Redacted from "effect/Redacted"
import * as Runtime from "effect/Runtime"
import type * as Scope from "effect/Scope"
import pg from "pg"

/** Where the listener stands, for tests and tools. */
export type Status =
  /** Not started: nothing waited yet. */
  | "off"
  /** Connecting, or waiting to reconnect. */
  | "connecting"
  /** LISTEN ran; the probe is on its way, or could not be sent (the pool was unavailable). */
  | "listening"
  /** The probe arrived: releases wake waiters at once. */
  | "hears"
  /** The probe did not arrive in time: waiters are left to their re-check. */
  | "deaf"

export interface Probe {
  /** Publishes `payload` on the channel through another connection (the store's pool). */
  readonly publish: (payload: string) => Effect.Effect<void, unknown>
  /** How long after the probe committed it must have arrived. */
  readonly timeoutMs: number
  /** Said (a warning) when it did not, once per connection. */
  readonly warning: string
}

export interface Options {
  readonly connectionString: Redacted.Redacted<string>
  readonly channel: string
  readonly connectTimeoutMs: number
  readonly onNotify: (payload: string) => void
  readonly onConnect: () => void
  readonly probe?: Probe | undefined
}

export interface Listener {
  readonly status: () => Status
}

/** The first pause before connecting again, and the longest. */
const FIRST_RETRY_MS = 250
const LAST_RETRY_MS = 5_000

/** Probe payloads: never a release's key digest (no colon) nor a backoff ("b:"). */
const PROBE_PREFIX = "p:"

/** Starts listening for the scope's lifetime; closing it ends the connection (without waiting on a dead socket). */
export const start = (options: Options): Effect.Effect<Listener, never, Scope.Scope> =>
  Effect.flatMap(Effect.runtime<never>(), (runtime) =>
    Effect.acquireRelease(
      Effect.sync(() => {
        const warn = (message: string) => Runtime.runFork(runtime)(Effect.logWarning(message))
        let closed = false
        let status: Status = "connecting"
        let current: pg.Client | undefined
        let timer: ReturnType<typeof setTimeout> | undefined
        let probeTimer: ReturnType<typeof setTimeout> | undefined
        let pauseMs = FIRST_RETRY_MS
        const connect = () => {
          if (closed) return
          status = "connecting"
          let lost = false
          let probe: string | undefined
          let client: pg.Client | undefined
          const retry = (error?: unknown) => {
            if (lost) return
            lost = true
            status = "connecting"
            clearTimeout(probeTimer)
            client?.end().catch(() => {})
            if (closed) return
            // Said once per loss, not per attempt: waiters fall back to their re-checks meanwhile.
            if (pauseMs === FIRST_RETRY_MS) {
              warn(`rate-sync: the LISTEN connection for lease wake-ups was lost (${error instanceof Error ? error.message : "closed"}); waiters re-check until it is back`)
            }
            timer = setTimeout(connect, pauseMs)
            pauseMs = Math.min(LAST_RETRY_MS, pauseMs * 2)
          }
          try {
            current = client = new pg.Client({
              connectionString: Redacted.value(options.connectionString),
              connectionTimeoutMillis: options.connectTimeoutMs,
              keepAlive: true,
              // A connection the network dropped silently is noticed within a minute, not the system's two hours.
              keepAliveInitialDelayMillis: 10_000,
              application_name: "rate-sync-listen"
            })
          } catch (error) {
            // A url pg cannot even parse: said like any other failure to connect, and tried again.
            return retry(error)
          }
          const connecting = client
          connecting.on("error", retry)
          connecting.on("end", () => retry())
          connecting.on("notification", (message) => {
            if (message.channel !== options.channel || message.payload === undefined) return
            if (message.payload.startsWith(PROBE_PREFIX)) {
              if (message.payload === probe && !lost) {
                status = "hears"
                clearTimeout(probeTimer)
              }
              return
            }
            options.onNotify(message.payload)
          })
          const verify = (check: Probe) => {
            const payload = `${PROBE_PREFIX}${randomUUID()}`
            probe = payload
            Runtime.runPromiseExit(runtime)(check.publish(payload)).then((exit) => {
              // Not sent (the pool is down or busy): nothing learned; the next reconnect tries again.
              if (Exit.isFailure(exit) || lost || closed || status !== "listening") return
              probeTimer = setTimeout(() => {
                if (lost || closed || status !== "listening") return
                status = "deaf"
                warn(check.warning)
              }, check.timeoutMs)
            })
          }
          connecting.connect()
            .then(() => connecting.query(`LISTEN "${options.channel}"`))
            .then(() => {
              if (lost) return
              pauseMs = FIRST_RETRY_MS
              status = "listening"
              options.onConnect()
              if (options.probe !== undefined) verify(options.probe)
            }, retry)
        }
        connect()
        const stop = () => {
          closed = true
          status = "off"
          clearTimeout(timer)
          clearTimeout(probeTimer)
          current?.end().catch(() => {})
        }
        return { stop, listener: { status: () => status } satisfies Listener }
      }),
      ({ stop }) => Effect.sync(stop)
    )).pipe(Effect.map(({ listener }) => listener))
