/**
 * The LISTEN side of lease wake-ups: a connection of its own, outside the pool, because a pooled
 * LISTEN that loses its connection dies silently and never wakes anyone again. This one reconnects
 * after any error (backing off, with TCP keepalive so a connection dropped by the network is noticed),
 * and on every (re)connect tells its owner, who wakes every waiter: releases published while it was
 * away were missed.
 */
import * as Effect from "effect/Effect"
import * as Runtime from "effect/Runtime"
import type * as Scope from "effect/Scope"
import pg from "pg"

export interface Options {
  readonly connectionString: string
  readonly channel: string
  readonly connectTimeoutMs: number
  readonly onNotify: (payload: string) => void
  readonly onConnect: () => void
}

/** The first pause before connecting again, and the longest. */
const FIRST_RETRY_MS = 250
const LAST_RETRY_MS = 5_000

/** Starts listening for the scope's lifetime; closing it ends the connection (without waiting on a dead socket). */
export const start = (options: Options): Effect.Effect<void, never, Scope.Scope> =>
  Effect.flatMap(Effect.runtime<never>(), (runtime) =>
    Effect.acquireRelease(
      Effect.sync(() => {
        const warn = (message: string) => Runtime.runFork(runtime)(Effect.logWarning(message))
        let closed = false
        let current: pg.Client | undefined
        let timer: ReturnType<typeof setTimeout> | undefined
        let pauseMs = FIRST_RETRY_MS
        const connect = () => {
          if (closed) return
          const client = new pg.Client({
            connectionString: options.connectionString,
            connectionTimeoutMillis: options.connectTimeoutMs,
            keepAlive: true,
            // A connection the network dropped silently is noticed within a minute, not the system's two hours.
            keepAliveInitialDelayMillis: 10_000,
            application_name: "rate-sync"
          })
          current = client
          let lost = false
          const retry = (error?: unknown) => {
            if (lost) return
            lost = true
            client.end().catch(() => {})
            if (closed) return
            // Said once per loss, not per attempt: waiters fall back to their re-checks meanwhile.
            if (pauseMs === FIRST_RETRY_MS) {
              warn(`rate-sync: the LISTEN connection for lease wake-ups was lost (${error instanceof Error ? error.message : "closed"}); waiters re-check until it is back`)
            }
            timer = setTimeout(connect, pauseMs)
            pauseMs = Math.min(LAST_RETRY_MS, pauseMs * 2)
          }
          client.on("error", retry)
          client.on("end", () => retry())
          client.on("notification", (message) => {
            if (message.channel === options.channel && message.payload !== undefined) options.onNotify(message.payload)
          })
          client.connect()
            .then(() => client.query(`LISTEN "${options.channel}"`))
            .then(() => {
              if (lost) return
              pauseMs = FIRST_RETRY_MS
              options.onConnect()
            }, retry)
        }
        connect()
        return () => {
          closed = true
          clearTimeout(timer)
          current?.end().catch(() => {})
        }
      }),
      (stop) => Effect.sync(stop)
    )).pipe(Effect.asVoid)
